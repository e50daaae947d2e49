"""One Ray node against two, and an MLflow server against the sqlite store, on a local cluster.

Ray's own CLI starts the cluster on this machine (``ray start --head`` and ``ray start
--address``, one CPU each, all on 127.0.0.1: ``tests/orchestrator/cluster_helpers.py``, the
multi-node test's fixtures, imported from there so that both start nodes the same way) and an
``mlflow server`` on 127.0.0.1 with a sqlite backend. Through the CLI, as a user runs them:

* the statistics pass: ``prunesweep stats --address A --workers N`` (N = the nodes' CPUs);
* a 16-trial screening sweep: the demo's sweep (``search_spaces/demo_fmnist.yaml``) without its
  refine stage, so 16 one-shot schedules (its warm starts: the same trials on every setting),
  pruned, reconstructed, BN-recalibrated and scored, ``--concurrency N``;
* the same sweep on two nodes logging to the MLflow server (``--tracking-uri http://...``)
  instead of the run directory's sqlite file.

Wall time is the command's, from the CLI's start to its exit (Ray is already up); the sweep's
trial phase is first trial start to last trial end (Tune's records). Speedup = 1-node time /
2-node time; scaling efficiency = speedup / 2. The 1-minute load average is recorded with each.

    .venv/bin/python benchmarks/cluster_scaling.py --checkpoint runs/bench/resnet20-fmnist.pt \\
        --out benchmarks/results/cluster_scaling.json
    .venv/bin/python benchmarks/cluster_scaling.py --report benchmarks/results/cluster_scaling.json \
        --write docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "orchestrator")]
from cluster_helpers import RAY_ENV, MlflowServer, RayCluster, free_port  # noqa: E402

from benchmarks.docs_blocks import write_block  # noqa: E402
from pruning.utils import atomic_write  # noqa: E402


def prunesweep(*args: str) -> tuple[float, dict]:
    """Run the CLI; (wall seconds, its --json output)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args, "--json", "--quiet"], cwd=REPO,
                          env={**os.environ, **RAY_ENV}, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"prunesweep {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stdout)


def trial_phase(run_dir: Path) -> tuple[float, int]:
    """(first trial start to last trial end in seconds, trials) from Tune's result records."""
    records = [json.loads(lines[-1]) for path in (run_dir / "tune").glob("*/result.json")
               if (lines := path.read_text().splitlines())]
    start = min(r["timestamp"] - r["time_total_s"] for r in records)
    return max(r["timestamp"] for r in records) - start, len(records)


def sweep_config(args, folder: Path, name: str) -> Path:
    data = yaml.safe_load((REPO / "search_spaces" / "demo_fmnist.yaml").read_text())
    data.update(checkpoint=str(Path(args.checkpoint).absolute()), name=name, run_dir=str(folder / name))
    data["sweep"].pop("refine")
    data["sweep"]["trials"] = args.trials
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def measure_stats(args, folder: Path, address: str, cpus: int, label: str) -> dict:
    load = os.getloadavg()[0]
    seconds, data = prunesweep("stats", "--address", address, "--workers", str(cpus), "--checkpoint",
                               args.checkpoint, "--calibration-images", str(args.images),
                               "--out", str(folder / f"{label}.stats"))
    return dict(stats_seconds=seconds, stats_compute_seconds=data["seconds"], stats_nodes=len(data.get("nodes") or {}),
                stats_load=load)


def measure(args, folder: Path, address: str, cpus: int, label: str, tracking_uri: str | None = None) -> dict:
    row: dict = {"setting": label, "nodes": cpus, "tracking": "server" if tracking_uri else "sqlite"}
    if tracking_uri is None:
        row.update(measure_stats(args, folder, address, cpus, label))
    if args.stats_only:
        print(json.dumps(row), flush=True)
        return row
    config = sweep_config(args, folder, label)
    extra = ["--tracking-uri", tracking_uri] if tracking_uri else []
    load = os.getloadavg()[0]
    seconds, data = prunesweep("sweep", "--config", str(config), "--address", address, "--concurrency", str(cpus),
                               *extra)
    phase, trials = trial_phase(folder / label)
    row.update(sweep_seconds=seconds, trial_phase_seconds=phase, trials=trials,
               finished=data["counts"]["finished"], sweep_load=load, load_at_end=os.getloadavg()[0])
    print(json.dumps(row), flush=True)
    return row


