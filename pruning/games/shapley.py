"""Shapley channel importance within a layer, engineered for cost.

The players of a :class:`LayerGame` are the channels of one :class:`~pruning.structure.groups.ChannelGroup`.
The worth of a coalition ``S`` is a score of the network on a fixed calibration batch with every
channel outside ``S`` zeroed at *every* observed output of the group (each producer's BN output,
or the producer's own output when no BN follows). Zeroing a channel there removes it exactly as
pruning would, residual additions included: every consumer then reads a zero input channel.

Value functions (``value=``), averaged over the batch, higher = better:

* ``"logprob"`` (default): mean log-probability of the true class, log softmax(z)_y. This *is*
  the negative cross-entropy, so no separate ``neg_ce`` option exists.
* ``"accuracy"``: top-1 accuracy (piecewise constant: many ties, a noisier estimator).
* ``"margin"``: mean logit margin z_y - max_{j != y} z_j.

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

Estimators work on any :class:`CoalitionGame` (an object with ``size`` and ``values(masks)``):
:func:`exact_shapley` (enumeration, C <= 10) and :func:`permutation_shapley` (Monte Carlo over
permutations, with antithetic pairs, TMC truncation and Welford statistics that shards can merge
with Chan's formula). :class:`FunctionGame` wraps a plain Python set function.
"""
from __future__ import annotations

import contextlib
import math
import operator
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.fx.node import map_arg

from pruning.structure.groups import ChannelGroup

VALUES = ("logprob", "accuracy", "margin")
MODES = ("auto", "fx", "hooks")
EXACT_MAX_SIZE = 10
#: images of the fx-vs-hooks agreement check at LayerGame construction
_PROBE_IMAGES = 3


# --------------------------------------------------------------------------------------- games
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
        masks = _as_masks(masks, self.size)
        self.coalitions += len(masks)
        return torch.tensor(
            [float(self.fn(frozenset(np.flatnonzero(row).tolist()))) for row in masks.cpu().numpy()],
            dtype=torch.float64,
        )


def _as_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    masks = torch.as_tensor(masks)
    if masks.dim() == 1:
        masks = masks.unsqueeze(0)
    if masks.dim() != 2 or masks.shape[1] != size:
        raise ValueError(f"masks must have shape [M, {size}], got {tuple(masks.shape)}")
    return masks.bool()


def _endpoints(game: CoalitionGame) -> tuple[float, float]:
    """(v(N), v(empty)), cached by games that offer ``endpoints()``."""
    if hasattr(game, "endpoints"):
        return game.endpoints()
    both = game.values(torch.stack([torch.ones(game.size, dtype=torch.bool), torch.zeros(game.size, dtype=torch.bool)]))
    return float(both[0]), float(both[1])


def coalition_value(logits: torch.Tensor, targets: torch.Tensor, value: str) -> torch.Tensor:
    """Per-coalition worth from ``logits: [M, B, K]`` and ``targets: [B]``; float64 ``[M]``."""
    logits = logits.double()
    index = targets.view(1, -1, 1).expand(logits.shape[0], -1, 1)
    if value == "logprob":
        return torch.log_softmax(logits, dim=-1).gather(-1, index)[..., 0].mean(1)
    if value == "accuracy":
        return (logits.argmax(-1) == targets.view(1, -1)).double().mean(1)
    if value == "margin":
        true = logits.gather(-1, index)[..., 0]
        others = logits.scatter(-1, index, float("-inf")).amax(-1)
        return (true - others).mean(1)
    raise ValueError(f"unknown value {value!r}; valid: {', '.join(VALUES)}")


