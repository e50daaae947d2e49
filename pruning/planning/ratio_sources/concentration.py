"""``concentration``: layer-wise weights from information concentration, scaled to a FLOPs target."""
from __future__ import annotations

import math

from pruning.planning.concentration import FUSIONS, concentration_weights
from pruning.planning.ratio_sources._base import RatioPlan, RatioSource, RatioSourceError, register_ratio_source


@register_ratio_source("concentration")
class Concentration(RatioSource):
    """Ratios min(cap, s * w_l) with w_l = (1 - IC_l) ** temperature
    (:func:`~pruning.planning.concentration_weights`) and s fitted to the FLOPs target: layers with
    more information (entropy and rank of their feature maps) are pruned less.

    alpha: the entropy's weight in IC, in [0, 1] (the rank's is 1 - alpha).
    fusion: how the two indicators are normalised and fused, ``minmax`` or ``rank``.
    temperature: the weights' exponent, >= 0 (0: uniform; larger concentrates the pruning on the
        least informative layers).
    """

    targets = ("flops_reduction",)
    needs_stats = True

    def __init__(self, alpha: float = 0.5, fusion: str = "minmax", temperature: float = 1.0) -> None:
        if not _number(alpha) or not 0.0 <= alpha <= 1.0:
            raise RatioSourceError("alpha", f"must be in [0, 1], got {alpha!r}")
        if fusion not in FUSIONS:
            raise RatioSourceError("fusion", f"must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        if not _number(temperature) or not 0.0 <= temperature < math.inf:
            raise RatioSourceError("temperature", f"must be a number >= 0, got {temperature!r}")
        self.alpha, self.fusion, self.temperature = float(alpha), fusion, float(temperature)

    def options(self):
        return {"alpha": self.alpha, "fusion": self.fusion, "temperature": self.temperature}

    def make_plan(self, target, inputs, groups) -> RatioPlan:
        weights = concentration_weights(inputs.stats, groups, alpha=self.alpha, temperature=self.temperature,
                                        fusion=self.fusion)
        return RatioPlan(target.config(allocation="uniform", **target.amount()), weights)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
