"""The engine's one-line errors (``pruning.errors.InputError`` subclasses)."""
from __future__ import annotations

from pruning.errors import InputError


class PruningError(InputError):
    """A pruning request that cannot be carried out (bad name, ratio or target, or a model
    structure the engine cannot prune)."""
