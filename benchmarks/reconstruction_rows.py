"""How many rows a reconstruction fit needs: test accuracy after reconstruction on a trained
small model for row budgets and ridges, against the fit on every row.

Per case (criterion, seed, target; uniform ratios), the model is pruned once and reconstructed
from copies with each variant ``rows_per_column/min_rows_per_column/cost/ridge`` (``inf`` allowed;
``exact``: every row), then scored on the test images. The seconds are the reconstruction's,
in this process.

    python benchmarks/reconstruction_rows.py --checkpoint runs/bench/resnet20-fmnist.pt \\
        --out benchmarks/results/resnet20_fmnist_reconstruction_rows.json
    python benchmarks/reconstruction_rows.py --report benchmarks/results/resnet20_fmnist_reconstruction_rows.json \\
        [--write docs/scale.md --key reconstruction-rows]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.benchmark_baseline import load_benchmark_baseline  # noqa: E402
from benchmarks.docs_blocks import add_block_arguments, write_or_print  # noqa: E402
from pruning.criteria import create_criterion  # noqa: E402
from pruning.pipeline import prune_with_criterion  # noqa: E402
from pruning.planning import PruningConfig  # noqa: E402
from pruning.recovery import RowBudget, consumers_of, kept_outputs_of, reconstruct_consumers  # noqa: E402
from pruning.training import evaluate  # noqa: E402
from pruning.utils import atomic_write  # noqa: E402

VARIANTS = ("exact", "32/16/0.25/0.001", "32/0/0.25/0.001", "32/0/0.25/0.01", "32/0/0.25/0.1", "32/0/0.25/1",
            "32/4/0.25/0.1", "4/4/inf/0.001", "8/8/inf/0.001", "16/16/inf/0.001", "32/32/inf/0.001")


def parse_variant(text: str) -> tuple[RowBudget, float]:
    """``exact`` or ``rows_per_column/min_rows_per_column/cost/ridge``."""
    if text == "exact":
        return RowBudget.unbounded(), 1e-3
    try:
        rows, floor, cost, ridge = (float(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"variant {text!r}: expected exact or rows/min_rows/cost/ridge") from None
    return RowBudget(rows_per_column=rows, min_rows_per_column=floor, cost=cost), ridge


def render(result: dict) -> str:
    """Variants as rows, cases as columns: accuracy (difference to the exact fit) and seconds."""
    cases = list(dict.fromkeys((r["criterion"], r["seed"], r["target"]) for r in result["rows"]))
    cell = {(r["criterion"], r["seed"], r["target"], r["variant"]): r for r in result["rows"]}
    header = " | ".join(f"{c} seed {s} at -{t:.0%}" for c, s, t in cases)
    lines = [f"| rows per column / floor / cost / ridge | {header} |", "|---|" + "---|" * len(cases)]
    for variant in dict.fromkeys(r["variant"] for r in result["rows"]):
        cells = []
        for case in cases:
            row, exact = cell.get((*case, variant)), cell.get((*case, "exact"))
            if row is None:
                cells.append("-")
                continue
            gap = f" ({row['accuracy'] - exact['accuracy']:+.4f})" if exact is not None and variant != "exact" else ""
            cells.append(f"{row['accuracy']:.4f}{gap}, {row['seconds']:.1f} s")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return (f"Base accuracy {result['base_accuracy']:.4f} on the first {result['test_subset']} test images; "
            f"{result['calibration_images']} calibration images, {result['threads']} thread(s).\n\n" + "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--report", metavar="FILE", help="render a result file instead of measuring")
    add_block_arguments(parser)
    parser.add_argument("--cases", nargs="+", default=["random:0:0.5", "l1:0:0.7"], help="criterion:seed:target")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--test-subset", type=int, default=3000)
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.report:
        write_or_print(parser, args, render(json.loads(Path(args.report).read_text())))
        return
    if not (args.checkpoint and args.out):
        parser.error("--checkpoint and --out are required to measure")
    variants = {text: parse_variant(text) for text in args.variants}
    torch.set_num_threads(args.threads)
    base = load_benchmark_baseline(args.checkpoint, strategy="full", test_subset=args.test_subset,
                                   calibration_images=args.calibration_images, batch_size=128)
    rows = []
    for case in args.cases:
        name, seed, target = case.split(":")
        outcome = prune_with_criterion(base.model, torch.zeros(1, *base.shape), create_criterion(name, seed=int(seed)),
                                       PruningConfig(flops_reduction=float(target)), space=base.space)
        layers = consumers_of(outcome.space, outcome.kept_indices)
        kept = kept_outputs_of(outcome.space, outcome.kept_indices)
        for text, (budget, ridge) in variants.items():
            pruned = copy.deepcopy(outcome.model)
            started = time.perf_counter()
            reports = reconstruct_consumers(base.model, pruned, layers, base.batches, kept_outputs=kept,
                                            budget=budget, ridge=ridge)
            seconds = time.perf_counter() - started
            row = {"criterion": name, "seed": int(seed), "target": float(target), "variant": text,
                   "accuracy": evaluate(pruned, base.test_loader).score, "seconds": seconds,
                   "rows": {layer: r.rows for layer, r in reports.items()}}
            print(json.dumps({k: v for k, v in row.items() if k != "rows"}), flush=True)
            rows.append(row)
    result = {"checkpoint": args.checkpoint, "base_accuracy": base.base_accuracy, "test_subset": args.test_subset,
              "calibration_images": args.calibration_images, "threads": args.threads, "rows": rows}
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1) + "\n"))


if __name__ == "__main__":
    main()
