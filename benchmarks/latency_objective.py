"""A sweep against onnxruntime latency versus the same sweep against MACs, at the same trial budget.

The baselines are trained on Fashion-MNIST read as a 96-px ``imagefolder`` (the 28-px images
written as PNGs once, resized on load; two epochs on 6,000 images, what two cores allow; the
folder holds the first 7,000 training images, in Fashion-MNIST's own shuffled order, since a
``--train-subset`` of an imagefolder takes its first images, i.e. its first classes): at 96 px a ResNet-18 or MobileNetV2 forward pass takes
milliseconds, so latency is not call overhead. Both sweeps search the same space (the
``concentration`` layer ratios, ``round_to`` searched over 1 and 8, 12 warm starts) with the
same seed and trials; one minimises MACs, the other the latency the table predicts on onnxruntime (CPU, one
thread, batch 1). At the end every front model of both sweeps is exported and timed again in
this process, alternating, so that the two fronts are compared on one set of measurements.

Reported: the build time of the latency table and its share of the sweep; the prediction error
on the latency front (the sweep's own measurements); for each model of the MACs front, the
fastest latency-front model at the same test accuracy (no more than 0.5 point lower) and the
speedup.

    python benchmarks/latency_objective.py folder --root /tmp/fmnist96
    python benchmarks/latency_objective.py train --root /tmp/fmnist96 --model torchvision:resnet18 --out /tmp/resnet18.pt
    python benchmarks/latency_objective.py sweep --checkpoint /tmp/resnet18.pt --trials 32 \
        --out benchmarks/results/latency_objective_resnet18.json
    python benchmarks/latency_objective.py report benchmarks/results/latency_objective_*.json \
        [--write docs/benchmarks.md --key latency-objective]
"""
from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    from benchmarks.docs_blocks import add_block_arguments, write_or_print
except ImportError:  # run as a script from benchmarks/
    from docs_blocks import add_block_arguments, write_or_print

FMNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SIZE = 96
#: a front model of the latency sweep matches a MACs-front model this much less accurate at most
ACCURACY_MARGIN = 0.005
TARGET = {"runtime": "onnxruntime", "device": "cpu", "batch": 1, "threads": 1, "repeats": 30}


def write_folder(args) -> None:
    """Fashion-MNIST as PNGs: ``--train`` training and ``--val`` test images, one folder per class."""
    from PIL import Image

    def read(name: str, offset: int) -> np.ndarray:
        with gzip.open(FMNIST / name) as f:
            return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)

    for split, prefix, count in (("train", "train", args.train), ("val", "t10k", args.val)):
        images = read(f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
        labels = read(f"{prefix}-labels-idx1-ubyte.gz", 8)
        for i in range(count):
            folder = Path(args.root) / split / f"class{labels[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).convert("RGB").save(folder / f"{i}.png")
    print(f"wrote {args.train} + {args.val} images to {args.root}")


def train(args) -> None:
    subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", "--dataset", "imagefolder", "--data-root",
                    args.root, "--image-size", str(IMAGE_SIZE), "--model", args.model, "--epochs", str(args.epochs),
                    "--lr", str(args.lr), "--batch-size", "64", "--calibration-size", "1000", "--out", args.out,
                    "--progress"], check=True)


def sweep_config(args, name: str, objectives: dict, run_dir: Path) -> dict:
    sweep = {"trials": args.trials, "concurrency": 2, "seed": 0, "objectives": objectives}
    if "latency_ms" in objectives:
        sweep["latency"] = TARGET
    return {
        "name": name, "checkpoint": str(Path(args.checkpoint).absolute()), "run_dir": str(run_dir),
        "data": {"calibration_images": 256, "batch_size": 64, "image_size": IMAGE_SIZE},
        "recipe": {"bn_batches": 4, "batch_size": 64},
        # 12 warm starts (6 targets x 2 round_to values), the rest of the trials sampled by NSGA-II
        "space": {"name": "concentration", "criteria": ["l1"], "flops_reduction": [0.3, 0.8],
                  "finetune_epochs": [0, 0], "round_to": [1, 8], "global_ranking": False},
        "sweep": sweep,
    }


