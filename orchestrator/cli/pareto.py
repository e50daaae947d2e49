"""``prunesweep pareto``: a sweep's Pareto front, read back from MLflow."""
from __future__ import annotations

import argparse

from orchestrator.cli.options import add_output
from orchestrator.cli.result import CommandResult


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("pareto", help="print a sweep's Pareto front, read back from MLflow")
    add_output(p)
    p.add_argument("run_dir", metavar="RUN_DIR", help="the sweep's run directory")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the sweep's)")
    return p


def run(args: argparse.Namespace) -> CommandResult:
    from orchestrator.sweeps import read_front  # torch, Ray, MLflow: only when run

    result = read_front(args.run_dir, tracking_uri=args.tracking_uri)
    return CommandResult(result.text(), result.to_dict())
