"""Cost of the activation-statistics pass, ranks on a subsample, and batched ranks vs HRank's loop.

1. Statistics pass (edges + histograms + ranks + moments, optionally CHIP) vs a plain inference
   pass over the same calibration images: without ranks, with ranks on the first
   ``RANK_IMAGES`` images (the default), on every image, and with CHIP.
2. Ranks on a subsample: for each ``--candidates`` N, the pass with ``rank_images=N`` (seconds,
   x inference) and how its per-channel mean map ranks agree with ranks over every image, per
   group: Spearman correlation, and the Jaccard overlap of the kept sets at 50 % pruning
   (the half with the highest mean rank, as HRank keeps).
3. Feature-map ranks of every observed output: our path (one pass, all layers, one batched
   ``matrix_rank`` per hook call) vs HRank's way (one pass per layer, ``matrix_rank`` per map in
   a Python loop) on the first ``--loop-images`` images; the ranks are checked equal.

``ratio`` and ``agreement`` (:mod:`stats_cost_224`, run as ``stats_cost.py ratio ...``): the pass
at 224 px against a plain forward pass on torchvision models, and the rank shortcuts' agreement.

The headline passes are timed ``--repeats`` times (the minimum is reported: the machine may be
shared); the load average is recorded before and after.

    python benchmarks/stats_cost.py --checkpoint runs/bench/resnet20-fmnist.pt --images 1024 \
        --loop-images 128 --threads 1 --out benchmarks/results/stats_cost.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
from scipy.stats import spearmanr

from pruning.data import DataConfig, calibration_batches, load_data
from pruning.statistics import RANK_IMAGES, StatsOptions, batched_map_rank, collect_activation_stats
from pruning.structure import PruningSpace, load_checkpoint
from pruning.utils import atomic_write


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


@torch.no_grad()
def inference_pass(model, batches):
    for x, _ in batches:
        model(x)


def observed_maps(model, module_name, relu, batches):
    """HRank's way: one forward pass for this layer, its maps handed to a callback."""
    captured = []
    module = dict(model.named_modules())[module_name]
    handle = module.register_forward_hook(lambda m, i, o: captured.append(torch.relu(o) if relu else o))
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(x)
                yield captured.pop()
    finally:
        handle.remove()


def hrank_loop_ranks(model, space, batches):
    ranks = {}
    for group in space.groups:
        for observed in group.observed:
            total = None
            for out in observed_maps(model, observed.module, observed.relu, batches):
                if out.dim() != 4:
                    break
                per_map = torch.tensor([[torch.linalg.matrix_rank(out[b, c]).item() for c in range(out.shape[1])]
                                        for b in range(out.shape[0])], dtype=torch.float64)
                total = per_map.sum(0) if total is None else total + per_map.sum(0)
            if total is not None:
                ranks[observed.module] = total
    return ranks


def batched_ranks(model, space, batches):
    ranks = {}
    modules = dict(model.named_modules())
    handles = []

    def hook(name, relu):
        def fn(m, i, o):
            if o.dim() == 4:
                r = batched_map_rank(torch.relu(o) if relu else o).sum(0).double()
                ranks[name] = ranks.get(name, 0) + r
        return fn

    for group in space.groups:
        for observed in group.observed:
            handles.append(modules[observed.module].register_forward_hook(hook(observed.module, observed.relu)))
    try:
        inference_pass(model, batches)
    finally:
        for h in handles:
            h.remove()
    return ranks


def agreement(sub, full, groups) -> dict:
    """Per group with maps: Spearman of the mean map ranks and Jaccard of the kept halves."""
    per_group = {}
    for group in groups:
        a, b = sub.channel_rank(group), full.channel_rank(group)
        if not torch.isfinite(b).all():  # outputs without maps: no rank to compare
            continue
        keep = group.size - group.size // 2
        kept_a = set(torch.argsort(a, descending=True, stable=True)[:keep].tolist())
        kept_b = set(torch.argsort(b, descending=True, stable=True)[:keep].tolist())
        # a constant rank vector (every channel full rank) has no ordering: Spearman undefined
        rho = float(spearmanr(a.numpy(), b.numpy()).statistic) if a.std() > 0 and b.std() > 0 else math.nan
        per_group[group.name] = {"spearman": rho, "jaccard_50": len(kept_a & kept_b) / len(kept_a | kept_b)}
    rhos = [g["spearman"] for g in per_group.values() if not math.isnan(g["spearman"])]
    jaccards = [g["jaccard_50"] for g in per_group.values()]
    return {"spearman_mean": sum(rhos) / len(rhos), "spearman_min": min(rhos),
            "spearman_undefined_groups": len(per_group) - len(rhos),
            "jaccard_50_mean": sum(jaccards) / len(jaccards), "jaccard_50_min": min(jaccards), "groups": per_group}


