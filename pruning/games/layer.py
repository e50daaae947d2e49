"""The coalition game over the channels of one layer, engineered for cost.

The players of a :class:`LayerGame` are the channels of one :class:`~pruning.structure.ChannelGroup`.
The worth of a coalition ``S`` is a score of the network on a fixed calibration batch
(:meth:`pruning.tasks.Task.game_value`) with every channel outside ``S`` zeroed at
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
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
import torch.fx
from torch import nn

from pruning.errors import InputError
from pruning.games.budget import PassMeter
from pruning.games.coalitions import coalition_masks
from pruning.games.downstream import DownstreamPlan, ModelForward, Unsupported, apply_mask, build_plan, expand
from pruning.statistics.hooks import channels_last
from pruning.structure import ChannelGroup
from pruning.tasks import Classification, Task
from pruning.utils import model_device, preserved_modes

MODES = ("auto", "fx", "hooks")
#: images of the fx-vs-hooks agreement check at LayerGame construction
_PROBE_IMAGES = 3
#: images one batched call of a game should hold at least: the truncated estimators evaluate
#: windows of prefixes this large (on the CPU a forward of 1-4 images of a ResNet costs several
#: times more per image than one of 16)
EFFICIENT_CALL_IMAGES = 16


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration; every submodule's own mode comes back."""
    with preserved_modes(model), torch.no_grad():
        model.eval()
        yield


