"""Cost of the least-squares reconstruction at ImageNet resolution, and the error its row budget adds.

1. Cost (``--models`` x ``--images`` x ``--floors``, each in a fresh child process so that its peak resident
   memory is its own): a torchvision model (random init, seeded) pruned with L1 at
   ``--flops-reduction`` of its MACs (``prune_with_criterion``, the default strategy and
   planning), then ``reconstruct_consumers`` on ``--images`` random 224 px images in batches of
   ``--batch-size``, each fit sampling at least ``--floors`` rows per column (the recipe's
   ``reconstruct_rows``). Reported: reconstruction seconds as a ratio to a plain forward pass of the
   unpruned model over the same images, timed in the same process (wall times vary with load),
   and the peak resident set size of the process (model, data, pruning and reconstruction).
2. Error of the row budget (``--error-model``, small inputs): the same pruning, then the
   budgeted reconstruction and the exact one (``RowBudget.unbounded()``: every row) on
   copies; per layer, the relative error of each fit on the budgeted run's check rows, and the
   relative MSE of the final logits vs the unpruned model's on held-out images.

    python benchmarks/reconstruction_cost.py --threads 2 --floors 16 4 1 --skip-error \\
        --out benchmarks/results/reconstruction_cost.json
    python benchmarks/reconstruction_cost.py --report benchmarks/results/reconstruction_cost.json \\
        [--write docs/scale.md --key reconstruction-cost]
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.docs_blocks import add_block_arguments, write_or_print  # noqa: E402
from pruning.criteria import create_criterion  # noqa: E402
from pruning.models import create_model  # noqa: E402
from pruning.pipeline import prune_with_criterion  # noqa: E402
from pruning.planning import PruningConfig  # noqa: E402
from pruning.recovery import RowBudget, consumers_of, kept_outputs_of, reconstruct_consumers  # noqa: E402
from pruning.utils import atomic_write  # noqa: E402


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _pruned(model_name: str, size: int, target: float, seed: int):
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=1000).eval()
    example = torch.randn(1, 3, size, size)
    outcome = prune_with_criterion(model, example, create_criterion("l1"), PruningConfig(flops_reduction=target))
    return model, outcome


def _batches(images: int, batch_size: int, size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(min(batch_size, images - lo), 3, size, size, generator=g), torch.zeros(1))
            for lo in range(0, images, batch_size)]


def cost(args) -> dict:
    """One model and image count (run in its own process)."""
    torch.set_num_threads(args.threads)
    model, outcome = _pruned(args.model, 224, args.flops_reduction, args.seed)
    batches = _batches(args.images, args.batch_size, 224, args.seed + 1)
    layers = consumers_of(outcome.space, outcome.kept_indices)
    with torch.no_grad():
        model(batches[0][0][:2])  # warm-up
        started = time.perf_counter()
        for x, _ in batches:
            model(x)
        forward = time.perf_counter() - started
    rss_before = _peak_rss_mib()
    started = time.perf_counter()
    reports = reconstruct_consumers(model, outcome.model, layers, batches, budget=RowBudget.with_floor(args.floor),
                                    kept_outputs=kept_outputs_of(outcome.space, outcome.kept_indices))
    seconds = time.perf_counter() - started
    return {
        "model": args.model, "images": args.images, "threads": args.threads, "layers": len(layers),
        "min_rows_per_column": args.floor,
        "planned_reduction": outcome.planned_reduction, "forward_seconds": forward,
        "reconstruction_seconds": seconds, "ratio_to_forward": seconds / forward,
        "peak_rss_mib_before_reconstruction": rss_before, "peak_rss_mib": _peak_rss_mib(),
        "refit": sum(r.status == "refit" for r in reports.values()),
        "median_error_before": _median([r.error_before for r in reports.values()]),
        "median_error_after": _median([r.error_after for r in reports.values()]),
    }


def _median(values):
    values = sorted(values)
    return values[len(values) // 2] if values else None


def budget_error(args) -> dict:
    """The budgeted fit vs the exact one (every row) on a small model at small inputs."""
    torch.set_num_threads(args.threads)
    model, outcome = _pruned(args.error_model, args.error_size, args.flops_reduction, args.seed)
    batches = _batches(args.error_images, args.batch_size, args.error_size, args.seed + 1)
    held_out = _batches(256, 256, args.error_size, args.seed + 2)[0][0]
    layers = consumers_of(outcome.space, outcome.kept_indices)
    kept = kept_outputs_of(outcome.space, outcome.kept_indices)
    result = {"model": args.error_model, "input_size": args.error_size, "images": args.error_images}
    with torch.no_grad():
        reference = model(held_out)
    for label, budget in (("budget", RowBudget()), ("exact", RowBudget.unbounded())):
        pruned = copy.deepcopy(outcome.model)
        started = time.perf_counter()
        reports = reconstruct_consumers(model, pruned, layers, batches, kept_outputs=kept, budget=budget)
        seconds = time.perf_counter() - started
        with torch.no_grad():
            logits = pruned.eval()(held_out)
        result[label] = {
            "seconds": seconds,
            "logits_relative_mse": float(((logits - reference) ** 2).sum() / (reference ** 2).sum()),
            "rows": {name: r.rows for name, r in reports.items()},
            "error_after": {name: r.error_after for name, r in reports.items()},
        }
    with torch.no_grad():
        logits = outcome.model.eval()(held_out)
    result["pruned_logits_relative_mse"] = float(((logits - reference) ** 2).sum() / (reference ** 2).sum())
    return result


def render(result: dict) -> str:
    """The cost runs as a table: per model and image count, the ratio to a forward for each floor."""
    floors = sorted({run.get("min_rows_per_column", RowBudget.min_rows_per_column) for run in result["cost"]},
                    reverse=True)
    cell = {(run["model"], run["images"], run.get("min_rows_per_column", RowBudget.min_rows_per_column)): run
            for run in result["cost"]}
    lines = ["| model | images | " + " | ".join(f"floor {f:g}: x forward (peak MiB)" for f in floors) + " |",
             "|---|---|" + "---|" * len(floors)]
    for model, images in dict.fromkeys((run["model"], run["images"]) for run in result["cost"]):
        cells = [f"{c['ratio_to_forward']:.2f} ({c['peak_rss_mib']:.0f})" if (c := cell.get((model, images, f)))
                 else "-" for f in floors]
        lines.append(f"| {model} | {images} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["torchvision:resnet18", "torchvision:resnet50",
                                                         "torchvision:mobilenet_v2"])
    parser.add_argument("--images", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--flops-reduction", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--floors", nargs="+", type=float, default=[RowBudget.min_rows_per_column],
                        help="rows per column each fit samples at least (the recipe's reconstruct_rows)")
    parser.add_argument("--error-model", default="torchvision:resnet18")
    parser.add_argument("--error-size", type=int, default=64)
    parser.add_argument("--error-images", type=int, default=128)
    parser.add_argument("--skip-error", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/reconstruction_cost.json")
    parser.add_argument("--report", metavar="FILE", help="render a result file instead of measuring")
    add_block_arguments(parser)
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "IMAGES", "FLOOR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.report:
        write_or_print(parser, args, render(json.loads(open(args.report).read())))
        return
    if args.child:
        args.model, args.images, args.floor = args.child[0], int(args.child[1]), float(args.child[2])
        print(json.dumps(cost(args)))
        return
    runs = []
    for model, images, floor in itertools.product(args.models, args.images, args.floors):
        child = [sys.executable, __file__, "--child", model, str(images), str(floor), "--threads", str(args.threads),
                 "--batch-size", str(args.batch_size), "--flops-reduction", str(args.flops_reduction),
                 "--seed", str(args.seed)]
        out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    result = {"load_average": os.getloadavg(), "cost": runs}
    if not args.skip_error:
        result["budget_error"] = budget_error(args)
        print(json.dumps({k: v for k, v in result["budget_error"].items() if k not in ("budget", "exact")}))
    atomic_write(args.out, lambda path: path.write_text(json.dumps(result, indent=2) + "\n"))


if __name__ == "__main__":
    main()
