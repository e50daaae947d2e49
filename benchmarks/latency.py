"""Measured CPU latency of uniformly pruned models next to their MAC reduction.

With uniform allocation every criterion yields the same widths at a given FLOPs target, so one
pruned model per target stands for all of them (scores only choose *which* channels stay).
Median of ``--repeats`` timed runs after warm-up, fixed thread count, batch 1 and 64.

    python benchmarks/latency.py --checkpoint runs/bench/resnet20-fmnist.pt --targets 0.3 0.5 0.7 \
        --out benchmarks/results/latency_resnet20.json
    python benchmarks/latency.py --report benchmarks/results/latency_resnet20_2threads.json ... \
        [--write docs/benchmarks.md --key latency-resnet20]     # one table of the result files, no measuring
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from pruning.criteria import create_criterion
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig
from pruning.structure import load_checkpoint, measure_cost, measure_latency
from pruning.utils import atomic_write

try:
    from benchmarks.docs_blocks import add_block_arguments, write_or_print
except ImportError:  # run as a script from benchmarks/
    from docs_blocks import add_block_arguments, write_or_print


def render(paths: list[str]) -> str:
    """One row per (result file, pruned model): MACs and parameters kept, median latency at batch
    1 and 64, and the speedup over the file's unpruned model."""
    lines = ["| threads | MACs kept | params | batch 1 ms | batch 64 ms | speedup b1 | speedup b64 |",
             "|---|---|---|---|---|---|---|"]
    for path in paths:
        result = json.loads(open(path).read())
        for row in result["rows"]:
            lines.append(f"| {result['threads']} | {row['macs_ratio']:.1%} ({row['macs'] / 1e6:.1f} M) | "
                         f"{row['params'] / 1e3:.1f} k | {row['latency_ms_b1']:.2f} | {row['latency_ms_b64']:.1f} | "
                         f"{row['speedup_b1']:.2f}x | {row['speedup_b64']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--targets", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out")
    parser.add_argument("--report", nargs="+", metavar="FILE", help="render result files instead of measuring")
    add_block_arguments(parser)
    args = parser.parse_args()
    if args.report:
        write_or_print(parser, args, render(args.report))
        return
    if not (args.checkpoint and args.out):
        parser.error("--checkpoint and --out are required unless --report")
    model, spec = load_checkpoint(args.checkpoint)
    shape = tuple(spec.input_shape)
    example = torch.zeros(1, *shape)
    models = {0.0: model}
    for target in args.targets:
        config = PruningConfig(strategy=args.strategy, flops_reduction=target)
        models[target] = prune_with_criterion(model, example, create_criterion("l1"), config).model
    rows = []
    for target, m in models.items():
        cost = measure_cost(m, shape)
        row = {"target": target, "macs": cost.macs, "params": cost.params, "load_average": os.getloadavg()[0]}
        for batch in (1, 64):
            row[f"latency_ms_b{batch}"] = measure_latency(m, shape, batch_size=batch, threads=args.threads,
                                                           warmup=5, repeats=args.repeats).median_ms
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["macs_ratio"] = row["macs"] / base["macs"]
        row["speedup_b1"] = base["latency_ms_b1"] / row["latency_ms_b1"]
        row["speedup_b64"] = base["latency_ms_b64"] / row["latency_ms_b64"]
        print(json.dumps(row))
    result = {"settings": vars(args), "threads": args.threads, "rows": rows}
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))


if __name__ == "__main__":
    main()
