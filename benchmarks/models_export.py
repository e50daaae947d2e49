"""torchvision models through the whole path: statistics pass, pruning to a MACs target, ONNX
export (checked against PyTorch), PyTorch and onnxruntime latency at batch 1 and 64, pruned next
to unpruned, and the MACs ratio next to the measured speedups.

Random initialisation (cost numbers only: accuracy is not measured), CIFAR-size inputs
(3x32x32) with a 10-class head, L1 channel scores, uniform ratios, strategy ``full``; the
statistics pass and the data-driven parts run on random calibration images. One pruned model per
``--round-to`` value (kept channel counts multiples of it; 1: any count).

    python benchmarks/models_export.py --out benchmarks/results/models_export.json
    python benchmarks/models_export.py --report benchmarks/results/models_export.json \
        [--write docs/benchmarks.md --key models-export]     # the result file as a table, no measuring
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from pruning.criteria import ScoringContext, create_criterion
from pruning.export import Timing, export_model, exported_latency
from pruning.models import create_model
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig
from pruning.statistics import collect_activation_stats
from pruning.structure import PruningSpace, measure_cost, measure_latency
from pruning.utils import atomic_write

try:
    from benchmarks.docs_blocks import add_block_arguments, write_or_print
except ImportError:  # run as a script from benchmarks/
    from docs_blocks import add_block_arguments, write_or_print


def render(result: dict) -> str:
    """Per model and variant: MACs, ONNX size, PyTorch and onnxruntime latency at batch 1 / 64 and
    the speedups over the unpruned model."""
    settings = result["settings"]
    lines = [f"MACs target -{settings['target']:.0%}, {settings['threads']} thread(s), median of "
             f"{settings['repeats']} runs at batch 1 and {settings['repeats_b64']} at batch 64.", "",
             "| model | variant | MACs | ONNX size | PyTorch b1 / b64 ms | onnxruntime b1 / b64 ms "
             "| PyTorch b1 / b64 speedup | onnxruntime b1 / b64 speedup |", "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for label in ["unpruned", *row["prune_seconds"]]:
            m = row[label]
            variant = (label if label in ("unpruned", "pruned")
                       else f"pruned, round_to {label.removeprefix('pruned_round')}")
            speed = m.get("speedup")
            lines.append(
                f"| {row['model'].removeprefix('torchvision:')} | {variant} | {m['macs'] / 1e6:.2f} M | "
                f"{m['onnx_bytes'] / 1e6:.1f} MB | {m['pytorch_b1_ms']:.2f} / {m['pytorch_b64_ms']:.0f} | "
                f"{m['onnxruntime_b1_ms']:.2f} / {m['onnxruntime_b64_ms']:.0f} | "
                + (f"{speed['pytorch_b1_ms']:.2f}x / {speed['pytorch_b64_ms']:.2f}x | "
                   f"{speed['onnxruntime_b1_ms']:.2f}x / {speed['onnxruntime_b64_ms']:.2f}x |" if speed else "- | - |"))
    return "\n".join(lines)

SHAPE = (3, 32, 32)


def latencies(model, path: Path, args) -> dict:
    out = {}
    for batch, repeats in ((1, args.repeats), (64, args.repeats_b64)):
        out[f"pytorch_b{batch}_ms"] = measure_latency(model, SHAPE, batch, threads=args.threads, warmup=1,
                                                      repeats=repeats).median_ms
        timing = Timing(threads=args.threads, warmup=1, repeats=repeats)
        out[f"onnxruntime_b{batch}_ms"] = exported_latency(path, "onnx", SHAPE, batch, timing).median_ms
    return out


def measure(name: str, args, folder: Path) -> dict:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=3).eval()
    example = torch.zeros(1, *SHAPE)
    space = PruningSpace.build(model, example)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(64, *SHAPE, generator=generator), torch.zeros(64, dtype=torch.long)) for _ in range(4)]
    started = time.perf_counter()
    stats = collect_activation_stats(model, space.groups, batches)
    stats_seconds = time.perf_counter() - started
    nets, prune_seconds = {"unpruned": model}, {}
    for round_to in args.round_to:
        started = time.perf_counter()
        config = PruningConfig(strategy="full", allocation="uniform", flops_reduction=args.target, round_to=round_to)
        outcome = prune_with_criterion(model, example, create_criterion("l1"), config,
                                       ScoringContext(calibration=batches, stats=stats), space=space)
        label = _pruned_label(round_to)
        prune_seconds[label] = time.perf_counter() - started
        nets[label] = outcome.model
    row = {"model": name, "groups": len(space.groups), "statistics_seconds": stats_seconds,
           "prune_seconds": prune_seconds}
    for label, net in nets.items():
        path = folder / f"{name.replace(':', '_')}-{label}.onnx"
        started = time.perf_counter()
        check = export_model(net, SHAPE, path, "onnx")
        cost = measure_cost(net, SHAPE)
        row[label] = {"macs": cost.macs, "params": cost.params, "export_seconds": time.perf_counter() - started,
                      "onnx_bytes": path.stat().st_size, "max_abs_diff": check.max_abs_diff,
                      "tolerance": check.tolerance, **latencies(net, path, args)}
        print(json.dumps({"model": name, label: row[label]}), flush=True)
    unpruned = row["unpruned"]
    for label in prune_seconds:
        pruned = row[label]
        pruned["macs_ratio"] = unpruned["macs"] / pruned["macs"]
        pruned["speedup"] = {key: unpruned[key] / pruned[key] for key in unpruned if key.endswith("_ms")}
    return row


def _pruned_label(round_to: int) -> str:
    """``pruned`` (any channel count) or ``pruned_round<N>`` (counts multiples of N)."""
    return "pruned" if round_to == 1 else f"pruned_round{round_to}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["torchvision:resnet18", "torchvision:mobilenet_v2"])
    parser.add_argument("--target", type=float, default=0.5, help="MACs reduction")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--repeats-b64", type=int, default=5)
    parser.add_argument("--round-to", nargs="+", type=int, default=[1, 8],
                        help="one pruned model per value: kept channel counts multiples of it (1: any)")
    parser.add_argument("--out")
    parser.add_argument("--report", metavar="FILE", help="render a result file instead of measuring")
    add_block_arguments(parser)
    args = parser.parse_args()
    if args.report:
        write_or_print(parser, args, render(json.loads(Path(args.report).read_text())))
        return
    if not args.out:
        parser.error("--out is required unless --report")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="prunesweep-export-") as folder:
        rows = [measure(name, args, Path(folder)) for name in args.models]
    result = {"settings": vars(args), "machine": f"{platform.machine()}, torch {torch.__version__}", "rows": rows}
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))
    for row in rows:
        print(json.dumps({"model": row["model"], **{label: {k: row[label][k] for k in ("macs_ratio", "speedup")}
                                                    for label in row["prune_seconds"]}}))


if __name__ == "__main__":
    main()
