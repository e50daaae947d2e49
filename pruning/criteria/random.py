"""Random channel scores: the baseline every criterion must beat."""
from __future__ import annotations

import zlib

import torch

from pruning.criteria._base import Criterion, register_criterion


@register_criterion("random")
class RandomScores(Criterion):
    """Uniform random scores, s_i ~ U[0, 1) independently per channel.

    Random pruning is the control of structured-pruning studies; at moderate ratios it is often
    close to magnitude criteria (Liu et al., "Rethinking the Value of Network Pruning", ICLR 2019).
    Each group draws from its own generator seeded with crc32("{seed}:{group name}"), so a
    group's scores depend only on ``seed`` and its name, not on which other groups are scored.
    """

    def score(self, model, groups, context):
        self.check_context(context)
        out: dict[str, torch.Tensor] = {}
        for group in groups:
            generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{group.name}".encode()))
            out[group.name] = torch.rand(group.size, generator=generator)
        return out
