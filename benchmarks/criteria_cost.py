"""Cost of each criterion's scoring as a multiple of one plain forward pass, at 224 px.

For torchvision ResNet-18 and MobileNetV2 (random init; BN statistics set by one train-mode pass
over the calibration images, so that the logits are those of a working network), ``--images``
random 3x224x224 calibration images with random labels: one plain ``no_grad`` forward over them
(the unit: the mean of the forwards timed right before and right after each criterion, each
the minimum of ``--repeats`` runs, since the machine is shared) and each criterion's ``score``
over every group of ``PruningSpace`` (the ``full`` strategy; ``snpfi``: ``score_and_sparsity``,
its scores and layer sparsities), timed once each. No criterion here reads activation statistics (those are measured in ``stats_cost.py``).
For ``shapley`` and ``snpfi`` the JSON also records the budget report (passes charged, groups
cut short). Part 2 measures how Taylor scores on the default subset of the calibration images
agree with scores on all of them (Spearman per layer) on a small model (``resnet20``, 32 px,
random init), for 64 and 256 calibration images.

    python benchmarks/criteria_cost.py --out benchmarks/results/criteria_cost.json
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torchvision
from scipy.stats import spearmanr

from pruning.criteria import ScoringContext, create_criterion
from pruning.models import create_model
from pruning.structure import PruningSpace
from pruning.utils import atomic_write

CRITERIA = ("random", "l1", "bn-scale", "fpgm", "taylor", "shapley", "snpfi")
MODELS = {"resnet18": torchvision.models.resnet18, "mobilenet_v2": torchvision.models.mobilenet_v2}


def calibration(images: int, batch: int, size: int, classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(min(batch, images - s), 3, size, size, generator=g),
             torch.randint(0, classes, (min(batch, images - s),), generator=g)) for s in range(0, images, batch)]


def set_bn_statistics(model, batches) -> None:
    """One train-mode pass with cumulative BN averages: running statistics of these images."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    model.eval()


def forward_seconds(model, batches, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.no_grad():
            for x, _ in batches:
                model(x)
        best = min(best, time.perf_counter() - started)
    return best


def measure_model(name: str, args) -> dict:
    torch.manual_seed(0)
    model = MODELS[name](num_classes=1000)
    batches = calibration(args.images, args.batch, args.size, 1000)
    set_bn_statistics(model, batches)
    space = PruningSpace.build(model, torch.zeros(1, 3, args.size, args.size))
    context = ScoringContext(calibration=batches)
    rows = {}
    for criterion_name in args.criteria:
        criterion = create_criterion(criterion_name, seed=0)
        groups = [g for g in space.groups if g.norms or criterion_name != "bn-scale"]
        before = forward_seconds(model, batches, args.repeats)
        started = time.perf_counter()
        if criterion_name == "snpfi":  # the scores and the sparsities: the criterion's whole job
            criterion.score_and_sparsity(model, groups, context)
        else:
            criterion.score(model, groups, context)
        seconds = time.perf_counter() - started
        after = forward_seconds(model, batches, args.repeats)
        # the machine is shared: the unit is the forward timed right before and after
        unit = (before + after) / 2
        rows[criterion_name] = {"seconds": seconds, "forward_seconds": [before, after], "x_forward": seconds / unit,
                                "groups": len(groups)}
        if criterion_name in ("shapley", "snpfi"):
            rows[criterion_name]["budget"] = criterion.budget_report
        print(name, criterion_name, f"{seconds:.2f}s = {seconds / unit:.2f}x forward ({before:.2f}s/{after:.2f}s)",
              flush=True)
    return {"groups": len(space.groups), "criteria": rows}


def taylor_agreement(images: int) -> dict:
    """Spearman per layer between default-subset and all-image Taylor scores (resnet20, 32 px)."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    batches = calibration(images, 64, 32, 10, seed=1)
    set_bn_statistics(model, batches)
    space = PruningSpace.build(model, torch.zeros(1, 3, 32, 32))
    context = ScoringContext(calibration=batches)
    subset = create_criterion("taylor").score(model, space.groups, context)
    full = create_criterion("taylor", image_fraction=1.0).score(model, space.groups, context)
    rho = {n: float(spearmanr(subset[n].numpy(), full[n].numpy())[0]) for n in full}
    values = sorted(rho.values())
    used = sum(len(x) for x, _ in create_criterion("taylor").scoring_batches(batches))
    return {"calibration_images": images, "default_images": used,
            "spearman_mean": sum(values) / len(values), "spearman_min": values[0],
            "spearman_median": values[len(values) // 2], "per_layer": rho}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-taylor-agreement", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/criteria_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "load_before": load,
              "torch": torch.__version__, "models": {}}
    for name in args.models:
        result["models"][name] = measure_model(name, args)
    if not args.skip_taylor_agreement:
        result["taylor_agreement"] = [taylor_agreement(n) for n in (64, 256)]
    result["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=1)
    atomic_write(args.out, lambda tmp: tmp.write_text(text))
    for name, row in result["models"].items():
        ratios = ", ".join(f"{c} {r['x_forward']:.2f}x" for c, r in row["criteria"].items())
        print(f"{name}: {ratios}")


if __name__ == "__main__":
    main()
