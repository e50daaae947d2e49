"""Shapley cost to reach a good channel ranking: naive permutation sampling vs our estimator.

For each group: a long-run reference (plain permutation sampling, many permutations); then,
for growing permutation budgets, the Spearman rank correlation of each estimator's values with
the reference. Reported: the first budget reaching rho >= 0.9, its coalition evaluations, the
image-forwards (coalitions x batch images; downstream-only forwards counted as full ones) and
wall time.

* naive: plain permutation sampling, full forward per coalition (``mode="hooks"``), one
  coalition per forward call (``max_batch`` = batch size), no antithetic pairs, no truncation.
* engineered: downstream-only re-execution (``mode="fx"``), many coalitions per forward,
  antithetic permutations, truncation at 2% of |v(N) - v(empty)|.

    python benchmarks/shapley_convergence.py --checkpoint runs/bench/resnet20-fmnist.pt \
        --out benchmarks/results/shapley_convergence.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from pruning.structure import load_checkpoint
from pruning.data import DataConfig, load_data, make_loader
from pruning.structure import PruningSpace
from pruning.games import LayerGame, permutation_shapley

BUDGETS = (2, 4, 8, 16, 32, 64)


def run(game_factory, reference, **options):
    for budget in BUDGETS:
        game = game_factory()
        started = time.perf_counter()
        estimate = permutation_shapley(game, max_permutations=budget, seed=1, **options)
        seconds = time.perf_counter() - started
        rho = float(spearmanr(estimate.values.numpy(), reference.numpy()).statistic)
        if rho >= 0.9:
            return {"permutations": budget, "rho": rho, "coalitions": estimate.evaluations,
                    "image_forwards": estimate.evaluations * game.batch_size, "seconds": seconds}
    return {"permutations": None, "rho": rho, "coalitions": estimate.evaluations,
            "image_forwards": estimate.evaluations * game.batch_size, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--groups", nargs="+", default=["layer1.0.conv1", "layer2.1.conv1", "layer3.2.conv1"])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--reference-permutations", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, spec = load_checkpoint(args.checkpoint)
    splits = load_data(DataConfig(**spec.meta["data"]))
    x, y = next(iter(make_loader(splits.calibration, args.images, shuffle=False)))
    space = PruningSpace.build(model, torch.zeros(1, *spec.input_shape))
    rows = []
    for name in args.groups:
        group = space[name]
        started = time.perf_counter()
        reference = permutation_shapley(LayerGame(model, group, x, y, mode="fx"),
                                        max_permutations=args.reference_permutations, batch_permutations=16, seed=12345)
        reference_seconds = time.perf_counter() - started
        naive = run(lambda: LayerGame(model, group, x, y, mode="hooks", max_batch=args.images), reference.values,
                    batch_permutations=1)
        engineered = run(lambda: LayerGame(model, group, x, y, mode="fx"), reference.values,
                         antithetic=True, truncation_tol=0.02 * abs(reference.v_full - reference.v_empty),
                         batch_permutations=8)
        row = {"group": name, "channels": group.size, "reference_seconds": reference_seconds,
               "naive": naive, "engineered": engineered}
        if naive["permutations"] and engineered["permutations"]:
            row["forward_ratio"] = naive["image_forwards"] / engineered["image_forwards"]
            row["time_ratio"] = naive["seconds"] / engineered["seconds"]
        rows.append(row)
        print(json.dumps(row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
