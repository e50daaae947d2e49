"""``prunesweep train``: train a model for a task (``--task``, default classification) on a dataset
and save a checkpoint that records the task; ``--weights`` starts from a state_dict instead of a
random initialisation."""
from __future__ import annotations

import argparse

from orchestrator.cli.options import (
    MODEL_HELP, add_data, add_device, add_model_options, add_output, add_seed, add_task_options, check_minimum,
    check_output_files, show_progress,
)
from orchestrator.cli.result import CommandResult

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a model and save a checkpoint")
    add_output(p, bars=True)
    add_seed(p)
    add_data(p, "fashion-mnist")
    p.add_argument("--model", default="resnet20", help=MODEL_HELP + " (default: resnet20)")
    add_model_options(p)
    add_task_options(p, default="classification")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--lr-schedule", default="cosine", help="cosine or onecycle (default: cosine)")
    p.add_argument("--train-subset", type=int, default=None, help="train on the first N training images only")
    p.add_argument("--calibration-size", type=int, default=2000,
                   help="training images held out as the calibration split (default: 2000)")
    p.add_argument("--out", required=True, help="checkpoint path to write")
    add_device(p)
    return p


def run(args: argparse.Namespace) -> CommandResult:
    import time
    from dataclasses import asdict, replace

    import torch

    from pathlib import Path

    from orchestrator.cli.common import command_device, command_task, make_data_config, make_test_loader, model_source
    from orchestrator.report import format_table
    from pruning.data import make_loader
    from pruning.models import is_external
    from pruning.structure import model_for_data, save_checkpoint
    from pruning.training import TrainConfig, evaluate, train

    check_output_files(args, "--out")
    check_minimum(args, "--batch-size", 1)
    device = command_device(args)
    train_config = TrainConfig(
        epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, schedule=args.lr_schedule,
        batch_size=args.batch_size, seed=args.seed,
    )
    kwargs, state = model_source(args)  # a bad name, option or weights file fails before data loading
    task_spec = command_task(args)
    task = task_spec.build()
    config = make_data_config(args, train_subset=args.train_subset, calibration_size=args.calibration_size, seed=args.seed)
    splits = task.load_data(config)
    torch.manual_seed(args.seed)
    # a model that needs other images, or that the pruning engine cannot handle, fails before training
    model, spec, _ = model_for_data(args.model, splits, weights=state, kwargs=kwargs, prunable=is_external(args.model),
                                    weights_name=args.weights, task=task)
    model.to(device)  # built (and initialised) on the CPU: the same weights on any device
    started = time.perf_counter()
    loader = make_loader(splits.train, args.batch_size, shuffle=True, seed=args.seed, augment=splits.augment_by_default,
                         num_workers=args.loader_workers, pin_memory=device.type == "cuda")
    progress = show_progress(args)
    history = train(model, loader, train_config, progress=progress, amp=args.amp, task=task)
    seconds = time.perf_counter() - started
    test = evaluate(model, make_test_loader(splits, args, device), task=task, progress=progress, amp=args.amp)
    tested = {f"test_{name}": value for name, value in test.metrics.items()}
    meta = {"data": asdict(config), "task": task_spec.to_dict(), "train": asdict(train_config), **tested,
            "history": history, "train_seconds": seconds}
    if args.weights is not None:
        meta["weights"] = str(Path(args.weights).absolute())
    save_checkpoint(args.out, model, replace(spec, meta=meta))
    data = {"model": args.model, "dataset": splits.name, "task": task_spec.to_dict(), "epochs": args.epochs,
            "train_seconds": seconds, **tested, "test_loss": test.loss, "checkpoint": str(args.out), "history": history}
    names = [metric.name for metric in task.metrics]
    rows = [(h["epoch"], h["loss"], *(h[name] for name in names)) for h in history]
    others = "".join(f"{name} {test.metrics[name]:.4f}, " for name in names if name != task.primary)
    text = (
        f"trained {args.model} for {task_spec.name} on {splits.name} ({len(splits.train)} images) in {seconds:.0f} s\n"
        + format_table(rows, ("epoch", "train loss", *(f"train {name}" for name in names)))
        + f"\ntest {task.primary} {test.score:.4f} ({others}loss {test.loss:.4f}) -> {args.out}"
    )
    return CommandResult(text, data)
