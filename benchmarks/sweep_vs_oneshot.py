"""Equal recipe, measured compute: the two-stage sweep against every one-shot pipeline,
Torch-Pruning's MetaPruner, random search and the single-stage sweep.

Every contender prunes the same baseline and ends with the same recovery: reconstruction
(where the pruning is prunesweep's) + BN recalibration + ONE fine-tune epoch on the first
``--finetune-subset`` training images distilled from the unpruned model (``--distill``); every
accuracy below is on the same first ``--test-subset`` test images; every contender's compute is
its process CPU time (1 thread each).

Parts (``--parts``, each written into ``--out`` as it ends; a rerun of a part replaces it):

* ``oneshot``: every ``--criteria`` x ratios (uniform / global / concentration) x ``--targets``
  pipeline; per pipeline the calibration accuracy after each recovery stage (the proxies) and
  the fine-tuned test accuracy.
* ``tp``: Torch-Pruning's ``MetaPruner`` with global pruning and its group L2 magnitude /
  BN-scale importance, the pruning ratio bisected to each target; BN recalibration + the same
  fine-tune (no reconstruction: it needs prunesweep's kept channels).
* ``sweep``: the two-stage sweep (``concentration`` space, NSGA-II, warm starts): ``--screen-trials``
  screened with the proxy, ``--candidates`` refined with the fine-tune above.
* ``random``: the same two-stage sweep with random sampling and no warm starts.
* ``single``: the single-stage sweep (every trial fine-tuned), with as many trials as the
  ``sweep`` part's CPU time buys (or ``--single-trials``).
* ``stages``: the ``sweep`` part with the ``stages`` space (one weight per ResNet stage on the
  uniform allocation) instead of ``concentration``.

    python benchmarks/sweep_vs_oneshot.py --checkpoint runs/bench/resnet20-fmnist.pt \\
        --out benchmarks/results/resnet20_fmnist_sweep_vs_oneshot.json
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from pruning.criteria import ScoringContext, create_criterion, criterion_class, statistics_options
from pruning.data import DataConfig, calibration_batches, load_data, make_loader
from pruning.pipeline import PruneOutcome, prune_with_criterion
from pruning.planning import RatioInputs, RatioTarget, create_ratio_source
from pruning.recovery import RecoveryData, RecoveryRecipe, recover
from pruning.structure import PruningSpace, load_checkpoint, measure_cost
from pruning.training import evaluate
from pruning.utils import atomic_write

PARTS = ("oneshot", "tp", "sweep", "random", "single", "stages")
RATIOS = ("uniform", "global", "concentration")


class Bench:
    """The baseline, its data and the two recipes every contender shares."""

    def __init__(self, args) -> None:
        self.args = args
        self.model, self.spec = load_checkpoint(args.checkpoint)
        self.splits = load_data(DataConfig(**{**self.spec.meta["data"], "test_subset": args.test_subset}))
        self.shape = tuple(self.spec.input_shape)
        self.example = torch.zeros(1, *self.shape)
        self.space = PruningSpace.build(self.model, self.example)
        self.batches = calibration_batches(self.splits, args.calibration_images, 128)
        self.calibration = make_loader(self.splits.calibration, 500, shuffle=False)
        self.test = make_loader(self.splits.test, 500, shuffle=False)
        self.base_macs = measure_cost(self.model, self.shape).macs
        self.proxy_recipe = RecoveryRecipe(bn_batches=args.bn_batches)
        self.finetune_recipe = RecoveryRecipe(reconstruct=False, bn_batches=0, finetune_epochs=1,
                                              finetune_subset=args.finetune_subset, distill=args.distill,
                                              finetune_max_grad_norm=args.finetune_max_grad_norm,
                                              seed=args.finetune_seed)

    def data(self, score) -> RecoveryData:
        return RecoveryData(calibration=self.batches, train=self.splits.train, augment=self.splits.augment_by_default,
                            score=score)

    def finish(self, outcome: PruneOutcome, proxy_recipe: RecoveryRecipe) -> dict:
        """Proxy stages scored on the calibration split, then the fine-tune, then the test accuracy."""
        proxies = recover(self.model, outcome, proxy_recipe, self.data(self.calibration)).scores
        recover(self.model, outcome, self.finetune_recipe, self.data(None))
        cost = measure_cost(outcome.model, self.shape)
        return {**{f"{stage}_accuracy": acc for stage, acc in proxies.items()},
                "test_accuracy": evaluate(outcome.model, self.test).score,
                "macs_reduction": 1 - cost.macs / self.base_macs, "macs": cost.macs}


def timed(function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    row = function(*args)
    return {**row, "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}


def run_oneshot(bench: Bench) -> dict:
    from pruning.statistics import collect_activation_stats

    args = bench.args
    started = time.process_time()
    criteria = [create_criterion(name) for name in args.criteria]
    stats = collect_activation_stats(bench.model, bench.space.groups, bench.batches, statistics_options(criteria))
    stats_cpu = time.process_time() - started
    context = ScoringContext(calibration=bench.batches, stats=stats)
    rows = []
    inputs = RatioInputs(bench.space, stats=stats)
    for ratios in args.ratios:
        source = create_ratio_source(ratios)
        for name in args.criteria:
            scores = None
            for target in args.targets:
                def one():
                    nonlocal scores
                    plan = source.plan(RatioTarget(flops_reduction=target, strategy="full"), inputs)
                    outcome = prune_with_criterion(bench.model, bench.example, create_criterion(name, seed=0),
                                                   plan.config, context, ratio_weights=plan.ratio_weights,
                                                   space=bench.space, scores=scores)
                    scores = outcome.scores
                    return bench.finish(outcome, bench.proxy_recipe)
                row = {"criterion": name, "ratios": ratios, "target": target, **timed(one)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {"rows": rows, "statistics_cpu_seconds": stats_cpu,
            "needs_stats": [c for c in args.criteria if criterion_class(c).needs_stats]}


def _tp_prune(bench: Bench, importance, target: float):
    """MetaPruner (global ranking) at the pruning ratio whose MACs reduction is nearest ``target``."""
    import torch_pruning as tp

    def prune(ratio):
        model = copy.deepcopy(bench.model).eval()
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
        pruner = tp.pruner.MetaPruner(model, bench.example, importance, global_pruning=True, pruning_ratio=ratio,
                                      max_pruning_ratio=0.95, ignored_layers=head)
        pruner.step()
        return model, 1 - measure_cost(model, bench.shape).macs / bench.base_macs

    lo, hi = 0.0, 0.95
    best = None
    for _ in range(14):
        middle = (lo + hi) / 2
        model, reduction = prune(middle)
        if best is None or abs(reduction - target) < abs(best[1] - target):
            best = (model, reduction)
        lo, hi = (middle, hi) if reduction < target else (lo, middle)
    return best[0]


def run_tp(bench: Bench) -> dict:
    import torch_pruning as tp

    importances = {"tp-global-l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
                   "tp-bn-scale": lambda: tp.importance.BNScaleImportance()}
    rows = []
    for name, make in importances.items():
        for target in bench.args.targets:
            def one():
                model = _tp_prune(bench, make(), target)
                outcome = PruneOutcome(model=model, space=bench.space, keep={}, kept_indices={}, scores={})
                return bench.finish(outcome, RecoveryRecipe(reconstruct=False, bn_batches=bench.args.bn_batches))
            row = {"criterion": name, "ratios": "global", "target": target, **timed(one)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"rows": rows}


#: the spaces' own parameters; the rest of the space section is shared
SPACE_OPTIONS = {
    # warm starts at the quantiles 0.25 / 0.5 / 0.75 of [0.1, 0.9]: the targets 0.3 / 0.5 / 0.7
    "concentration": {"flops_reduction": [0.1, 0.9], "alpha": [0.0, 1.0], "temperature": [0.0, 2.0]},
    "stages": {"flops_reduction": [0.1, 0.9], "stage_weight": [0.2, 1.0]},
}


def _sweep_config(bench: Bench, label: str, *, trials: int, sampler: str, warm: bool, candidates: int,
                  finetune: bool, search_space: str = "concentration") -> dict:
    args = bench.args
    recipe = {"bn_batches": args.bn_batches}
    if finetune:
        recipe.update(finetune_subset=args.finetune_subset, distill=args.distill,
                      finetune_max_grad_norm=args.finetune_max_grad_norm)
    sweep = {"trials": trials, "concurrency": args.concurrency, "sampler": sampler, "seed": args.seed,
             "warm_start": warm, "objectives": {"accuracy": "max", "macs": "min"}}
    if candidates:
        sweep["refine"] = {"candidates": candidates, "targets": list(args.targets), "per_target": args.per_target,
                           "recipe": {"finetune_epochs": 1, "finetune_subset": args.finetune_subset,
                                      "distill": args.distill, "finetune_max_grad_norm": args.finetune_max_grad_norm}}
    epochs = 1 if finetune else 0
    return {
        "name": f"bench-{label}", "checkpoint": args.checkpoint, "run_dir": str(Path(args.run_root) / label),
        "data": {"calibration_images": args.calibration_images, "test_subset": args.test_subset},
        "recipe": recipe,
        "space": {"name": search_space, "strategy": "full", "criteria": list(args.sweep_criteria),
                  **SPACE_OPTIONS[search_space],
                  "finetune_epochs": [epochs, epochs], "finetune_lr": [0.01, 0.01], "weight_decay": [5e-4, 5e-4],
                  "flops_bounds": [0.1, 0.9]},
        "sweep": sweep,
    }


def run_sweep_part(bench: Bench, label: str, **options) -> dict:
    from orchestrator.sweeps import SweepConfig, run_sweep
    if bench.args.label is not None:
        label = f"{label}-{bench.args.label}"
    from orchestrator.experiment.tracking import TAG_STAGE

    data = _sweep_config(bench, label, **options)
    shutil.rmtree(data["run_dir"], ignore_errors=True)
    started = time.perf_counter()
    result = run_sweep(SweepConfig.from_dict(data), progress=False)
    seconds = time.perf_counter() - started
    trials = [{"number": t.number, "stage": t.tags.get(TAG_STAGE), "status": t.status, "sampled": t.params,
               **{k: v for k, v in t.metrics.items() if isinstance(v, (int, float))}} for t in result.trials]
    return {"config": data, "wall_seconds": seconds, "trials": trials, "front": result.front,
            "cpu_seconds": sum(t.get("cpu_seconds", 0.0) for t in trials)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--criteria", nargs="+", default=["random", "l1", "l2", "fpgm", "bn-scale", "taylor", "entropy",
                                                          "hrank", "apoz", "mean-activation", "chip"])
    parser.add_argument("--ratios", nargs="+", choices=RATIOS, default=list(RATIOS),
                        help="the oneshot part's layer ratios (split a run over processes)")
    parser.add_argument("--sweep-criteria", nargs="+", default=["l1", "taylor"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--screen-trials", type=int, default=60)
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--single-trials", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--bn-batches", type=int, default=10)
    parser.add_argument("--finetune-subset", type=int, default=3000)
    parser.add_argument("--distill", type=float, default=0.5)
    parser.add_argument("--finetune-max-grad-norm", type=lambda v: None if v.lower() == "none" else float(v),
                        default=RecoveryRecipe().finetune_max_grad_norm,
                        help="the fine-tune's gradient clipping norm ('none': off, as in the earlier runs)")
    parser.add_argument("--test-subset", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finetune-seed", type=int, default=0,
                        help="the one-shot and TP fine-tune's shuffling seed (its spread is the selection noise)")
    parser.add_argument("--per-target", type=int, default=1,
                        help="a sweep refines this many of the best screened trials at each target")
    parser.add_argument("--run-root", default="runs/bench/sweep-vs-oneshot")
    parser.add_argument("--label", default=None,
                        help="stored as PART-LABEL (and run in RUN_ROOT/PART-LABEL): a variant beside the default run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    bench = Bench(args)
    result.update(settings=vars(args), machine=f"{platform.machine()}, torch {torch.__version__}",
                  calibration_split_images=len(bench.splits.calibration),
                  base={"test_accuracy": evaluate(bench.model, bench.test).score, "macs": bench.base_macs})
    for part in args.parts:
        if part == "oneshot":
            value = run_oneshot(bench)
        elif part == "tp":
            value = run_tp(bench)
        elif part == "sweep":
            value = run_sweep_part(bench, "sweep", trials=args.screen_trials, sampler="nsga2", warm=True,
                                   candidates=args.candidates, finetune=False)
        elif part == "random":
            value = run_sweep_part(bench, "random", trials=args.screen_trials, sampler="random", warm=False,
                                   candidates=args.candidates, finetune=False)
        elif part == "stages":
            value = run_sweep_part(bench, "stages", trials=args.screen_trials, sampler="nsga2", warm=True,
                                   candidates=args.candidates, finetune=False, search_space="stages")
        else:
            trials = args.single_trials or _single_trials(result)
            value = run_sweep_part(bench, "single", trials=trials, sampler="nsga2", warm=True, candidates=0,
                                   finetune=True)
        value["sweep_criteria"] = list(args.sweep_criteria)
        result[part if args.label is None else f"{part}-{args.label}"] = value
        atomic_write(out, lambda tmp: tmp.write_text(json.dumps(result, indent=1, default=str)))
        print(f"{part}: done", flush=True)


def _single_trials(result: dict) -> int:
    """As many fine-tuned trials as the two-stage sweep's CPU time buys."""
    sweep = result.get("sweep")
    if not sweep:
        raise SystemExit("the single part needs the sweep part's result first (or --single-trials N)")
    refined = [t["cpu_seconds"] for t in sweep["trials"] if t.get("stage") == "refine" and "cpu_seconds" in t]
    return max(1, round(sweep["cpu_seconds"] / (sum(refined) / len(refined))))


if __name__ == "__main__":
    main()
