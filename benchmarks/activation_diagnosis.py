"""Why activation criteria fall below random: per-class accuracy and what the pruned channels are.

For each criterion at one FLOPs target (uniform ratios, BN recalibration, no reconstruction, no
fine-tune: the stage where the activation criteria were below random on VGG-16): test accuracy,
accuracy per class (its minimum and spread), and, over every pruned group, what the removed
channels look like on the calibration images against the kept ones:

* ``mean``: mean post-BN/ReLU activation (the mean-activation score itself);
* ``selectivity``: class selectivity (max_k mu_k - mean_{j != k} mu_j) / (max_k mu_k + mean_{j != k} mu_j)
  of the per-class mean GAP activations mu (0: the channel answers every class alike; 1: only one);
* ``dominant classes``: for the removed channels, how many have each class as their strongest.

The hypothesis it tests: a low-mean channel is a class-selective one (it fires for one class and is
silent for the rest), so removing the lowest-mean channels of every layer removes the detectors of
the same few classes everywhere, and those classes collapse, where random removal spreads the damage.

    python benchmarks/activation_diagnosis.py --checkpoint runs/vgg/vgg16-fmnist.pt --target 0.5 \
        --test-subset 3000 --out benchmarks/results/vgg16_fmnist_activation_diagnosis.json
    python benchmarks/activation_diagnosis.py --report benchmarks/results/vgg16_fmnist_activation_diagnosis.json \
        [--write DOC.md --key KEY]

``--criterion-options`` gives a criterion its options (JSON, by name, as in criteria_accuracy.py);
``--report`` takes several result files of one model and target (e.g. two runs of one criterion
with different options) and renders their rows in one table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace

import torch

from pruning.criteria import ScoringContext, create_criterion, statistics_options
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig
from pruning.recovery import RecoveryRecipe, recover, recovery_data_for
from pruning.statistics import collect_activation_stats
from pruning.utils import atomic_write

from benchmark_baseline import load_benchmark_baseline
from docs_blocks import add_block_arguments, criterion_label, write_or_print


@torch.no_grad()
def class_means(model, groups, batches, classes: int) -> dict[str, torch.Tensor]:
    """{group: [classes, C]} mean GAP activation of each group's first observed output per class."""
    modules = dict(model.named_modules())
    sums, counts, labels = {}, torch.zeros(classes), []
    handles = []
    for group in groups:
        obs = group.observed[0]

        def hook(m, i, o, name=group.name, relu=obs.relu):
            x = torch.relu(o) if relu else o
            gap = x.mean((2, 3)) if x.dim() == 4 else x
            onehot = torch.nn.functional.one_hot(labels[-1], classes).double()
            sums[name] = sums.get(name, 0) + onehot.T @ gap.double()

        handles.append(modules[obs.module].register_forward_hook(hook))
    model.eval()
    try:
        for x, y in batches:
            labels.append(y)
            counts += torch.bincount(y, minlength=classes)
            model(x)
    finally:
        for h in handles:
            h.remove()
    return {name: s / counts[:, None].double() for name, s in sums.items()}


def selectivity(mu: torch.Tensor) -> torch.Tensor:
    """[C] class selectivity of [classes, C] per-class means (negative means, which outputs
    without a ReLU can have, count as 0; a channel silent for every class has selectivity 0)."""
    mu = mu.clamp_min(0)
    top = mu.max(0).values
    rest = (mu.sum(0) - top) / (mu.shape[0] - 1)
    return (top - rest) / (top + rest).clamp_min(1e-12)


@torch.no_grad()
def per_class_accuracy(model, loader, classes: int) -> list[float]:
    right, total = torch.zeros(classes), torch.zeros(classes)
    model.eval()
    for x, y in loader:
        hit = (model(x).argmax(1) == y).float()
        right += torch.bincount(y, weights=hit, minlength=classes)
        total += torch.bincount(y, minlength=classes)
    return (right / total).tolist()


