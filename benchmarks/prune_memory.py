"""Peak resident memory and wall time of one ``prunesweep prune`` of ResNet-50 at 224 px.

Writes an imagefolder of seeded random ``IMAGE_SIDE``-px RGB PNGs (``CLASSES`` classes): enough
training images for the calibration split ``prune`` holds out (``CALIBRATION_SPLIT``, the
product's default) plus ``TRAIN_EXTRA`` for BN recalibration, and ``--val-images`` test images.
Then, per ``--criteria`` entry, runs

    prunesweep prune --model torchvision:resnet50 --dataset imagefolder --image-size 224
        --criterion C --flops-reduction 0.5 --calibration-images 256 --progress --json

as a child process with ``--threads`` intra-op threads, and records its peak resident set size
(``ru_maxrss`` of that child, from ``os.wait4``), wall seconds, exit status and the last line of
its stderr. While it runs, a sampler reads the child's resident set size (``/proc/PID/statm``)
and the progress bar then drawing on its stderr: the peak per stage shows where memory goes.

    nice -n 10 python benchmarks/prune_memory.py --criteria l1 entropy \\
        --out benchmarks/results/prune_memory.json
    python benchmarks/prune_memory.py --report benchmarks/results/prune_memory.json \\
        [--write docs/scale.md --key prune-memory]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from subprocess import PIPE, Popen

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages, also when run as a script

from benchmarks.docs_blocks import add_block_arguments, write_or_print  # noqa: E402
from pruning.utils import atomic_write  # noqa: E402

CLASSES = 4
IMAGE_SIDE = 224
CALIBRATION_SPLIT = 2000  # what `prune` holds out of the training images (DataConfig's default)
TRAIN_EXTRA = 512  # training images left for BN recalibration
LIMIT_MIB = 4e9 / 2**20  # the product's aim: one prune at 224 px within 4 GB (decimal: 3815 MiB)
MIB = 2**20
PAGE = os.sysconf("SC_PAGE_SIZE")
#: a tqdm line: "<desc>: <percent>|..." or "<desc>: <count>..."; the desc names the stage
_BAR = re.compile(r"^\s*([^:|\r\n]{2,60}):\s+\d")


def write_imagefolder(root: Path, train: int, val: int, seed: int = 0) -> None:
    """``root/{train,val}/class_<k>/<i>.png``: seeded uniform noise, round-robin over the classes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            folder = root / split / f"class_{i % CLASSES}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png", compress_level=1)


class StageSampler:
    """Reads a child's stderr (progress bars, warnings) and samples its resident set size; the
    peak is kept per stage, a stage being the description of the bar last drawn."""

    def __init__(self, process: Popen, interval: float = 0.2) -> None:
        self.process = process
        self.interval = interval
        self.stage = "startup"
        self.peaks_mib: dict[str, float] = {}
        self.order: list[str] = []
        self.started: dict[str, float] = {}  # seconds from the start to the stage's first sample
        self._start = time.perf_counter()
        self.last_line = ""
        self._readers = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._sample, daemon=True)]
        for thread in self._readers:
            thread.start()

    def join(self) -> None:
        for thread in self._readers:
            thread.join(timeout=5)

    def _read(self) -> None:
        # raw reads, not lines: a bar redraws itself after a carriage return and only a bar that
        # is left on screen ever ends its line
        pending = ""
        fd = self.process.stderr.fileno()
        while chunk := os.read(fd, 65536):
            *complete, pending = re.split(r"[\r\n]", pending + chunk.decode(errors="replace"))
            for piece in complete:
                self._note(piece)
            if _BAR.match(pending):  # a bar's first drawing: its stage starts now, not at its next redraw
                self.stage = _BAR.match(pending).group(1).strip()
        self._note(pending)

    def _note(self, piece: str) -> None:
        match = _BAR.match(piece)
        if match:
            self.stage = match.group(1).strip()
        if piece.strip():
            self.last_line = piece.strip()

    def _sample(self) -> None:
        statm = Path(f"/proc/{self.process.pid}/statm")
        while self.process.poll() is None:
            try:
                rss = int(statm.read_text().split()[1]) * PAGE / MIB
            except (OSError, IndexError, ValueError):
                break
            stage = self.stage
            if stage not in self.peaks_mib:
                self.order.append(stage)
                self.started[stage] = round(time.perf_counter() - self._start, 1)
            self.peaks_mib[stage] = max(rss, self.peaks_mib.get(stage, 0.0))
            time.sleep(self.interval)


