"""Accuracy vs FLOPs reduction for pruning criteria on a trained checkpoint.

For each criterion and FLOPs-reduction target: test accuracy after each stage of the recovery
recipe (:func:`pruning.recovery.recover`: right after pruning, after reconstruction with
``--reconstruct``, after BN recalibration, after fine-tuning); MACs, parameters and measured CPU
latency (batch 64) next to the FLOPs ratio. The recipe options are ``prunesweep prune``'s, with
the same defaults (reconstruction on, BN recalibration on 20 training batches) except one
fine-tune epoch; ``--no-reconstruct --bn-data calibration --no-finetune-augment`` is BN
recalibration alone on the calibration images. Results go to a JSON file, rewritten after every
row; benchmarks/to_markdown.py renders the table.

    python benchmarks/criteria_accuracy.py --checkpoint runs/bench/resnet20-fmnist.pt \
        --criteria random l1 l2 bn-scale fpgm taylor --targets 0.3 0.5 0.7 \
        --out benchmarks/results/resnet20_fmnist_baselines.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from orchestrator.cli.recipe_args import RECIPE_OPTIONS, add_recipe_arguments, recipe_from_args
from pruning.criteria import ScoringContext, create_criterion, statistics_options
from pruning.pipeline import prune_with_criterion
from pruning.planning import RatioInputs, RatioTarget, create_ratio_source
from pruning.planning.ratio_sources import ratio_source_options
from pruning.recovery import recover, recovery_data_for
from pruning.structure import measure_cost, measure_latency
from pruning.utils import atomic_write

from benchmark_baseline import load_benchmark_baseline


def ratio_source_for(args):
    """The ``--ratios`` ratio source (``pruning.planning``) with the options this script sets
    (``--alpha``, ``--fusion``, ``--tau``)."""
    options = {o: getattr(args, o) for o in ratio_source_options(args.ratios) if hasattr(args, o)}
    return create_ratio_source(args.ratios, **options)


def ratio_inputs_for(source, model, space, groups, context, args):
    """(what ``source`` reads, {(criterion, seed): channel scores} computed on the way): SNPFI's
    utilization curves come from its seed-0 estimation, whose scores the snpfi rows of seed 0
    then reuse instead of estimating again."""
    if not source.needs_utilization:
        return RatioInputs(space, stats=context.stats), {}
    snpfi = create_criterion("snpfi", seed=0, **args.criterion_options.get("snpfi", {}))
    scores, curves = snpfi.score_and_curves(model, groups, context, tau=args.tau)
    return RatioInputs(space, stats=context.stats, utilization=curves), {("snpfi", 0): scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--criteria", nargs="+", required=True)
    parser.add_argument("--targets", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (used by random)")
    parser.add_argument("--random-seeds", type=int, default=3, help="seeds for the random criterion")
    parser.add_argument("--ratios", default="uniform", help="a ratio source: uniform, global, concentration or snpfi")
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--criterion-options", type=json.loads, default={},
                        help='JSON options for data-hungry criteria, e.g. {"shapley": {"max_permutations": 32}}')
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--fusion", default="minmax", help="information concentration's fusion: minmax or rank")
    parser.add_argument("--tau", type=float, default=0.95)
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("--both-reconstructions", action="store_true",
                        help="each (criterion, seed, target) twice, without and with reconstruction (rows say "
                             "which in 'reconstruct'), from the same channel scores: a Shapley estimate serves both")
    add_recipe_arguments(parser)
    parser.set_defaults(finetune_epochs=1)  # the benchmark's third stage: one fine-tune epoch
    args = parser.parse_args()
    if Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a directory; give the path of a file to write")  # not after the run
    recipe = recipe_from_args(args)  # seeded per row below
    torch.set_num_threads(args.threads)

    baseline = load_benchmark_baseline(args.checkpoint, strategy=args.strategy, test_subset=args.test_subset,
                                       calibration_images=args.calibration_images, batch_size=recipe.batch_size)
    model, spec, splits, shape = baseline.model, baseline.spec, baseline.splits, baseline.shape
    space, groups, test_loader, batches = baseline.space, baseline.groups, baseline.test_loader, baseline.batches
    base_cost, base_accuracy = baseline.base_cost, baseline.base_accuracy
    example = torch.zeros(1, *shape)
    base_latency = measure_latency(model, shape, batch_size=64, threads=args.threads, repeats=10).median_ms

    stats, setup_seconds = None, {}
    source = ratio_source_for(args)
    criteria = [create_criterion(c, **args.criterion_options.get(c, {})) for c in args.criteria]
    if source.needs_stats or any(c.needs_stats for c in criteria):
        from pruning.statistics import collect_activation_stats

        started = time.perf_counter()
        stats = collect_activation_stats(model, space.groups, batches, statistics_options(criteria))
        setup_seconds["statistics"] = time.perf_counter() - started
        print(f"statistics pass: {setup_seconds['statistics']:.1f} s")
    context = ScoringContext(calibration=batches, stats=stats)
    started = time.perf_counter()
    inputs, scores_of = ratio_inputs_for(source, model, space, groups, context, args)
    setup_seconds["layer_ratios"] = time.perf_counter() - started

    data = recovery_data_for(splits, batches, test_loader)
    rows = []
    result = {
        "checkpoint": args.checkpoint, "model": spec.name, "dataset": spec.meta["data"]["name"],
        "base": {"accuracy": base_accuracy, "macs": base_cost.macs, "params": base_cost.params,
                 "latency_ms_b64": base_latency},
        "setup_seconds": setup_seconds,
        "settings": {**{k: v for k, v in vars(args).items() if k not in RECIPE_OPTIONS}, "recipe": recipe.to_dict()},
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        "rows": rows,
    }
    # scores_of: (criterion, seed) -> channel scores; they do not depend on the target
    reconstructions = (False, True) if args.both_reconstructions else (recipe.reconstruct,)
    for name in args.criteria:
        seeds = list(range(args.random_seeds)) if name == "random" else args.seeds
        for target, seed in itertools.product(args.targets, seeds):
            shape_cost = None  # MACs, params and latency: one pruned architecture for every reconstruction
            for reconstruct in reconstructions:
                started = time.perf_counter()
                criterion = create_criterion(name, seed=seed, **args.criterion_options.get(name, {}))
                plan = source.plan(RatioTarget(flops_reduction=target, strategy=args.strategy), inputs)
                outcome = prune_with_criterion(model, example, criterion, plan.config, context,
                                               ratio_weights=plan.ratio_weights, space=space,
                                               scores=scores_of.get((name, seed)))
                scores_of[(name, seed)] = outcome.scores
                score_seconds = time.perf_counter() - started
                pruned = outcome.model
                row = {"criterion": name, "seed": seed, "target": target, "ratios": args.ratios,
                       "strategy": args.strategy, "score_and_prune_seconds": score_seconds,  # scores: first target only
                       "reconstruct": reconstruct,
                       **recover(model, outcome, replace(recipe, seed=seed, reconstruct=reconstruct), data).scores}
                if shape_cost is None:
                    cost = measure_cost(pruned, shape)
                    latency = measure_latency(pruned, shape, batch_size=64, threads=args.threads, repeats=10).median_ms
                    shape_cost = dict(macs=cost.macs, params=cost.params, macs_reduction=1 - cost.macs / base_cost.macs,
                                      params_reduction=1 - cost.params / base_cost.params, latency_ms_b64=latency,
                                      speedup_b64=base_latency / latency)
                row.update(shape_cost, load_average=os.getloadavg()[0], seconds=time.perf_counter() - started)
                rows.append(row)
                print(json.dumps(row))
                write_result(args.out, result)


def write_result(path: str, result: dict) -> None:
    """Rewritten after every row (a long run keeps what it measured), atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))


if __name__ == "__main__":
    main()
