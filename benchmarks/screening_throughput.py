"""Screening throughput: schedules screened per hour by a two-stage sweep, and where a screening
trial's time goes.

Runs the demo's sweep (``search_spaces/demo_fmnist.yaml``: ``concentration`` space, NSGA-II with
warm starts, every trial pruned, reconstructed, BN-recalibrated and scored on the calibration
split) with ``--trials`` screening trials on a given baseline, and one refined trial (1 epoch on
500 images: only there so that the sweep is two-stage; its time is not counted). From Tune's
per-trial records: the screening stage's wall time (first trial start to last trial end),
trials per hour, and per trial the mean seconds of pruning, reconstruction, BN recalibration,
scoring, the rest of the trial body (model rebuild, planning, cost), and Tune/Ray (the trial's
share of the stage's wall time that no trial body accounts for).

    python benchmarks/screening_throughput.py --checkpoint runs/bench/resnet20-fmnist.pt --trials 60 \\
        --out benchmarks/results/screening_throughput.json

``--measured RUN_DIR`` reads a finished two-stage sweep instead of running one (e.g. the demo's
run directory: its screening stage is this benchmark's sweep).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import yaml

from orchestrator.sweeps import SweepConfig, run_sweep
from pruning.utils import atomic_write

PARTS = ("prune_seconds", "reconstructed_seconds", "bn_recalibrated_seconds", "score_seconds")


def screening_records(run_dir: Path) -> list[dict]:
    """The last result of every screening trial (Tune's ``result.json`` lines)."""
    records = []
    for path in sorted((run_dir / "tune").glob("*/result.json")):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if lines:
            records.append(json.loads(lines[-1]))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--measured", default=None, help="a finished two-stage sweep's run directory: read, not run")
    parser.add_argument("--config", default="search_spaces/demo_fmnist.yaml")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--run-dir", default="runs/bench/screening-throughput")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.measured is None and args.checkpoint is None:
        parser.error("give --checkpoint (run the sweep) or --measured RUN_DIR (read a finished one)")
    total = run(args) if args.measured is None else None
    run_dir = Path(args.measured or args.run_dir)
    every = screening_records(run_dir)
    if not every:
        raise SystemExit(f"error: {run_dir} holds no screening trials (no tune/*/result.json)")
    concurrency = yaml.safe_load((run_dir / "sweep.yaml").read_text())["sweep"]["concurrency"]
    summarise(args, every, concurrency, total)


def run(args) -> float:
    data = yaml.safe_load(Path(args.config).read_text())
    data.update(checkpoint=args.checkpoint, run_dir=args.run_dir, name="bench-screening-throughput")
    data["sweep"].update(trials=args.trials, concurrency=args.concurrency)
    data["sweep"]["refine"] = {"candidates": 1, "recipe": {"finetune_epochs": 1, "finetune_subset": 500}}
    shutil.rmtree(args.run_dir, ignore_errors=True)
    started = time.perf_counter()
    run_sweep(SweepConfig.from_dict(data), progress=False)
    return time.perf_counter() - started


def summarise(args, every: list[dict], concurrency: int, total: float | None) -> None:
    wall = max(r["timestamp"] for r in every) - min(r["timestamp"] - r["time_total_s"] for r in every)
    # trials/hour counts feasible trials only: an infeasible plan is rejected before pruning
    records = [r for r in every if r.get("feasible")]
    per_trial = {part: statistics.mean(r[part] for r in records) for part in PARTS}
    body = statistics.mean(r["body_seconds"] for r in records)
    per_trial["rest_of_trial_body"] = body - sum(per_trial.values())
    per_trial["tune_and_ray"] = wall * concurrency / len(records) - body
    result = {
        "settings": vars(args), "load_average_1min_at_end": os.getloadavg()[0],
        "concurrency": concurrency, "screened": len(every), "feasible": len(records), "screening_wall_seconds": wall, "whole_sweep_seconds": total,
        "trials_per_hour": 3600 * len(records) / wall,
        "mean_trial_seconds": body, "mean_trial_cpu_seconds": statistics.mean(r["cpu_seconds"] for r in records),
        "mean_tune_time_total_s": statistics.mean(r["time_total_s"] for r in records),
        "per_trial_seconds": per_trial,
    }
    print(json.dumps(result, indent=1))
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))


if __name__ == "__main__":
    main()
