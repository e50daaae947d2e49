"""How a channel's per-class values become its one score (Shapley games and activation statistics).

``"pooled"``: one value over all calibration images, every class mixed. ``"max"``: one value per
class, the channel's score its most favourable class's value, so a channel that only a few
classes need (a class-selective detector) is not scored by the classes it ignores.
"""
from __future__ import annotations

from pruning.errors import InputError

__all__ = ["CLASS_SCORES", "check_class_scores"]

CLASS_SCORES = ("pooled", "max")


def check_class_scores(class_scores: str) -> None:
    """Raise :class:`~pruning.errors.InputError` unless ``class_scores`` is one of :data:`CLASS_SCORES`."""
    if class_scores not in CLASS_SCORES:
        raise InputError(f"unknown class_scores {class_scores!r}; valid: {', '.join(CLASS_SCORES)}")
