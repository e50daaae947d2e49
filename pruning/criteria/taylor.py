"""First-order Taylor importance: the loss change a channel's removal would cause, estimated
from gradients on calibration batches."""
from __future__ import annotations

import math
from typing import ClassVar, Sequence

import torch
from torch.func import functional_call
from tqdm.auto import tqdm

from pruning.criteria._base import Batch, Criterion, register_criterion
from pruning.errors import InputError
from pruning.utils import preserved_modes


@register_criterion("taylor")
class FirstOrderTaylor(Criterion):
    """Squared first-order Taylor estimate of the loss change from zeroing a channel's filters,

        s_i = 1/B * sum_b ( sum_{p in P_i} g_p^(b) * w_p )^2,

    where P_i are the weight and bias elements that produce channel i (in every producer of the
    group, since a coupled channel is removed from all of them at once), g^(b) the gradient of the
    mean cross-entropy on calibration batch b, and B the number of batches.

    Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019 (the
    "weight" variant of their criterion, averaged over mini-batches).

    The forward passes run in eval mode, so BatchNorm statistics do not move and the scores are
    deterministic. Gradients come from ``torch.autograd.grad`` with respect to detached copies of
    the producers' parameters, so ``.grad`` and ``requires_grad`` of the model are never touched.

    ``image_fraction`` (default 0.5, in (0, 1]) and ``min_images`` (default 32, >= 1): the
    scores use the first max(min_images, ceil(image_fraction x N)) of the N calibration images
    (all of them when N <= min_images; the last batch used is cut to fit). A forward and
    backward pass costs about three forwards, so from 64 calibration images on the default
    keeps scoring near 1.5 forward passes over them; ``image_fraction=1`` uses them all.
    ``min_images`` keeps small calibration sets whole, where half of them would be too few
    gradients to average. Each batch's gradient is summed over slices of
    :data:`BACKWARD_IMAGES` images, so the memory of the backward pass does not grow with the
    batch size.
    """

    needs_calibration: ClassVar[bool] = True

    def __init__(self, seed: int = 0, image_fraction: float = 0.5, min_images: int = 32) -> None:
        super().__init__(seed)
        if isinstance(image_fraction, bool) or not isinstance(image_fraction, (int, float)) \
                or not 0.0 < image_fraction <= 1.0:
            raise InputError(f"image_fraction must be a number in (0, 1], got {image_fraction!r}")
        if isinstance(min_images, bool) or not isinstance(min_images, int) or min_images < 1:
            raise InputError(f"min_images must be an integer >= 1, got {min_images!r}")
        self.image_fraction = float(image_fraction)
        self.min_images = min_images

    def scoring_batches(self, calibration: Sequence[Batch]) -> list[Batch]:
        """The calibration batches the scores use: the first max(min_images, ceil(image_fraction
        x N)) images."""
        total = sum(len(x) for x, _ in calibration)
        left = max(self.min_images, math.ceil(self.image_fraction * total))
        used = []
        for inputs, targets in calibration:
            if left <= 0:
                break
            used.append((inputs[:left], targets[:left]))
            left -= len(used[-1][0])
        return used

    def score(self, model, groups, context):
        self.check_context(context)
        if not groups:
            return {}
        modules = dict(model.named_modules())
        # each producer's weight and bias as fresh leaves that autograd differentiates against
        leaves = {
            producer: {
                kind: param.detach().requires_grad_()
                for kind, param in modules[producer].named_parameters(recurse=False)
            }
            for group in groups
            for producer in group.producers
        }
        flat = {f"{producer}.{kind}": leaf for producer, params in leaves.items() for kind, leaf in params.items()}
        device = next(iter(flat.values())).device
        totals = {group.name: torch.zeros(group.size, dtype=torch.float64) for group in groups}

        with preserved_modes(model), torch.enable_grad():
            model.eval()
            batches = self.scoring_batches(context.calibration)
            for inputs, targets in tqdm(batches, desc="scoring", unit="batch", disable=not context.progress,
                                        leave=False):
                grads = _batch_gradients(model, flat, context.task, inputs.to(device), targets.to(device))
                for group in groups:
                    # g*w summed over every element that produces channel i, in all producers
                    contribution = sum(
                        _per_channel_sum(grads[f"{producer}.{kind}"] * leaf.detach())
                        for producer in group.producers
                        for kind, leaf in leaves[producer].items()
                    )
                    totals[group.name] += contribution.double().cpu() ** 2
        return {name: (total / len(batches)).float() for name, total in totals.items()}


def _per_channel_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over everything but the leading (output-channel) dimension; a bias is its own sum."""
    return values.reshape(values.shape[0], -1).sum(1)


#: images per backward pass: the gradient of a batch's mean loss is summed over slices of it, so
#: the activations kept for backward are a slice's (a 224-px ResNet-50 keeps about 80 MB an image)
BACKWARD_IMAGES = 16


def _batch_gradients(model, flat: dict, task, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gradient of the batch's mean task loss (classification: cross-entropy) with respect to ``flat``'s leaves, summed
    over slices of at most :data:`BACKWARD_IMAGES` images (each weighted by its share)."""
    total: dict[str, torch.Tensor] = {}
    for start in range(0, len(inputs), BACKWARD_IMAGES):
        x, y = inputs[start:start + BACKWARD_IMAGES], targets[start:start + BACKWARD_IMAGES]
        loss = task.loss(functional_call(model, flat, (x,)), y) * (len(x) / len(inputs))
        for name, grad in zip(flat, torch.autograd.grad(loss, list(flat.values()))):
            total[name] = total[name] + grad if name in total else grad
    return total

