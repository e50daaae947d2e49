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

from pruning.structure.groups import ChannelGroup, ObservedOutput
from pruning.errors import InputError
from pruning.utils import preserved_modes

STRATEGIES = ("full", "inner")
_PRUNABLE = (nn.Conv2d, nn.Linear)
_NORMS = (nn.modules.batchnorm._BatchNorm,)


class PruningError(InputError):
    """A pruning request that cannot be carried out (bad name, ratio or target)."""


def is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _as_tuple(example_inputs) -> tuple:
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def _called_layers(model: nn.Module, example_inputs) -> list[tuple[str, nn.Module, int]]:
    """``(name, module, output elements per sample)`` of each Conv2d/Linear call of one forward,
    in call order. Runs in eval mode: a train-mode forward would move the BN running statistics."""
    batch = _as_tuple(example_inputs)[0].shape[0]
    called: list[tuple[str, nn.Module, int]] = []
    hooks = [
        module.register_forward_hook(lambda m, i, o, name=name: called.append((name, m, o.numel() // batch)))
        for name, module in model.named_modules()
        if isinstance(module, _PRUNABLE)
    ]
    try:
        with _eval_mode(model), torch.no_grad():
            model(*_as_tuple(example_inputs))
    finally:
        for hook in hooks:
            hook.remove()
    return called


def layer_call_order(model: nn.Module, example_inputs) -> list[str]:
    """Names of the Conv2d/Linear layers in the order one forward pass calls them (first calls)."""
    return list(dict.fromkeys(name for name, _, _ in _called_layers(model, example_inputs)))


def find_classifier(model: nn.Module, example_inputs) -> str:
    """The last Conv2d/Linear a forward pass calls: the classifier, whose outputs are never pruned."""
    called = _called_layers(model, example_inputs)
    if not called:
        raise PruningError("the model has no Conv2d or Linear layer to prune")
    return called[-1][0]


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Trace in eval mode (BN statistics must not move) with autograd on (the tracer needs it);
    every submodule's own flag is restored afterwards (modes may be mixed, e.g. frozen BN)."""
    with preserved_modes(model), torch.enable_grad():
        model.eval()
        yield model


def build_dependency_graph(model: nn.Module, example_inputs) -> tp.DependencyGraph:
    with _eval_mode(model):
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)


@dataclass(frozen=True)
class _CostTerm:
    """One layer's MACs at full width and the groups that scale them."""

    module: str
    macs: int
    out_group: str | None
    in_group: str | None


class PruningSpace:
    """The prunable channel groups of a model and an exact MAC model over their widths."""

    def __init__(self, groups: Sequence[ChannelGroup], terms: Sequence[_CostTerm], classifier: str) -> None:
        self.groups = tuple(groups)
        self.classifier = classifier
        self._terms = tuple(terms)
        self._by_name = {g.name: g for g in self.groups}
        #: Conv2d/Linear layers in the order the traced forward pass called them
        self.call_order = tuple(t.module for t in self._terms)
        self.base_macs = int(sum(t.macs for t in self._terms))

    @classmethod
    def build(cls, model: nn.Module, example_inputs, ignored_layers: Sequence[str] = ()) -> PruningSpace:
        """Trace ``model`` once; ``ignored_layers`` (and the classifier) keep their outputs."""
        modules = dict(model.named_modules())
        unknown = [n for n in ignored_layers if n not in modules]
        if unknown:
            raise PruningError(f"unknown layer(s) to ignore: {', '.join(unknown)}")
        order = {name: i for i, name in enumerate(modules)}
        names = {module: name for name, module in modules.items()}
        classifier = find_classifier(model, example_inputs)
        graph = build_dependency_graph(model, example_inputs)
        ignored = [modules[classifier], *(modules[n] for n in ignored_layers)]

        groups = []
        for tp_group in graph.get_all_groups(ignored_layers=ignored, root_module_types=_PRUNABLE):
            producers, consumers, norms = set(), set(), set()
            for dep, _ in tp_group:
                module = dep.target.module
                name = names.get(module)
                if name is None:
                    continue  # functional ops (add, relu, flatten) carry no parameters
                if is_depthwise(module):
                    producers.add(name)
                elif isinstance(module, _PRUNABLE):
                    if graph.is_out_channel_pruning_fn(dep.handler):
                        producers.add(name)
                    elif graph.is_in_channel_pruning_fn(dep.handler):
                        consumers.add(name)
                elif isinstance(module, _NORMS):
                    norms.add(name)
            if not producers:
                continue
            ordered = sorted(producers, key=order.__getitem__)
            regular = [p for p in ordered if not is_depthwise(modules[p])]
            root = (regular or ordered)[0]
            groups.append(
                ChannelGroup(
                    name=root,
                    size=graph.get_out_channels(modules[root]),
                    producers=tuple(ordered),
                    consumers=tuple(sorted(consumers, key=order.__getitem__)),
                    norms=tuple(sorted(norms, key=order.__getitem__)),
                    observed=tuple(_observed_output(graph, modules, names, p) for p in ordered),
                    inner=len(regular) == 1,
                    read=() if len(regular) == 1 else _consumer_inputs(graph, modules, consumers, order),
                )
            )
        groups.sort(key=lambda g: order[g.name])
        return cls(groups, _cost_terms(model, example_inputs, groups), classifier)

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


def _cost_terms(model: nn.Module, example_inputs, groups: Sequence[ChannelGroup]) -> list[_CostTerm]:
    out_group = {p: g.name for g in groups for p in g.producers}
    in_group = {c: g.name for g in groups for c in g.consumers}
    terms: list[_CostTerm] = []
    for name, module, outputs in _called_layers(model, example_inputs):
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        # a depthwise conv's input channels are its output channels: they scale once
        inputs = None if is_depthwise(module) else in_group.get(name)
        terms.append(_CostTerm(name, outputs * per_output, out_group.get(name), inputs))
    return terms


def select_kept_channels(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores, in ascending index order (ties: lower index wins)."""
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:keep].sort().values


def prune_model(
    model: nn.Module,
    example_inputs,
    space: PruningSpace,
    keep: Mapping[str, int],
    scores: Mapping[str, torch.Tensor],
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Return a physically pruned copy of ``model`` and, per pruned group, the kept indices.

    ``model`` itself is not modified. Groups absent from ``keep`` or kept at full width are
    not touched, so an all-zero schedule returns a model with bit-identical outputs.
    """
    for name, k in keep.items():
        group = space[name]
        if not 1 <= k <= group.size:
            raise PruningError(f"layer {name!r}: cannot keep {k} of {group.size} channels")
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
        kept = select_kept_channels(scores[group.name].detach().cpu(), k)
        removed = sorted(set(range(group.size)) - set(kept.tolist()))
        root = modules[group.name]
        pruner = graph.get_pruner_of_module(root)
        graph.get_pruning_group(root, pruner.prune_out_channels, idxs=removed).prune()
        kept_indices[group.name] = kept
    for group in space.groups:
        width = graph.get_out_channels(modules[group.name])
        expected = keep.get(group.name, group.size)
        if width != expected:  # a coupling torch-pruning resolved differently from our groups
            raise PruningError(f"layer {group.name!r} has {width} channels after pruning, planned {expected}")
    return pruned, kept_indices
