"""What several commands do on top of ``pruning``'s public API: the data config and task of a
command, loading a checkpoint (or a ``--model`` with ``--weights``) that fits its dataset,
measuring cost and latency, and the activation statistics pass in-process or on ``--workers`` Ray actors.

Imported by the commands' ``run`` only (it imports torch), never when the parser is built.
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from orchestrator import distributed
from pruning.data import DataConfig, DataSplits, make_eval_loader, recorded_data_fields
from pruning.errors import InputError, first_line
from pruning.tasks import Task, TaskSpec
from pruning.utils import model_device
from pruning.structure import ModelSpec, check_fits, load_checkpoint, measure_cost, measure_latency, model_for_data

__all__ = [
    "LATENCY_BATCHES", "Loaded", "collect_stats", "command_device", "command_task", "configured_task",
    "distribute_criterion", "load_fitting", "load_model_option", "make_data_config", "make_test_loader", "measure",
    "model_source", "ray_network", "spec_as_run",
]

LATENCY_BATCHES = (1, 64)


@dataclass(frozen=True)
class Loaded:
    """A checkpoint's model and spec, the data config and data it runs on, the input shape
    they agree on, and the task it is scored on (``task_spec`` built: ``task``)."""

    model: nn.Module
    spec: ModelSpec
    data: DataConfig
    splits: DataSplits
    shape: tuple[int, int, int]
    task_spec: TaskSpec
    task: Task


def make_data_config(args: argparse.Namespace, base: dict[str, Any] | None = None, **overrides: Any) -> DataConfig:
    """The data config of a command: the checkpoint's, with the command line's overrides."""
    fields = dict(base or {})
    if args.dataset is not None:
        if fields and args.dataset != fields.get("name"):
            fields = {}  # another dataset: nothing of the checkpoint's data config applies
        fields["name"] = args.dataset
    if args.data_root is not None:
        fields["root"] = args.data_root
    if args.download:
        fields["download"] = True
    if args.test_subset is not None:
        fields["test_subset"] = args.test_subset
    if getattr(args, "image_size", None) is not None:
        fields["image_size"] = _image_size(args, fields.get("name", DataConfig.name))
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return DataConfig(**fields)


def _image_size(args: argparse.Namespace, dataset: str) -> int:
    """``--image-size``, refused below 1 or for a dataset other than imagefolder."""
    from orchestrator.cli.options import check_minimum

    check_minimum(args, "--image-size", 1)
    if dataset != "imagefolder":
        raise InputError(f"--image-size applies only to imagefolder, not {dataset!r} (valid: --dataset imagefolder)")
    return args.image_size


def configured_task(args: argparse.Namespace) -> TaskSpec | None:
    """The task ``--task`` and ``--task-kwargs`` name (None: not given), built once so that a bad
    name, import path or option fails now, in one line."""
    from orchestrator.cli.options import task_kwargs

    kwargs = task_kwargs(args)
    if args.task is None:
        return None
    try:
        spec = TaskSpec(args.task, kwargs)
        spec.build()
    except TypeError as err:  # a registered task's unknown option
        raise InputError(f"--task-kwargs: {first_line(err)}") from None
    return spec


def command_task(args: argparse.Namespace, recorded: dict[str, Any] | None = None,
                 checkpoint: str | None = None) -> TaskSpec:
    """The task a command runs (:func:`~orchestrator.experiment.task_settings.resolve_task`): the
    one ``checkpoint`` records (``recorded``, its ``meta["task"]``), which a differing ``--task``
    may not replace; ``--task`` where none is recorded or without a checkpoint (default
    classification)."""
    from orchestrator.experiment.checks import ConfigError
    from orchestrator.experiment.task_settings import resolve_task

    configured = configured_task(args)
    if checkpoint is None:
        return configured or TaskSpec()
    try:
        return resolve_task(configured, recorded)
    except ConfigError:
        stored = TaskSpec.from_record(recorded)
        raise InputError(f"--task {_describe_task(configured)} differs from the task {_describe_task(stored)} "
                         f"checkpoint {checkpoint} was trained for: drop --task") from None


def _describe_task(spec: TaskSpec) -> str:
    return spec.name + (f" {json.dumps(dict(spec.kwargs), sort_keys=True)}" if spec.kwargs else "")



def load_fitting(args: argparse.Namespace, prunable: bool = True) -> Loaded:
    """``--checkpoint`` and its data (the checkpoint's data config with the command line's
    overrides, loaded by the task it records: :func:`command_task`), refused when the model
    does not fit the dataset; or ``--model`` (with ``--weights`` and ``--model-kwargs``) built
    for ``--dataset`` and ``--task``, refused up front when it does not fit or (``prunable``,
    for an external model) the pruning engine cannot handle it.

    An imagefolder checkpoint's images keep the size it records unless ``--image-size`` is
    given; one that differs from the checkpoint's input shape wins, with a warning on stderr
    (a model with adaptive pooling runs at any size; one without fails to fit, one line)."""
    from orchestrator.cli.options import check_model_source

    check_model_source(args)
    if args.checkpoint is None:
        return load_model_option(args, prunable)
    model, spec = load_checkpoint(args.checkpoint)
    task_spec = command_task(args, spec.meta.get("task"), args.checkpoint)
    config = make_data_config(args, recorded_data_fields(spec.meta.get("data"), spec.input_shape))
    size = config.image_size
    if getattr(args, "image_size", None) is not None and tuple(spec.input_shape[1:]) != (size, size):
        print(f"warning: --image-size {size} overrides the checkpoint's {spec.input_shape[1]}x{spec.input_shape[2]} "
              f"input: running at {size}x{size}", file=sys.stderr, flush=True)
    task = task_spec.build()
    splits = task.load_data(config)
    return Loaded(model, spec, config, splits, check_fits(model, spec, splits), task_spec, task)


def spec_as_run(loaded: Loaded) -> ModelSpec:
    """``loaded.spec`` with the input shape and image size the command ran at: what a checkpoint
    written from this run records, so a later command reads its images at the same size."""
    meta = {**loaded.spec.meta, "task": loaded.task_spec.to_dict()}
    if isinstance(meta.get("data"), dict) and loaded.data.image_size is not None:
        meta["data"] = {**meta["data"], "image_size": loaded.data.image_size}
    return replace(loaded.spec, input_shape=tuple(loaded.shape), meta=meta)


def model_source(args: argparse.Namespace) -> tuple[dict[str, Any], dict | None]:
    """``(--model-kwargs, the --weights state_dict or None)``, after checking ``--model``'s
    name and options: what fails before any data is loaded."""
    from orchestrator.cli.options import check_model_source, model_kwargs
    from pruning.models import check_model_name, read_weights

    check_model_source(args)
    kwargs = model_kwargs(args)
    check_model_name(args.model, kwargs)
    return kwargs, (read_weights(args.weights) if args.weights is not None else None)


def load_model_option(args: argparse.Namespace, prunable: bool = True) -> Loaded:
    """``--model`` built for ``--dataset`` and ``--task`` (see :func:`load_fitting`); its spec's
    meta records the data config, the task and the weights file."""
    from dataclasses import asdict
    from pathlib import Path

    from pruning.models import is_external

    kwargs, state = model_source(args)
    task_spec = command_task(args)
    config = make_data_config(args)
    task = task_spec.build()
    splits = task.load_data(config)
    meta: dict[str, Any] = {"data": asdict(config), "task": task_spec.to_dict()}
    if args.weights is not None:
        meta["weights"] = str(Path(args.weights).absolute())
    model, spec, shape = model_for_data(args.model, splits, weights=state, kwargs=kwargs, meta=meta,
                                        prunable=prunable and is_external(args.model), weights_name=args.weights,
                                        task=task)
    return Loaded(model, spec, config, splits, shape, task_spec, task)


def command_device(args: argparse.Namespace):
    """The :class:`torch.device` of ``--device``, with ``--amp`` and ``--loader-workers``
    checked against it: one-line errors, before any data is loaded."""
    from orchestrator.cli.options import check_minimum
    from pruning.devices import check_amp, resolve_device

    device = resolve_device(getattr(args, "device", "auto"))
    check_amp(getattr(args, "amp", None), device)
    if hasattr(args, "loader_workers"):
        check_minimum(args, "--loader-workers", 0)
    return device


def make_test_loader(splits: DataSplits, args: argparse.Namespace | None = None, device=None):
    """The test split in order: what every reported metric is measured on (with the
    command's ``--loader-workers``, pinned for a CUDA ``device``)."""
    workers = getattr(args, "loader_workers", 0) if args is not None else 0
    pin = device is not None and getattr(device, "type", None) == "cuda"
    return make_eval_loader(splits.test, device or "cpu", num_workers=workers, pin_memory=pin)


def measure(model: nn.Module, shape: tuple[int, int, int], metrics: dict[str, float], *,
            progress: bool = False) -> dict[str, Any]:
    """MACs, parameters, the given task ``metrics`` (by name) and the median latency at batch 1 and 64, with where and
    how it was timed under ``latency`` (``progress``: a "latency" bar on stderr, one step per
    timed or warm-up forward pass)."""
    from tqdm.auto import tqdm

    cost = measure_cost(model, shape)
    defaults = inspect.signature(measure_latency).parameters  # its warm-up and timed passes: the bar total
    passes = len(LATENCY_BATCHES) * (defaults["warmup"].default + defaults["repeats"].default)
    with tqdm(total=passes, desc="latency", unit="pass", disable=not progress, leave=False) as bar:
        # counted by a hook only while a bar shows: the timed passes are otherwise untouched
        hook = model.register_forward_hook(lambda *_: bar.update()) if progress else None
        try:
            latency = {b: measure_latency(model, shape, batch_size=b).median_ms for b in LATENCY_BATCHES}
        finally:
            if hook is not None:
                hook.remove()
    return {
        "macs": cost.macs,
        "params": cost.params,
        **metrics,
        "latency_ms": latency[1],
        "latency_ms_batch64": latency[64],
        "latency": {"runtime": "torch", "device": str(model_device(model)), "batches": list(LATENCY_BATCHES),
                    "threads": torch.get_num_threads(), "warmup": defaults["warmup"].default,
                    "repeats": defaults["repeats"].default},
    }


def describe_latency(latency: dict[str, Any]) -> str:
    """One line saying where :func:`measure`'s latencies were timed."""
    batches = " and ".join(str(b) for b in latency["batches"])
    return (f"latency: {latency['runtime']} on {latency['device']}, batch {batches}, {latency['threads']} thread(s), "
            f"median of {latency['repeats']} runs")


def collect_stats(args: argparse.Namespace, model: nn.Module, groups, batches, options, *,
                  return_report: bool = False):
    """Activation statistics of ``groups`` over ``batches`` as ``options`` (a
    :class:`~pruning.statistics.StatsOptions`) say: in-process, or on ``--workers`` Ray actors
    (joining ``--address``). ``return_report``: ``(stats, RunReport or None in-process)``."""
    from orchestrator.cli.options import show_progress

    workers = args.workers
    if not workers:
        from pruning.statistics import collect_activation_stats

        state = collect_activation_stats(model, groups, batches, options, progress=show_progress(args))
        return (state, None) if return_report else state
    distributed.connect(args.address, workers, args.cpus_per_worker, log_to_driver=not args.json)
    return distributed.distributed_stats(model, groups, batches, options, _shard_options(args, return_report))


def _shard_options(args: argparse.Namespace, return_report: bool = False):
    """The actors ``--workers``, ``--cpus-per-worker`` and ``--gpus-per-worker`` ask for."""
    from orchestrator.cli.options import show_progress
    from orchestrator.distributed.options import ShardOptions

    return ShardOptions(workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                        gpus_per_worker=getattr(args, "gpus_per_worker", 0.0), progress=show_progress(args),
                        return_report=return_report)


def distribute_criterion(criterion, args: argparse.Namespace):
    """shapley/snpfi scoring on ``--workers`` Ray actors; other criteria (and ``--workers 0``)
    are returned as they are."""
    if not args.workers or criterion.name not in ("shapley", "snpfi"):
        return criterion
    return criterion.delegate_estimation(distributed.DistributedShapley(
        _shard_options(args), address=args.address, log_to_driver=not args.json))


def ray_network(args: argparse.Namespace) -> str | None:
    """Where this command's Ray runs: cluster (joined with --address), private (a loopback-only
    namespace), host (--ray-network host, or auto where the kernel refused the namespace); None
    without --workers (no Ray at all)."""
    if not args.workers:
        return None
    if args.address:
        return "cluster"
    return "private" if distributed.active() else "host"
