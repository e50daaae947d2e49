"""Command-line options shared by several commands, and the checks of their values that must
run before any work (nothing here imports torch: the parser is built before ``prunesweep`` may
re-execute itself in a private network namespace)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pruning.errors import InputError

__all__ = [
    "AMP_CHOICES", "RAY_NETWORKS", "TRIAL_DEVICES", "add_data", "add_device", "add_distributed", "add_image_size",
    "add_model_options", "add_model_source", "add_output", "add_ray_network", "add_seed", "add_task_options",
    "add_trial_device", "check_gpus", "check_minimum", "check_model_source", "check_output_files", "check_workers",
    "model_kwargs", "show_progress", "task_kwargs", "trial_gpus",
]

#: ``--ray-network``: auto (the default) is private where the kernel allows it, else host
RAY_NETWORKS = ("auto", "private", "host")
#: ``--amp`` modes (as :data:`pruning.devices.AMP_MODES`, which imports torch)
AMP_CHOICES = ("bf16", "fp16")
#: ``--device`` of the commands whose model runs in Ray trials (Ray picks a trial's GPU)
TRIAL_DEVICES = ("auto", "cpu", "cuda")


def add_output(p: argparse.ArgumentParser, *, bars: bool = False) -> None:
    """``--json`` and ``--quiet``; with ``bars`` (commands whose long stages show progress bars)
    also ``--progress``, see :func:`show_progress`."""
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    if not bars:
        p.add_argument("--quiet", action="store_true", help="no progress output")
        return
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true",
                       help="progress bars on stderr even when it is not a terminal (default: only on a terminal)")
    shown.add_argument("--quiet", action="store_true", help="no progress output")


def show_progress(args: argparse.Namespace) -> bool:
    """Whether a command shows progress bars (on stderr, never stdout): with ``--progress``, or
    when stderr is a terminal, never with ``--quiet``. A log file or a pipe gets no bars, whose
    carriage-return redraws would fill it."""
    if args.quiet:
        return False
    return bool(getattr(args, "progress", False)) or sys.stderr.isatty()


def add_seed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def add_data(p: argparse.ArgumentParser, dataset_default: str | None) -> None:
    p.add_argument("--dataset", default=dataset_default,
                   help="dataset name (see `prunesweep info`)" + (f"; default: {dataset_default}" if dataset_default else
                                                                 "; default: the checkpoint's"))
    p.add_argument("--data-root", default=None, help="dataset folder (fashion-mnist: /usr/share/datasets/fashion-mnist)")
    p.add_argument("--download", action="store_true", help="let torchvision download MNIST/CIFAR-10/SVHN into --data-root")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images only")
    add_image_size(p)


def add_image_size(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="imagefolder only: resize and centre-crop images to N x N pixels (default: the "
                        "checkpoint's, else 224)")


MODEL_HELP = ("a registered model (see `prunesweep info`), torchvision:<name>, timm:<name> "
              "(pip install 'prunesweep[timm]') or an import path package.module:factory")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--weights`` and ``--model-kwargs``, the options of a ``--model``."""
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="a state_dict file for --model (torch.save(model.state_dict(), FILE))")
    p.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help='keyword options of --model as a JSON object, e.g. \'{"width": 16}\'')


def add_model_source(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, required: bool = True) -> None:
    """``--checkpoint P`` or ``--model X [--weights W] [--model-kwargs JSON]`` (the dataset is
    ``--dataset``, default fashion-mnist); ``p`` a parser or an argument group of one."""
    source = p.add_mutually_exclusive_group(required=required)
    source.add_argument("--checkpoint", default=None, help="a prunesweep checkpoint")
    source.add_argument("--model", default=None, help=MODEL_HELP + "; instead of --checkpoint")
    add_model_options(p)


def check_model_source(args: argparse.Namespace) -> None:
    """Refuse ``--weights`` / ``--model-kwargs`` without ``--model``."""
    if getattr(args, "model", None) is None:
        for option in ("--weights", "--model-kwargs"):
            if getattr(args, _dest(option), None) is not None:
                raise InputError(f"{option} goes with --model (a checkpoint holds its own model and weights)")


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``--model-kwargs`` as a dict ({} when not given); one-line error unless a JSON object."""
    return _json_object(args, "--model-kwargs")


TASK_HELP = ("a registered task (classification, segmentation; see `prunesweep info`) or an import path "
             "package.module:factory")


def add_task_options(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, default: str) -> None:
    """``--task`` and ``--task-kwargs``: what the model is trained and scored on (checked by
    :func:`orchestrator.cli.common.configured_task`); ``default`` says what applies without them."""
    p.add_argument("--task", default=None, metavar="NAME", help=f"{TASK_HELP}; default: {default}")
    p.add_argument("--task-kwargs", default=None, metavar="JSON",
                   help='options of --task as a JSON object, e.g. \'{"items": 2}\'')


def task_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``--task-kwargs`` as a dict ({} when not given); one-line error unless a JSON object, or
    when given without ``--task``."""
    if getattr(args, "task", None) is None and getattr(args, "task_kwargs", None) is not None:
        raise InputError("--task-kwargs goes with --task: name the task too")
    return _json_object(args, "--task-kwargs")


