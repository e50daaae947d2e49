"""``prunesweep pareto``: a sweep's Pareto front, read back from MLflow (``--export DIR``: its
models as checked ONNX files)."""
from __future__ import annotations

import argparse

from orchestrator.cli.options import add_output
from orchestrator.cli.result import CommandResult

#: ``--objective`` choices: the cost metric the front is recomputed over
COSTS = {"macs": "macs", "params": "params", "latency": "latency_ms"}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("pareto", help="print a sweep's Pareto front, read back from MLflow")
    add_output(p)
    p.add_argument("run_dir", metavar="RUN_DIR", help="the sweep's run directory")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the sweep's)")
    p.add_argument("--objective", default=None, choices=sorted(COSTS),
                   help="the front over the task's primary metric (accuracy, miou, ...) and this cost instead "
                        "of the sweep's objectives "
                        "(latency: the latency_ms the sweep measured on its deployment target)")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="also write each front model as DIR/<trial>.onnx, checked against PyTorch")
    return p


def run(args: argparse.Namespace) -> CommandResult:
    from pathlib import Path

    from orchestrator.sweeps import read_front  # torch, Ray, MLflow: only when run
    from orchestrator.sweeps.results import export_front
    from pruning.errors import InputError

    if args.export is not None and Path(args.export).exists() and not Path(args.export).is_dir():
        raise InputError(f"--export {args.export} is a file; give a folder to write the ONNX files into")
    cost = COSTS[args.objective] if args.objective else None
    result = read_front(args.run_dir, tracking_uri=args.tracking_uri, cost=cost)
    data, text = result.to_dict(), result.text()
    if args.export is not None:
        data["export"] = export_front(result.front, args.export)
        text += "\n" + "\n".join(
            f"-> {e['file']} (max abs difference {e['check']['max_abs_diff']:.3g} <= {e['check']['tolerance']:.3g})"
            for e in data["export"]) if data["export"] else "\nno front model to export"
    return CommandResult(text, data)
