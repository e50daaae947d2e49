"""``prunesweep eval``: a checkpoint's (or a ``--model``'s) test metrics (its task's: accuracy for
classification), MACs, parameters and latency."""
from __future__ import annotations

import argparse

from orchestrator.cli.options import (
    add_data, add_device, add_model_source, add_output, add_seed, add_task_options, show_progress,
)
from orchestrator.cli.result import CommandResult

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="evaluate a checkpoint: its task's metrics, MACs, parameters, latency")
    add_output(p, bars=True)
    add_seed(p)
    add_data(p, None)
    add_model_source(p)
    add_task_options(p, default="the checkpoint's, else classification")
    add_device(p)
    return p


def run(args: argparse.Namespace) -> CommandResult:
    from orchestrator.cli.common import command_device, describe_latency, load_fitting, make_test_loader, measure
    from orchestrator.report import format_table
    from pruning.training import evaluate

    device = command_device(args)
    loaded = load_fitting(args, prunable=False)  # evaluating needs no pruning
    loaded.model.to(device)
    progress = show_progress(args)
    test = evaluate(loaded.model, make_test_loader(loaded.splits, args, device), task=loaded.task, progress=progress,
                    amp=args.amp)
    data = {"checkpoint": args.checkpoint, "model": loaded.spec.name, "dataset": loaded.splits.name,
            "task": loaded.task_spec.to_dict(), "loss": test.loss,
            **measure(loaded.model, loaded.shape, test.metrics, progress=progress)}
    rows = [(k, v) for k, v in data.items() if k not in ("checkpoint", "latency", "task")]
    rows.insert(2, ("task", loaded.task_spec.name))
    text = format_table(rows, ("", args.checkpoint or args.weights or args.model)) + "\n" + describe_latency(data["latency"])
    return CommandResult(text, data)