def trace_model(model: nn.Module) -> torch.fx.GraphModule | None:
    """``torch.fx.symbolic_trace(model)``, or None when the model does not trace.

    One trace can be shared by the games of all groups of a model
    (``LayerGame(..., sharing=GameSharing(traced=...))``).
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


def shared_forward(model: nn.Module, traced: torch.fx.GraphModule | None, inputs: torch.Tensor,
                   groups: Sequence[ChannelGroup], like: ModelForward | None = None) -> ModelForward | None:
    """One recorded forward of ``inputs`` serving the fx games of all ``groups`` (None when the
    model has no trace or the graph cannot be run node by node: the games then go their own way).
    Groups whose outputs are not module calls are left out; their games fall back to hooks.
    ``like``: an earlier forward of the same model whose measurements are reused."""
    if traced is None:
        return None
    try:
        with _evaluating(model):
            forward = ModelForward(model, traced, inputs.to(model_device(model)), like)
            splits = []
            for group in groups:
                try:
                    splits.append(forward.split(tuple(dict.fromkeys(o.module for o in group.observed))))
                except Unsupported:
                    continue
            forward.record(splits)
        return forward
    except Exception:  # noqa: BLE001 - any failure here means: each game records its own batch
        return None


@dataclass(frozen=True)
class GameSettings:
    """How a :class:`LayerGame` values and evaluates coalitions: ``task`` and ``value`` (the worth,
    one of the task's :attr:`~pruning.tasks.Task.game_values`; None: its first), ``mode`` (:data:`MODES`: ``"fx"`` runs only the
    part of the network after the group, ``"hooks"`` the whole network with masking hooks,
    ``"auto"`` fx where it traces and agrees, else hooks) and ``max_batch`` (images per forward;
    None: 256 on the CPU, 4096 on a GPU). Checked when built (one-line ``InputError``)."""

    value: str | None = None
    mode: str = "auto"
    max_batch: int | None = None
    task: Task = field(default_factory=Classification)

    def __post_init__(self) -> None:
        if self.value is None:  # frozen: resolved once, so every reader sees the task's default
            object.__setattr__(self, "value", self.task.game_values[0])
        self.task.check_game_value(self.value)
        if self.mode not in MODES:
            raise InputError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.max_batch is not None and (
            isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1
        ):
            raise InputError(f"max_batch must be a positive integer or None, got {self.max_batch!r}")


@dataclass(frozen=True)
class GameSharing:
    """What the games of one model share (all optional): ``traced``, the model's fx trace;
    ``forward``, one recorded forward (:func:`shared_forward`) and ``check_hooks``, whether this
    game checks the fx path against the hooks path; ``meter``, the
    :class:`~pruning.games.budget.PassMeter` charged every image forwarded."""

    traced: torch.fx.GraphModule | None = None
    forward: ModelForward | None = None
    check_hooks: bool = True
    meter: PassMeter | None = None


class LayerGame:
    """The coalition game over the channels of one group (see the module docstring).

    Attributes for cost reporting: ``evaluations`` = coalitions x images forwarded (through the
    downstream part only, in fx mode), ``coalitions`` = coalitions evaluated, ``forwards`` =
    batched forward calls; ``fraction`` = the share of a full forward one coalition costs per
    image (the downstream part's MACs in fx mode, 1 with hooks). ``meter`` (a
    :class:`~pruning.games.budget.PassMeter`, optional) is charged every image forwarded,
    construction included. ``images``: coalitions are evaluated on the first ``images`` images
    of the batch (default: all); setting it drops the cached endpoints.

    ``forward`` (a :class:`~pruning.games.downstream.ModelForward` recorded for this group's
    split, optional) shares one recorded forward among the games of a model; ``check_hooks``
    then says whether this game checks the fx path against the hooks path (2 coalitions, the
    full one and a random one, on one image: two full forwards). The games of one shared forward
    run the same graph on the same recorded values, so one check per model (the first game's)
    stands for all; a group whose outputs are not module calls in the graph still falls back.
    Without ``forward`` the game records its own batch and checks 2 coalitions on 3 images.
    """

    def __init__(
        self,
        model: nn.Module,
        group: ChannelGroup,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        settings: GameSettings = GameSettings(),
        sharing: GameSharing = GameSharing(),
    ) -> None:
        value, mode, max_batch, task = settings.value, settings.mode, settings.max_batch, settings.task
        traced, forward, meter = sharing.traced, sharing.forward, sharing.meter
        if inputs.shape[0] != targets.shape[0] or inputs.shape[0] == 0:
            raise ValueError("inputs and targets must be non-empty and of the same length")
        self.model = model
        self.group = group
        self.size = int(group.size)
        self.value = value
        self.task = task
        self.meter = meter
        self.device = model_device(model)
        self.inputs = inputs.to(self.device)
        self.targets = targets.to(self.device).long() if task.class_labels else targets.to(self.device)
        self.batch_size = int(inputs.shape[0])
        self._images = self.batch_size
        if max_batch is None:  # CPU convolutions are fastest in small batches, GPUs want big ones
            max_batch = 256 if self.device.type == "cpu" else 4096
        self.max_batch = int(max_batch)
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
        self._plan: DownstreamPlan | None = None
        self.mode = "hooks"
        self.fraction = 1.0
        if mode in ("auto", "fx"):
            try:
                self._plan = self._build_plan(traced, forward, sharing.check_hooks)
                self.mode = "fx"
                self.fraction = self._plan.fraction
            except Exception as exc:  # noqa: BLE001
                if mode == "fx":
                    raise
                self.fallback_reason = f"{type(exc).__name__}: {exc}"
        # "kl" (classification; "distill" elsewhere) compares every coalition with the unpruned network's
        # output on the same path (so v(N) = 0 up to round-off); one forward, not counted as a coalition evaluation
        self.reference: torch.Tensor | None = None
        if value in task.reference_values:
            if forward is not None and self._plan is not None:
                logits = forward.logits  # the recorded forward is the unpruned network's output
            else:
                with _evaluating(self.model):
                    full = torch.ones(1, self.size, device=self.device)
                    logits = self._plan.run(full) if self._plan is not None else self._hooks_logits(full)
                self._charge(self.batch_size * self.fraction)
            self.reference = task.game_reference(logits)

    @property
    def images(self) -> int:
        """Images of the batch each coalition is evaluated on (the first ones)."""
        return self._images

    @images.setter
    def images(self, count: int) -> None:
        if not 1 <= count <= self.batch_size:
            raise ValueError(f"images must be in [1, {self.batch_size}], got {count}")
        if count != self._images:
            self._images = int(count)
            self._endpoints = None

    def _charge(self, image_forwards: float) -> None:
        if self.meter is not None:
            self.meter.charge(image_forwards)

    def _build_plan(self, traced, forward: ModelForward | None, check_hooks: bool) -> DownstreamPlan:
        with _evaluating(self.model):
            if forward is not None:
                return self._shared_plan(forward, check_hooks)
            gm = traced if traced is not None else torch.fx.symbolic_trace(self.model)
            # check the split on a few images first (cheap), then cache the real batch
            n = min(self.batch_size, _PROBE_IMAGES)
            probe_plan = build_plan(self.model, gm, self.observed, self.inputs[:n])
            mask = self._probe_masks(2)
            fx = probe_plan.run(mask)
            ref = self._hooks_logits(mask, self.inputs[:n])
            self._charge(2 * n + (n + 1) + 2 * n * probe_plan.fraction)
            if fx.shape != ref.shape or not torch.allclose(fx, ref, rtol=1e-4, atol=1e-5):
                raise Unsupported("fx downstream logits disagree with the full forward")
            plan = build_plan(self.model, gm, self.observed, self.inputs)
            self._charge(self.batch_size + 1)
            return plan

    def _shared_plan(self, forward: ModelForward, check_hooks: bool) -> DownstreamPlan:
        plan = forward.plan(forward.split(self.observed))
        if check_hooks:
            mask = self._probe_masks(2)
            fx = plan.run(mask, images=1)
            ref = self._hooks_logits(mask, self.inputs[:1])
            self._charge(2 + 2 * plan.fraction)
            if fx.shape != ref.shape or not torch.allclose(fx, ref, rtol=1e-4, atol=1e-5):
                raise Unsupported("fx downstream logits disagree with the full forward")
        return plan

    def _probe_masks(self, count: int) -> torch.Tensor:
        """``count`` seeded coalitions for the agreement check, the first one the full layer."""
        g = torch.Generator().manual_seed(0)
        probe = torch.rand(count, self.size, generator=g) < 0.5
        probe[0] = True
        return probe.to(self.device, torch.float32)

    def _hooks_logits(self, mask: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        modules = dict(self.model.named_modules())

        def hook(module, args, output):
            return apply_mask(output, mask, channels_last(module, "output"))

        handles = [modules[name].register_forward_hook(hook) for name in self.observed]
        try:
            return self.model(expand(self.inputs if inputs is None else inputs, mask.shape[0]))
        finally:
            for handle in handles:
                handle.remove()

    @property
    def min_coalitions(self) -> int:
        """Coalitions a call should hold at least: :data:`EFFICIENT_CALL_IMAGES` images' worth
        (a forward of 1-4 images costs several times more per image than one of 16 or more)."""
        return -(-EFFICIENT_CALL_IMAGES // self._images)

    @property
    def chunk(self) -> int:
        """Coalitions per forward: at most ``max_batch`` images each."""
        return max(1, self.max_batch // self._images)

    def values(self, masks: torch.Tensor) -> torch.Tensor:
        """Worth of each coalition in ``masks: bool[M, C]`` -> ``float64[M]`` (CPU), on the first
        :attr:`images` images."""
        masks = coalition_masks(masks, self.size)
        out = torch.empty(len(masks), dtype=torch.float64)
        k = self._images
        targets = self.targets[:k]
        reference = None if self.reference is None else self.reference[:k]
        with _evaluating(self.model):
            for start in range(0, len(masks), self.chunk):
                mask = masks[start : start + self.chunk].to(self.device, torch.float32)
                m = mask.shape[0]
                logits = self._plan.run(mask, images=k) if self._plan is not None else self._hooks_logits(mask, self.inputs[:k])
                outputs = logits.view(m, k, *logits.shape[1:])
                out[start : start + m] = self.task.game_value(outputs, targets, self.value, reference).cpu()
                self.forwards += 1
        self.coalitions += len(masks)
        self.evaluations += len(masks) * k
        self._charge(len(masks) * k * self.fraction)
        return out

    def endpoints(self) -> tuple[float, float]:
        """(v(N), v(empty)) on the current :attr:`images`, computed once in one batched call and cached."""
        if self._endpoints is None:
            both = self.values(torch.stack([torch.ones(self.size, dtype=torch.bool), torch.zeros(self.size, dtype=torch.bool)]))
            self._endpoints = (float(both[0]), float(both[1]))
        return self._endpoints
