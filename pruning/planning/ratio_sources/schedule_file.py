"""``schedule``: a ``{layer: ratio}`` JSON file."""
from __future__ import annotations

from pruning.planning.ratio_sources._base import RatioPlan, RatioSource, RatioSourceError, register_ratio_source
from pruning.planning.schedule import load_schedule


@register_ratio_source("schedule")
class ScheduleFile(RatioSource):
    """The ratios of a JSON schedule file (``path``, read and checked when the source is made,
    :func:`~pruning.planning.load_schedule`). Without a target they are the plan (layers not named
    keep all their channels); with a FLOPs target they are layer-wise weights, the file's shape
    scaled to meet it (layers not named weigh 0)."""

    targets = ("none", "flops_reduction")

    def __init__(self, path: str) -> None:
        if not isinstance(path, str) or not path:
            raise RatioSourceError("path", f"must name a JSON schedule file, got {path!r}")
        self.path = path
        self.schedule = load_schedule(path)

    def options(self):
        return {"path": self.path}

    def make_plan(self, target, inputs, groups) -> RatioPlan:
        allowed = {g.name for g in groups}
        unknown = sorted(set(self.schedule) - allowed)
        if unknown:
            raise RatioSourceError("path", f"{self.path!r} names layer(s) not prunable under strategy "
                                   f"{target.strategy!r}: {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}")
        if target.flops_reduction is None:
            return RatioPlan(target.config(schedule=dict(self.schedule)))
        weights = {g.name: self.schedule.get(g.name, 0.0) for g in groups}
        return RatioPlan(target.config(allocation="uniform", **target.amount()), weights)
