"""Measured CPU latency of uniformly pruned models next to their MAC reduction.

With uniform allocation every criterion yields the same widths at a given FLOPs target, so one
pruned model per target stands for all of them (scores only choose *which* channels stay).
Median of ``--repeats`` timed runs after warm-up, fixed thread count, batch 1 and 64.

    python benchmarks/latency.py --checkpoint runs/bench/resnet20-fmnist.pt --targets 0.3 0.5 0.7 \
        --out benchmarks/results/latency_resnet20.json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--targets", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
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