def _json_object(args: argparse.Namespace, option: str) -> dict[str, Any]:
    """``option``'s JSON object as a dict ({} when not given); one-line error otherwise."""
    text = getattr(args, _dest(option), None)
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{option} is not valid JSON ({err.msg} at character {err.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise InputError(f"{option} must be a JSON object {{\"name\": value}}, got {text!r}")
    return value


def add_device(p: argparse.ArgumentParser, *, amp: bool = True, loaders: bool = True) -> None:
    """``--device`` (checked by :func:`orchestrator.cli.common.command_device`), ``--amp`` where
    the command trains or evaluates, ``--loader-workers`` where it builds data loaders."""
    p.add_argument("--device", default="auto",
                   help="where the model runs: auto (CUDA if available, else the CPU; default), cpu, cuda, cuda:N, mps")
    if amp:
        p.add_argument("--amp", choices=AMP_CHOICES, default=None,
                       help="mixed precision for training, fine-tuning and evaluation (CUDA only; default: off)")
    if loaders:
        p.add_argument("--loader-workers", type=int, default=0, metavar="N",
                       help="data-loader worker processes (default: 0 = batches made in this process)")


def add_trial_device(p: argparse.ArgumentParser, what: str) -> None:
    """``--device`` and ``--gpus-per-trial`` of a command whose model runs in Ray trials."""
    p.add_argument("--device", choices=TRIAL_DEVICES, default="auto",
                   help="where trials run: auto (default: on the GPUs of --gpus-per-trial, none by default), cpu "
                        "(no GPUs, whatever the config says) or cuda (one GPU per trial unless --gpus-per-trial says "
                        "otherwise); Ray picks each trial's GPU")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help=f"GPUs each trial reserves, fractions allowed (default: {what})")


def trial_gpus(args: argparse.Namespace, configured: float) -> float:
    """GPUs per trial from ``--device`` and ``--gpus-per-trial`` over the ``configured`` value."""
    check_gpus("--gpus-per-trial", args.gpus_per_trial)
    gpus = configured if args.gpus_per_trial is None else args.gpus_per_trial
    if args.device == "cpu":
        if args.gpus_per_trial:
            raise InputError(f"--device cpu runs trials without GPUs: drop --gpus-per-trial {args.gpus_per_trial:g}")
        return 0.0
    if args.device == "cuda" and not gpus:
        if args.gpus_per_trial is not None:
            raise InputError("--device cuda needs GPUs per trial: --gpus-per-trial must be > 0")
        return 1.0
    return float(gpus)


def check_gpus(option: str, value: float | None) -> None:
    """Refuse a negative GPU count (an option left unset passes)."""
    if value is not None and not value >= 0:
        raise InputError(f"{option} must be >= 0, got {value:g}")


def add_ray_network(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray-network", choices=RAY_NETWORKS, default="auto",
                   help="where a local Ray listens: private (a network namespace with only loopback, "
                        "unreachable from other hosts, no network access but a tracking server on this "
                        "host's loopback; an error where the kernel refuses it), host (this host's "
                        "interfaces, guarded by Ray's auth token) or auto (default: private where the "
                        "kernel allows it, else host with one line saying so); see docs/cluster.md")


def add_distributed(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--workers", type=int, default=0,
                   help=f"Ray actors for {what} (default: 0 = in-process, no Ray)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="CPUs each Ray actor reserves; its torch threads (default: 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="GPUs each Ray actor reserves, fractions allowed; an actor given one runs on it (default: 0)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join: auto (on a cluster node) or ray://HOST:10001 "
                        "(default: start a local Ray without dashboard); see docs/cluster.md")
    add_ray_network(p)


def check_output_files(args: argparse.Namespace, *options: str) -> None:
    """Refuse an output option naming an existing directory now, not after the work is done."""
    for option in options:
        path = getattr(args, _dest(option))
        if path is not None and Path(path).is_dir():
            raise InputError(f"{option} {path} is a directory; give the path of a file to write")


def check_minimum(args: argparse.Namespace, option: str, low: int) -> None:
    """Refuse ``option`` below ``low`` (an option left unset passes)."""
    value = getattr(args, _dest(option))
    if value is not None and value < low:
        raise InputError(f"{option} must be >= {low}, got {value}")


def check_workers(args: argparse.Namespace) -> int:
    """``--workers`` (0: everything in-process, no Ray), checked before any heavy work."""
    check_minimum(args, "--workers", 0)
    if not args.cpus_per_worker > 0:
        raise InputError(f"--cpus-per-worker must be > 0, got {args.cpus_per_worker}")
    check_gpus("--gpus-per-worker", getattr(args, "gpus_per_worker", 0.0))
    if args.address and not args.workers:
        raise InputError("--address joins a Ray cluster for --workers N > 0: give --workers")
    return args.workers


def _dest(option: str) -> str:
    return option.lstrip("-").replace("-", "_")