def main_224(argv: list[str]) -> None:
    import stats_cost_224

    parser = argparse.ArgumentParser(description=stats_cost_224.__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["ratio", "agreement"])
    parser.add_argument("--models", nargs="+",
                        default=["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "convnext_tiny"])
    parser.add_argument("--images", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--agree-images", type=int, default=8, help="images of the map-side agreement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.mode == "ratio":
        result = {"threads": args.threads, "batch": args.batch, "repeats": args.repeats,
                  "runs": stats_cost_224.ratio(args.models, args.images, args.batch, args.repeats)}
    else:
        result = {"threads": args.threads, **stats_cost_224.agreement(args.agree_images)}
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("ratio", "agreement"):
        return main_224(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--loop-images", type=int, default=128, help="images for the HRank-loop comparison")
    parser.add_argument("--candidates", type=int, nargs="+", default=[32, 64, 128, 256, 512],
                        help="rank_images values to compare with ranks over every image")
    parser.add_argument("--repeats", type=int, default=2, help="timings of each headline pass (minimum kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, spec = load_checkpoint(args.checkpoint)
    splits = load_data(DataConfig(**spec.meta["data"]))
    batches = calibration_batches(splits, args.images, 128)
    space = PruningSpace.build(model, torch.zeros(1, *spec.input_shape))

    load_before = os.getloadavg()
    inference_pass(model, batches[:1])  # warm-up

    def best(fn):
        runs = [timed(fn) for _ in range(args.repeats)]
        return runs[-1][0], min(seconds for _, seconds in runs)

    _, plain = best(lambda: inference_pass(model, batches))
    _, stats_no_rank = best(lambda: collect_activation_stats(model, space.groups, batches, StatsOptions(rank=False)))
    _, stats = best(lambda: collect_activation_stats(model, space.groups, batches))
    _, stats_map = best(lambda: collect_activation_stats(model, space.groups, batches, StatsOptions(map_entropy=True)))
    full, stats_all = best(lambda: collect_activation_stats(model, space.groups, batches,
                                                            StatsOptions(rank_images=None)))
    _, stats_chip = timed(lambda: collect_activation_stats(model, space.groups, batches, StatsOptions(chip=True)))
    candidates = {}
    for n in args.candidates:
        sub, seconds = timed(lambda n=n: collect_activation_stats(model, space.groups, batches,
                                                                  StatsOptions(rank_images=n)))
        candidates[str(n)] = {"seconds": seconds, "over_inference": seconds / plain,
                              **agreement(sub, full, space.groups)}

    rank_batches = [b for _, b in zip(range(max(1, math.ceil(args.loop_images / 128))), batches)]
    rank_batches = [(x[: args.loop_images], y[: args.loop_images]) for x, y in rank_batches]
    ours, ours_seconds = timed(lambda: batched_ranks(model, space, rank_batches))
    loop, loop_seconds = timed(lambda: hrank_loop_ranks(model, space, rank_batches))
    equal = ours.keys() == loop.keys() and all(torch.equal(ours[k], loop[k]) for k in ours)
    result = {
        "images": sum(len(y) for _, y in batches), "threads": args.threads, "repeats": args.repeats,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "default_rank_images": RANK_IMAGES,
        "inference_seconds": plain, "stats_seconds": stats, "stats_no_rank_seconds": stats_no_rank,
        "stats_all_ranks_seconds": stats_all, "stats_with_chip_seconds": stats_chip,
        "stats_with_map_entropy_seconds": stats_map, "stats_map_entropy_over_inference": stats_map / plain,
        "stats_over_inference": stats / plain, "stats_no_rank_over_inference": stats_no_rank / plain,
        "stats_all_ranks_over_inference": stats_all / plain, "stats_chip_over_inference": stats_chip / plain,
        "rank_images_candidates": candidates,
        "loop_images": sum(len(y) for _, y in rank_batches), "rank_batched_seconds": ours_seconds,
        "rank_hrank_loop_seconds": loop_seconds, "rank_speedup": loop_seconds / ours_seconds, "ranks_equal": equal,
    }
    print(json.dumps(result, indent=1))
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))


if __name__ == "__main__":
    main()
