"""FPEI entropy estimator variants against random scores on one baseline (uniform ratios).

Each variant is a way of collecting the entropy statistics (histogram edges: per channel from
the first batch's [min, max], the old default, or shared by the layer) and of reading them
(plug-in or Miller-Madow estimate, or the per-map spatial-softmax entropy). Every variant and
every random seed prunes the same baseline to each ``--targets`` MACs reduction with uniform
ratios, and is measured twice on the first ``--test-subset`` test images:

* ``bn``: BN recalibration only (``--bn-batches`` training batches, no reconstruction);
* ``recon+bn``: least-squares reconstruction on the calibration images, then the same BN
  recalibration (the default recovery recipe's stages).

    python benchmarks/entropy_variants.py --checkpoint runs/bench/resnet20-fmnist.pt \\
        --out benchmarks/results/entropy_variants.json
    python benchmarks/entropy_variants.py --table benchmarks/results/entropy_variants.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from pruning.criteria import ScoringContext, create_criterion
from pruning.data import DataConfig, calibration_batches, load_data, make_loader
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig
from pruning.recovery import RecoveryData, RecoveryRecipe, recover
from pruning.statistics import StatsOptions, collect_activation_stats
from pruning.structure import PruningSpace, load_checkpoint, measure_cost
from pruning.training import evaluate
from pruning.utils import atomic_write

#: how the statistics are collected: {name: collect_activation_stats options}
EDGES = {
    "channel min-max, 1 batch": {"edge_scope": "channel", "edge_quantile": 0.0, "edge_batches": 1},
    "layer min-max": {"edge_scope": "layer", "edge_quantile": 0.0, "edge_batches": 4},
    "layer 0.1-99.9%": {"edge_scope": "layer", "edge_quantile": 0.001, "edge_batches": 4},
    "layer 0.1-99.9%, every position": {"edge_scope": "layer", "edge_quantile": 0.001, "edge_batches": 4,
                                        "value": "spatial"},
}
#: {variant: (edges, entropy criterion options, sign)}; sign -1 keeps the LOW scores (diagnostic)
VARIANTS = {
    "plugin, channel edges (old default)": ("channel min-max, 1 batch", {"estimator": "plugin"}, 1),
    "miller-madow, channel edges": ("channel min-max, 1 batch", {"estimator": "miller-madow"}, 1),
    "plugin, layer min-max edges": ("layer min-max", {"estimator": "plugin"}, 1),
    "plugin, layer quantile edges": ("layer 0.1-99.9%", {"estimator": "plugin"}, 1),
    "miller-madow, layer quantile edges": ("layer 0.1-99.9%", {"estimator": "miller-madow"}, 1),
    "plugin, layer quantile edges, every position": ("layer 0.1-99.9%, every position", {"estimator": "plugin"}, 1),
    "map-softmax (low map entropy kept)": ("layer 0.1-99.9%", {"value": "map-softmax"}, 1),
    "map-softmax reversed (diagnostic)": ("layer 0.1-99.9%", {"value": "map-softmax"}, -1),
}
RECIPES = ("bn", "recon+bn")


def run(args) -> dict:
    model, spec = load_checkpoint(args.checkpoint)
    splits = load_data(DataConfig(**{**spec.meta["data"], "test_subset": args.test_subset}))
    shape = tuple(spec.input_shape)
    example = torch.zeros(1, *shape)
    space = PruningSpace.build(model, example)
    batches = calibration_batches(splits, args.calibration_images, args.batch_size)
    test = make_loader(splits.test, 500, shuffle=False)
    base_macs = measure_cost(model, shape).macs
    recipes = {"bn": RecoveryRecipe(reconstruct=False, bn_batches=args.bn_batches),
               "recon+bn": RecoveryRecipe(reconstruct=True, bn_batches=args.bn_batches)}
    data = RecoveryData(calibration=batches, train=splits.train, score=test, score_every_stage=False)

    stats, stats_seconds = {}, {}
    for name in {VARIANTS[v][0] for v in args.variants}:
        started = time.process_time()
        stats[name] = collect_activation_stats(model, space.groups, batches,
                                               StatsOptions(rank=False, map_entropy=True, **EDGES[name]))
        stats_seconds[name] = time.process_time() - started

    def cells(label: str, seed: int | None, scores: dict) -> list[dict]:
        rows = []
        for target in args.targets:
            row = {"variant": label, "seed": seed, "target": target}
            for recipe in RECIPES:
                config = PruningConfig(strategy="full", allocation="uniform", flops_reduction=target)
                # the scores are given, so the criterion passed is never asked to score
                outcome = prune_with_criterion(model, example, create_criterion("random"), config, space=space,
                                               scores=scores)
                row[recipe] = recover(model, outcome, recipes[recipe], data).final_score
                row["macs_reduction"] = 1 - measure_cost(outcome.model, shape).macs / base_macs
            rows.append(row)
            print(json.dumps(row), flush=True)
        return rows

    groups = space.select("full")
    rows = []
    for label in args.variants:
        edges, options, sign = VARIANTS[label]
        # the variants were measured on the producers' outputs, entropy's earlier default
        scores = create_criterion("entropy", source="producer", **options).score(
            model, groups, ScoringContext(stats=stats[edges]))
        rows += cells(label, None, {k: sign * v for k, v in scores.items()})
    for seed in range(args.random_seeds):
        rows += cells("random", seed, create_criterion("random", seed=seed).score(model, groups, ScoringContext()))
    return {"rows": rows, "statistics_cpu_seconds": stats_seconds,
            "base": {"test_accuracy": evaluate(model, test).score, "macs": base_macs}}


def table(result: dict) -> str:
    """The markdown table of a result file: per variant and target, bn and recon+bn accuracy
    (random: mean ± sample standard deviation over its seeds)."""
    targets = result["settings"]["targets"]
    head = " | ".join(f"-{t:.0%} {r}" for t in targets for r in RECIPES)
    lines = [f"| variant | {head} | mean bn | mean recon+bn |", "|---|" + "---|" * (2 * len(targets) + 2)]
    variants = list(dict.fromkeys(r["variant"] for r in result["rows"]))
    for variant in variants:
        rows = [r for r in result["rows"] if r["variant"] == variant]

        def cell(values: list[float]) -> str:
            mean = statistics.mean(values)
            return f"{mean:.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")

        per_target = [cell([r[recipe] for r in rows if r["target"] == t]) for t in targets for recipe in RECIPES]
        means = [f"{statistics.mean(r[recipe] for r in rows):.4f}" for recipe in RECIPES]
        seeds = len({r["seed"] for r in rows})
        name = f"{variant} ({seeds} seeds)" if variant == "random" else variant
        lines.append(f"| {name} | " + " | ".join(per_target + means) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/bench/resnet20-fmnist.pt")
    parser.add_argument("--out", default="benchmarks/results/entropy_variants.json")
    parser.add_argument("--table", metavar="RESULT", help="print the markdown table of a result file and exit")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--targets", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--random-seeds", type=int, default=3)
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128, help="calibration batch size (edges: 4 batches)")
    parser.add_argument("--bn-batches", type=int, default=20)
    parser.add_argument("--test-subset", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    result = run(args)
    result.update(settings=vars(args), wall_seconds=time.perf_counter() - started,
                  machine=f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))
    print(table(result))


if __name__ == "__main__":
    main()