def run_prune(root: Path, criterion: str, args: argparse.Namespace) -> dict:
    """One ``prunesweep prune`` in a child process: its peak RSS, wall time, exit status, the
    last line of its stderr and its peak RSS per stage."""
    command = [sys.executable, "-m", "orchestrator.cli", "prune", "--model", "torchvision:resnet50",
               "--dataset", "imagefolder", "--data-root", str(root), "--image-size", "224",
               "--criterion", criterion, "--flops-reduction", "0.5",
               "--calibration-images", str(args.calibration_images), "--device", "cpu", "--progress", "--json"]
    threads = str(args.threads)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    started = time.perf_counter()
    process = Popen(command, cwd=ROOT, stdout=PIPE, stderr=PIPE, env=env)
    sampler = StageSampler(process)
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    sampler.join()
    entry = {
        "criterion": criterion, "exit_status": process.returncode, "wall_seconds": round(wall, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "within_limit": usage.ru_maxrss / 1024 <= LIMIT_MIB,
        "stderr_last_line": sampler.last_line,
        "stage_peak_rss_mib": {s: round(sampler.peaks_mib[s], 1) for s in sampler.order},
        "stage_started_seconds": sampler.started,
    }
    if process.returncode == 0:
        result = json.loads(stdout)
        entry["accuracy_stages"] = result["pruning"]["accuracy_stages"]
        entry["macs_reduction"] = result["pruning"]["macs_reduction"]
    return entry


def render(result: dict) -> str:
    """One row per run: peak memory against the limit, wall time, and the stage that peaked."""
    settings = result["settings"]
    lines = ["| criterion | exit status | peak RSS | within 4 GB | peak stage | wall seconds |", "|---|---|---|---|---|---|"]
    for run in result["runs"]:
        stages = run.get("stage_peak_rss_mib") or {"-": 0}
        peak_stage = max(stages, key=stages.get)
        lines.append(f"| {run['criterion']} | {run['exit_status']} | {run['peak_rss_mib']:.0f} MiB "
                     f"({run['peak_rss_mib'] * 2**20 / 1e9:.2f} GB) | {'yes' if run['peak_rss_mib'] <= LIMIT_MIB else '**no**'} | "
                     f"{peak_stage} | {run['wall_seconds']:.0f} |")
    return (f"`prunesweep prune --model {settings['model']} --dataset imagefolder --image-size {settings['image_size']} "
            f"--flops-reduction 0.5 --calibration-images {settings['calibration_images']}`, torch threads {settings['threads']}, "
            f"{settings['classes']} classes of random PNGs; peak resident memory of the process (`ru_maxrss`). "
            f"Wall seconds on a loaded machine.\n\n" + "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criteria", nargs="+", default=["l1"])
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--val-images", type=int, default=256, help="test images (default: 256)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root", default=None, help="an existing folder written by this script (else a temporary one)")
    parser.add_argument("--out", default="benchmarks/results/prune_memory.json")
    parser.add_argument("--report", metavar="FILE", help="render a result file instead of measuring")
    add_block_arguments(parser)
    args = parser.parse_args()
    if args.report:
        write_or_print(parser, args, render(json.loads(Path(args.report).read_text())))
        return

    settings = {"model": "torchvision:resnet50", "image_size": 224, "calibration_images": args.calibration_images,
                "train_images": CALIBRATION_SPLIT + TRAIN_EXTRA, "val_images": args.val_images, "classes": CLASSES,
                "threads": args.threads, "limit_mib": LIMIT_MIB}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="prune-memory-") as scratch:
        root = Path(args.data_root or scratch)
        if not (root / "train").is_dir():
            write_imagefolder(root, CALIBRATION_SPLIT + TRAIN_EXTRA, args.val_images)
        for criterion in args.criteria:
            runs.append(run_prune(root, criterion, args))
            print(json.dumps(runs[-1]), flush=True)
            # rewritten after every run: a later run that is cut short leaves the earlier ones
            data = {"settings": settings, "runs": runs}
            atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))


if __name__ == "__main__":
    main()
