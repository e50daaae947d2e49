"""The fx graph of a model split at a group's observed outputs, and one recorded forward shared
by the games of all groups.

A :class:`ModelForward` runs the traced model once on the game batch (after a one-image pass
that tells tensors from sizes and measures each layer's MACs) and keeps only the values the
groups' downstream parts read. Each group's :class:`DownstreamPlan` then re-executes only the
nodes that depend on its masked outputs, feeding the recorded values for everything else: the
forward up to each layer is paid once per model, not once per group. :attr:`DownstreamPlan.fraction`
is the share of the model's convolution/linear MACs one coalition evaluation re-executes, the
unit of the scoring budget (:mod:`pruning.games.budget`).
"""
from __future__ import annotations

import operator
from typing import Sequence

import torch
import torch.fx
from torch import nn
from torch.fx.node import map_arg

from pruning.statistics.hooks import channels_last


class Unsupported(RuntimeError):
    """The fx downstream path cannot run this model / group."""


def expand(value: torch.Tensor, m: int) -> torch.Tensor:
    """``[B, ...] -> [m*B, ...]``: the batch repeated m times, coalition-major."""
    return value.unsqueeze(0).expand(m, *value.shape).reshape(m * value.shape[0], *value.shape[1:])


def apply_mask(value: torch.Tensor, mask: torch.Tensor, last: bool = False) -> torch.Tensor:
    """Multiply the channels of ``value: [m*B, C, ...]`` (``last``: ``[m*B, ..., C]``, as a Linear
    or LayerNorm over channels-last maps or tokens writes them) by ``mask: float[m, C]`` per coalition."""
    m, c = mask.shape
    dim = value.dim() - 1 if last else 1
    if value.dim() < 2 or value.shape[dim] != c or value.shape[0] % m:
        raise Unsupported(f"observed output of shape {tuple(value.shape)} does not carry {c} channels in dim {dim}")
    shaped = value.view(m, value.shape[0] // m, *value.shape[1:])
    spread = [1] * (value.dim() - 1)
    spread[dim - 1] = c
    return (shaped * mask.view(m, 1, *spread).to(value.dtype)).view(value.shape)


def channels_last_node(n: torch.fx.Node, modules: dict) -> bool:
    """Whether fx node ``n`` is a call of a module writing its channels in the last dim."""
    return n.op == "call_module" and channels_last(modules[n.target], "output")


def layer_macs(module: nn.Module, output: torch.Tensor) -> float:
    """Multiply-accumulates per image of one Conv2d / Linear call (0 for other modules)."""
    if isinstance(module, nn.Conv2d):
        per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return float(output[0].numel() * per_output)
    if isinstance(module, nn.Linear):
        return float(output[0].numel() * module.in_features)
    return 0.0


def run_node(n: torch.fx.Node, env: dict, modules: dict, gm: torch.fx.GraphModule):
    """The value of fx node ``n`` from the values of its inputs in ``env``."""
    args = map_arg(n.args, lambda a: env[a])
    kwargs = map_arg(n.kwargs, lambda a: env[a])
    if n.op == "call_module":
        return modules[n.target](*args, **kwargs)
    if n.op == "call_function":
        return n.target(*args, **kwargs)
    if n.op == "call_method":
        obj, *rest = args
        return getattr(obj, n.target)(*rest, **kwargs)
    if n.op == "get_attr":
        return operator.attrgetter(n.target)(gm)
    if n.op == "output":
        return args[0]
    raise Unsupported(f"cannot execute fx node op {n.op!r}")


class ModelForward:
    """One traced model on the game batch ``inputs``, shared by the games of its groups.

    Construction runs one image through the graph (which values are tensors, each module call's
    MACs), unless ``like`` (a forward of the same graph on images of the same size) has. :meth:`record` then runs the whole batch once and keeps the values every given group's
    downstream part reads, plus the logits. ``images_forwarded`` counts the images of both
    passes (full forwards), for the budget.
    """

    def __init__(self, model: nn.Module, gm: torch.fx.GraphModule, inputs: torch.Tensor,
                 like: ModelForward | None = None) -> None:
        self.modules = dict(model.named_modules())
        self.gm = gm
        self.inputs = inputs
        self.batch = int(inputs.shape[0])
        self.nodes = list(gm.graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise Unsupported(f"the traced model takes {len(placeholders)} inputs, expected 1")
        self.module_macs: dict[str, float] = {}
        if like is not None:  # the same graph at the same image size: measured once
            self.module_macs, self.is_tensor, self.images_forwarded = like.module_macs, like.is_tensor, 0
        else:
            env = self._measure(inputs[:1])
            self.is_tensor = {n: isinstance(v, torch.Tensor) for n, v in env.items()}
            self.images_forwarded = 1
        self.total_macs = sum(self.module_macs.values())
        self.values: dict[torch.fx.Node, object] = {}
        self.logits: torch.Tensor | None = None

    def _measure(self, image: torch.Tensor) -> dict:
        def count(name):
            def hook(module, args, output):
                if isinstance(output, torch.Tensor):
                    self.module_macs[name] = self.module_macs.get(name, 0.0) + layer_macs(module, output)
            return hook

        handles = [m.register_forward_hook(count(name)) for name, m in self.modules.items()
                   if isinstance(m, (nn.Conv2d, nn.Linear))]
        try:
            env: dict = {}
            for n in self.nodes:
                env[n] = image if n.op == "placeholder" else run_node(n, env, self.modules, self.gm)
            return env
        finally:
            for handle in handles:
                handle.remove()

    def split(self, observed: Sequence[str]) -> "Split":
        return Split(self.nodes, observed, self.is_tensor)

    def record(self, splits: Sequence["Split"]) -> None:
        """One forward of the batch keeping (cloned, so later in-place ops cannot alter them) the
        values ``splits`` read, and the logits."""
        needed = set().union(*(s.needed for s in splits)) if splits else set()
        last = {}
        for i, n in enumerate(self.nodes):
            for a in n.all_input_nodes:
                last[a] = i
        env: dict = {}
        for i, n in enumerate(self.nodes):
            value = self.inputs if n.op == "placeholder" else run_node(n, env, self.modules, self.gm)
            env[n] = value
            if n in needed:
                self.values[n] = value.clone() if isinstance(value, torch.Tensor) else value
            if n.op == "output":
                self.logits = value
            for a in n.all_input_nodes:
                if last.get(a) == i:
                    env.pop(a, None)
        self.images_forwarded += self.batch

    def fraction(self, split: "Split") -> float:
        """The share of the model's MACs one image costs through ``split``'s re-executed part."""
        if self.total_macs <= 0:
            return 1.0
        macs = sum(self.module_macs.get(n.target, 0.0) for n in split.exec_nodes if n.op == "call_module")
        return min(1.0, macs / self.total_macs)

    def plan(self, split: "Split") -> "DownstreamPlan":
        missing = [n for n in split.needed if n not in self.values]
        if missing:
            raise Unsupported(f"values {[n.name for n in missing]} were not recorded")
        return DownstreamPlan(self, split, {n: self.values[n] for n in split.needed})


class Split:
    """Which nodes a coalition evaluation re-executes for the group observed at ``observed``.

    ``exec_nodes`` are re-executed per coalition batch, in graph order; ``needed`` are the
    recorded values they read; ``roots`` are masked nodes whose recorded output is masked
    directly. Non-tensor values computed from the input (``x.size(0)``) are recomputed.
    """

    def __init__(self, nodes: list, observed: Sequence[str], is_tensor: dict) -> None:
        masked = {n for n in nodes if n.op == "call_module" and n.target in set(observed)}
        missing = set(observed) - {n.target for n in masked}
        if missing:
            raise Unsupported(f"observed module(s) {sorted(missing)} are not module calls in the fx graph")
        self.output = next(n for n in nodes if n.op == "output")
        input_dep: set = set()
        downstream: set = set()
        for n in nodes:
            if n.op == "placeholder" or any(a in input_dep for a in n.all_input_nodes):
                input_dep.add(n)
            if n in masked or any(a in downstream for a in n.all_input_nodes):
                downstream.add(n)
        execute = set(downstream) | {self.output}
        while True:
            extra = {a for n in execute for a in n.all_input_nodes
                     if a not in execute and a in input_dep and not is_tensor.get(a, True) and a.op != "placeholder"}
            if not extra:
                break
            execute |= extra
        self.roots = {n for n in masked if not any(a in execute for a in n.all_input_nodes)}
        self.masked = masked
        self.input_dep = input_dep
        self.exec_nodes = [n for n in nodes if n in execute and n not in self.roots]
        self.needed = {a for n in self.exec_nodes for a in n.all_input_nodes if a not in execute or a in self.roots}
        # last use of every value inside the per-coalition execution, to free memory early
        self.last_use: dict = {}
        for i, n in enumerate(self.exec_nodes):
            for a in n.all_input_nodes:
                self.last_use[a] = i


class DownstreamPlan:
    """A group's downstream part with its recorded inputs: :meth:`run` gives the logits of
    coalitions on the first ``images`` images of the recorded batch."""

    def __init__(self, forward: ModelForward, split: Split, provided: dict) -> None:
        self.forward = forward
        self.split = split
        self.provided = provided
        self.fraction = forward.fraction(split)

    def run(self, mask: torch.Tensor, images: int | None = None) -> torch.Tensor:
        """Logits ``[m*images, K]`` for the coalitions ``mask: float[m, C]``."""
        split, batch = self.split, self.forward.batch
        images = batch if images is None else images
        m = mask.shape[0]
        env: dict = {}
        for n, value in self.provided.items():
            if isinstance(value, torch.Tensor) and n in split.input_dep and value.dim() > 0 and value.shape[0] == batch:
                value = expand(value[:images], m)
            if n in split.roots:
                value = apply_mask(value, mask, channels_last_node(n, self.forward.modules))
            env[n] = value
        result = None
        for i, n in enumerate(split.exec_nodes):
            value = run_node(n, env, self.forward.modules, self.forward.gm)
            if n in split.masked:
                value = apply_mask(value, mask, channels_last_node(n, self.forward.modules))
            if n is split.output:
                result = value
            env[n] = value
            for a in n.all_input_nodes:
                if split.last_use.get(a) == i:
                    env.pop(a, None)
        if not isinstance(result, torch.Tensor):
            raise Unsupported("the model output is not a single logits tensor")
        return result


def build_plan(model: nn.Module, gm: torch.fx.GraphModule, observed: Sequence[str],
               inputs: torch.Tensor) -> DownstreamPlan:
    """A plan for one group on its own recording of ``inputs`` (no forward shared with others)."""
    forward = ModelForward(model, gm, inputs)
    split = forward.split(observed)
    forward.record([split])
    return forward.plan(split)
