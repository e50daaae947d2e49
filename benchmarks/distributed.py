"""Statistics pass and Shapley estimation: in-process vs single-threaded Ray actors.

A ResNet-20 with random weights (1 input channel, 10 classes) and random 1x28x28 images; the
statistics pass of every prunable group (``collect_activation_stats`` vs ``distributed_stats``,
one batch per shard) and permutation Shapley values of a few groups with a fixed budget and no
truncation (``estimate_shapley`` per group vs ``distributed_shapley``), each:

* in-process with ``--threads`` torch threads (default: 2, then 1; speedups against both);
* on 1, 2, ... actors (``--workers``), each single-threaded, started for the run as the CLI does
  (``cold``: wall time includes the actor start, the model load on the actors and the
  object-store puts, reported separately as overhead), and again on the already started
  actors of a :class:`~orchestrator.distributed.WorkerPool` (``warm``).

Speedup = in-process time / distributed time; efficiency = speedup(N actors vs 1 actor) / N.
The 1-minute load average is recorded before and after every measurement (the machine may be
shared). Ray's own start (``ray.init``) is timed once and not included anywhere else.

    .venv/bin/python benchmarks/distributed.py --images 1024 --workers 1 2 \
        --out benchmarks/results/distributed.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import dataclasses

import torch

from pruning.structure import PruningSpace
from pruning.models import create_model
from pruning.games import GameSharing, LayerGame, ShapleyOptions, calibration_batch, estimate_shapley, group_seed, trace_model
from pruning.statistics import collect_activation_stats


def load() -> float:
    return round(os.getloadavg()[0], 2)


def timed(fn):
    before = load()
    start = time.perf_counter()
    result = fn()
    return result, {"seconds": time.perf_counter() - start, "load_before": before, "load_after": load()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128, help="images per batch = per statistics shard")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1],
                        help="torch threads of the in-process runs; the first is the speedup reference")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--groups", nargs="+", default=["layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1"])
    parser.add_argument("--permutations", type=int, default=16, help="Shapley budget per group")
    parser.add_argument("--block", type=int, default=4, help="permutations per block (and per in-process batch)")
    parser.add_argument("--shapley-images", type=int, default=32, help="images the coalition worth is computed on")
    parser.add_argument("--skip", nargs="*", default=[], choices=["stats", "shapley"])
    parser.add_argument("--out", default=None, help="also write the results as JSON")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(args.images, 1, 28, 28, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    batches = [(images[i : i + args.batch_size], labels[i : i + args.batch_size]) for i in range(0, args.images, args.batch_size)]
    space = PruningSpace.build(model, torch.zeros(1, 1, 28, 28))
    shapley_groups = [space[name] for name in args.groups]
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "torch": torch.__version__},
        "config": vars(args),
        "stats": {},
        "shapley": {},
    }
    shapley_options = ShapleyOptions(max_permutations=args.permutations, batch_permutations=args.block,
                                     antithetic=True, truncation=None, batch_size=args.shapley_images)

    # -- in-process ------------------------------------------------------------------------
    def shapley_in_process():
        inputs, targets = calibration_batch(batches, args.shapley_images)
        traced = trace_model(model)
        out = {}
        for group in shapley_groups:
            game = LayerGame(model, group, inputs, targets, sharing=GameSharing(traced=traced))
            out[group.name] = estimate_shapley(game, shapley_options, group_seed(0, group.name))
        return out

    for threads in args.threads:
        torch.set_num_threads(threads)
        if "stats" not in args.skip:
            _, t = timed(lambda: collect_activation_stats(model, space.groups, batches))
            results["stats"][f"in_process_{threads}t"] = {**t, "threads": threads}
            print(f"stats   in-process ({threads} threads): {t['seconds']:.2f} s  load {t['load_before']}->{t['load_after']}")
        if "shapley" not in args.skip:
            _, t = timed(shapley_in_process)
            results["shapley"][f"in_process_{threads}t"] = {**t, "threads": threads}
            print(f"shapley in-process ({threads} threads): {t['seconds']:.2f} s  load {t['load_before']}->{t['load_after']}")

    # -- Ray -------------------------------------------------------------------------------
    from orchestrator.distributed import ShardOptions, WorkerPool, connect, distributed_shapley, distributed_stats

    _, t = timed(lambda: connect(None, max(args.workers), 1, log_to_driver=False))
    results["ray_init_seconds"] = t["seconds"]
    print(f"ray.init: {t['seconds']:.2f} s")
    torch.set_num_threads(1)  # the driver only merges

    def record(kind: str, label: str, n: int, report, t: dict) -> None:
        overhead = report.start_s + report.put_s
        row = {**t, "workers": n, "start_s": report.start_s, "put_s": report.put_s, "overhead_s": overhead,
               "compute_s": t["seconds"] - overhead, "started_workers": report.started_workers,
               "shards": report.shards}
        results[kind][f"{label}_{n}"] = row
        print(f"{kind:<7} {label} {n} actor(s): {t['seconds']:.2f} s (start+load {report.start_s:.2f} s, put "
              f"{report.put_s:.3f} s)  load {t['load_before']}->{t['load_after']}")

    quiet = ShardOptions(progress=False)
    for n in args.workers:
        cold = ShardOptions(workers=n, progress=False, return_report=True)
        if "stats" not in args.skip:
            (_, rep), t = timed(lambda: distributed_stats(model, space.groups, batches,
                                                          shards=cold.replace(shard_size=1)))
            record("stats", "cold", n, rep, t)
        if "shapley" not in args.skip:
            (_, rep), t = timed(lambda: distributed_shapley(model, shapley_groups, batches, shapley_options, cold))
            record("shapley", "cold", n, rep, t)
        with WorkerPool(n) as pool:
            if "stats" not in args.skip:  # first call warms the pool up, the second is measured
                distributed_stats(model, space.groups, batches[:1], shards=quiet.replace(pool=pool))
                warm = quiet.replace(pool=pool, return_report=True)
                (_, rep), t = timed(lambda: distributed_stats(model, space.groups, batches,
                                                              shards=warm.replace(shard_size=1)))
                record("stats", "warm", n, rep, t)
            if "shapley" not in args.skip:
                warm_up = dataclasses.replace(shapley_options, max_permutations=2, batch_permutations=2)
                distributed_shapley(model, shapley_groups[:1], batches, warm_up, quiet.replace(pool=pool))
                warm = quiet.replace(pool=pool, return_report=True)
                (_, rep), t = timed(lambda: distributed_shapley(model, shapley_groups, batches, shapley_options, warm))
                record("shapley", "warm", n, rep, t)

    # -- summary ---------------------------------------------------------------------------
    for kind in ("stats", "shapley"):
        rows = results[kind]
        if f"in_process_{args.threads[0]}t" not in rows:
            continue
        bases = {t: rows[f"in_process_{t}t"]["seconds"] for t in args.threads}
        for label in ("cold", "warm"):
            one = rows.get(f"{label}_1", {}).get("seconds")
            for n in args.workers:
                row = rows[f"{label}_{n}"]
                for t, base in bases.items():
                    row[f"speedup_vs_in_process_{t}t"] = base / row["seconds"]
                if one:
                    row["efficiency_vs_1_actor"] = one / row["seconds"] / n
        print(f"\n{kind}: in-process " + ", ".join(f"{b:.2f} s ({t} threads)" for t, b in bases.items()))
        heads = "".join(f"{f'speedup/{t}t':>13}" for t in bases)
        print(f"{'':<8}{'actors':>7}{'wall s':>9}{'overhead s':>12}{heads}{'efficiency':>12}")
        for label in ("cold", "warm"):
            for n in args.workers:
                row = rows[f"{label}_{n}"]
                eff = row.get("efficiency_vs_1_actor", float("nan"))
                speedups = "".join(f"{row[f'speedup_vs_in_process_{t}t']:>13.2f}" for t in bases)
                print(f"{label:<8}{n:>7}{row['seconds']:>9.2f}{row['overhead_s']:>12.2f}{speedups}{eff:>12.2f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2, default=float))
        print(f"-> {args.out}")


if __name__ == "__main__":
    main()