def render(results: list[dict]) -> str:
    """Result files of one model and target as one Markdown table (a row per criterion and seed)."""
    result = results[0]
    for other in results[1:]:
        if (other["model"], other["target"], other["test_subset"]) != (result["model"], result["target"], result["test_subset"]):
            raise SystemExit("--report: the result files differ in model, target or test images; render them apart")
    lines = [
        f"{result['model']}, -{result['target']:.0%} MACs (uniform), after BN recalibration; test images: "
        f"{result['test_subset'] or 'all'}; base accuracy {result['base_accuracy']:.4f}.",
        "",
        "| criterion | seed | accuracy | lowest class | classes below 0.5 | selectivity removed / kept | "
        "mean activation removed / kept (x layer mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (row for result in results for row in result["rows"]):
        lines.append(
            f"| {criterion_label(r['criterion'], r.get('options'))} | {r['seed']} | {r['accuracy']:.4f} | {r['min_class']:.3f} | {r['classes_below_half']} | "
            f"{r['removed_selectivity']:.3f} / {r['kept_selectivity']:.3f} | "
            f"{r['removed_relative_mean']:.3f} / {r['kept_relative_mean']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", nargs="+", default=None, metavar="RESULT",
                        help="render result files instead of running (with --write DOC --key KEY: into that block)")
    add_block_arguments(parser)
    parser.add_argument("--checkpoint")
    parser.add_argument("--criteria", nargs="+", default=["mean-activation", "apoz", "hrank", "entropy", "l1"])
    parser.add_argument("--criterion-options", type=json.loads, default={},
                        help='JSON options by criterion name, e.g. {"shapley": {"value": "kl", "stratified": true}}')
    parser.add_argument("--random-seeds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.report:
        write_or_print(parser, args, render([json.loads(open(path).read()) for path in args.report]))
        return
    if not args.checkpoint or not args.out:
        parser.error("--checkpoint and --out are required (or --report RESULT)")
    torch.set_num_threads(args.threads)
    bench = load_benchmark_baseline(args.checkpoint, strategy="full", test_subset=args.test_subset,
                                    calibration_images=args.calibration_images, batch_size=128)
    classes = bench.spec.num_classes
    example = torch.zeros(1, *bench.shape)
    names = [("random", s) for s in range(args.random_seeds)] + [(c, 0) for c in args.criteria]
    criteria = [create_criterion(n, seed=s, **args.criterion_options.get(n, {})) for n, s in names]
    stats = collect_activation_stats(bench.model, bench.space.groups, bench.batches, statistics_options(criteria))
    mu = class_means(bench.model, bench.groups, bench.batches, classes)
    sel = {name: selectivity(m) for name, m in mu.items()}
    overall = {name: m.mean(0) for name, m in mu.items()}
    recipe = RecoveryRecipe(reconstruct=False, finetune_epochs=0)
    data = recovery_data_for(bench.splits, bench.batches, None)
    context = ScoringContext(calibration=bench.batches, stats=stats)
    base_classes = per_class_accuracy(bench.model, bench.test_loader, classes)
    rows = []
    for (name, seed), criterion in zip(names, criteria):
        started = time.perf_counter()
        config = PruningConfig(strategy="full", allocation="uniform", flops_reduction=args.target)
        outcome = prune_with_criterion(bench.model, example, criterion, config, context, space=bench.space)
        recover(bench.model, outcome, replace(recipe, seed=seed), data)
        accuracy = per_class_accuracy(outcome.model, bench.test_loader, classes)
        removed_sel, kept_sel, removed_mean, kept_mean, dominant = [], [], [], [], torch.zeros(classes)
        for group in bench.groups:
            kept = outcome.kept_indices.get(group.name)
            if kept is None:
                continue
            mask = torch.ones(group.size, dtype=torch.bool)
            mask[kept] = False
            removed_sel.append(sel[group.name][mask]), kept_sel.append(sel[group.name][~mask])
            removed_mean.append((overall[group.name] / overall[group.name].mean())[mask])
            kept_mean.append((overall[group.name] / overall[group.name].mean())[~mask])
            dominant += torch.bincount(mu[group.name].argmax(0)[mask], minlength=classes).float()
        row = {
            "criterion": name, "options": args.criterion_options.get(name, {}), "seed": seed, "target": args.target,
            "accuracy": statistics.mean(accuracy), "per_class": accuracy,
            "min_class": min(accuracy), "classes_below_half": sum(a < 0.5 for a in accuracy),
            "removed_selectivity": torch.cat(removed_sel).mean().item(),
            "kept_selectivity": torch.cat(kept_sel).mean().item(),
            "removed_relative_mean": torch.cat(removed_mean).mean().item(),
            "kept_relative_mean": torch.cat(kept_mean).mean().item(),
            "removed_dominant_class_share": (dominant / dominant.sum()).tolist(),
            "seconds": time.perf_counter() - started, "load_average": os.getloadavg()[0],
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("per_class", "removed_dominant_class_share")}))
        result = {"checkpoint": args.checkpoint, "model": bench.spec.name, "target": args.target,
                  "test_subset": args.test_subset, "base_accuracy": bench.base_accuracy, "base_per_class": base_classes,
                  "threads": args.threads, "rows": rows}
        atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))


if __name__ == "__main__":
    main()
