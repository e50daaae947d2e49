"""The coalition game over the channels of one layer, engineered for cost.

The players of a :class:`LayerGame` are the channels of one :class:`~pruning.structure.ChannelGroup`.
The worth of a coalition ``S`` is a score of the network on a fixed calibration batch
(:func:`~pruning.games.coalitions.coalition_value`) with every channel outside ``S`` zeroed at
*every* observed output of the group (each producer's BN output, or the producer's own output
when no BN follows). Zeroing a channel there removes it exactly as pruning would, residual
additions included: every consumer then reads a zero input channel.

Cost engineering
----------------
* Downstream-only evaluation (``mode="fx"``): the model is traced once with
  ``torch.fx.symbolic_trace`` and run once on the batch; the values that the re-executed part
  needs (the group's unmasked outputs and the other upstream values its descendants read, e.g. a
  residual shortcut) are cached. A coalition evaluation then re-executes only the nodes that
  (transitively) depend on the masked outputs, feeding the cached values for everything else.
  For a layer near the output this is a small fraction of a forward pass.
* Batched coalitions: :meth:`LayerGame.values` takes ``masks: bool[M, C]`` and evaluates all ``M``
  coalitions in one forward over the batch replicated ``M`` times (``[M*B, ...]``), chunked so
  that no forward holds more than ``max_batch`` images.
* Fallback (``mode="hooks"``): full forwards of the replicated batch with forward hooks that
  multiply the observed outputs by the masks. ``mode="auto"`` (default) uses fx when the model
  traces, every observed module appears in the graph as a module call, and the fx result agrees
  with the hooks path on a few test coalitions; otherwise it falls back and records why in
  ``fallback_reason`` (data-dependent control flow, non-tensor outputs, exotic batch handling).
"""
from __future__ import annotations

import contextlib
import operator
from typing import Iterator, Sequence

import torch
import torch.fx
from torch import nn
from torch.fx.node import map_arg

from pruning.games.coalitions import VALUES, coalition_masks, coalition_value
from pruning.structure import ChannelGroup
from pruning.utils import model_device, preserved_modes

MODES = ("auto", "fx", "hooks")
#: images of the fx-vs-hooks agreement check at LayerGame construction
_PROBE_IMAGES = 3


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration; every submodule's own mode comes back."""
    with preserved_modes(model), torch.no_grad():
        model.eval()
        yield


def _expand(value: torch.Tensor, m: int) -> torch.Tensor:
    """``[B, ...] -> [m*B, ...]``: the batch repeated m times, coalition-major."""
    return value.unsqueeze(0).expand(m, *value.shape).reshape(m * value.shape[0], *value.shape[1:])


