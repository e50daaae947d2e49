"""A two-stage sweep whose refinement prunes each candidate in one shot and in steps: every refined
trial's pruned model on the test split, the pairs side by side.

    prunesweep sweep --config benchmarks/progressive_sweep.yaml
    python benchmarks/progressive_sweep.py runs/sweeps/progressive-resnet20-fmnist \\
        --out benchmarks/results/progressive_sweep_resnet20.json
    python benchmarks/progressive_sweep.py --report benchmarks/results/progressive_sweep_resnet20.json

Reads the refinement's Tune trial folders (``<run_dir>/tune-refine``: each trial's name, its
metrics and its pruned checkpoint) and the baseline the sweep config names.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
import yaml

try:
    from benchmarks.docs_blocks import add_block_arguments, write_or_print
except ImportError:  # run as a script from benchmarks/
    from docs_blocks import add_block_arguments, write_or_print

from pruning.data import DataConfig, load_data, make_loader
from pruning.structure import load_checkpoint
from pruning.training import evaluate


def measure(run_dir: Path) -> dict:
    config = yaml.safe_load((run_dir / "sweep.yaml").read_text())
    baseline, spec = load_checkpoint(config["checkpoint"])
    test = make_loader(load_data(DataConfig(**spec.meta["data"])).test, 500, shuffle=False)
    rows = []
    for trial in sorted((run_dir / "tune-refine").glob("sweep_trial_*")):
        saved = sorted(trial.glob("checkpoint_*"))
        if not saved:
            continue
        params = json.loads((trial / "params.json").read_text())
        metrics = json.loads((saved[-1] / "metrics.json").read_text())
        model, _ = load_checkpoint(saved[-1] / "pruned.pt")
        rows.append({"name": params["trial_meta"], "criterion": params["criterion"],
                     "steps": json.loads(metrics["recipe"])["steps"], "calibration_accuracy": metrics["accuracy"],
                     "macs_reduction": metrics["macs_reduction"], "test_accuracy": evaluate(model, test).score,
                     "recover_seconds": metrics["recover_seconds"]})
        print(json.dumps(rows[-1]), flush=True)
    return {"run_dir": str(run_dir), "checkpoint": config["checkpoint"], "refine": config["sweep"]["refine"],
            "trials": config["sweep"]["trials"], "base_test_accuracy": evaluate(baseline, test).score,
            "test_images": len(test.dataset), "rows": rows,
            "machine": f"{platform.machine()}, torch {torch.__version__}"}


def report(path: str) -> str:
    result = json.loads(Path(path).read_text())
    base = result["base_test_accuracy"]
    pairs: dict[str, dict[int, dict]] = {}
    for row in result["rows"]:
        pairs.setdefault(row["name"].rsplit("-s", 1)[0], {})[row["steps"]] = row
    steps = sorted({row["steps"] for row in result["rows"]})
    lines = [f"Baseline test accuracy {base:.4f} on {result['test_images']} test images; {result['trials']} screening "
             f"trials, refinement recipe {json.dumps(result['refine']['recipe'])}.", "",
             "| candidate | criterion | MACs removed | " + " | ".join(
                 f"calibration acc., {s} step{'s' * (s > 1)}" for s in steps) + " | " + " | ".join(
                 f"test acc., {s} step{'s' * (s > 1)}" for s in steps) + " |",
             "|---|---|---|" + "---|" * (2 * len(steps))]
    for name, by_steps in sorted(pairs.items()):
        first = next(iter(by_steps.values()))
        lines.append(f"| {name} | {first['criterion']} | {100 * first['macs_reduction']:.1f}% | " + " | ".join(
            f"{by_steps[s]['calibration_accuracy']:.4f}" if s in by_steps else "-" for s in steps) + " | " + " | ".join(
            f"{by_steps[s]['test_accuracy']:.4f} ({100 * (by_steps[s]['test_accuracy'] - base):+.2f})"
            if s in by_steps else "-" for s in steps) + " |")
    if len(steps) == 2:
        differences = [p[steps[1]]["test_accuracy"] - p[steps[0]]["test_accuracy"] for p in pairs.values()
                       if len(p) == 2]
        lines += ["", f"{steps[1]} steps against {steps[0]}: mean test-accuracy difference "
                  f"{100 * statistics.fmean(differences):+.2f} points over {len(differences)} candidates "
                  f"({sum(d > 0 for d in differences)} higher)."]
    reached = [row for row in result["rows"] if row["macs_reduction"] >= 0.7]
    if reached:
        best = max(reached, key=lambda row: row["test_accuracy"])
        lines.append(f"Best refined model at >= 70% MACs removed: {best['name']}, {100 * best['macs_reduction']:.1f}% "
                     f"removed, test accuracy {best['test_accuracy']:.4f} ({100 * (best['test_accuracy'] - base):+.2f} "
                     "points from the baseline).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--out")
    parser.add_argument("--report", default=None, help="render this result file instead of measuring")
    add_block_arguments(parser)
    args = parser.parse_args()
    if args.report:
        write_or_print(parser, args, report(args.report))
        return
    if not (args.run_dir and args.out):
        parser.error("give RUN_DIR and --out (or --report FILE)")
    result = measure(Path(args.run_dir))
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
