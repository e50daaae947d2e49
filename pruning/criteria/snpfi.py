"""SNPFI: filter importance (Shapley, log-probability worth) and automatic layer sparsity."""
from __future__ import annotations

import torch

from pruning.criteria._base import register_criterion
from pruning.criteria.shapley import ShapleyChannels
from pruning.games import snpfi_sparsity


@register_criterion("snpfi")
class SNPFI(ShapleyChannels):
    """Filter importance = Shapley value of the filter in its layer's game with worth

        v(S) = mean_b log P(y_b | x_b; only the filters in S active),

    i.e. the ``shapley`` criterion with ``value="logprob"`` fixed. For ``--ratios snpfi``,
    :meth:`layer_sparsity` gives each layer 1 - k*/n, k* the smallest k >= 1 whose utilization
    strength U(k) = (v(top_k) - v(empty)) / (v(N) - v(empty)) reaches ``tau`` (top_k = the k
    filters of highest importance).

    Tang, Wei & Li, "Structured Network Pruning by Measuring Filter-wise Interactions",
    arXiv:2307.00758. Their post-pruning recovery by minimising the interaction difference is not
    part of a criterion; ``pruning.games.mean_interaction`` measures pairwise interactions.
    Options as for ``shapley`` (same engineered defaults), plus ``tau`` (default 0.95).
    """

    def __init__(
        self,
        seed: int = 0,
        max_permutations: int = 8,
        epsilon: float | None = None,
        batch_size: int = 32,
        antithetic: bool = True,
        truncation: float | None = 0.02,
        batch_permutations: int = 8,
        exact_below: int = 0,
        tau: float = 0.95,
        mode: str = "auto",
        max_batch: int | None = None,
    ) -> None:
        super().__init__(
            seed=seed,
            max_permutations=max_permutations,
            epsilon=epsilon,
            value="logprob",
            batch_size=batch_size,
            antithetic=antithetic,
            truncation=truncation,
            batch_permutations=batch_permutations,
            exact_below=exact_below,
            mode=mode,
            max_batch=max_batch,
        )
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        self.tau = tau

    def score_and_sparsity(self, model, groups, context, tau: float | None = None):
        """(scores, sparsities) from one estimation pass: ``({name: float32[n]}, {name: float})``."""
        tau = self.tau if tau is None else tau
        scores, sparsity = {}, {}
        for name, game, est in self.estimates(model, groups, context):
            scores[name] = torch.nan_to_num(est.values.float(), nan=0.0, posinf=0.0, neginf=0.0).cpu()
            sparsity[name] = snpfi_sparsity(game, est.values, tau)
        return scores, sparsity

    def layer_sparsity(self, model, groups, context, tau: float | None = None) -> dict[str, float]:
        """SNPFI's automatic sparsity per group, in [0, 1 - 1/n]; ``tau`` defaults to ``self.tau``."""
        return self.score_and_sparsity(model, groups, context, tau)[1]
