"""``prunesweep export``: a checkpoint (pruned or not) as an ONNX or TorchScript file, checked
against PyTorch before it is kept, with its latency next to PyTorch's."""
from __future__ import annotations

import argparse

from orchestrator.cli.options import add_output, check_minimum, check_output_files
from orchestrator.cli.result import CommandResult

__all__ = ["FORMATS", "RUNTIMES", "add_parser", "run"]

#: as :data:`pruning.export.FORMATS` (which imports torch)
FORMATS = ("onnx", "torchscript")
#: the runtime each format's latency is measured in
RUNTIMES = {"onnx": "onnxruntime", "torchscript": "torchscript"}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export a checkpoint to ONNX or TorchScript, check it and time it")
    add_output(p)
    p.add_argument("--checkpoint", required=True, help="a prunesweep checkpoint (pruned or not)")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx (opset 20, dynamic batch) or torchscript")
    p.add_argument("--out", required=True, help="the file to write (only once its check passed)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="batch of random inputs the export is checked on (default: 8)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the latency runs (default: 1)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before the timed ones (default: 3)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs; the median is reported (default: 10)")
    return p


def run(args: argparse.Namespace) -> CommandResult:
    from orchestrator.cli.common import LATENCY_BATCHES
    from pruning.export import OPSET, CheckBatch, Timing, export_model, exported_latency
    from pruning.structure import load_checkpoint, measure_latency

    check_output_files(args, "--out")
    for option, low in (("--batch-size", 1), ("--threads", 1), ("--warmup", 0), ("--repeats", 1)):
        check_minimum(args, option, low)
    model, spec = load_checkpoint(args.checkpoint)
    shape = tuple(spec.input_shape)
    what = f"model {spec.name!r}"
    check = export_model(model, shape, args.out, args.format, check=CheckBatch(size=args.batch_size), what=what)
    timing = Timing(threads=args.threads, warmup=args.warmup, repeats=args.repeats)
    runtime = RUNTIMES[args.format]
    latency = {
        "pytorch": {f"batch{b}": measure_latency(model, shape, b, threads=timing.threads, warmup=timing.warmup,
                                                 repeats=timing.repeats).median_ms for b in LATENCY_BATCHES},
        runtime: {f"batch{b}": exported_latency(args.out, args.format, shape, b, timing).median_ms
                  for b in LATENCY_BATCHES},
    }
    data = {
        "checkpoint": args.checkpoint, "model": spec.name, "format": args.format, "out": args.out,
        "opset": OPSET if args.format == "onnx" else None, "input_shape": list(shape),
        "pruned": "pruning" in spec.meta, "check": check.to_dict(), "threads": args.threads, "latency_ms": latency,
        # where and how every latency above was timed (both runtimes on the CPU)
        "latency": {"device": "cpu", "batches": list(LATENCY_BATCHES), "threads": args.threads,
                    "warmup": args.warmup, "repeats": args.repeats},
    }
    return CommandResult(_summary(data, runtime), data)


def _summary(data: dict, runtime: str) -> str:
    from orchestrator.report import format_table

    check, latency = data["check"], data["latency_ms"]
    rows = [(f"batch {key[len('batch'):]}", latency["pytorch"][key], latency[runtime][key],
             latency["pytorch"][key] / latency[runtime][key]) for key in latency["pytorch"]]
    kind = f"ONNX opset {data['opset']}" if data["format"] == "onnx" else "TorchScript"
    return (
        f"{data['model']} ({'pruned' if data['pruned'] else 'not pruned'}) -> {data['out']} ({kind})\n"
        f"check on a random batch of {check['batch_size']}: max abs difference {check['max_abs_diff']:.3g} "
        f"<= tolerance {check['tolerance']:.3g} ({check['rule']})\n"
        f"median latency (ms, {data['threads']} thread(s)):\n"
        + format_table(rows, ("", "pytorch", runtime, "speedup"))
    )
