"""What reading a small-image ``imagefolder`` at its own size saves over the 224-px default.

A synthetic folder of ``--images`` random ``--native`` x ``--native`` PNGs (two classes) is
loaded at ``image_size`` = ``--native`` and at 224; for each, the calibration images are read
(decode + resize + centre crop) and a randomly initialised torchvision ResNet-18 is evaluated on
them. Reported per size: seconds of each stage (the minimum of ``--repeats`` alternating runs,
in one process: the machine may be shared), the model's MACs, and the 224-px / native ratios.

    python benchmarks/image_size.py --images 128 --native 64 --threads 2 --out benchmarks/results/image_size.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image

from pruning.data import DataConfig, calibration_batches, load_data
from pruning.structure import measure_cost
from pruning.training import evaluate
from pruning.utils import atomic_write

DEFAULT_SIZE = 224


def write_folder(root: Path, images: int, native: int) -> None:
    """``images`` training and 8 validation PNGs of random pixels, split over two classes."""
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", images), ("val", 8)):
        for i in range(count):
            folder = root / split / f"class{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = torch.randint(0, 256, (native, native, 3), dtype=torch.uint8, generator=generator)
            Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def run_size(root: Path, images: int, size: int, model: torch.nn.Module) -> dict:
    splits = load_data(DataConfig(name="imagefolder", root=str(root), calibration_size=images, image_size=size))
    batches, read_seconds = timed(lambda: calibration_batches(splits, images, 64))
    _, eval_seconds = timed(lambda: evaluate(model, batches))
    return {"read_seconds": read_seconds, "eval_seconds": eval_seconds,
            "macs": measure_cost(model, (3, size, size)).macs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--native", type=int, default=64, help="the images' own size in pixels (default: 64)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the result as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=2).eval()
    sizes = (args.native, DEFAULT_SIZE)
    best: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        write_folder(Path(folder), args.images, args.native)
        for _ in range(args.repeats):
            for size in sizes:  # alternating, so a load change hits both sizes alike
                result = run_size(Path(folder), args.images, size, model)
                kept = best.setdefault(size, result)
                for key in ("read_seconds", "eval_seconds"):
                    kept[key] = min(kept[key], result[key])
    native, default = best[args.native], best[DEFAULT_SIZE]
    report = {
        "images": args.images, "native": args.native, "threads": args.threads, "repeats": args.repeats,
        "sizes": {str(size): best[size] for size in sizes},
        "ratio_224_over_native": {key: default[key] / native[key] for key in ("read_seconds", "eval_seconds", "macs")},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(text + "\n"))


if __name__ == "__main__":
    main()
