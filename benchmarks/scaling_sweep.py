"""``benchmarks/scaling.py --sweep``: a screening sweep of MobileNetV2 at 224 px through the
command line, on an imagefolder of random PNGs; trials per hour and where a trial's time goes.

Writes the imagefolder (``CLASSES`` classes x ``TRAIN_PER_CLASS`` training and ``VAL_PER_CLASS``
val images, seeded noise) and the randomly initialised baseline checkpoint that
``search_spaces/mobilenetv2_imagefolder.yaml`` names (``prunesweep train --epochs 0``), runs
``prunesweep sweep`` on that config, and reads the screening trials' metrics back from the
sweep's MLflow runs: per trial the seconds of pruning (scoring + planning + removal), each
recovery stage, scoring, the rest of the trial body, and what the trial's wall time holds beyond
its body; the screening stage's wall time (first trial start to last report) and trials per hour.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.scaling import ROOT, child_environment, write_json

CONFIG = ROOT / "search_spaces" / "mobilenetv2_imagefolder.yaml"
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 10, 40, 8
IMAGE_SIDE = 256  # what the imagefolder transform resizes to before its 224 px centre crop
CALIBRATION_SIZE = 200
#: the trial's reported seconds, in the order a trial spends them
PARTS = ("prune_seconds", "reconstructed_seconds", "bn_recalibrated_seconds", "score_seconds")


def write_imagefolder(root: Path, seed: int = 0, side: int = IMAGE_SIDE) -> None:
    """``root/{train,val}/class_<k>/<i>.png``: seeded uniform noise, ``side`` px square."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for k in range(CLASSES):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def cli(*arguments: str, timeout: float) -> subprocess.CompletedProcess:
    """``prunesweep ARGUMENTS`` run from this checkout; a failure ends the benchmark with its last line."""
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *arguments], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=child_environment())
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [""])[-1]
        raise SystemExit(f"error: prunesweep {arguments[0]} exited with {done.returncode}: {last}")
    return done


def screening_runs(run_dir: Path) -> list:
    """The MLflow runs of the sweep's screening trials."""
    from orchestrator.experiment import Tracker, default_tracking_uri

    tracker = Tracker(default_tracking_uri(str(run_dir)), "prunesweep", run_dir)
    if tracker.find_parent() is None:
        raise SystemExit(f"error: no sweep logged for {run_dir}")
    return [r for r in tracker.trial_runs().values() if r.data.tags.get("prunesweep.stage") == "screen"]


def summarise(runs: list, concurrency: int) -> dict:
    """Trials per hour over the screening stage and the mean seconds of each part of a trial."""
    finished = [r for r in runs if r.info.status == "FINISHED"]
    feasible = [r for r in finished if r.data.metrics.get("feasible")]
    # a trial's run is logged when it reports: its start is that time less the trial's wall time
    ends = [r.info.start_time / 1000 for r in finished]
    starts = [end - r.data.metrics["trial_seconds"] for end, r in zip(ends, finished)]
    wall = max(ends) - min(starts)
    mean = {key: statistics.mean(r.data.metrics.get(key, 0.0) for r in feasible)
            for key in (*PARTS, "body_seconds", "trial_seconds")}
    per_trial = {part: mean[part] for part in PARTS}
    per_trial["rest of the trial body (model rebuild, planning check, cost)"] = mean["body_seconds"] - sum(
        mean[p] for p in PARTS)
    per_trial["trial outside its body (data loading, checkpoint, report)"] = mean["trial_seconds"] - mean["body_seconds"]
    per_trial["trial_seconds"] = mean["trial_seconds"]
    return {"trials": len(runs), "finished": len(finished), "feasible": len(feasible),
            "trials_wall_seconds": wall, "trials_per_hour": 3600 * len(finished) / wall,
            "tune_and_ray_seconds_per_trial": wall * concurrency / len(finished) - mean["trial_seconds"],
            "per_trial_seconds": per_trial}


def run_sweep(args) -> tuple[Path, float]:
    """Write the imagefolder and the baseline checkpoint, run the sweep: (its run dir, its seconds)."""
    config = yaml.safe_load(CONFIG.read_text())
    checkpoint = ROOT / config["checkpoint"]
    work = checkpoint.parent
    shutil.rmtree(work, ignore_errors=True)
    write_imagefolder(work / "images")
    cli("train", "--model", "torchvision:mobilenet_v2", "--dataset", "imagefolder", "--data-root",
        str(work / "images"), "--epochs", "0", "--calibration-size", str(CALIBRATION_SIZE), "--out", str(checkpoint),
        "--quiet", timeout=args.model_timeout)
    run_dir = work / "run"
    started = time.perf_counter()
    cli("sweep", "--config", str(CONFIG), "--trials", str(args.trials), "--run-dir", str(run_dir), "--quiet", "--json",
        timeout=args.model_timeout)
    return run_dir, time.perf_counter() - started


def run_screening_sweep(args) -> dict:
    """The sweep (or, with ``--measured RUN_DIR``, a finished or interrupted one read back), summarised."""
    run_dir, sweep_seconds = (Path(args.measured).absolute(), None) if args.measured else run_sweep(args)
    concurrency = yaml.safe_load((run_dir / "sweep.yaml").read_text())["sweep"]["concurrency"]
    result = {"model": "torchvision:mobilenet_v2", "image_size": 224, "config": str(CONFIG.relative_to(ROOT)),
              "images": {"classes": CLASSES, "train_per_class": TRAIN_PER_CLASS, "val_per_class": VAL_PER_CLASS,
                         "calibration_split": CALIBRATION_SIZE},
              "concurrency": concurrency, "sweep_seconds": sweep_seconds,
              "load_average_1min_at_end": os.getloadavg()[0], "cpus": os.cpu_count(),
              **summarise(screening_runs(run_dir), concurrency)}
    write_json(args.out, result)
    print(f"{result['trials_per_hour']:.0f} screening trials per hour; mean trial "
          f"{result['per_trial_seconds']['trial_seconds']:.1f} s", file=sys.stderr)
    return result
