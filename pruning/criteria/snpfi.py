"""SNPFI: filter importance (Shapley, log-probability worth) and automatic layer sparsity, with
optional pairwise interactions in the utilization strength and one global sparsity budget."""
from __future__ import annotations

import time

import torch

from pruning.criteria._base import register_criterion
from pruning.criteria.shapley import ShapleyChannels
from pruning.errors import InputError
from pruning.games import (
    PairSampling, group_seed, importance_order, interaction_utilization, sparsity_from_curve, utilization_curve,
)

#: how the layer sparsities are set: each layer at its own threshold, or jointly
BUDGETS = ("layer", "global")


@register_criterion("snpfi")
class SNPFI(ShapleyChannels):
    """Filter importance = Shapley value of the filter in its layer's game with worth

        v(S) = mean_b log P(y_b | x_b; only the filters in S active),

    i.e. the ``shapley`` criterion with the task's default worth fixed (classification:
    ``value="logprob"``; another task: minus its loss, ``"loss"``). For ``--ratios snpfi``,
    :meth:`layer_sparsity` gives each layer 1 - k*/n, k* the smallest k >= 1 whose utilization
    strength U(k) = (v(top_k) - v(empty)) / (v(N) - v(empty)) reaches ``tau`` (top_k = the k
    filters of highest importance).

    ``interactions`` (a window size w, 0 = off): top_k follows the greedy second-order order
    instead (``pruning.games.interaction_utilization``): the pairwise Shapley interaction indices
    of the w filters around the plain cut, ``interaction_samples`` samples per pair, correct the
    marginals, so of two redundant filters the second moves down. Costs w(w-1)/2 *
    interaction_samples * 4 coalitions per layer more. The scores then follow that order (the
    layer's Shapley values, sorted, reassigned along it), so the filters pruned are the ones the
    curve leaves out.

    ``budget``: ``"layer"`` (the paper's, each layer at its own threshold) or ``"global"``
    (``pruning.planning.allocate_utilization``: layers compete for the removals by utilization
    lost per MAC saved, under a total loss of n_layers * (1 - tau) or a FLOPs target); global
    needs the pruning space in :meth:`score_and_sparsity`.

    Tang, Wei & Li, "Structured Network Pruning by Measuring Filter-wise Interactions",
    arXiv:2307.00758. Their post-pruning recovery by minimising the interaction difference is not
    part of a criterion; ``pruning.games.mean_interaction`` measures pairwise interactions.
    Options as for ``shapley`` (same engineered defaults), plus ``tau`` (default 0.95),
    ``interactions`` (0), ``interaction_samples`` (8) and ``budget`` ("layer").

    Scoring budget (``max_forward_passes``, as for ``shapley``): each group's share pays for its
    estimate and its utilization curve (on the same images and prefix positions: a coarse
    estimate gets a coarse curve, linear in between); the interactions get what the share
    leaves, with fewer samples per pair where that is all that fits, and are skipped (the plain
    curve is kept) where not one sample per pair fits or the curve is coarse. A group the budget
    did not reach keeps all its filters (its curve reaches 1 only at n).
    """

    # long signature: each keyword is a criterion option by name (create_criterion, the CLI's
    # --criterion-options, sweep configs), and the registry lists the valid ones from it
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
        interactions: int = 0,
        interaction_samples: int = 8,
        budget: str = "layer",
        max_forward_passes: float | None = 1.0,
    ) -> None:
        super().__init__(
            seed=seed,
            max_permutations=max_permutations,
            epsilon=epsilon,
            value=None,
            batch_size=batch_size,
            antithetic=antithetic,
            truncation=truncation,
            batch_permutations=batch_permutations,
            exact_below=exact_below,
            mode=mode,
            max_batch=max_batch,
            max_forward_passes=max_forward_passes,
        )
        self.curves_after_estimate = 1  # the utilization curve over the same prefix positions
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        if isinstance(interactions, bool) or not isinstance(interactions, int) or interactions < 0:
            raise InputError(f"interactions must be an integer >= 0 (a window of channels; 0 = off), got {interactions!r}")
        if isinstance(interaction_samples, bool) or not isinstance(interaction_samples, int) or interaction_samples < 1:
            raise InputError(f"interaction_samples must be an integer >= 1, got {interaction_samples!r}")
        if budget not in BUDGETS:
            raise InputError(f"unknown budget {budget!r}; valid: {', '.join(BUDGETS)}")
        self.tau = tau
        self.interactions = interactions
        self.interaction_samples = interaction_samples
        self.budget = budget
        self.last_utilization: dict[str, dict] = {}

    def score_and_curves(self, model, groups, context, tau: float | None = None):
        """(scores, utilization curves) from one estimation pass: ``({name: float32[n]},
        {name: float64[n+1]})``; with ``interactions`` the curves and scores follow the greedy
        second-order order, and ``last_utilization`` says per group what it cost and changed."""
        tau = self.tau if tau is None else tau
        scores, curves = {}, {}
        self.last_utilization = {}
        for name, game, est in self.estimates(model, groups, context):
            phi = torch.nan_to_num(est.values.float(), nan=0.0, posinf=0.0, neginf=0.0).cpu()
            report = self.last_report[name]
            scores[name] = phi
            if not report["estimated"]:
                curves[name] = torch.zeros(game.size + 1, dtype=torch.float64)
                curves[name][-1] = 1.0
                continue
            positions = report.get("positions") or game.size
            samples = self._interaction_samples(game, report, positions)
            if samples < 1:
                curves[name] = utilization_curve(game, est.values, positions=positions)
                if self.interactions >= 2:
                    self.last_utilization[name] = {"skipped": "over budget", "samples": 0}
                continue
            started = time.perf_counter()
            found = interaction_utilization(game, est.values, PairSampling(window=self.interactions, samples=samples),
                                            tau=tau, seed=group_seed(self.seed, name) + 1)
            curves[name] = found.curve
            ranked = torch.sort(phi, descending=True, stable=True).values
            scores[name] = torch.empty_like(phi)
            scores[name][found.order] = ranked
            plain = importance_order(est.values)  # the order interaction_utilization started from
            self.last_utilization[name] = {
                "coalitions": found.coalitions, "pairs": len(found.pairs), "plain_cut": found.plain_cut,
                "reordered": int((found.order != plain).sum()), "samples": samples,
                "mean_interaction": float(found.interactions.mean()) if len(found.pairs) else 0.0,
                "seconds": time.perf_counter() - started,
            }
        return scores, curves

    def _interaction_samples(self, game, report: dict, positions: int) -> int:
        """Samples per pair the interactions get within what the group's share leaves after
        its estimate (0: none; the plain curve is used)."""
        if self.interactions < 2 or positions < game.size:
            return 0
        budget = report.get("budget_passes")
        if budget is None or self.meter.budget is None:
            return self.interaction_samples
        left = budget - (self.meter.spent - self.group_started)
        window = min(self.interactions, game.size)
        pairs = window * (window - 1) // 2
        coalitions = left * self.meter.calibration_images / max(game.fraction * game.images, 1e-12)
        fit = int((coalitions - 2 * (game.size + 1)) // (4 * max(pairs, 1)))
        return max(0, min(self.interaction_samples, fit))

    def score_and_sparsity(self, model, groups, context, tau: float | None = None, *, space=None, plan=None):
        """(scores, sparsities) from one estimation pass: ``({name: float32[n]}, {name: float})``.

        ``budget="layer"``: each layer's 1 - k*/n (``space`` and ``plan`` unused). ``"global"``:
        :func:`pruning.planning.allocate_utilization` on ``space`` (required) with the FLOPs target
        and width limits of ``plan`` (a :class:`~pruning.planning.PruningConfig`: its
        ``flops_reduction``, ``max_layer_ratio``, ``min_channels``, ``round_to``; None: no target,
        the default limits).
        """
        tau = self.tau if tau is None else tau
        groups = list(groups)
        scores, curves = self.score_and_curves(model, groups, context, tau)
        if self.budget == "layer":
            return scores, {name: sparsity_from_curve(curve, tau, 1) for name, curve in curves.items()}
        if space is None:
            raise InputError("snpfi budget 'global' compares layers by MACs: pass the pruning space (space=...)")
        from pruning.planning import PruningConfig, allocate_utilization

        plan = plan if plan is not None else PruningConfig(ratio=0.0)
        keep = allocate_utilization(space, groups, curves, flops_reduction=plan.flops_reduction, tau=tau,
                                    grid=plan.grid)
        return scores, {g.name: 1.0 - keep[g.name] / g.size for g in groups}

    def layer_sparsity(self, model, groups, context, tau: float | None = None, **budget) -> dict[str, float]:
        """SNPFI's automatic sparsity per group, in [0, 1 - 1/n]; ``tau`` defaults to ``self.tau``;
        ``budget``: the keyword arguments of :meth:`score_and_sparsity` (global budget)."""
        return self.score_and_sparsity(model, groups, context, tau, **budget)[1]