def _apply_mask(value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Multiply channel dim 1 of ``value: [m*B, C, ...]`` by ``mask: float[m, C]`` per coalition."""
    m, c = mask.shape
    if value.dim() < 2 or value.shape[1] != c or value.shape[0] % m:
        raise _Unsupported(f"observed output of shape {tuple(value.shape)} does not carry {c} channels in dim 1")
    shaped = value.view(m, value.shape[0] // m, *value.shape[1:])
    scale = mask.view(m, 1, c, *([1] * (value.dim() - 2))).to(value.dtype)
    return (shaped * scale).view(value.shape)


class _Unsupported(RuntimeError):
    """The fx downstream path cannot run this model / group."""


class _DownstreamPlan:
    """The fx graph split at a group's observed outputs, with the upstream values it needs cached.

    ``exec_nodes`` are re-executed per coalition batch, in graph order; ``provided`` are cached
    values (clones taken as they were computed, so later in-place ops cannot alter them) that
    the executed nodes read; ``roots`` are masked nodes whose cached output is masked directly.
    """

    def __init__(self, model: nn.Module, gm: torch.fx.GraphModule, observed: Sequence[str], inputs: torch.Tensor) -> None:
        self.modules = dict(model.named_modules())
        self.gm = gm
        nodes = list(gm.graph.nodes)
        self.batch = inputs.shape[0]
        placeholders = [n for n in nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise _Unsupported(f"the traced model takes {len(placeholders)} inputs, expected 1")
        masked = {n for n in nodes if n.op == "call_module" and n.target in set(observed)}
        missing = set(observed) - {n.target for n in masked}
        if missing:
            raise _Unsupported(f"observed module(s) {sorted(missing)} are not module calls in the fx graph")
        output = next(n for n in nodes if n.op == "output")

        # input-dependent nodes and descendants of the masked nodes (both in topological order)
        input_dep: set[torch.fx.Node] = set()
        downstream: set[torch.fx.Node] = set()
        for n in nodes:
            if n.op == "placeholder" or any(a in input_dep for a in n.all_input_nodes):
                input_dep.add(n)
            if n in masked or any(a in downstream for a in n.all_input_nodes):
                downstream.add(n)

        # a shape pass on one image tells which input-dependent values are not tensors (sizes);
        # those are recomputed from the replicated tensors instead of being cached
        is_tensor = {n: isinstance(v, torch.Tensor) for n, v in self._interpret(nodes, inputs[:1]).items()}
        execute = set(downstream) | {output}
        while True:
            extra = {
                a
                for n in execute
                for a in n.all_input_nodes
                if a not in execute and a in input_dep and not is_tensor.get(a, True) and a.op != "placeholder"
            }
            if not extra:
                break
            execute |= extra
        self.roots = {n for n in masked if not any(a in execute for a in n.all_input_nodes)}
        self.masked = masked
        self.exec_nodes = [n for n in nodes if n in execute and n not in self.roots]
        needed = {a for n in self.exec_nodes for a in n.all_input_nodes if a not in execute or a in self.roots}
        self.input_dep = input_dep
        # last use of every value inside the per-coalition execution, to free memory early
        self.last_use: dict[torch.fx.Node, int] = {}
        for i, n in enumerate(self.exec_nodes):
            for a in n.all_input_nodes:
                self.last_use[a] = i
        self.provided = self._record(nodes, inputs, needed)
        self.output = output

    # -- execution helpers ----------------------------------------------------------------
    def _run_node(self, n: torch.fx.Node, env: dict):
        args = map_arg(n.args, lambda a: env[a])
        kwargs = map_arg(n.kwargs, lambda a: env[a])
        if n.op == "call_module":
            return self.modules[n.target](*args, **kwargs)
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            obj, *rest = args
            return getattr(obj, n.target)(*rest, **kwargs)
        if n.op == "get_attr":
            return operator.attrgetter(n.target)(self.gm)
        if n.op == "output":
            return args[0]
        raise _Unsupported(f"cannot execute fx node op {n.op!r}")

    def _interpret(self, nodes, inputs: torch.Tensor) -> dict:
        env: dict = {}
        for n in nodes:
            env[n] = inputs if n.op == "placeholder" else self._run_node(n, env)
        return env

    def _record(self, nodes, inputs: torch.Tensor, needed: set) -> dict:
        """One forward on the batch, keeping (cloned) only the values in ``needed``."""
        last = {}
        for i, n in enumerate(nodes):
            for a in n.all_input_nodes:
                last[a] = i
        position = {n: i for i, n in enumerate(nodes)}
        stop = max((position[n] for n in needed), default=-1)
        env: dict = {}
        kept: dict = {}
        for i, n in enumerate(nodes[: stop + 1]):
            value = inputs if n.op == "placeholder" else self._run_node(n, env)
            env[n] = value
            if n in needed:
                kept[n] = value.clone() if isinstance(value, torch.Tensor) else value
            for a in n.all_input_nodes:
                if last.get(a) == i:
                    env.pop(a, None)
        return kept

    def run(self, mask: torch.Tensor) -> torch.Tensor:
        """Logits ``[m*B, K]`` for the coalitions ``mask: float[m, C]``."""
        m = mask.shape[0]
        env: dict = {}
        for n, value in self.provided.items():
            if isinstance(value, torch.Tensor) and n in self.input_dep and value.dim() > 0 and value.shape[0] == self.batch:
                value = _expand(value, m)
            if n in self.roots:
                value = _apply_mask(value, mask)
            env[n] = value
        result = None
        for i, n in enumerate(self.exec_nodes):
            value = self._run_node(n, env)
            if n in self.masked:
                value = _apply_mask(value, mask)
            if n is self.output:
                result = value
            env[n] = value
            for a in n.all_input_nodes:
                if self.last_use.get(a) == i:
                    env.pop(a, None)
        if not isinstance(result, torch.Tensor):
            raise _Unsupported("the model output is not a single logits tensor")
        return result


def trace_model(model: nn.Module) -> torch.fx.GraphModule | None:
    """``torch.fx.symbolic_trace(model)``, or None when the model does not trace.

    One trace can be shared by the games of all groups of a model (``LayerGame(traced=...)``).
    """
    try:
        return torch.fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure means: use the hooks path
        return None


def resolve_trace(model: nn.Module, mode: str) -> tuple[str, torch.fx.GraphModule | None]:
    """``(mode, trace)`` for the games of ``model`` to share: one fx trace, or ``"hooks"`` and no
    trace where ``mode="auto"`` and the model does not trace (so no game tries again)."""
    if mode == "hooks":
        return mode, None
    traced = trace_model(model)
    if traced is None and mode == "auto":
        return "hooks", None
    return mode, traced


class LayerGame:
    """The coalition game over the channels of one group (see the module docstring).

    Attributes for cost reporting: ``evaluations`` = coalitions x images forwarded (through the
    downstream part only, in fx mode), ``coalitions`` = coalitions evaluated, ``forwards`` =
    batched forward calls. The fx/hooks agreement check at construction is not counted.
    """

    def __init__(
        self,
        model: nn.Module,
        group: ChannelGroup,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        value: str = "logprob",
        mode: str = "auto",
        max_batch: int | None = None,
        traced: torch.fx.GraphModule | None = None,
    ) -> None:
        if value not in VALUES:
            raise ValueError(f"unknown value {value!r}; valid: {', '.join(VALUES)}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
        if inputs.shape[0] != targets.shape[0] or inputs.shape[0] == 0:
            raise ValueError("inputs and targets must be non-empty and of the same length")
        self.model = model
        self.group = group
        self.size = int(group.size)
        self.value = value
        self.device = model_device(model)
        self.inputs = inputs.to(self.device)
        self.targets = targets.to(self.device).long()
        self.batch_size = int(inputs.shape[0])
        if max_batch is None:  # CPU convolutions are fastest in small batches, GPUs want big ones
            max_batch = 256 if self.device.type == "cpu" else 4096
        self.max_batch = int(max_batch)
        self.chunk = max(1, self.max_batch // self.batch_size)
        self.observed = tuple(dict.fromkeys(o.module for o in group.observed))
        modules = dict(model.named_modules())
        missing = [name for name in self.observed if name not in modules]
        if missing:
            raise ValueError(f"group {group.name!r}: observed module(s) {missing} not in the model")
        self.evaluations = 0
        self.coalitions = 0
        self.forwards = 0
        self.fallback_reason: str | None = None
        self._endpoints: tuple[float, float] | None = None
        self._plan: _DownstreamPlan | None = None
        self.mode = "hooks"
        if mode in ("auto", "fx"):
            try:
                self._plan = self._build_plan(traced)
                self.mode = "fx"
            except Exception as exc:  # noqa: BLE001
                if mode == "fx":
                    raise
                self.fallback_reason = f"{type(exc).__name__}: {exc}"
        # "kl" compares every coalition with the unpruned network's output on the same path (so
        # v(N) = 0 up to round-off); one forward, not counted as a coalition evaluation
        self.reference: torch.Tensor | None = None
        if value == "kl":
            with _evaluating(self.model):
                full = torch.ones(1, self.size, device=self.device)
                logits = self._plan.run(full) if self._plan is not None else self._hooks_logits(full)
            self.reference = torch.log_softmax(logits.double(), dim=-1)

    def _build_plan(self, traced) -> _DownstreamPlan:
        gm = traced if traced is not None else torch.fx.symbolic_trace(self.model)
        with _evaluating(self.model):
            # check the split on a few images first (cheap), then cache the real batch
            n = min(self.batch_size, _PROBE_IMAGES)
            probe_plan = _DownstreamPlan(self.model, gm, self.observed, self.inputs[:n])
            g = torch.Generator().manual_seed(0)
            probe = torch.rand(2, self.size, generator=g) < 0.5
            probe[0] = True
            mask = probe.to(self.device, torch.float32)
            fx = probe_plan.run(mask)
            ref = self._hooks_logits(mask, self.inputs[:n])
            if fx.shape != ref.shape or not torch.allclose(fx, ref, rtol=1e-4, atol=1e-5):
                raise _Unsupported("fx downstream logits disagree with the full forward")
            return _DownstreamPlan(self.model, gm, self.observed, self.inputs)

    def _hooks_logits(self, mask: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        modules = dict(self.model.named_modules())

        def hook(module, args, output):
            return _apply_mask(output, mask)

        handles = [modules[name].register_forward_hook(hook) for name in self.observed]
        try:
            return self.model(_expand(self.inputs if inputs is None else inputs, mask.shape[0]))
        finally:
            for handle in handles:
                handle.remove()

    def values(self, masks: torch.Tensor) -> torch.Tensor:
        """Worth of each coalition in ``masks: bool[M, C]`` -> ``float64[M]`` (CPU)."""
        masks = coalition_masks(masks, self.size)
        out = torch.empty(len(masks), dtype=torch.float64)
        with _evaluating(self.model):
            for start in range(0, len(masks), self.chunk):
                mask = masks[start : start + self.chunk].to(self.device, torch.float32)
                m = mask.shape[0]
                logits = self._plan.run(mask) if self._plan is not None else self._hooks_logits(mask)
                out[start : start + m] = coalition_value(logits.view(m, self.batch_size, -1), self.targets, self.value,
                                                      self.reference).cpu()
                self.forwards += 1
        self.coalitions += len(masks)
        self.evaluations += len(masks) * self.batch_size
        return out

    def endpoints(self) -> tuple[float, float]:
        """(v(N), v(empty)), computed once in one batched call and cached."""
        if self._endpoints is None:
            both = self.values(torch.stack([torch.ones(self.size, dtype=torch.bool), torch.zeros(self.size, dtype=torch.bool)]))
            self._endpoints = (float(both[0]), float(both[1]))
        return self._endpoints