def run(args) -> None:
    import ray

    from orchestrator.sweeps import SweepConfig, run_sweep
    from pruning.latency import LatencyTarget, create_runtime
    from pruning.structure import load_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="latency-objective-"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results, started = {}, {}
    for label, objectives in (("macs", {"accuracy": "max", "macs": "min"}),
                              ("latency", {"accuracy": "max", "latency_ms": "min"})):
        started[label] = time.perf_counter()
        config = SweepConfig.from_dict(sweep_config(args, f"latency-objective-{label}", objectives, folder / label))
        results[label] = run_sweep(config, progress=True)
        started[label] = time.perf_counter() - started[label]
    ray.shutdown()
    target = LatencyTarget(**{k: TARGET[k] for k in ("runtime", "device", "batch", "threads", "repeats")})
    runtime = create_runtime(target.runtime)
    loaded = {f"{label}/{row['trial']}": load_checkpoint(Path(row["checkpoint"]) / "pruned.pt")
              for label, result in results.items() for row in result.front}
    shape = tuple(next(iter(loaded.values()))[1].input_shape)
    # every front model of both sweeps in alternating rounds: a slow moment hits them all alike
    timings = runtime.time_models({key: model for key, (model, _) in loaded.items()}, shape, target, args.rounds)
    fronts = {}
    for label, result in results.items():
        fronts[label] = [{
            "trial": row["trial"], "test_accuracy": row["test_accuracy"], "macs": row["macs"],
            "latency_ms": timings[f"{label}/{row['trial']}"],
            **({k: row.get(k) for k in ("latency_predicted_ms", "latency_measured_ms", "latency_error")}
               if label == "latency" else {}),
            "round_to": row["params"].get("round_to"),
        } for row in result.front]
    latency = results["latency"]
    out = {
        "model": args.checkpoint, "image_size": IMAGE_SIZE, "trials": args.trials, "target": TARGET,
        "baseline": {"test_accuracy": latency.baseline.get("test_accuracy"), "macs": latency.baseline.get("macs"),
                     "latency_ms": latency.baseline.get("latency_ms")},
        "sweep_seconds": started, "phases": {k: r.phases for k, r in results.items()},
        "fronts": fronts, "machine": {"platform": platform.platform(), "processor": platform.processor()},
    }
    text = json.dumps(out, indent=2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(render([out]))


def compare(result: dict) -> list[dict]:
    """Per MACs-front model: the fastest latency-front model at least as accurate, less the margin."""
    rows = []
    for point in sorted(result["fronts"]["macs"], key=lambda p: -p["test_accuracy"]):
        matches = [q for q in result["fronts"]["latency"] if q["test_accuracy"] >= point["test_accuracy"] - ACCURACY_MARGIN]
        best = min(matches, key=lambda q: q["latency_ms"]) if matches else None
        rows.append({"macs_front": point, "latency_front": best,
                     "speedup": point["latency_ms"] / best["latency_ms"] if best else None})
    return rows


def summary(result: dict) -> dict:
    rows = compare(result)
    speedups = [r["speedup"] for r in rows if r["speedup"] is not None]
    errors = [abs(p["latency_error"]) for p in result["fronts"]["latency"] if p.get("latency_error") is not None]
    phases = result["phases"]["latency"]
    return {"rows": rows, "speedup_median": statistics.median(speedups) if speedups else None,
            "speedup_max": max(speedups) if speedups else None, "matched": len(speedups), "of": len(rows),
            "error_median": statistics.median(errors) if errors else None,
            "table_seconds": phases.get("latency_table"), "table_share": phases.get("latency_table", 0.0)
            / result["sweep_seconds"]["latency"]}


def render(results: list[dict]) -> str:
    lines = []
    for result in results:
        s = summary(result)
        name = Path(result["model"]).stem
        base = result["baseline"]
        lines += [
            f"**{name}** at {result['image_size']} px, {result['trials']} trials per sweep; latency: onnxruntime, "
            f"CPU, batch 1, 1 thread, median of {result['target']['repeats']} runs; unpruned: test accuracy "
            f"{base['test_accuracy']:.4f}, {base['macs'] / 1e6:.0f} M MACs, {base['latency_ms']:.2f} ms.",
            "",
            f"- latency table: {s['table_seconds']:.0f} s, {s['table_share']:.0%} of the latency sweep's "
            f"{result['sweep_seconds']['latency']:.0f} s",
            "- prediction error on the latency front (median |predicted / measured - 1|): "
            + (f"{s['error_median']:.1%}" if s["error_median"] is not None else "n/a"),
            f"- speedup of the latency front over the MACs front at equal accuracy (within "
            f"{ACCURACY_MARGIN * 100:.1f} point): median "
            + (f"{s['speedup_median']:.2f}x, best {s['speedup_max']:.2f}x ({s['matched']} of {s['of']} MACs-front "
               f"models matched)" if s["speedup_median"] else "no match"),
            "",
            "| MACs front: test acc | M MACs | ms | round_to | latency front: test acc | M MACs | ms | round_to | speedup |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in s["rows"]:
            p, q = row["macs_front"], row["latency_front"]
            right = (f"{q['test_accuracy']:.4f} | {q['macs'] / 1e6:.1f} | {q['latency_ms']:.2f} | {q['round_to']} | "
                     f"{row['speedup']:.2f}x" if q else "- | - | - | - | -")
            lines.append(f"| {p['test_accuracy']:.4f} | {p['macs'] / 1e6:.1f} | {p['latency_ms']:.2f} | {p['round_to']} | "
                         + right + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("folder")
    p.add_argument("--root", required=True)
    p.add_argument("--train", type=int, default=7000)
    p.add_argument("--val", type=int, default=2000)
    p = sub.add_parser("train")
    p.add_argument("--root", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--out", required=True)
    p = sub.add_parser("sweep")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds of the front models")
    p.add_argument("--out", required=True)
    p = sub.add_parser("report")
    p.add_argument("results", nargs="+")
    add_block_arguments(p)
    args = parser.parse_args()
    if args.step == "folder":
        write_folder(args)
    elif args.step == "train":
        train(args)
    elif args.step == "sweep":
        run(args)
    else:
        write_or_print(p, args, render([json.loads(Path(f).read_text()) for f in args.results]))


if __name__ == "__main__":
    main()
