"""Prunable channel groups: the unit the engine prunes and criteria score.

A group is a set of channels that must be removed together: the output channels of one or more
producing layers (several when they are summed by a residual addition; a depthwise conv follows
its producer), the matching BatchNorm channels, and the input channels of every consumer.
Groups are found with Torch-Pruning's dependency graph (see ``pruning.structure.engine``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObservedOutput:
    """Where a producer's activation can be observed: ``module``'s forward output, passed
    through ReLU when ``relu`` (the model applies one right after, possibly functionally)."""

    producer: str
    module: str
    relu: bool


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
    """

    name: str
    size: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    norms: tuple[str, ...]
    observed: tuple[ObservedOutput, ...]
    inner: bool
