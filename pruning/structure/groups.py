"""Prunable channel groups: the unit the engine prunes and criteria score.

A group is a set of channels that must be removed together: the output channels of one or more
producing layers (several when they are summed by a residual addition; a depthwise conv follows
its producer), the matching BatchNorm channels, and the input channels of every consumer.
Groups are found with Torch-Pruning's dependency graph (see ``pruning.structure.engine``).
"""
from __future__ import annotations

from dataclasses import dataclass


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
    """

    name: str
    size: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    norms: tuple[str, ...]
    observed: tuple[ObservedOutput, ...]
    inner: bool
    read: tuple[ObservedOutput, ...] = ()

    def observations(self, source: str) -> tuple[ObservedOutput, ...]:
        """The observations a criterion reading ``source`` averages over: ``"producer"`` (the
        producers' outputs) or ``"consumer"`` (the tensors the consumers read: ``read`` where
        the group has it, else ``observed``, which is then the same tensor)."""
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
        return self.read if source == "consumer" and self.read else self.observed
