"""Prunable channel groups: the unit the engine prunes and criteria score.

A group is a set of channels that must be removed together: the output channels of one or more
producing layers (several when they are summed by a residual addition; a depthwise conv follows
its producer), the matching BatchNorm channels, and the input channels of every consumer.
Groups are found with Torch-Pruning's dependency graph (see ``pruning.structure.engine``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: which tensors a statistics criterion reads (see :meth:`ChannelGroup.observations`)
SOURCES = ("producer", "consumer")
#: which tensor of a module an observation hooks
SIDES = ("output", "input")


@dataclass(frozen=True)
class ObservedOutput:
    """Where a group's activation can be observed: ``module``'s forward output (``side="output"``),
    passed through ReLU when ``relu`` (the model applies one right after, possibly functionally),
    or the input ``module`` reads (``side="input"``: the tensor a consumer convolution is given).

    ``producer``: the producing layer the observation belongs to (for a consumer's input, the
    consumer). ``key``: the name its statistics are kept under.
    """

    producer: str
    module: str
    relu: bool
    side: str = "output"

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ValueError(f"unknown side {self.side!r}; valid: {', '.join(SIDES)}")

    @property
    def key(self) -> str:
        return self.module if self.side == "output" else f"{self.module}:input"


@dataclass(frozen=True)
class Exclusion:
    """A layer the engine leaves at full width, and why (one line)."""

    layer: str
    reason: str


@dataclass(frozen=True)
class UnitLayout:
    """Which channels of a group are removed together, as one unit.

    The channels split into ``blocks`` equal consecutive blocks; a unit takes ``run`` consecutive
    channels at the same offset in every block, so every unit has ``blocks * run`` channels and a
    group keeps a multiple of that. Plain channels: ``blocks = run = 1``. A grouped convolution
    with ``g`` groups: ``blocks = g``, ``run = 1`` (each group loses the same offsets, so the
    groups stay equal). Attention heads over a fused q/k/v projection: ``blocks = 3`` (q, k, v),
    ``run = head_dim`` (a head's rows in each of q, k and v).
    """

    blocks: int = 1
    run: int = 1

    def __post_init__(self) -> None:
        if self.blocks < 1 or self.run < 1:
            raise ValueError(f"blocks and run must be >= 1, got {self.blocks} and {self.run}")

    @property
    def width(self) -> int:
        """Channels per unit: a group's kept width is a multiple of it."""
        return self.blocks * self.run

    def merged(self, blocks: int) -> UnitLayout:
        """This layout also split into ``blocks`` equal blocks (units equal in both)."""
        return UnitLayout(blocks=math.lcm(self.blocks, blocks), run=self.run)

    def unit_indices(self, size: int) -> torch.Tensor:
        """``[units, width]`` channel indices of each unit of a ``size``-channel group."""
        if size % self.width:
            raise ValueError(f"{size} channels do not split into units of {self.blocks} x {self.run}")
        per_block = size // self.blocks
        channels = torch.arange(size).view(self.blocks, per_block // self.run, self.run)
        return channels.permute(1, 0, 2).reshape(per_block // self.run, self.width)


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are pruned as one.

    name: the first producing layer in module order; the key of schedules and scores.
    size: number of channels.
    producers: Conv2d/Linear layers whose outputs are these channels (depthwise convs included).
    consumers: layers that read these channels as their inputs (depthwise convs excluded).
    norms: BatchNorm layers over these channels.
    observed: for each producer, where its (normalised, activated) output can be hooked.
    inner: True when exactly one non-depthwise layer produces the channels, i.e. they are not
        shared through a residual addition; the ``inner`` strategy prunes only these.
    read: for a residual-coupled group, the inputs of its Conv2d consumers (``side="input"``),
        one per distinct tensor: what the next convolutions actually read, after the residual
        additions and their activations, where ``observed`` sees each branch before its
        addition. Empty for an inner group, whose consumers read its observed output itself.
        (The classifier's pooled input is not among them: it has no maps.)
    units: which channels are removed together (:class:`UnitLayout`); the kept width is a
        multiple of ``units.width``.
    """

    name: str
    size: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    norms: tuple[str, ...]
    observed: tuple[ObservedOutput, ...]
    inner: bool
    read: tuple[ObservedOutput, ...] = ()
    units: UnitLayout = UnitLayout()

    def __post_init__(self) -> None:
        if self.size % self.units.width:
            raise ValueError(
                f"group {self.name!r}: {self.size} channels do not split into units of {self.units.width}"
            )

    def observations(self, source: str) -> tuple[ObservedOutput, ...]:
        """The observations a criterion reading ``source`` averages over: ``"producer"`` (the
        producers' outputs) or ``"consumer"`` (the tensors the consumers read: ``read`` where
        the group has it, else ``observed``, which is then the same tensor)."""
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
        return self.read if source == "consumer" and self.read else self.observed
