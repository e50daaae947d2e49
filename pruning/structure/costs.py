"""One traced forward pass and the exact MAC model built from it.

:func:`trace_forward` runs the model once (eval mode, no gradients) and records the Conv2d/Linear
calls in order, the multiply-accumulates ``FlopCounterMode`` counts inside each module, and the
inputs of the attention modules (for the head-pruning probe). :func:`cost_terms` turns that into
:class:`CostTerm` s: a layer's MACs at full width scale with the kept fraction of the group that
writes its outputs and of the group that feeds its inputs; an attention module's own products
(q @ k and attention @ v, where the counter sees them) scale with its head group; whatever else
the counter measured (e.g. the projections inside ``nn.MultiheadAttention``, which no group
prunes) is one fixed term. So ``PruningSpace.macs`` equals ``count_macs`` on the pruned model.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pruning.structure.groups import ChannelGroup
from pruning.utils import preserved_modes

PRUNABLE = (nn.Conv2d, nn.Linear)


def is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def as_tuple(example_inputs) -> tuple:
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


@dataclass(frozen=True)
class LayerCall:
    """One Conv2d/Linear call: output elements per sample."""

    name: str
    module: nn.Module
    outputs: int


@dataclass(frozen=True)
class ForwardTrace:
    """What one forward pass showed: layer calls in order, MACs per sample counted inside each
    named module (``""``: the whole model), and the first input of each watched module."""

    calls: tuple[LayerCall, ...]
    module_macs: Mapping[str, int]
    inputs: Mapping[str, torch.Tensor]


def trace_forward(model: nn.Module, example_inputs, watched: Sequence[str] = (), count: bool = True) -> ForwardTrace:
    """One eval-mode forward pass (BN statistics must not move); modes are restored. ``count``:
    also count MACs per module."""
    batch = as_tuple(example_inputs)[0].shape[0]
    modules = dict(model.named_modules())
    calls: list[LayerCall] = []
    inputs: dict[str, torch.Tensor] = {}

    def record(m, i, o, name):
        calls.append(LayerCall(name, m, o.numel() // batch))

    hooks = [m.register_forward_hook(lambda m, i, o, name=name: record(m, i, o, name))
             for name, m in modules.items() if isinstance(m, PRUNABLE)]
    hooks += [modules[name].register_forward_pre_hook(lambda m, i, name=name: inputs.setdefault(name, i[0]))
              for name in watched]
    counter = FlopCounterMode(display=False)
    try:
        with preserved_modes(model), torch.no_grad(), counter if count else nullcontext():
            model.eval()
            model(*as_tuple(example_inputs))
    finally:
        for hook in hooks:
            hook.remove()
    prefix = type(model).__name__
    module_macs = {}
    if count:
        for key, ops in counter.get_flop_counts().items():
            if key == prefix or key.startswith(prefix + "."):
                module_macs[key[len(prefix) + 1:]] = sum(ops.values()) // 2 // batch
    return ForwardTrace(tuple(calls), module_macs, inputs)


@dataclass(frozen=True)
class CostTerm:
    """MACs at full width and the groups that scale them (``None``: not scaled)."""

    module: str
    macs: int
    out_group: str | None
    in_group: str | None


def cost_terms(trace: ForwardTrace, groups: Sequence[ChannelGroup], heads: Mapping[str, str]) -> list[CostTerm]:
    """The MAC model of a traced model; ``heads``: ``{attention module: its head group}``."""
    out_group = {p: g.name for g in groups for p in g.producers}
    in_group = {c: g.name for g in groups for c in g.consumers}
    terms: list[CostTerm] = []
    for call in trace.calls:
        module = call.module
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        # a depthwise conv's input channels are its output channels: they scale once
        inputs = None if is_depthwise(module) else in_group.get(call.name)
        terms.append(CostTerm(call.name, call.outputs * per_output, out_group.get(call.name), inputs))
    layer_macs = {}
    for term in terms:
        layer_macs[term.module] = layer_macs.get(term.module, 0) + term.macs
    for attention, group in heads.items():
        inside = trace.module_macs.get(attention, 0) - sum(
            macs for name, macs in layer_macs.items() if name.startswith(attention + "."))
        if inside > 0:
            terms.append(CostTerm(attention, inside, group, None))
    if "" in trace.module_macs:
        rest = trace.module_macs[""] - sum(t.macs for t in terms)
        if rest > 0:
            terms.append(CostTerm("", rest, None, None))
    return terms

