"""Cooperative games over channels: what the Shapley estimators need from a game.

A :class:`CoalitionGame` has ``size`` players and a batched worth function ``values(masks)``.
:class:`FunctionGame` wraps a plain Python set function (toy games, tests);
:class:`~pruning.games.layer.LayerGame` is the game of one layer's channels. The worth of a
coalition of channels is what the task plays for (:meth:`pruning.tasks.Task.game_value`).
"""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch

@runtime_checkable
class CoalitionGame(Protocol):
    """What the estimators need: ``size`` players and a batched worth function.

    ``values(masks)`` takes ``masks: bool[M, size]`` (row m = coalition m, True = present) and
    returns ``float64[M]`` on the CPU.
    """

    size: int

    def values(self, masks: torch.Tensor) -> torch.Tensor: ...


class FunctionGame:
    """A :class:`CoalitionGame` from a Python set function ``fn(frozenset[int]) -> float``."""

    def __init__(self, size: int, fn: Callable[[frozenset[int]], float]) -> None:
        self.size = int(size)
        self.fn = fn
        self.coalitions = 0

    def values(self, masks: torch.Tensor) -> torch.Tensor:
        masks = coalition_masks(masks, self.size)
        self.coalitions += len(masks)
        return torch.tensor(
            [float(self.fn(frozenset(np.flatnonzero(row).tolist()))) for row in masks.cpu().numpy()],
            dtype=torch.float64,
        )


def coalition_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """``masks`` as ``bool[M, size]`` (one coalition may come as ``[size]``); other shapes raise."""
    masks = torch.as_tensor(masks)
    if masks.dim() == 1:
        masks = masks.unsqueeze(0)
    if masks.dim() != 2 or masks.shape[1] != size:
        raise ValueError(f"masks must have shape [M, {size}], got {tuple(masks.shape)}")
    return masks.bool()


def game_endpoints(game: CoalitionGame) -> tuple[float, float]:
    """(v(N), v(empty)) in one batched call, or from ``game.endpoints()`` where a game caches them."""
    if hasattr(game, "endpoints"):
        return game.endpoints()
    both = game.values(torch.stack([torch.ones(game.size, dtype=torch.bool), torch.zeros(game.size, dtype=torch.bool)]))
    return float(both[0]), float(both[1])


def all_coalitions(size: int) -> torch.Tensor:
    """``bool[2^size, size]``; row r holds the players whose bit is set in r."""
    index = torch.arange(2**size).unsqueeze(1)
    return (index >> torch.arange(size)) & 1 == 1