def run(args) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="cluster-scaling-") as tmp:
        folder = Path(tmp)
        cluster = RayCluster(folder)
        server = MlflowServer(folder, free_port())
        try:
            cluster.start_head()
            time.sleep(args.settle)
            rows.append(measure(args, folder, cluster.address, 1, "1-node"))
            cluster.add_worker()
            time.sleep(args.settle)
            rows.append(measure(args, folder, cluster.address, 2, "2-nodes"))
            if not args.stats_only:
                server.start()
                rows.append(measure(args, folder, cluster.address, 2, "2-nodes-mlflow-server", tracking_uri=server.uri))
        finally:
            server.kill()
            cluster.kill()
    return {"machine": f"{platform.node()}, {os.cpu_count()} cores, {platform.platform()}",
            "command": " ".join(sys.argv), "images": args.images, "trials": args.trials, "rows": rows}


def render(result: dict) -> str:
    rows = {r["setting"]: r for r in result["rows"]}
    one, two, server = rows["1-node"], rows["2-nodes"], rows["2-nodes-mlflow-server"]

    def scaled(key: str) -> str:
        speedup = one[key] / two[key]
        return f"{one[key]:.1f} | {two[key]:.1f} | {speedup:.2f}x | {speedup / 2:.0%}"

    lines = [
        "| work | 1 node (s) | 2 nodes (s) | speedup | scaling efficiency |",
        "|---|---|---|---|---|",
        f"| statistics pass, {result['images']} images (`stats --workers N`), whole command | {scaled('stats_seconds')} |",
        f"| the statistics pass itself (`seconds` of `--json`: actors started, shards, merge) | "
        f"{scaled('stats_compute_seconds')} |",
        f"| {result['trials']}-trial screening sweep, whole command | {scaled('sweep_seconds')} |",
        f"| the sweep's trial phase (first start to last end) | {scaled('trial_phase_seconds')} |",
        "",
        "| 2 nodes, tracking | sweep (s) | trial phase (s) |",
        "|---|---|---|",
        f"| sqlite file in the run directory | {two['sweep_seconds']:.1f} | {two['trial_phase_seconds']:.1f} |",
        f"| `mlflow server` on 127.0.0.1 | {server['sweep_seconds']:.1f} | {server['trial_phase_seconds']:.1f} |",
        f"| server overhead | {server['sweep_seconds'] - two['sweep_seconds']:+.1f} "
        f"({server['sweep_seconds'] / two['sweep_seconds'] - 1:+.1%}) | "
        f"{server['trial_phase_seconds'] - two['trial_phase_seconds']:+.1f} |",
        "",
        "1-minute load average at the start of each command: statistics pass "
        + ", ".join(f"{r['setting']} {r['stats_load']:.2f}" for r in result["rows"] if "stats_load" in r)
        + "; sweep " + ", ".join(f"{r['setting']} {r['sweep_load']:.2f}" for r in result["rows"]) + ".",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/bench/resnet20-fmnist.pt")
    parser.add_argument("--images", type=int, default=4096, help="calibration images of the statistics pass")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait after a node starts")
    parser.add_argument("--stats-only", action="store_true",
                        help="only the statistics pass, 1 then 2 nodes: its rows replace those of --merge-into")
    parser.add_argument("--merge-into", help="with --stats-only: the result file whose statistics rows to replace")
    parser.add_argument("--out")
    parser.add_argument("--report", help="print the markdown tables of a result file")
    parser.add_argument("--write", help="with --report: the Markdown file whose cluster-scaling block to replace")
    args = parser.parse_args()
    if args.report:
        block = render(json.loads(Path(args.report).read_text()))
        if args.write:
            write_block(args.write, "cluster-scaling", block)
        else:
            print(block)
        return
    if not args.out:
        parser.error("give --out (run) or --report FILE")
    result = run(args)
    if args.stats_only and args.merge_into:
        merged = json.loads(Path(args.merge_into).read_text())
        stats = {r["setting"]: r for r in result["rows"]}
        for row in merged["rows"]:
            row.update({k: v for k, v in stats.get(row["setting"], {}).items() if k.startswith("stats_")})
        merged["stats_command"] = result["command"]
        result = merged
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))
    print(render(result))


if __name__ == "__main__":
    main()
