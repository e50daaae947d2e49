"""Cost of the activation-statistics pass, and batched ranks vs HRank's per-map loop.

1. Statistics pass (edges + histograms + ranks + moments, optionally CHIP) vs a plain inference
   pass over the same calibration images.
2. Feature-map ranks of every observed output: our path (one pass, all layers, one batched
   ``matrix_rank`` per hook call) vs HRank's way (one pass per layer, ``matrix_rank`` per map in
   a Python loop) on the same images; the ranks are checked equal.

    python benchmarks/stats_cost.py --checkpoint runs/bench/resnet20-fmnist.pt --images 1024 \
        --rank-images 128 --out benchmarks/results/stats_cost.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from pruning.data import DataConfig, calibration_batches, load_data
from pruning.statistics import batched_map_rank, collect_activation_stats
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--rank-images", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, spec = load_checkpoint(args.checkpoint)
    splits = load_data(DataConfig(**spec.meta["data"]))
    batches = calibration_batches(splits, args.images, 128)
    space = PruningSpace.build(model, torch.zeros(1, *spec.input_shape))

    inference_pass(model, batches[:1])  # warm-up
    _, plain = timed(lambda: inference_pass(model, batches))
    _, stats = timed(lambda: collect_activation_stats(model, space.groups, batches))
    _, stats_no_rank = timed(lambda: collect_activation_stats(model, space.groups, batches, rank=False))
    _, stats_chip = timed(lambda: collect_activation_stats(model, space.groups, batches, chip=True))

    rank_batches = [b for _, b in zip(range(max(1, args.rank_images // 128)), batches)]
    rank_batches = [(x[: args.rank_images], y[: args.rank_images]) for x, y in rank_batches]
    ours, ours_seconds = timed(lambda: batched_ranks(model, space, rank_batches))
    loop, loop_seconds = timed(lambda: hrank_loop_ranks(model, space, rank_batches))
    equal = ours.keys() == loop.keys() and all(torch.equal(ours[k], loop[k]) for k in ours)
    result = {
        "images": sum(len(y) for _, y in batches), "threads": args.threads,
        "inference_seconds": plain, "stats_seconds": stats, "stats_no_rank_seconds": stats_no_rank,
        "stats_with_chip_seconds": stats_chip,
        "stats_over_inference": stats / plain, "stats_no_rank_over_inference": stats_no_rank / plain,
        "stats_chip_over_inference": stats_chip / plain,
        "rank_images": sum(len(y) for _, y in rank_batches), "rank_batched_seconds": ours_seconds,
        "rank_hrank_loop_seconds": loop_seconds, "rank_speedup": loop_seconds / ours_seconds, "ranks_equal": equal,
    }
    print(json.dumps(result, indent=1))
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))


if __name__ == "__main__":
    main()
