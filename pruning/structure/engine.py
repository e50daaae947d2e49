"""Structural pruning on Torch-Pruning's dependency graph.

:class:`PruningSpace` finds the prunable :class:`~pruning.structure.groups.ChannelGroup` s of a model (one
trace with ``torch_pruning.DependencyGraph``) and carries an exact MAC model over their widths,
so that schedules can be fitted to a FLOPs target without pruning and re-measuring each time.
:func:`prune_model` then removes the planned channels physically, on a copy of the model.

MACs here are the multiply-accumulates of convolutions and linear layers, the same quantity
``pruning.structure.measure.count_macs`` measures from the executed torch ops (FLOPs = 2 x MACs).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from pruning.structure.attention import attention_modules, attention_of, head_layouts, remove_heads
from pruning.structure.costs import PRUNABLE, CostTerm, ForwardTrace, cost_terms, is_depthwise, trace_forward
from pruning.structure.errors import PruningError
from pruning.structure.groups import ChannelGroup, Exclusion, ObservedOutput, UnitLayout
from pruning.structure.limits import PreparationBudget, unsupported_op, within_budget
from pruning.utils import preserved_modes

STRATEGIES = ("full", "inner")
_NORMS = (nn.modules.batchnorm._BatchNorm,)


def layer_call_order(model: nn.Module, example_inputs) -> list[str]:
    """Names of the Conv2d/Linear layers in the order one forward pass calls them (first calls)."""
    return list(dict.fromkeys(call.name for call in trace_forward(model, example_inputs, count=False).calls))


def find_classifier(model: nn.Module, example_inputs) -> str:
    """The last Conv2d/Linear a forward pass calls: the classifier, whose outputs are never pruned."""
    return _classifier(trace_forward(model, example_inputs, count=False))


def _classifier(trace: ForwardTrace) -> str:
    if not trace.calls:
        raise PruningError("the model has no Conv2d or Linear layer to prune")
    return trace.calls[-1].name


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Trace in eval mode (BN statistics must not move) with autograd on (the tracer needs it);
    every submodule's own flag is restored afterwards (modes may be mixed, e.g. frozen BN)."""
    with preserved_modes(model), torch.enable_grad():
        model.eval()
        yield model


