"""SNPFI with pairwise interactions and a global sparsity budget: accuracy of the four variants.

One Shapley estimation pass (SNPFI's log-probability games) is shared by four ways of turning it
into layer ratios at each FLOPs target:

* ``plain/layer``: today's SNPFI -- U(k) over the Shapley order, each layer's automatic sparsity
  1 - k*/n at ``tau`` as layer-wise ratio weights scaled to the target;
* ``interactions/layer``: U(k) over the greedy second-order order (pairwise interaction indices
  of the ``--interactions`` channels around each layer's cut), same weighting;
* ``plain/global`` and ``interactions/global``: layers compete for the removals by utilization
  lost per MAC saved (``pruning.planning.allocate_utilization``) until the target is met.

Every row is scored after each recovery stage (defaults: reconstruction + BN recalibration, no
fine-tuning) and records the per-layer ratios; per-layer interaction statistics and costs are in
``layers``. Results are rewritten after every row.

    python benchmarks/snpfi_interactions.py --checkpoint runs/bench/resnet20-fmnist.pt \\
        --targets 0.5 0.7 --out benchmarks/results/resnet20_fmnist_snpfi_interactions.json
    python benchmarks/snpfi_interactions.py --render benchmarks/results/resnet20_fmnist_snpfi_interactions.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from orchestrator.cli.recipe_args import RECIPE_OPTIONS, add_recipe_arguments, recipe_from_args
from pruning.criteria import ScoringContext, create_criterion
from pruning.games import PairSampling, group_seed, interaction_utilization, sparsity_from_curve, utilization_curve
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig, allocate_utilization, ratios_of
from pruning.recovery import recover, recovery_data_for
from pruning.structure import measure_cost
from pruning.utils import atomic_write

from benchmark_baseline import load_benchmark_baseline

VARIANTS = ("plain/layer", "interactions/layer", "plain/global", "interactions/global")


def render(path: str) -> str:
    """The accuracy table and the per-layer ratio table of a result file, as markdown."""
    result = json.loads(Path(path).read_text())
    rows = result["rows"]
    stages = [s for s in ("pruned", "reconstructed", "bn_recalibrated", "finetuned") if s in rows[0]]
    lines = [f"Base {result['model']} on {result['dataset']}: accuracy {result['base']['accuracy']:.4f} "
             f"(on the {result['settings'].get('test_subset') or 'full'} test images scored).", "",
             "| variant | target | MACs red. | params red. | " + " | ".join(stages) + " |",
             "|---|---|---|---|" + "---|" * len(stages)]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['target']:.0%} | {r['macs_reduction']:.1%} | {r['params_reduction']:.1%} | "
                     + " | ".join(f"{r[s]:.4f}" for s in stages) + " |")
    layers = list(result["layers"])
    lines += ["", "Per-layer ratios (fraction of channels removed):", "",
              "| target | variant | " + " | ".join(f"`{n}`" for n in layers) + " |",
              "|---|---|" + "---|" * len(layers)]
    for r in rows:
        lines.append(f"| {r['target']:.0%} | {r['variant']} | " + " | ".join(f"{r['ratios'][n]:.2f}" for n in layers) + " |")
    lines += ["", "Per layer at tau (no target): plain cut k*, filters reordered by the interactions, mean and "
              "lowest sampled I_ij, sparsity plain / with interactions / global budget (plain curves):", "",
              "| layer | n | k* | reordered | mean I | min I | plain | interactions | global |", "|---|---|---|---|---|---|---|---|---|"]
    for n, d in result["layers"].items():
        lines.append(f"| `{n}` | {d['size']} | {d['plain_cut']} | {d['reordered']} | {d['mean_interaction']:+.4f} | "
                     f"{d['min_interaction']:+.4f} | {d['sparsity_plain']:.2f} | {d['sparsity_interactions']:.2f} | "
                     f"{d['sparsity_plain_global']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render", metavar="RESULT", help="print the markdown tables of a result file and exit")
    parser.add_argument("--checkpoint")
    parser.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.7])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--permutations", type=int, default=8, help="Shapley permutations per layer (default: 8)")
    parser.add_argument("--game-batch", type=int, default=64, help="images of each layer game (default: 64)")
    parser.add_argument("--interactions", type=int, default=8, help="channels around the cut whose pairs are measured")
    parser.add_argument("--interaction-samples", type=int, default=8, help="samples per pair (default: 8)")
    parser.add_argument("--tau", type=float, default=0.95)
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    add_recipe_arguments(parser)
    parser.set_defaults(finetune_epochs=0)  # reconstruction + BN recalibration: the stages compared
    args = parser.parse_args()
    if args.render:
        print(render(args.render))
        return
    if not args.checkpoint or not args.out:
        parser.error("--checkpoint and --out are required (or --render RESULT)")
    if Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a directory; give the path of a file to write")
    recipe = recipe_from_args(args)
    torch.set_num_threads(args.threads)

    baseline = load_benchmark_baseline(args.checkpoint, strategy=args.strategy, test_subset=args.test_subset,
                                       calibration_images=args.calibration_images, batch_size=recipe.batch_size)
    model, spec, splits, shape = baseline.model, baseline.spec, baseline.splits, baseline.shape
    space, groups, test_loader, batches = baseline.space, baseline.groups, baseline.test_loader, baseline.batches
    base_cost, base_accuracy = baseline.base_cost, baseline.base_accuracy
    example = torch.zeros(1, *shape)
    context = ScoringContext(calibration=batches)

    criterion = create_criterion("snpfi", seed=0, max_permutations=args.permutations, batch_size=args.game_batch)
    seconds = {"shapley": 0.0, "plain_curves": 0.0, "interactions": 0.0}
    curves = {"plain": {}, "interactions": {}}
    scores = {"plain": {}, "interactions": {}}
    layers = {}
    started = time.perf_counter()
    for name, game, est in criterion.estimates(model, groups, context):
        seconds["shapley"] += time.perf_counter() - started
        phi = torch.nan_to_num(est.values.float(), nan=0.0, posinf=0.0, neginf=0.0)
        t = time.perf_counter()
        curves["plain"][name] = utilization_curve(game, est.values)
        seconds["plain_curves"] += time.perf_counter() - t
        t = time.perf_counter()
        pairs = PairSampling(window=args.interactions, samples=args.interaction_samples)
        found = interaction_utilization(game, est.values, pairs, tau=args.tau, seed=group_seed(0, name) + 1)
        seconds["interactions"] += time.perf_counter() - t
        curves["interactions"][name] = found.curve
        scores["plain"][name] = phi
        ranked = torch.sort(phi, descending=True, stable=True).values
        scores["interactions"][name] = torch.empty_like(phi)
        scores["interactions"][name][found.order] = ranked
        plain_order = torch.argsort(phi.double(), descending=True, stable=True)
        layers[name] = {
            "size": game.size, "shapley_coalitions": est.evaluations, "interaction_coalitions": found.coalitions,
            "pairs": len(found.pairs), "plain_cut": found.plain_cut,
            "mean_interaction": float(found.interactions.mean()) if len(found.pairs) else 0.0,
            "min_interaction": float(found.interactions.min()) if len(found.pairs) else 0.0,
            "reordered": int((found.order != plain_order).sum()),
            "sparsity_plain": sparsity_from_curve(curves["plain"][name], args.tau, 1),
            "sparsity_interactions": sparsity_from_curve(found.curve, args.tau, 1),
        }
        print(name, json.dumps(layers[name]), flush=True)
        started = time.perf_counter()
    no_target = {}  # MACs removed at tau without a target: per-layer thresholds vs the global budget
    for kind in curves:
        per_layer = {n: space[n].size - round(layers[n][f"sparsity_{kind}"] * space[n].size) for n in layers}
        no_target[f"{kind}/layer"] = space.reduction(per_layer)
        keep = allocate_utilization(space, groups, curves[kind], tau=args.tau)
        no_target[f"{kind}/global"] = space.reduction(keep)
        for name in layers:
            layers[name][f"sparsity_{kind}_global"] = 1.0 - keep[name] / space[name].size

    data = recovery_data_for(splits, batches, test_loader)
    rows = []
    result = {
        "checkpoint": args.checkpoint, "model": spec.name, "dataset": spec.meta["data"]["name"],
        "base": {"accuracy": base_accuracy, "macs": base_cost.macs, "params": base_cost.params},
        "setup_seconds": seconds, "no_target_macs_reduction": no_target, "layers": layers,
        "settings": {**{k: v for k, v in vars(args).items() if k not in RECIPE_OPTIONS}, "recipe": recipe.to_dict()},
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
        "rows": rows,
    }
    for target in args.targets:
        for variant in args.variants:
            kind, budget = variant.split("/")
            started = time.perf_counter()
            weights = None
            if budget == "layer":
                weights = {n: sparsity_from_curve(c, args.tau, 1) for n, c in curves[kind].items()}
                config = PruningConfig(strategy=args.strategy, flops_reduction=target)
            else:
                keep = allocate_utilization(space, groups, curves[kind], flops_reduction=target, tau=args.tau)
                config = PruningConfig(strategy=args.strategy, schedule=ratios_of(space, keep))
            outcome = prune_with_criterion(model, example, criterion, config, context, ratio_weights=weights,
                                           space=space, scores=scores[kind])
            row = {"variant": variant, "target": target, **recover(model, outcome, replace(recipe, seed=0), data).scores}
            cost = measure_cost(outcome.model, shape)
            row.update(macs=cost.macs, macs_reduction=1 - cost.macs / base_cost.macs,
                       params_reduction=1 - cost.params / base_cost.params,
                       ratios={n: round(r, 4) for n, r in ratios_of(space, outcome.keep).items()},
                       seconds=time.perf_counter() - started)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "ratios"}), flush=True)
            atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))


if __name__ == "__main__":
    main()
