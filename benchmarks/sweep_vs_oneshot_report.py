"""Render the result files of benchmarks/sweep_vs_oneshot.py (one or more, their parts merged)
as the markdown tables of docs/benchmarks.md ("Which criterion", "A sweep against one-shot pruning").

Per contender: the hypervolume of its (test accuracy up, MACs / baseline MACs down) points with
reference (0, 1), its test accuracy at each target (the most accurate of its points whose MACs
reduction reaches the target within 1 point; "-" when none does) and its CPU time. A one-shot
pipeline's points are its runs at the targets; a sweep's are its Pareto front. Two selections
over the one-shot grid: the oracle (per target the best test accuracy: it picks with the test
labels) and the proxy's pick (per target the pipeline with the best calibration accuracy after
reconstruction + BN, what a user without test labels would choose). Parts ``oneshot-<label>``
(the grid rerun with another ``--finetune-seed``) give the fine-tune's seed-to-seed spread.

    python benchmarks/sweep_vs_oneshot_report.py benchmarks/results/resnet20_fmnist_sweep_vs_oneshot*.json \
        [--part all|searches|oneshot] [--ratios uniform ...] [--write docs/benchmarks.md --key KEY]

``--part searches``: the searches and the two selections over the grid only; ``--part oneshot``:
the one-shot pipelines only (``--ratios`` keeps those of the given ratio sources), one row per
pipeline; ``all`` (the default): every table.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.docs_blocks import add_block_arguments, write_or_print  # noqa: E402
from orchestrator.sweeps.front import hypervolume  # noqa: E402
from pruning.data import DataConfig  # noqa: E402

OBJECTIVES = {"test_accuracy": "max", "macs_fraction": "min"}
REFERENCE = {"test_accuracy": 0.0, "macs_fraction": 1.0}
REACH = 0.01  # a point reaches a target within the FLOPs planner's tolerance


def merge(paths: list[str]) -> dict:
    merged: dict = {}
    for path in paths:
        result = json.loads(open(path).read())
        for key, value in result.items():
            if key == "oneshot" and "oneshot" in merged:
                merged["oneshot"]["rows"] += value["rows"]
            else:
                merged[key] = value
    return merged


def contender(name: str, points: list[dict], cpu: float, targets: list[float]) -> dict:
    points = [{**p, "macs_fraction": 1 - p["macs_reduction"]} for p in points if p.get("test_accuracy") is not None]
    at = {t: max((p["test_accuracy"] for p in points if p["macs_reduction"] >= t - REACH), default=None) for t in targets}
    return {"name": name, "hv": hypervolume(points, OBJECTIVES, REFERENCE), "at": at, "cpu": cpu, "points": len(points)}


def contenders(result: dict, targets: list[float]) -> tuple[list[dict], list[dict]]:
    pipelines = defaultdict(list)
    for row in result.get("oneshot", {}).get("rows", []) + result.get("tp", {}).get("rows", []):
        pipelines[(row["criterion"], row["ratios"])].append(row)
    oneshot = [contender(f"{c} / {r}", rows, sum(x["cpu_seconds"] for x in rows), targets)
               for (c, r), rows in pipelines.items()]
    searches = []
    labels = {"sweep": "two-stage sweep (NSGA-II + warm starts)",
              "stages": "two-stage sweep, `stages` space (NSGA-II + warm starts)", "random": "two-stage, random sampling",
              "single": "single-stage sweep (every trial fine-tuned)"}
    for key, value in result.items():
        part, _, run = key.partition("-")
        label = labels.get(part)
        if label is not None and isinstance(value, dict) and "front" in value:
            criteria = ", ".join(value.get("sweep_criteria") or value["config"]["space"]["criteria"])
            name = f"{label}, {len(value['trials'])} trials, criteria {criteria}" + (f" (run `{run}`)" if run else "")
            searches.append(contender(name, value["front"], value["cpu_seconds"], targets))
    return oneshot, searches


def _cell(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def table(rows: list[dict], targets: list[float]) -> list[str]:
    lines = ["| contender | points | hypervolume | " + " | ".join(f"test acc. at -{t:.0%}" for t in targets)
             + " | CPU s |", "|---|---|---|" + "---|" * len(targets) + "---|"]
    for row in rows:
        lines.append(f"| {row['name']} | {row['points']} | {row['hv']:.4f} | "
                     + " | ".join(_cell(row["at"][t]) for t in targets) + f" | {row['cpu']:.0f} |")
    return lines


def correlations(result: dict) -> list[str]:
    lines = ["| proxy | against | pairs | Spearman rho |", "|---|---|---|---|"]
    rows = result.get("oneshot", {}).get("rows", [])
    for stage in ("pruned", "reconstructed", "bn_recalibrated"):
        pairs = [(r[f"{stage}_accuracy"], r["test_accuracy"]) for r in rows if f"{stage}_accuracy" in r]
        if len(pairs) > 2:
            rho = spearmanr(*zip(*pairs)).statistic
            lines.append(f"| one-shot grid: calibration accuracy after `{stage}` | fine-tuned test accuracy | "
                         f"{len(pairs)} | {rho:.3f} |")
    whats = {"sweep": "two-stage sweep, refined trials", "stages": "`stages` two-stage sweep, refined trials",
             "random": "random two-stage, refined trials", "single": "single-stage sweep, every trial"}
    for key, value in result.items():
        part, what = key.split("-")[0], whats.get(key.split("-")[0])
        if what is None or not isinstance(value, dict) or "trials" not in value:
            continue
        what = what if key == part else f"{what} ({key})"
        trials = [t for t in value["trials"]
                  if t.get("feasible") and "bn_accuracy" in t and (part == "single" or t.get("stage") == "refine")]
        pairs = [(t["bn_accuracy"], t["accuracy"]) for t in trials]
        if len(pairs) > 2:
            rho = spearmanr(*zip(*pairs)).statistic
            lines.append(f"| {what}: screening proxy (`bn_accuracy`) | fine-tuned calibration accuracy | "
                         f"{len(pairs)} | {rho:.3f} |")
    return lines


def proxy_pick(result: dict, targets: list[float]) -> dict:
    """Per target, the test accuracy of the one-shot run with the best calibration accuracy after
    reconstruction + BN (the grid selected without test labels)."""
    rows = result.get("oneshot", {}).get("rows", [])
    at = {}
    for t in targets:
        runs = [r for r in rows if r["target"] == t]
        at[t] = max(runs, key=lambda r: r["bn_recalibrated_accuracy"])["test_accuracy"] if runs else None
    return {"name": "one-shot pipeline picked per target by the proxy (calibration accuracy after reconstruction + BN)",
            "points": len(targets), "hv": float("nan"), "at": at, "cpu": sum(r["cpu_seconds"] for r in rows)}


def grid_spread(result: dict, targets: list[float]) -> list[str]:
    """Per target, how far apart the one-shot pipelines' fine-tuned test accuracies are, next to
    the binomial standard error of one accuracy on the benchmark's test images and of one
    calibration accuracy (the proxy): where the spread is not much above them, no selection
    (the proxy's, or a sweep's) can tell the pipelines apart."""
    import math
    import statistics

    rows = result.get("oneshot", {}).get("rows", [])
    settings = result["settings"]
    # the split the proxies are scored on; files written before it was recorded: the checkpoints'
    # split, DataConfig's default size (every benchmark checkpoint was trained with it)
    calibration_images = result.get("calibration_split_images", DataConfig.calibration_size)
    lines = ["| target | pipelines | test accuracy min / median / max | std over pipelines | "
             f"binomial s.e. of one test accuracy ({settings['test_subset']} images) | "
             f"of one calibration accuracy ({calibration_images} images) |", "|---|---|---|---|---|---|"]
    for t in targets:
        values = [r["test_accuracy"] for r in rows if r["target"] == t]
        if len(values) < 2:
            continue
        p = statistics.mean(values)
        lines.append(f"| -{t:.0%} | {len(values)} | {min(values):.4f} / {statistics.median(values):.4f} / "
                     f"{max(values):.4f} | {statistics.stdev(values):.4f} | "
                     f"{math.sqrt(p * (1 - p) / settings['test_subset']):.4f} | "
                     f"{math.sqrt(p * (1 - p) / calibration_images):.4f} |")
    return lines if len(lines) > 2 else []


def seed_spread(result: dict) -> list[str]:
    """Per (pipeline, target) rerun with other fine-tune seeds: the test accuracy over the seeds."""
    import statistics

    reruns = {key: value["rows"] for key, value in result.items() if key.startswith("oneshot-") and "rows" in value}
    if not reruns:
        return []
    runs = defaultdict(list)
    for row in result.get("oneshot", {}).get("rows", []):
        runs[(row["criterion"], row["ratios"], row["target"])].append(row["test_accuracy"])
    rerun_keys = set()
    for rows in reruns.values():
        for row in rows:
            key = (row["criterion"], row["ratios"], row["target"])
            rerun_keys.add(key)
            runs[key].append(row["test_accuracy"])
    lines = [f"Fine-tune seed spread ({1 + len(reruns)} seeds: 0 and {', '.join(sorted(reruns))}):", "",
             "| pipeline | target | test accuracy per seed | mean | std |", "|---|---|---|---|---|"]
    stds = []
    for key in sorted(rerun_keys, key=lambda k: (k[2], k[0], k[1])):
        values = runs[key]
        std = statistics.stdev(values) if len(values) > 1 else float("nan")
        stds.append(std)
        lines.append(f"| {key[0]} / {key[1]} | -{key[2]:.0%} | {' / '.join(f'{v:.4f}' for v in values)} | "
                     f"{statistics.mean(values):.4f} | {std:.4f} |")
    lines += ["", f"Median seed-to-seed standard deviation: {statistics.median(stds):.4f}."]
    return lines


def render(result: dict, part: str = "all", ratios: list[str] | None = None) -> str:
    targets = result["settings"]["targets"]
    oneshot, searches = contenders(result, targets)
    oneshot.sort(key=lambda row: -row["hv"])
    base = result["base"]
    heading = [f"Baseline: test accuracy {base['test_accuracy']:.4f} on the benchmark's test images, "
               f"{base['macs'] / 1e6:.2f} M MACs.", ""]
    if part == "oneshot":
        kept = [row for row in oneshot if ratios is None or row["name"].rpartition(" / ")[2] in ratios]
        return "\n".join(heading + table(kept, targets))
    best = {t: max((row["at"][t] for row in oneshot if row["at"][t] is not None), default=None) for t in targets}
    oracle = {"name": "best one-shot pipeline per target (oracle over the grid: picked by test accuracy)",
              "points": len(targets), "hv": float("nan"), "at": best, "cpu": sum(row["cpu"] for row in oneshot)}
    selections = [oracle, proxy_pick(result, targets)] if oneshot else []  # files without the grid: searches only
    lines = [*heading, *table(searches + selections, targets), ""]
    if part == "searches":
        return "\n".join(lines).rstrip().replace("| nan |", "| - |")
    if oneshot:
        lines += ["One-shot pipelines, by hypervolume:", "", *table(oneshot, targets), ""]
    spread = grid_spread(result, targets)
    lines += [*correlations(result), ""]
    if spread:
        lines += ["One-shot grid's spread against the sampling error of one accuracy:", "", *spread, ""]
    lines += seed_spread(result)
    return "\n".join(lines).replace("| nan |", "| - |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--part", choices=["all", "searches", "oneshot"], default="all",
                        help="every table, the searches against the grid's selections, or the one-shot pipelines")
    parser.add_argument("--ratios", nargs="+", default=None, help="with --part oneshot: the ratio sources to show")
    add_block_arguments(parser)
    args = parser.parse_args()
    write_or_print(parser, args, render(merge(args.files), args.part, args.ratios))


if __name__ == "__main__":
    main()
