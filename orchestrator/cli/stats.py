"""``prunesweep stats``: activation statistics on the calibration split, saved for ``prune --stats``."""
from __future__ import annotations

import argparse

from orchestrator.cli.options import (
    add_data, add_device, add_distributed, add_model_source, add_output, add_seed, add_task_options, check_minimum,
    check_output_files, check_workers, show_progress,
)
from orchestrator.cli.result import CommandResult
from pruning.errors import InputError

__all__ = ["add_parser", "run"]

#: pruning.statistics.RANK_IMAGES, not imported here: the parser is built without loading torch
#: (tests/pruning/statistics/test_rank_images.py checks the two agree)
RANK_IMAGES = 128


def _rank_images(text: str) -> int | None:
    """``--rank-images``: a count, or ``all`` (None: rank every image)."""
    return None if text == "all" else int(text)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("stats", help="compute activation statistics on the calibration split and save them")
    add_output(p, bars=True)
    add_seed(p)
    add_data(p, None)
    add_model_source(p)
    add_task_options(p, default="the checkpoint's, else classification (its data is the task's)")
    p.add_argument("--calibration-images", type=int, default=1024, help="images from the calibration split (default: 1024)")
    p.add_argument("--bins", type=int, default=32, help="histogram bins for entropy (default: 32)")
    p.add_argument("--value", choices=("gap", "spatial"), default="gap",
                   help="gap (per-image average, default) or spatial (all positions)")
    p.add_argument("--rank-images", type=_rank_images, default=RANK_IMAGES, metavar="N",
                   help=f"rank the feature maps of the first N calibration images only, or 'all' "
                        f"(default: {RANK_IMAGES}; ranks are most of the pass's cost)")
    p.add_argument("--chip", action="store_true", help="also accumulate CHIP nuclear-norm statistics (slower)")
    p.add_argument("--map-entropy", action="store_true",
                   help="also the per-map softmax entropies (for entropy with value map-softmax)")
    p.add_argument("--read-inputs", action="store_true",
                   help="also the tensors the consumers of residual groups read (for criteria with source consumer)")
    p.add_argument("--per-class", action="store_true",
                   help="also per-class sums (for the criteria's class_scores=max: a channel's most favourable class)")
    p.add_argument("--out", required=True, help="statistics file to write")
    add_distributed(p, "the statistics pass")
    add_device(p, amp=False, loaders=False)
    return p


def run(args: argparse.Namespace) -> CommandResult:
    import time

    import torch

    from orchestrator.cli.common import collect_stats, command_device, load_fitting, ray_network
    from pruning.data import calibration_batches
    from pruning.statistics import StatsOptions
    from pruning.structure import PruningSpace

    check_output_files(args, "--out")
    check_minimum(args, "--calibration-images", 1)
    check_minimum(args, "--bins", 2)
    check_minimum(args, "--rank-images", 1)
    workers = check_workers(args)
    device = command_device(args)
    loaded = load_fitting(args)
    if args.per_class and not loaded.task.class_labels:
        raise InputError(f"--per-class needs one class label per image; task {loaded.task_spec.name!r} has none")
    space = PruningSpace.build(loaded.model, torch.zeros(1, *loaded.shape))
    loaded.model.to(device)  # the in-process pass (and the histogram edges) run there
    batches = calibration_batches(loaded.splits, args.calibration_images, 128, progress=show_progress(args))
    started = time.perf_counter()
    options = StatsOptions(bins=args.bins, value=args.value, rank_images=args.rank_images, chip=args.chip,
                           map_entropy=args.map_entropy, read_inputs=args.read_inputs, per_class=args.per_class)
    state, report = collect_stats(args, loaded.model, space.groups, batches, options, return_report=True)
    seconds = time.perf_counter() - started
    state.save(args.out)
    data = {"checkpoint": args.checkpoint, "model": loaded.spec.name, "out": str(args.out),
            "images": sum(len(y) for _, y in batches), "rank_images": args.rank_images,
            "task": loaded.task_spec.to_dict(), "layers": len(space.groups), "seconds": seconds, "workers": workers, "ray_network": ray_network(args),
            # Ray node id -> shards its actors ran (None in-process): on a cluster, which nodes worked
            "nodes": report.nodes if report is not None else None}
    return CommandResult(f"statistics of {data['layers']} layers over {data['images']} calibration images "
                         f"in {seconds:.1f} s -> {args.out}", data)