@contextlib.contextmanager
def _eval_no_grad(model: nn.Module):
    """Eval mode and no autograd for the duration; every module's own mode is restored."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


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
        param = next(model.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
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

    def _build_plan(self, traced) -> _DownstreamPlan:
        gm = traced if traced is not None else torch.fx.symbolic_trace(self.model)
        with _eval_no_grad(self.model):
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
        masks = _as_masks(masks, self.size)
        out = torch.empty(len(masks), dtype=torch.float64)
        with _eval_no_grad(self.model):
            for start in range(0, len(masks), self.chunk):
                mask = masks[start : start + self.chunk].to(self.device, torch.float32)
                m = mask.shape[0]
                logits = self._plan.run(mask) if self._plan is not None else self._hooks_logits(mask)
                out[start : start + m] = coalition_value(logits.view(m, self.batch_size, -1), self.targets, self.value).cpu()
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


# --------------------------------------------------------------------------- statistics
@dataclass
class RunningStats:
    """Per-player running mean and variance (Welford), mergeable with Chan's parallel formula.

    ``n``, ``mean`` and ``m2`` are float64 tensors of length C (sum of squared deviations in m2),
    so shards run elsewhere (e.g. on Ray actors) can be merged exactly.
    """

    n: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor

    @classmethod
    def zeros(cls, size: int) -> RunningStats:
        z = torch.zeros(size, dtype=torch.float64)
        return cls(z.clone(), z.clone(), z.clone())

    def update(self, x: torch.Tensor) -> None:
        """Welford's update with one sample ``x: [C]`` (in place)."""
        x = x.to(torch.float64)
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def update_many(self, xs: Iterable[torch.Tensor]) -> None:
        for x in xs:
            self.update(x)

    def merge(self, other: RunningStats) -> RunningStats:
        """Chan et al.'s pairwise combination of two disjoint sample sets (new object)."""
        n = self.n + other.n
        safe = torch.where(n > 0, n, torch.ones_like(n))
        delta = other.mean - self.mean
        mean = torch.where(n > 0, self.mean + delta * other.n / safe, torch.zeros_like(n))
        m2 = self.m2 + other.m2 + delta**2 * self.n * other.n / safe
        return RunningStats(n, mean, m2)

    @property
    def count(self) -> int:
        """The smallest per-player sample count."""
        return int(self.n.min().item()) if len(self.n) else 0

    def variance(self) -> torch.Tensor:
        """Unbiased sample variance (nan where n < 2)."""
        return torch.where(self.n > 1, self.m2 / (self.n - 1).clamp(min=1), torch.full_like(self.m2, float("nan")))

    def stderr(self) -> torch.Tensor:
        """Standard error of the mean (inf where n < 2)."""
        se = (self.variance() / self.n.clamp(min=1)).sqrt()
        return torch.where(self.n > 1, se, torch.full_like(se, float("inf")))


@dataclass(frozen=True, eq=False)
class ShapleyEstimate:
    """Estimated Shapley values of one game.

    ``evaluations`` counts coalition values the estimator requested (v(N) and v(empty)
    included); for a :class:`LayerGame` each costs ``batch_size`` image forwards, see
    ``LayerGame.evaluations`` for the image count. ``permutations`` is 0 for exact enumeration.
    ``stats`` holds the per-player Welford state, for :meth:`merge`.
    """

    values: torch.Tensor
    stderr: torch.Tensor
    permutations: int
    evaluations: int
    v_full: float
    v_empty: float
    stats: RunningStats | None = field(default=None, compare=False, repr=False)

    def merge(self, other: ShapleyEstimate) -> ShapleyEstimate:
        """Combine two independent permutation shards of the same game (Chan's formula)."""
        if self.stats is None or other.stats is None:
            raise ValueError("only permutation estimates (with stats) can be merged")
        stats = self.stats.merge(other.stats)
        return ShapleyEstimate(
            values=stats.mean.clone(),
            stderr=stats.stderr(),
            permutations=self.permutations + other.permutations,
            evaluations=self.evaluations + other.evaluations,
            v_full=self.v_full,
            v_empty=self.v_empty,
            stats=stats,
        )


# --------------------------------------------------------------------------- estimators
def all_coalitions(size: int) -> torch.Tensor:
    """``bool[2^size, size]``; row r holds the players whose bit is set in r."""
    index = torch.arange(2**size).unsqueeze(1)
    return (index >> torch.arange(size)) & 1 == 1


def exact_shapley(game: CoalitionGame) -> ShapleyEstimate:
    """Exact Shapley values by enumerating all 2^C coalitions in one batched call (C <= 10).

    phi_i = sum_{S subset N\\{i}} |S|! (C-|S|-1)! / C! * (v(S + i) - v(S)).
    """
    n = game.size
    if n > EXACT_MAX_SIZE:
        raise ValueError(f"exact enumeration is limited to {EXACT_MAX_SIZE} players, got {n}")
    v = game.values(all_coalitions(n)).to(torch.float64)
    index = torch.arange(2**n)
    sizes = all_coalitions(n).sum(1)
    weight = torch.tensor([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)], dtype=torch.float64)
    phi = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        without = index[(index >> i) & 1 == 0]
        phi[i] = (weight[sizes[without]] * (v[without | (1 << i)] - v[without])).sum()
    return ShapleyEstimate(phi, torch.zeros(n, dtype=torch.float64), 0, 2**n, float(v[-1]), float(v[0]))


