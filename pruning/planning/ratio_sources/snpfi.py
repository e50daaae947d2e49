"""``snpfi``: SNPFI's automatic layer sparsity from utilization curves."""
from __future__ import annotations

from pruning.planning.ratio_sources._base import RatioPlan, RatioSource, RatioSourceError, register_ratio_source
from pruning.planning.utilization import allocate_utilization

#: how the layer sparsities are set: each layer at its own threshold, or jointly
BUDGETS = ("layer", "global")


@register_ratio_source("snpfi")
class Snpfi(RatioSource):
    """Layer sparsities from SNPFI's utilization curves U_l(k) (``RatioInputs.utilization``).

    tau: the retention level, in (0, 1].
    budget: ``layer`` (each layer keeps the fewest channels k >= 1 with U_l(k) >= tau,
        :func:`~pruning.games.sparsity_from_curve`) or ``global`` (layers compete for the removals
        by utilization lost per MAC saved, :func:`~pruning.planning.allocate_utilization`).

    Without a target, the sparsities are the plan (an explicit schedule, each layer within the
    cap). With a FLOPs target: ``layer``'s sparsities are layer-wise weights scaled to it,
    ``global`` competes until it is met.
    """

    targets = ("none", "flops_reduction")
    needs_utilization = True

    def __init__(self, tau: float = 0.95, budget: str = "layer") -> None:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 < tau <= 1.0:
            raise RatioSourceError("tau", f"must be in (0, 1], got {tau!r}")
        if budget not in BUDGETS:
            raise RatioSourceError("budget", f"must be one of {', '.join(BUDGETS)}, got {budget!r}")
        self.tau, self.budget = float(tau), budget

    def options(self):
        return {"tau": self.tau, "budget": self.budget}

    def make_plan(self, target, inputs, groups) -> RatioPlan:
        from pruning.games import sparsity_from_curve

        missing = [g.name for g in groups if g.name not in inputs.utilization]
        if missing:
            raise RatioSourceError("utilization", f"has no curve for layer(s) {', '.join(missing)}")
        curves = {g.name: inputs.utilization[g.name] for g in groups}
        if self.budget == "global":
            keep = allocate_utilization(inputs.space, groups, curves, flops_reduction=target.flops_reduction,
                                        tau=self.tau, grid=target.grid)
            return RatioPlan(target.config(schedule={g.name: 1.0 - keep[g.name] / g.size for g in groups}))
        sparsity = {name: sparsity_from_curve(curve, self.tau, 1) for name, curve in curves.items()}
        if target.flops_reduction is None:
            return RatioPlan(target.config(schedule={n: min(s, target.max_layer_ratio) for n, s in sparsity.items()}))
        return RatioPlan(target.config(allocation="uniform", **target.amount()), sparsity)
