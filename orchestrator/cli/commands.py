"""What each CLI command does, on top of ``pruning``'s public API.

Each function takes the parsed arguments and returns a :class:`CommandResult`: the readable
text and the JSON-able data. Every argument is validated before heavy work starts, and files
are written only at the end, atomically, so a failure leaves nothing half-written.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator.distributed import network as private_network
from orchestrator.cli.result import CommandResult
from orchestrator.report import format_table
from pruning import registry
from pruning.structure import CheckpointError, ModelSpec, load_checkpoint, save_checkpoint
from pruning.criteria import ScoringContext, create_criterion, criterion_class, list_criteria
from pruning.data import DataConfig, DataRootError, DataSplits, list_datasets, load_data, make_loader
from pruning.structure import STRATEGIES, PruningError, PruningSpace
from pruning.structure import measure_cost, measure_latency
from pruning.models import InputShapeError, check_input_shape, create_model, list_models
from pruning.pipeline import prune_with_criterion
from pruning.planning import ALLOCATIONS, PruningConfig, load_schedule, ratios_of, save_schedule
from pruning.training import TrainConfig, evaluate as evaluate_model, recalibrate_bn, train as train_model

#: exceptions that mean "the user asked for something impossible": one line, exit 2
BAD_INPUT = (
    PruningError, CheckpointError, DataRootError, InputShapeError, registry.UnknownNameError,
    ValueError, TypeError, FileNotFoundError,
)
RATIO_SOURCES = (*ALLOCATIONS, "concentration", "snpfi")
LATENCY_BATCHES = (1, 64)


def info(args: argparse.Namespace) -> CommandResult:
    data = {
        "models": list_models(),
        "criteria": list_criteria(),
        "datasets": list_datasets(),
        "strategies": list(STRATEGIES),
        "ratios": [*RATIO_SOURCES, "FILE.json"],
    }
    text = "\n".join(f"{key:<11} {', '.join(values)}" for key, values in data.items())
    return CommandResult(text, data)


def _data_config(args: argparse.Namespace, base: dict[str, Any] | None = None, **overrides) -> DataConfig:
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
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return DataConfig(**fields)


def _check_fits(model: nn.Module, name: str, splits: DataSplits, num_classes: int) -> tuple[int, int, int]:
    shape = (splits.in_channels, *splits.input_size)
    if splits.num_classes != num_classes:
        raise CheckpointError(
            f"the checkpoint has {num_classes} classes but dataset {splits.name!r} has {splits.num_classes}"
        )
    check_input_shape(model, shape, name)
    return shape


def _measure(model: nn.Module, shape, accuracy: float | None) -> dict[str, Any]:
    cost = measure_cost(model, shape)
    latency = {b: measure_latency(model, shape, batch_size=b).median_ms for b in LATENCY_BATCHES}
    return {
        "macs": cost.macs,
        "params": cost.params,
        "accuracy": accuracy,
        "latency_ms": latency[1],
        "latency_ms_batch64": latency[64],
    }


def train(args: argparse.Namespace) -> CommandResult:
    train_config = TrainConfig(
        epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, schedule=args.lr_schedule,
        batch_size=args.batch_size, seed=args.seed,
    )
    create_model(args.model)  # unknown name fails before data loading
    data_config = _data_config(args, train_subset=args.train_subset, calibration_size=args.calibration_size, seed=args.seed)
    splits = load_data(data_config)
    torch.manual_seed(args.seed)
    model = create_model(args.model, num_classes=splits.num_classes, in_channels=splits.in_channels)
    shape = _check_fits(model, args.model, splits, splits.num_classes)
    started = time.perf_counter()
    history = train_model(
        model, make_loader(splits.train, args.batch_size, shuffle=True, seed=args.seed, augment=splits.augment_by_default),
        train_config, progress=not args.quiet,
    )
    seconds = time.perf_counter() - started
    test = evaluate_model(model, make_loader(splits.test, 512, shuffle=False), progress=not args.quiet)
    meta = {"data": asdict(data_config), "train": asdict(train_config), "test_accuracy": test.accuracy,
            "history": history, "train_seconds": seconds}
    save_checkpoint(args.out, model, ModelSpec(args.model, splits.num_classes, splits.in_channels, shape, meta=meta))
    data = {"model": args.model, "dataset": splits.name, "epochs": args.epochs, "train_seconds": seconds,
            "test_accuracy": test.accuracy, "test_loss": test.loss, "checkpoint": str(args.out), "history": history}
    rows = [(h["epoch"], h["loss"], h["accuracy"]) for h in history]
    text = (
        f"trained {args.model} on {splits.name} ({len(splits.train)} images) in {seconds:.0f} s\n"
        + format_table(rows, ("epoch", "train loss", "train acc"))
        + f"\ntest accuracy {test.accuracy:.4f} (loss {test.loss:.4f}) -> {args.out}"
    )
    return CommandResult(text, data)


def _load(args: argparse.Namespace, **data_overrides) -> tuple[nn.Module, ModelSpec, DataSplits, tuple[int, int, int]]:
    model, spec = load_checkpoint(args.checkpoint)
    splits = load_data(_data_config(args, spec.meta.get("data"), **data_overrides))
    shape = _check_fits(model, spec.name or "model", splits, spec.num_classes)
    return model, spec, splits, shape


def evaluate(args: argparse.Namespace) -> CommandResult:
    model, spec, splits, shape = _load(args)
    test = evaluate_model(model, make_loader(splits.test, 512, shuffle=False), progress=not args.quiet)
    data = {"checkpoint": args.checkpoint, "model": spec.name, "dataset": splits.name, "loss": test.loss,
            **_measure(model, shape, test.accuracy)}
    rows = [(k, v) for k, v in data.items() if k not in ("checkpoint",)]
    return CommandResult(format_table(rows, ("", args.checkpoint)), data)


def _calibration_batches(splits: DataSplits, images: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if images <= 0:
        raise ValueError(f"--calibration-images must be > 0, got {images}")
    batches, seen = [], 0
    for x, y in make_loader(splits.calibration, min(batch_size, images), shuffle=False):
        batches.append((x[: images - seen], y[: images - seen]))
        seen += len(batches[-1][1])
        if seen >= images:
            break
    return batches


def stats(args: argparse.Namespace) -> CommandResult:
    from pruning.statistics import collect_activation_stats

    workers = _workers(args)
    model, spec, splits, shape = _load(args)
    space = PruningSpace.build(model, torch.zeros(1, *shape))
    batches = _calibration_batches(splits, args.calibration_images, 128)
    started = time.perf_counter()
    if workers:
        state = _distributed_stats(args, model, space.groups, batches, bins=args.bins, value=args.value, chip=args.chip)
    else:
        state = collect_activation_stats(model, space.groups, batches, bins=args.bins, value=args.value,
                                         chip=args.chip, progress=not args.quiet)
    seconds = time.perf_counter() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # like train/prune --out
    state.save(args.out)
    data = {"checkpoint": args.checkpoint, "out": str(args.out), "images": sum(len(y) for _, y in batches),
            "layers": len(space.groups), "seconds": seconds, "workers": workers,
            "ray_network": _ray_network(args) if workers else None}
    return CommandResult(f"statistics of {data['layers']} layers over {data['images']} calibration images "
                         f"in {seconds:.1f} s -> {args.out}", data)


def _pruning_config(args: argparse.Namespace) -> tuple[PruningConfig, str]:
    """The pruning config and the ratio source (allocation name, prior name, or 'file')."""
    common = dict(strategy=args.strategy, max_layer_ratio=args.max_layer_ratio, min_channels=args.min_channels)
    source = args.ratios
    if source.endswith(".json") or Path(source).is_file():
        if args.flops_reduction is not None or args.ratio is not None:
            raise PruningError("--ratios FILE.json is an explicit schedule: drop --flops-reduction/--ratio")
        return PruningConfig(schedule=load_schedule(source), **common), "file"
    if source not in RATIO_SOURCES:
        raise PruningError(f"unknown --ratios {source!r}; valid: {', '.join(RATIO_SOURCES)}, or a JSON file")
    if source == "snpfi" and args.flops_reduction is None and args.ratio is None:
        return PruningConfig(ratio=0.0, **common), source  # SNPFI sets every layer's sparsity itself
    if args.flops_reduction is None and args.ratio is None:
        raise PruningError("give --flops-reduction or --ratio (or --ratios FILE.json)")
    if source == "concentration" and args.flops_reduction is None:
        raise PruningError("--ratios concentration scales layer ratios to a FLOPs target: give --flops-reduction")
    allocation = "global" if source == "global" else "uniform"
    return PruningConfig(allocation=allocation, ratio=args.ratio, flops_reduction=args.flops_reduction, **common), source


def prune(args: argparse.Namespace) -> CommandResult:
    config, ratio_source = _pruning_config(args)
    criterion = create_criterion(args.criterion, seed=args.seed)
    if _workers(args):
        criterion = _distributed_criterion(criterion, args)
    for name, value in (("--bn-batches", args.bn_batches), ("--finetune-epochs", args.finetune_epochs)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if args.finetune_subset is not None and args.finetune_subset <= 0:
        raise ValueError(f"--finetune-subset must be > 0, got {args.finetune_subset}")
    if args.stats is not None and not Path(args.stats).is_file():
        raise FileNotFoundError(f"--stats file {args.stats!r} does not exist")
    model, spec, splits, shape = _load(args)
    example = torch.zeros(1, *shape)
    space = PruningSpace.build(model, example)
    progress = not args.quiet
    test_loader = make_loader(splits.test, 512, shuffle=False)
    base_accuracy = evaluate_model(model, test_loader, progress=progress).accuracy

    needs_stats = criterion_class(args.criterion).needs_stats or ratio_source == "concentration"
    batches = _calibration_batches(splits, args.calibration_images, args.batch_size)
    context = ScoringContext(calibration=batches, stats=_activation_stats(args, model, space, batches) if needs_stats else None)
    ratio_weights, config, scores = _ratio_prior(args, ratio_source, criterion, model, space, config, context)

    outcome = prune_with_criterion(model, example, criterion, config, context, ratio_weights=ratio_weights,
                                   space=space, scores=scores)
    pruned = outcome.model
    stages = {"pruned": evaluate_model(pruned, test_loader).accuracy}
    if args.recover:
        from pruning.recovery import consumers_of, kept_outputs_of, reconstruct_consumers

        layers = consumers_of(space, outcome.kept_indices)
        reconstruct_consumers(model, pruned, layers, batches, progress=progress,
                          kept_outputs=kept_outputs_of(space, outcome.kept_indices))
        stages["recovered"] = evaluate_model(pruned, test_loader).accuracy
    train_loader = make_loader(splits.train, args.batch_size, shuffle=True, seed=args.seed, augment=splits.augment_by_default)
    if args.bn_batches:
        recalibrate_bn(pruned, train_loader, args.bn_batches, progress=progress)
        stages["bn_recalibrated"] = evaluate_model(pruned, test_loader).accuracy
    if args.finetune_epochs:
        finetune_data = splits.train
        if args.finetune_subset is not None:
            finetune_data = torch.utils.data.Subset(splits.train, range(min(args.finetune_subset, len(splits.train))))
        finetune = TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, batch_size=args.batch_size, seed=args.seed)
        train_model(pruned, make_loader(finetune_data, args.batch_size, shuffle=True, seed=args.seed), finetune,
                    progress=progress)
        stages["finetuned"] = evaluate_model(pruned, test_loader).accuracy
    final_accuracy = list(stages.values())[-1]

    base = _measure(model, shape, base_accuracy)
    after = _measure(pruned, shape, final_accuracy)
    schedule = ratios_of(space, outcome.keep)
    pruning = {
        "criterion": args.criterion, "strategy": config.strategy, "ratios": args.ratios,
        "flops_reduction_target": args.flops_reduction, "ratio": args.ratio,
        "macs_reduction": 1 - after["macs"] / base["macs"], "params_reduction": 1 - after["params"] / base["params"],
        "speedup_batch1": base["latency_ms"] / after["latency_ms"],
        "speedup_batch64": base["latency_ms_batch64"] / after["latency_ms_batch64"],
        "accuracy_stages": stages, "channels": {n: [k, space[n].size] for n, k in outcome.keep.items()},
    }
    if args.out:
        meta = {**spec.meta, "pruning": {**pruning, "schedule": schedule}}
        save_checkpoint(args.out, pruned, replace(spec, meta=meta))
    if args.schedule_out:
        save_schedule(args.schedule_out, schedule)
    data = {"base": base, "pruned": after, "pruning": pruning, "checkpoint": args.out}
    rows = [(k, base[k], after[k], _change(base[k], after[k], difference=k == "accuracy"))
            for k in ("macs", "params", "accuracy", "latency_ms", "latency_ms_batch64")]
    text = (
        f"{spec.name} on {splits.name}: criterion {args.criterion}, strategy {config.strategy}, ratios {args.ratios}\n"
        + format_table(rows, ("", "base", "pruned", "change"))
        + "\naccuracy by stage: " + ", ".join(f"{k} {v:.4f}" for k, v in stages.items())
        + f"\nMACs -{pruning['macs_reduction']:.1%}, params -{pruning['params_reduction']:.1%}, "
        f"measured speedup {pruning['speedup_batch1']:.2f}x (batch 1), {pruning['speedup_batch64']:.2f}x (batch 64)"
        + (f"\n-> {args.out}" if args.out else "")
    )
    return CommandResult(text, data)


def _change(before, after, difference: bool = False) -> str:
    """``after - before`` for accuracies (``difference``), else the ratio ``after / before``."""
    if before is None or after is None:
        return ""
    if difference:
        return f"{after - before:+.4f}"
    return f"x{after / before:.3f}" if before else ""


def _activation_stats(args, model, space, batches):
    from pruning.statistics import ActivationStats, collect_activation_stats

    if args.stats:
        return ActivationStats.load(args.stats)
    chip = args.criterion == "chip"
    if _workers(args):
        return _distributed_stats(args, model, space.groups, batches, chip=chip)
    return collect_activation_stats(model, space.groups, batches, chip=chip, progress=not args.quiet)


def _workers(args) -> int:
    """``--workers`` (0: everything in-process, no Ray), checked before any heavy work."""
    workers = getattr(args, "workers", 0) or 0
    if workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    if getattr(args, "cpus_per_worker", 1.0) <= 0:
        raise ValueError(f"--cpus-per-worker must be > 0, got {args.cpus_per_worker}")
    if getattr(args, "address", None) and not workers:
        raise ValueError("--address joins a Ray cluster for --workers N > 0: give --workers")
    return workers


def _ray_network(args) -> str:
    """cluster (joined with --address), private (a loopback-only namespace) or host."""
    if getattr(args, "address", None):
        return "cluster"
    return "private" if private_network.active() else "host"


def _distributed_stats(args, model, groups, batches, **options):
    """Activation statistics on ``--workers`` Ray actors (orchestrator.distributed.core)."""
    from orchestrator.distributed.core import connect, distributed_stats

    cpus = getattr(args, "cpus_per_worker", 1.0)
    connect(getattr(args, "address", None), args.workers, cpus, log_to_driver=not args.json)
    return distributed_stats(model, groups, batches, workers=args.workers, cpus_per_worker=cpus,
                             progress=not args.quiet, **options)


def _distributed_criterion(criterion, args):
    """shapley/snpfi scoring on ``--workers`` Ray actors; other criteria are returned as they are."""
    if criterion.name not in ("shapley", "snpfi"):
        return criterion
    from orchestrator.distributed.core import DistributedShapley

    return DistributedShapley(criterion, workers=args.workers, cpus_per_worker=getattr(args, "cpus_per_worker", 1.0),
                              address=getattr(args, "address", None), progress=not args.quiet,
                              log_to_driver=not args.json)


def _ratio_prior(args, source, criterion, model, space, config, context):
    """Layer-wise ratio weights (concentration) or SNPFI's automatic per-layer sparsity, plus the
    channel scores when computing the prior already produced them (criterion snpfi)."""
    groups = space.select(config.strategy)
    if source == "concentration":
        from pruning.planning import concentration_weights

        return concentration_weights(context.stats, groups, alpha=args.alpha), config, None
    if source == "snpfi":
        snpfi = criterion if criterion.name == "snpfi" else create_criterion("snpfi", seed=args.seed)
        if _workers(args) and snpfi is not criterion:
            snpfi = _distributed_criterion(snpfi, args)
        scores, sparsity = snpfi.score_and_sparsity(model, groups, context, tau=args.tau)
        scores = scores if snpfi is criterion else None
        if config.flops_reduction is None:
            capped = {n: min(s, config.max_layer_ratio) for n, s in sparsity.items()}
            return None, replace(config, ratio=None, schedule=capped), scores
        return sparsity, config, scores
    return None, config, None