def build_dependency_graph(model: nn.Module, example_inputs) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph; an op it cannot map channels through is a one-line
    :class:`~pruning.structure.limits.UnsupportedStructureError` naming the layer before it."""
    try:
        with _eval_mode(model):
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    except Exception as err:
        unsupported = unsupported_op(err, model)
        if unsupported is None:
            raise
        raise unsupported from None


class PruningSpace:
    """The prunable channel groups of a model and an exact MAC model over their widths.

    ``excluded``: the layers left at full width and why (structures the engine cannot prune,
    e.g. the token width of a transformer); the rest of the model prunes.
    ``heads``: ``{group name: attention module}`` for the groups that are attention heads.
    """

    def __init__(self, groups: Sequence[ChannelGroup], terms: Sequence[CostTerm], classifier: str, *,
                 call_order: Sequence[str] = (), excluded: Sequence[Exclusion] = (),
                 heads: Mapping[str, str] | None = None) -> None:
        self.groups = tuple(groups)
        self.classifier = classifier
        self.excluded = tuple(excluded)
        self.heads = dict(heads or {})
        self._terms = tuple(terms)
        self._by_name = {g.name: g for g in self.groups}
        #: Conv2d/Linear layers in the order the traced forward pass called them
        self.call_order = tuple(call_order) or tuple(t.module for t in self._terms)
        self.base_macs = int(sum(t.macs for t in self._terms))

    @classmethod
    def build(cls, model: nn.Module, example_inputs, ignored_layers: Sequence[str] = (),
              budget: PreparationBudget | None = None) -> PruningSpace:
        """Trace ``model`` once; ``ignored_layers`` (and the classifier) keep their outputs.

        The preparation runs within ``budget`` (default :meth:`PreparationBudget.from_environment`);
        an overrun is a one-line :class:`~pruning.structure.limits.PreparationBudgetError`.
        """
        modules = dict(model.named_modules())
        unknown = [n for n in ignored_layers if n not in modules]
        if unknown:
            raise PruningError(f"unknown layer(s) to ignore: {', '.join(unknown)}")
        budget = budget or PreparationBudget.from_environment()
        with within_budget(budget, f"preparing {type(model).__name__} for pruning"):
            return _build_space(cls, model, example_inputs, ignored_layers)

    def __getitem__(self, name: str) -> ChannelGroup:
        try:
            return self._by_name[name]
        except KeyError:
            raise PruningError(
                f"unknown prunable layer {name!r}; valid: {', '.join(self._by_name)}"
            ) from None

    def select(self, strategy: str) -> tuple[ChannelGroup, ...]:
        """The groups a strategy may prune: ``full`` = all, ``inner`` = not residual-coupled."""
        if strategy not in STRATEGIES:
            raise PruningError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
        if strategy == "inner":
            return tuple(g for g in self.groups if g.inner)
        return self.groups

    def macs(self, keep: Mapping[str, int]) -> float:
        """MACs of the model with ``keep[name]`` channels in each group (others at full width)."""
        total = 0.0
        for term in self._terms:
            scale = 1.0
            for group_name in (term.out_group, term.in_group):
                if group_name is not None and group_name in keep:
                    scale *= keep[group_name] / self._by_name[group_name].size
            total += term.macs * scale
        return total

    def reduction(self, keep: Mapping[str, int]) -> float:
        """Fraction of the MACs removed by ``keep``."""
        return 1.0 - self.macs(keep) / self.base_macs


def _build_space(cls, model: nn.Module, example_inputs, ignored_layers: Sequence[str]) -> PruningSpace:
    modules = dict(model.named_modules())
    order = {name: i for i, name in enumerate(modules)}
    names = {module: name for name, module in modules.items()}
    attention = attention_modules(model)
    trace = trace_forward(model, example_inputs, watched=[n for n, m in attention.items()
                                                          if not isinstance(m, nn.MultiheadAttention)])
    classifier = _classifier(trace)
    heads, refused_heads = head_layouts(model, trace.inputs)
    excluded = [Exclusion(n, reason) for n, reason in refused_heads.items()
                if isinstance(attention[n], nn.MultiheadAttention)]
    graph = build_dependency_graph(model, example_inputs)
    ignored = [modules[classifier], *(modules[n] for n in ignored_layers)]
    context = _GroupContext(graph, modules, names, attention, heads, refused_heads)

    groups = []
    for tp_group in _all_groups(graph, model, ignored):
        members = _members(tp_group, context)
        if members is None:
            continue
        producers, consumers, norms, units = members
        ordered = sorted(producers, key=order.__getitem__)
        regular = [p for p in ordered if not is_depthwise(modules[p])]
        root = (regular or ordered)[0]
        size = graph.get_out_channels(modules[root])
        reason = _exclusion(context, ordered, consumers, size, units)
        if reason is not None:
            excluded.append(Exclusion(root, reason))
            continue
        groups.append(
            ChannelGroup(
                name=root,
                size=size,
                producers=tuple(ordered),
                consumers=tuple(sorted(consumers, key=order.__getitem__)),
                norms=tuple(sorted(norms, key=order.__getitem__)),
                observed=tuple(_observed_output(graph, modules, names, p) for p in ordered),
                inner=len(regular) == 1,
                read=() if len(regular) == 1 else _consumer_inputs(graph, modules, consumers, order),
                units=heads[root].units if root in heads else units,
            )
        )
    groups.sort(key=lambda g: order[g.name])
    head_groups = {g.name: heads[g.name].module for g in groups if g.name in heads}
    terms = cost_terms(trace, groups, {module: group for group, module in head_groups.items()})
    return cls(groups, terms, classifier, call_order=[c.name for c in trace.calls], excluded=excluded,
               heads=head_groups)


def _all_groups(graph, model: nn.Module, ignored) -> Iterator:
    """Torch-Pruning's groups; an op it cannot map channels through is a one-line error."""
    try:
        yield from graph.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE)
    except Exception as err:
        unsupported = unsupported_op(err, model)
        if unsupported is None:
            raise
        raise unsupported from None


@dataclass(frozen=True)
class _GroupContext:
    graph: tp.DependencyGraph
    modules: Mapping[str, nn.Module]
    names: Mapping[nn.Module, str]
    attention: Mapping[str, nn.Module]
    heads: Mapping[str, object]
    refused_heads: Mapping[str, str]


def _members(tp_group, context: _GroupContext):
    """``(producers, consumers, norms, units)`` of a Torch-Pruning group, or None without producers.

    ``units``: a grouped convolution (1 < groups < channels) reading or writing the channels
    splits them into ``groups`` blocks that must stay equal."""
    graph = context.graph
    producers, consumers, norms, units = set(), set(), set(), UnitLayout()
    for dep, _ in tp_group:
        module = dep.target.module
        name = context.names.get(module)
        if name is None:
            continue  # functional ops (add, relu, flatten) carry no parameters
        if isinstance(module, nn.MultiheadAttention):
            producers.add(name)  # its embedding width is the token width: excluded below
        elif is_depthwise(module):
            producers.add(name)
        elif isinstance(module, PRUNABLE):
            if isinstance(module, nn.Conv2d) and module.groups > 1:
                units = units.merged(module.groups)
            if graph.is_out_channel_pruning_fn(dep.handler):
                producers.add(name)
            elif graph.is_in_channel_pruning_fn(dep.handler):
                consumers.add(name)
        elif isinstance(module, _NORMS):
            norms.add(name)
    return (producers, consumers, norms, units) if producers else None