def _prefix_values(
    game: CoalitionGame,
    perms: np.ndarray,
    v_full: float,
    v_empty: float,
    truncation_tol: float | None,
    window: int,
) -> tuple[torch.Tensor, int]:
    """v(first k players of each permutation) for k = 0..C -> ``float64[P, C+1]`` and the number
    of coalitions evaluated. Without truncation, one batched call; with truncation, windows of
    ``window`` prefix lengths over the still-active permutations, and a permutation whose prefix
    value comes within ``truncation_tol`` of v(N) keeps that value to the end (TMC-Shapley)."""
    p, n = perms.shape
    ranks = torch.from_numpy(np.argsort(perms, axis=1))  # ranks[p, i] = position of player i
    pv = torch.empty(p, n + 1, dtype=torch.float64)
    pv[:, 0] = v_empty
    pv[:, n] = v_full
    if n < 2 and truncation_tol is None:
        return pv, 0
    if truncation_tol is None:
        k = torch.arange(1, n)
        masks = ranks[:, None, :] < k[None, :, None]
        pv[:, 1:n] = game.values(masks.reshape(-1, n)).view(p, n - 1)
        return pv, p * (n - 1)
    used = 0
    active = torch.ones(p, dtype=torch.bool)
    if abs(v_empty - v_full) < truncation_tol:
        pv[:, 1:] = v_empty
        return pv, 0
    for start in range(1, n, window):
        rows = active.nonzero().flatten()
        if len(rows) == 0:
            break
        k = torch.arange(start, min(start + window, n))
        masks = ranks[rows][:, None, :] < k[None, :, None]
        vals = game.values(masks.reshape(-1, n)).view(len(rows), len(k))
        used += vals.numel()
        pv[rows[:, None], k[None, :]] = vals
        close = (vals - v_full).abs() < truncation_tol
        for r, row in zip(rows.tolist(), close):
            hits = row.nonzero()
            if len(hits):
                cut = int(k[hits[0, 0]])
                pv[r, cut + 1 :] = pv[r, cut]
                active[r] = False
    return pv, used


def permutation_shapley(
    game: CoalitionGame,
    *,
    max_permutations: int = 64,
    epsilon: float | None = None,
    antithetic: bool = False,
    truncation_tol: float | None = None,
    batch_permutations: int = 16,
    truncation_window: int | None = None,
    seed: int = 0,
) -> ShapleyEstimate:
    """Monte Carlo Shapley values from marginal contributions along random permutations.

    Each permutation pi gives one sample per player, v(pre_i(pi) + i) - v(pre_i(pi)); the prefix
    values of ``batch_permutations`` permutations are evaluated in one batched call.

    * ``antithetic``: every permutation is followed by its reverse; the pair's average is one
      sample (so the variance reflects the pairing). ``max_permutations`` is rounded down to
      an even number (at least 2) and counts both members of a pair.
    * ``truncation_tol`` (absolute, in units of v): TMC-Shapley; once |v(prefix) - v(N)| <
      tol the remaining marginals of that permutation are 0 (bias at most tol per permutation).
      Prefixes are then evaluated in windows of ``truncation_window`` lengths (default
      max(1, C // 4)) so that truncated permutations stop costing evaluations.
    * ``epsilon``: stop once the largest per-player standard error is below it (checked after
      every block), otherwise run until ``max_permutations``.

    Deterministic given ``seed`` (a private ``numpy.random.Generator``). Without truncation the
    marginals of every permutation sum to exactly v(N) - v(empty).
    """
    n = game.size
    if max_permutations < 1:
        raise ValueError("max_permutations must be >= 1")
    rng = np.random.default_rng(seed)
    v_full, v_empty = _endpoints(game)
    evaluations = 2
    step = 2 if antithetic else 1
    budget = max(step, max_permutations - max_permutations % step)
    block_size = max(step, batch_permutations - batch_permutations % step)
    window = truncation_window or max(1, n // 4)
    stats = RunningStats.zeros(n)
    done = 0
    while done < budget:
        count = min(block_size, budget - done)
        base = [rng.permutation(n) for _ in range(count // step)]
        perms = np.stack([q for b in base for q in ((b, b[::-1]) if antithetic else (b,))])
        pv, used = _prefix_values(game, perms, v_full, v_empty, truncation_tol, window)
        evaluations += used
        marginals = pv[:, 1:] - pv[:, :-1]  # [P, n]: contribution of perms[p, k]
        phi = torch.zeros(len(perms), n, dtype=torch.float64).scatter_(1, torch.from_numpy(perms.copy()), marginals)
        if antithetic:
            phi = phi.view(-1, 2, n).mean(1)
        stats.update_many(phi)
        done += len(perms)
        if epsilon is not None and stats.count >= 2 and float(stats.stderr().max()) < epsilon:
            break
    return ShapleyEstimate(stats.mean.clone(), stats.stderr(), done, evaluations, v_full, v_empty, stats)


# -------------------------------------------------------------------------------- batching
def calibration_batch(calibration: Sequence[tuple[torch.Tensor, torch.Tensor]], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``batch_size`` calibration images (concatenated across batches) and targets."""
    xs, ys, total = [], [], 0
    for x, y in calibration:
        xs.append(x)
        ys.append(y)
        total += len(x)
        if total >= batch_size:
            break
    if not xs:
        raise ValueError("no calibration batches")
    return torch.cat(xs)[:batch_size], torch.cat(ys)[:batch_size]


def group_seed(seed: int, name: str) -> int:
    """A per-group seed from the criterion seed and the group's name: independent streams per
    group, and a group's estimate does not depend on which other groups are scored."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]).generate_state(1)[0])
