"""Network slimming: the BatchNorm scale factor gates each channel."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from pruning.criteria._base import Criterion, register_criterion
from pruning.errors import InputError


@register_criterion("bn-scale")
class BatchNormScale(Criterion):
    """Magnitude of the BatchNorm scale, s_i = mean over the group's BN layers of |gamma_i|.

    Liu et al., "Learning Efficient Convolutional Networks through Network Slimming", ICCV 2017:
    a BN layer's output channel is gamma_i * x_hat_i + beta_i, so a small |gamma_i| makes the
    channel nearly constant. Residual-coupled groups average over every BN on the shared channels.
    Groups without a (affine) BatchNorm, such as hidden Linear layers, raise :class:`~pruning.errors.InputError`.
    """

    #: scores only groups that have BatchNorm layers (``ChannelGroup.norms``)
    needs_norms: ClassVar[bool] = True

    def score(self, model, groups, context):
        self.check_context(context)
        modules = dict(model.named_modules())
        out: dict[str, torch.Tensor] = {}
        for group in groups:
            norms: list[nn.Module] = [modules[name] for name in group.norms]
            if not norms or any(norm.weight is None for norm in norms):
                raise InputError(
                    f"criterion 'bn-scale': layer {group.name!r} has no affine BatchNorm; "
                    "use another criterion (e.g. l1) or ignore that layer"
                )
            with torch.no_grad():
                gammas = torch.stack([norm.weight.detach().abs().float() for norm in norms])
            out[group.name] = gammas.mean(0).cpu()
        return out
