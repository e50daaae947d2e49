"""Progressive against one-shot pruning at high compression, after the same short fine-tune.

Every cell prunes the same baseline with one criterion's plan (uniform layer ratios at a MACs
target), in ``steps`` prunings (1: one shot; ``RecoveryRecipe.steps``), with reconstruction and BN
recalibration after every step, then ONE fine-tune epoch over the first ``--finetune-subset``
training images distilled from the unpruned model (weight ``--distill``): the refinement stage's
fine-tune. Between steps there is no SGD, so every cell has the same fine-tune budget; with
``--split-finetune`` that budget is split evenly over the steps instead (the same number of
images: ``step_finetune_batches`` after every step but the last, the rest after the last). A cell's ``seed`` is its recipe's (reconstruction rows, BN and
fine-tune batches); cells of one seed are paired.

    python benchmarks/progressive.py --checkpoint runs/bench/resnet20-fmnist.pt \\
        --out benchmarks/results/progressive_resnet20.json
    python benchmarks/progressive.py --report benchmarks/results/progressive_resnet20.json

A rerun with the same ``--out`` skips the cells the file holds (each cell is written as it ends).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks.docs_blocks import add_block_arguments, write_or_print
from pruning.criteria import ScoringContext, create_criterion, statistics_options
from pruning.data import DataConfig, calibration_batches, load_data, make_loader
from pruning.pipeline import prune_with_criterion
from pruning.planning import RatioInputs, RatioTarget, create_ratio_source
from pruning.recovery import RecoveryData, RecoveryRecipe, Rescorer, recover
from pruning.structure import PruningSpace, load_checkpoint, measure_cost
from pruning.training import evaluate
from pruning.utils import atomic_write


class Bench:
    """The baseline, its data and the recipe every cell shares but for its steps and seed."""

    def __init__(self, args) -> None:
        self.args = args
        self.model, self.spec = load_checkpoint(args.checkpoint)
        self.model.eval()
        self.splits = load_data(DataConfig(**{**self.spec.meta["data"], "test_subset": args.test_subset}))
        self.shape = tuple(self.spec.input_shape)
        self.example = torch.zeros(1, *self.shape)
        self.space = PruningSpace.build(self.model, self.example)
        self.batches = calibration_batches(self.splits, args.calibration_images, 128)
        self.test = make_loader(self.splits.test, 500, shuffle=False)
        self.base_macs = measure_cost(self.model, self.shape).macs
        self.base_accuracy = evaluate(self.model, self.test).score
        self.recipe = RecoveryRecipe(step_order=args.order)
        self.finetune = RecoveryRecipe(reconstruct=False, bn_batches=0, finetune_epochs=1,
                                       finetune_subset=args.finetune_subset, distill=args.distill)

    def context(self, criterion) -> ScoringContext:
        stats = None
        if criterion.needs_stats:
            from pruning.statistics import collect_activation_stats

            stats = collect_activation_stats(self.model, self.space.groups, self.batches,
                                             statistics_options([criterion]))
        return ScoringContext(calibration=self.batches, stats=stats)

    def cell(self, criterion, context: ScoringContext, target: float, steps: int, seed: int, scores) -> dict:
        plan = create_ratio_source(self.args.ratios).plan(RatioTarget(flops_reduction=target, strategy="full"),
                                                          RatioInputs(self.space, stats=context.stats))
        outcome = prune_with_criterion(self.model, self.example, criterion, plan.config, context,
                                       ratio_weights=plan.ratio_weights, space=self.space, scores=scores)
        data = RecoveryData(calibration=self.batches, train=self.splits.train, augment=self.splits.augment_by_default,
                            score=self.test, score_every_stage=False,
                            rescorer=Rescorer(criterion, self.example, ScoringContext(calibration=self.batches)))
        recipe = dataclasses.replace(self.recipe, steps=steps, seed=seed)
        finetune = dataclasses.replace(self.finetune, seed=seed)
        if self.args.split_finetune and steps > 1:
            batches = round(self.args.finetune_subset / steps / recipe.batch_size)
            recipe = dataclasses.replace(recipe, step_finetune_batches=batches)
            finetune = dataclasses.replace(finetune, finetune_subset=self.args.finetune_subset
                                           - (steps - 1) * batches * recipe.batch_size)
        wall, cpu = time.perf_counter(), time.process_time()
        recovered = recover(self.model, outcome, recipe, data)
        recovery_cpu = time.process_time() - cpu
        tuned = recover(self.model, recovered.outcome, finetune, dataclasses.replace(data, rescorer=None))
        cost = measure_cost(recovered.model, self.shape)
        return {"bn_test_accuracy": recovered.final_score, "test_accuracy": tuned.final_score,
                "macs_reduction": 1 - cost.macs / self.base_macs, "steps_run": max(1, len(recovered.steps)),
                "recovery_seconds": recovered.total_seconds, "recovery_cpu_seconds": recovery_cpu,
                "finetune_seconds": tuned.total_seconds, "seconds": time.perf_counter() - wall,
                **recovered.step_metrics(), "outcome_scores": outcome.scores}


def _key(row: dict) -> tuple:
    return row["criterion"], row["target"], row["steps"], row["seed"], row["order"], row["finetune"]


def run(args) -> None:
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    done = {_key(row) for row in result["rows"]}
    bench = Bench(args)
    result.update(settings=vars(args), machine=f"{platform.machine()}, torch {torch.__version__}",
                  base_accuracy=bench.base_accuracy, base_macs=bench.base_macs)
    torch.set_num_threads(args.threads)
    for name in args.criteria:
        criterion = create_criterion(name, seed=0)
        context = bench.context(criterion)
        scores = None  # the plan's scores: one scoring of the unpruned model per criterion
        for target in args.targets:
            for steps in args.steps:
                for seed in args.seeds:
                    finetune = "split" if args.split_finetune and steps > 1 else "final"
                    if (name, target, steps, seed, args.order, finetune) in done:
                        continue
                    row = bench.cell(criterion, context, target, steps, seed, scores)
                    scores = row.pop("outcome_scores")
                    row = {"criterion": name, "target": target, "steps": steps, "seed": seed,
                           "order": args.order, "finetune": finetune, **row}
                    result["rows"].append(row)
                    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(result, indent=1, default=str)))
                    print(json.dumps({k: v for k, v in row.items() if not k.startswith("step")}), flush=True)


def _variant(row: dict) -> tuple:
    """(steps, order, fine-tune) of a cell, as a column: one shot has no order or split."""
    return (1, "", "") if row["steps"] == 1 else (row["steps"], row["order"], row["finetune"])


def _column(variant: tuple) -> str:
    steps, order, finetune = variant
    if steps == 1:
        return "one shot"
    return f"{steps} steps" + (", from input" if order == "from_input" else "") + (
        ", split fine-tune" if finetune == "split" else "")


def _table(rows: list[dict], variants: list[tuple], base: float, seconds: bool) -> list[str]:
    """Markdown rows: per (criterion, target) the mean test accuracy of each variant, and for a
    progressive one its paired difference from one shot; with ``seconds`` the recovery seconds."""
    from orchestrator.studies.significance import paired_comparison

    lines = ["| criterion | target | MACs removed | " + " | ".join(map(_column, variants))
             + (" | recovery s (" + " / ".join(_column(v) for v in variants) + ") |" if seconds else " |"),
             "|---|---|---|" + "---|" * (len(variants) + seconds)]
    cells: dict[tuple, dict[tuple, dict[int, dict]]] = {}
    for row in rows:
        cells.setdefault((row["criterion"], row["target"]), {}).setdefault(_variant(row), {})[row["seed"]] = row
    for (criterion, target), by_variant in sorted(cells.items()):
        if not any(v in by_variant for v in variants if v[0] != 1):
            continue
        one_shot = by_variant.get((1, "", ""), {})
        columns, costs = [], []
        for variant in variants:
            runs = by_variant.get(variant, {})
            if not runs:
                columns.append("-")
                costs.append("-")
                continue
            mean = statistics.fmean(r["test_accuracy"] for r in runs.values())
            text = f"{mean:.4f} ({100 * (mean - base):+.2f})"
            paired = [runs[k]["test_accuracy"] - one_shot[k]["test_accuracy"] for k in runs if k in one_shot]
            if variant[0] != 1 and len(paired) >= 2:
                cmp = paired_comparison(paired, interval="t", test="wilcoxon")
                text += f", Δ {100 * cmp.mean:+.2f} [{100 * cmp.low:+.2f}, {100 * cmp.high:+.2f}]"
            columns.append(text)
            costs.append(f"{statistics.fmean(r['recovery_seconds'] for r in runs.values()):.0f}")
        reached = statistics.fmean(r["macs_reduction"] for runs in by_variant.values() for r in runs.values())
        lines.append(f"| {criterion} | -{100 * target:.0f}% | {100 * reached:.1f}% | " + " | ".join(columns)
                     + (f" | {' / '.join(costs)} |" if seconds else " |"))
    return lines


def report(paths: list[str]) -> str:
    """Per baseline (the files of one checkpoint merged): the step counts against one shot (every
    layer together, the whole fine-tune after the last step), then the other variants (from the
    input side, the fine-tune split over the steps) against one shot."""
    by_checkpoint: dict[str, list[tuple[dict, str]]] = {}
    for path in paths:
        result = json.loads(Path(path).read_text())
        by_checkpoint.setdefault(result["settings"]["checkpoint"], []).append((result, Path(path).name))
    lines = []
    for checkpoint, results in by_checkpoint.items():
        first = results[0][0]
        settings, base = first["settings"], first["base_accuracy"]
        rows = [row for result, _ in results for row in result["rows"]]
        variants = sorted({_variant(r) for r in rows})
        plain = [v for v in variants if v[1:] in (("", ""), ("together", "final"))]
        other = [(1, "", "")] + [v for v in variants if v not in plain]
        lines += [f"**{Path(checkpoint).stem}** ({', '.join(f'`{name}`' for _, name in results)}): baseline test "
                  f"accuracy {base:.4f} on {settings['test_subset']} test images, {first['base_macs'] / 1e6:.2f} M MACs; "
                  f"{settings['ratios']} ratios, fine-tune: 1 epoch over {settings['finetune_subset']} training "
                  f"images, distillation {settings['distill']}.", "", *_table(rows, plain, base, True), ""]
        if len(other) > 1:
            lines += ["Other step orders and fine-tunes:", "", *_table(rows, other, base, False), ""]
    lines.append("A cell: mean test accuracy over the seeds (its difference from the baseline, in points); for "
                 "a progressive column, Δ is the mean paired difference from one shot (same seed) in points, "
                 "with its 95% t interval. `recovery s`: mean wall seconds of the prunings and the reconstruction "
                 "+ BN recalibration after them (the fine-tune excluded; several benchmark processes shared the "
                 "machine's 2 cores).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--out")
    parser.add_argument("--criteria", nargs="+", default=["l1", "taylor", "entropy"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.7, 0.8, 0.9])
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--order", default="together")
    parser.add_argument("--split-finetune", action="store_true",
                        help="spread the fine-tune images evenly over the steps (SGD after each)")
    parser.add_argument("--ratios", default="uniform")
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--finetune-subset", type=int, default=5000)
    parser.add_argument("--distill", type=float, default=0.5)
    parser.add_argument("--test-subset", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", nargs="+", default=None, help="render these result files instead of running")
    add_block_arguments(parser)
    args = parser.parse_args()
    if args.report:
        write_or_print(parser, args, report(args.report))
        return
    if not (args.checkpoint and args.out):
        parser.error("give --checkpoint and --out (or --report FILE...)")
    run(args)


if __name__ == "__main__":
    main()
