"""Segmentation example: one-shot criteria against a two-stage sweep, on mIoU and MACs.

The baseline is ``unet-small`` trained on the ``segmentation`` task (canvases composed from
Fashion-MNIST, 11 classes, mIoU); see docs/tasks.md for the commands. Three steps:

    # one-shot: every criterion at every MACs target with the default recipe, test mIoU
    python benchmarks/segmentation.py oneshot --checkpoint runs/seg/unet-small-seg.pt \\
        --out benchmarks/results/segmentation_oneshot.json
    # the sweep's refined trials (their pruned checkpoints), on the same test canvases
    prunesweep sweep --config search_spaces/examples/segmentation.yaml
    python benchmarks/segmentation.py sweep runs/sweeps/segmentation-unet-small \\
        --out benchmarks/results/segmentation_sweep.json
    # the table (into docs/benchmarks.md's generated block with --write/--key)
    python benchmarks/segmentation.py report benchmarks/results/segmentation_oneshot.json \\
        benchmarks/results/segmentation_sweep.json

A rerun of ``oneshot`` with the same ``--out`` skips the cells the file holds.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import yaml

try:
    from benchmarks.docs_blocks import add_block_arguments, criterion_label, write_or_print
except ImportError:  # run as a script from benchmarks/
    from docs_blocks import add_block_arguments, criterion_label, write_or_print

from pruning.criteria import ScoringContext, create_criterion, statistics_options
from pruning.data import DataConfig, calibration_batches, make_loader
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig
from pruning.recovery import RecoveryRecipe, recover, recovery_data_for
from pruning.statistics import collect_activation_stats
from pruning.structure import PruningSpace, load_checkpoint, measure_cost
from pruning.tasks import TaskSpec
from pruning.training import evaluate
from pruning.utils import atomic_write

#: (criterion, options): the criteria at their defaults, and Shapley with 8x its default scoring
#: budget, playing for the task's loss (default) or for agreement with the unpruned outputs
CRITERIA = (("l1", {}), ("taylor", {}), ("entropy", {}), ("shapley", {}), ("shapley", {"max_forward_passes": 8.0}),
            ("shapley", {"max_forward_passes": 8.0, "value": "distill"}))
TARGETS = (0.3, 0.5, 0.7)


def _baseline(checkpoint: str, test_subset: int | None):
    model, spec = load_checkpoint(checkpoint)
    task = TaskSpec.from_record(spec.meta.get("task")).build()
    splits = task.load_data(DataConfig(**{**spec.meta["data"], "test_subset": test_subset}))
    return model.eval(), spec, task, splits


def oneshot(args) -> None:
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    done = {(r["criterion"], json.dumps(r.get("options", {}), sort_keys=True), r["target"]) for r in result["rows"]}
    model, spec, task, splits = _baseline(args.checkpoint, args.test_subset)
    shape = tuple(spec.input_shape)
    example = task.example_inputs(shape)
    space = PruningSpace.build(model, example)
    batches = calibration_batches(splits, args.calibration_images, 64)
    test = make_loader(splits.test, 256, shuffle=False)
    base_macs = measure_cost(model, shape).macs
    base = evaluate(model, test, task=task)
    result.update(checkpoint=args.checkpoint, task=TaskSpec.from_record(spec.meta.get("task")).to_dict(),
                  base_test=base.metrics, base_macs=base_macs, test_images=len(splits.test),
                  calibration_images=args.calibration_images, recipe=RecoveryRecipe().to_dict(),
                  machine=f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, options in CRITERIA:
        criterion = create_criterion(name, **options)
        stats = None
        if criterion.needs_stats:
            stats = collect_activation_stats(model, space.groups, batches, statistics_options([criterion]))
        for target in TARGETS:
            if (name, json.dumps(options, sort_keys=True), target) in done:
                continue
            started = time.perf_counter()
            context = ScoringContext(calibration=batches, stats=stats, task=task)
            outcome = prune_with_criterion(model, example, criterion, PruningConfig(flops_reduction=target), context)
            recovered = recover(model, outcome, RecoveryRecipe(), recovery_data_for(splits, batches, None, task=task))
            measured = evaluate(recovered.model, test, task=task)
            macs = measure_cost(recovered.model, shape).macs
            result["rows"].append({"criterion": name, "options": options, "target": target, "macs": macs,
                                   "macs_reduction": 1 - macs / base_macs, "test": measured.metrics,
                                   "seconds": time.perf_counter() - started})
            print(json.dumps(result["rows"][-1]), flush=True)
            atomic_write(out, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))


def sweep(args) -> None:
    run_dir = Path(args.run_dir)
    config = yaml.safe_load((run_dir / "sweep.yaml").read_text())
    model, spec, task, splits = _baseline(config["checkpoint"], args.test_subset)
    test = make_loader(splits.test, 256, shuffle=False)
    base_macs = measure_cost(model, tuple(spec.input_shape)).macs
    rows = []
    for trial in sorted((run_dir / "tune-refine").glob("sweep_trial_*")):
        saved = sorted(trial.glob("checkpoint_*"))
        if not saved:
            continue
        metrics = json.loads((saved[-1] / "metrics.json").read_text())
        pruned, pruned_spec = load_checkpoint(saved[-1] / "pruned.pt")
        macs = measure_cost(pruned, tuple(pruned_spec.input_shape)).macs
        rows.append({"trial": json.loads((trial / "params.json").read_text()).get("trial_meta", trial.name),
                     "criterion": metrics.get("criterion"), "calibration": {m.name: metrics.get(m.name)
                                                                           for m in task.metrics},
                     "macs": macs, "macs_reduction": 1 - macs / base_macs,
                     "test": evaluate(pruned, test, task=task).metrics})
        print(json.dumps(rows[-1]), flush=True)
    result = {"run_dir": str(run_dir), "sweep": config["sweep"], "space": config["space"],
              "recipe": config.get("recipe"), "base_test": evaluate(model, test, task=task).metrics,
              "base_macs": base_macs, "rows": rows, "machine": f"{platform.machine()}, torch {torch.__version__}"}
    atomic_write(Path(args.out), lambda tmp: tmp.write_text(json.dumps(result, indent=1)))


def _best_oneshot(rows: list[dict], reduction: float, metric: str) -> dict | None:
    """The one-shot cell with the highest ``metric`` among those removing at least ``reduction``
    of the MACs, within 1 point (as the other sweep comparisons count a target met)."""
    reaching = [r for r in rows if r["macs_reduction"] >= reduction - 0.01]
    return max(reaching, key=lambda r: r["test"][metric], default=None)


def report(oneshot_path: str, sweep_path: str | None) -> str:
    one = json.loads(Path(oneshot_path).read_text())
    base, metric = one["base_test"], "miou"
    lines = [f"Baseline `unet-small`: test mIoU {base['miou']:.4f}, pixel accuracy {base['pixel_accuracy']:.4f} on "
             f"{one['test_images']} test canvases; {one['base_macs'] / 1e6:.1f} M MACs. One-shot cells: the default "
             f"recipe (reconstruction, BN recalibration, no fine-tuning), {one['calibration_images']} calibration "
             "canvases.", "",
             "| criterion | " + " | ".join(f"-{round(100 * t)}% target: MACs removed, mIoU" for t in TARGETS) + " |",
             "|---|" + "---|" * len(TARGETS)]
    pipelines = list(dict.fromkeys((r["criterion"], json.dumps(r.get("options", {}), sort_keys=True))
                                   for r in one["rows"]))  # every criterion and options the file holds, in its order
    for name, key in pipelines:
        options = json.loads(key)
        cells = {r["target"]: r for r in one["rows"] if r["criterion"] == name and r.get("options", {}) == options}
        lines.append(f"| {criterion_label(name, options)} | " + " | ".join(
            f"{100 * cells[t]['macs_reduction']:.1f}%, {cells[t]['test'][metric]:.4f} "
            f"({100 * (cells[t]['test'][metric] - base[metric]):+.2f})" if t in cells else "-" for t in TARGETS) + " |")
    if sweep_path:
        swept = json.loads(Path(sweep_path).read_text())
        lines += ["", f"Two-stage sweep ({swept['sweep']['trials']} screening trials, "
                  f"{len(swept['rows'])} refined; refinement recipe {json.dumps(swept['sweep']['refine']['recipe'])}); "
                  "each refined trial against the best one-shot cell removing at least as many MACs (within 1 point):", "",
                  "| refined trial | criterion | MACs removed | test mIoU | best one-shot removing as many | "
                  "difference |", "|---|---|---|---|---|---|"]
        for row in sorted(swept["rows"], key=lambda r: r["macs_reduction"]):
            best = _best_oneshot(one["rows"], row["macs_reduction"], metric)
            versus = (f"{criterion_label(best['criterion'], best.get('options'))} -{round(100 * best['target'])}%: "
                      f"{best['test'][metric]:.4f}"
                      if best else "none removes as much")
            gap = f"{100 * (row['test'][metric] - best['test'][metric]):+.2f}" if best else "-"
            lines.append(f"| {row['trial']} | {row['criterion']} | {100 * row['macs_reduction']:.1f}% | "
                         f"{row['test'][metric]:.4f} | {versus} | {gap} |")
    lines += ["", f"Machine: {one['machine']}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    first = commands.add_parser("oneshot")
    first.add_argument("--checkpoint", required=True)
    first.add_argument("--out", required=True)
    first.add_argument("--calibration-images", type=int, default=512)
    first.add_argument("--test-subset", type=int, default=None)
    second = commands.add_parser("sweep")
    second.add_argument("run_dir")
    second.add_argument("--out", required=True)
    second.add_argument("--test-subset", type=int, default=None)
    third = commands.add_parser("report")
    third.add_argument("oneshot")
    third.add_argument("sweep", nargs="?")
    add_block_arguments(third)
    args = parser.parse_args()
    if args.command == "oneshot":
        oneshot(args)
    elif args.command == "sweep":
        sweep(args)
    else:
        write_or_print(parser, args, report(args.oneshot, args.sweep))


if __name__ == "__main__":
    main()