def _exclusion(context: _GroupContext, producers, consumers, size: int, units: UnitLayout) -> str | None:
    """Why a group cannot be pruned (one line), or None."""
    modules = context.modules
    for name in producers:
        if isinstance(modules[name], nn.MultiheadAttention):
            return f"the token width of attention {name!r} stays (nn.MultiheadAttention's width is fixed)"
    readers = [c for c in consumers if c.endswith(".qkv") and c[:-4] in context.attention]
    if readers:
        return f"the token width read by attention {readers[0][:-4]!r} stays"
    for name in producers:
        attention = name[:-4] if name.endswith(".qkv") else None
        if attention in context.refused_heads:
            return context.refused_heads[attention]
        if name in context.heads and len(producers) > 1:
            return f"attention {attention!r}: its qkv output is coupled with {len(producers) - 1} other layer(s)"
    for name in producers:
        width = context.graph.get_out_channels(modules[name])
        if width != size:
            return (f"its {size} channels are joined from layers of other widths ({name!r} has {width}, "
                    f"e.g. a concatenation that is then sliced or summed)")
    if size % units.width:
        return f"its {size} channels do not split into {units.blocks} equal convolution groups"
    return None


def _observed_output(graph, modules, names, producer: str) -> ObservedOutput:
    """The producer's BN when one directly follows, flagged with whether a ReLU comes next."""
    node = graph.module2node[modules[producer]]
    observed = producer
    for out in node.outputs:
        if isinstance(out.module, _NORMS):
            observed, node = names[out.module], out
            break
    relu = any(
        isinstance(out.module, (nn.ReLU, nn.ReLU6)) or "relu" in str(out.name).lower()
        for out in node.outputs
    )
    return ObservedOutput(producer=producer, module=observed, relu=relu)


def _consumer_inputs(graph, modules, consumers, order) -> tuple[ObservedOutput, ...]:
    """Inputs of the Conv2d consumers, one per tensor (two consumers fed by the same graph node
    read the same tensor, e.g. a block's first conv and its projection shortcut)."""
    seen, read = set(), []
    for name in sorted(consumers, key=order.__getitem__):
        module = modules[name]
        if not isinstance(module, nn.Conv2d) or is_depthwise(module):
            continue
        inputs = graph.module2node[module].inputs
        source = id(inputs[0]) if len(inputs) == 1 else name
        if source not in seen:
            seen.add(source)
            read.append(ObservedOutput(producer=name, module=name, relu=False, side="input"))
    return tuple(read)


def select_kept_channels(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores, in ascending index order (ties: lower index wins)."""
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:keep].sort().values


def select_kept_units(group: ChannelGroup, scores: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` channels of ``group`` to keep, whole units at a time (``group.units``): the
    units with the highest mean score (ties: lower unit), as ascending channel indices."""
    units = group.units.unit_indices(group.size)
    kept_units = select_kept_channels(scores[units].mean(1), keep // group.units.width)
    return units[kept_units].flatten().sort().values


def prune_model(
    model: nn.Module,
    example_inputs,
    space: PruningSpace,
    keep: Mapping[str, int],
    scores: Mapping[str, torch.Tensor],
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Return a physically pruned copy of ``model`` and, per pruned group, the kept indices.

    ``model`` itself is not modified. Groups absent from ``keep`` or kept at full width are
    not touched, so an all-zero schedule returns a model with bit-identical outputs. A group
    with units (grouped convolutions, attention heads) keeps a multiple of its unit width.
    """
    for name, k in keep.items():
        group = space[name]
        if not 1 <= k <= group.size:
            raise PruningError(f"layer {name!r}: cannot keep {k} of {group.size} channels")
        if k % group.units.width:
            raise PruningError(f"layer {name!r}: keeps channels in units of {group.units.width}; "
                               f"cannot keep {k} of {group.size}")
        if k < group.size and (name not in scores or scores[name].shape != (group.size,)):
            raise PruningError(f"layer {name!r}: needs {group.size} scores to choose channels")
    pruned = copy.deepcopy(model)
    graph = build_dependency_graph(pruned, example_inputs)
    modules = dict(pruned.named_modules())
    kept_indices: dict[str, torch.Tensor] = {}
    for group in space.groups:
        k = keep.get(group.name, group.size)
        if k == group.size:
            continue
        kept = select_kept_units(group, scores[group.name].detach().cpu(), k)
        kept_indices[group.name] = kept
        if group.name in space.heads:
            continue  # heads go last: Torch-Pruning's graph of the copy still has their widths
        removed = sorted(set(range(group.size)) - set(kept.tolist()))
        root = modules[group.name]
        pruner = graph.get_pruner_of_module(root)
        graph.get_pruning_group(root, pruner.prune_out_channels, idxs=removed).prune()
    for group_name, attention in space.heads.items():
        if group_name in kept_indices:
            remove_heads(modules[attention], attention_of(kept_indices[group_name], space[group_name].size // 3))
    for group in space.groups:
        width = graph.get_out_channels(modules[group.name])
        expected = keep.get(group.name, group.size)
        if width != expected:  # a coupling torch-pruning resolved differently from our groups
            raise PruningError(f"layer {group.name!r} has {width} channels after pruning, planned {expected}")
    return pruned, kept_indices
