"""``prunesweep info``: the registered models (and the forms of a model of your own), criteria,
datasets, tasks, strategies and ratio sources."""
from __future__ import annotations

import argparse

from orchestrator.cli.options import add_output
from orchestrator.cli.result import CommandResult

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="list models, criteria, datasets, tasks, strategies and ratio allocations")
    add_output(p)
    return p


def run(args: argparse.Namespace) -> CommandResult:
    from orchestrator.cli.prune import list_ratio_sources
    from pruning.criteria import list_criteria
    from pruning.data import list_datasets
    from pruning.models import list_models
    from pruning.structure import STRATEGIES
    from pruning.tasks import list_tasks

    data = {
        "models": list_models(),
        "own_models": ["torchvision:<name>", "timm:<name>", "package.module:factory"],
        "criteria": list_criteria(),
        "datasets": list_datasets(),
        "tasks": [*list_tasks(), "package.module:factory"],
        "strategies": list(STRATEGIES),
        "ratios": [*list_ratio_sources(), "FILE.json"],
    }
    text = "\n".join(f"{key:<11} {', '.join(values)}" for key, values in data.items())
    return CommandResult(text, data)
