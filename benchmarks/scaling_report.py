"""Render a result file of benchmarks/scaling.py as Markdown: per calibration-image count, each
stage's cost as a multiple of one forward pass (stages as rows, models as columns, against the
aims), then each stage's peak resident memory and its increase over the stage's start; the one-line
errors of failed, refused or stopped stages below each table. With ``--sweep FILE``, the
screening sweep's throughput and where a trial's seconds go.

    python benchmarks/scaling_report.py benchmarks/results/scaling.json \\
        [--sweep benchmarks/results/scaling_sweep.json] [--write docs/scale.md --key scaling]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.docs_blocks import add_block_arguments, write_or_print  # noqa: E402


def _ratio_cell(stage: dict | None, aim: float) -> str:
    if stage is None:
        return "-"
    if "ratio" not in stage:
        return "error"
    if stage.get("timed_out"):
        return f"> {stage['ratio']:.0f} (stopped)"
    text = f"{stage['ratio']:.2f}"
    return text if stage["ratio"] <= aim else f"**{text}**"


def _memory_cell(stage: dict | None) -> str:
    if stage is None or "peak_rss_mib" not in stage:
        return "-"
    return f"{stage['peak_rss_mib']:.0f} (+{stage['rss_increase_mib']:.0f})"


def _errors(runs: list[dict]) -> list[str]:
    lines = []
    for run in runs:
        if "error" in run:
            lines.append(f"* {run['model']}: {run['error']}")
        for name, stage in run.get("stages", {}).items():
            if "error" in stage and not stage["error"].startswith("skipped"):
                lines.append(f"* {run['model']}, {name}: {stage['error']}")
    return lines


def render_ratios(result: dict, images: int) -> list[str]:
    """The ratio table of the runs over ``images`` calibration images."""
    settings = result["settings"]
    runs = [r for r in result["runs"].values() if r["images"] == images]
    aim, aim_trial = settings["aim_stage_ratio"], settings["aim_trial_ratio"]
    lines = [f"{images} calibration images at {settings['image_size']} px, torch threads {settings['threads']}: seconds "
             f"of one forward pass, every stage as a multiple of it (aim: a stage <= {aim:g}x, bold above; "
             f"a screening trial <= {aim_trial:g}x):", "",
             "| stage | aim | " + " | ".join(r["model"] for r in runs) + " |",
             "|---|---|" + "---|" * len(runs)]

    def row(name: str, cells: list[str], target: str = "") -> None:
        lines.append(f"| {name} | {target} | " + " | ".join(cells) + " |")

    row("forward pass, s", [f"{r['forward_seconds']:.2f}" if "forward_seconds" in r else "error" for r in runs])
    for stage in result["stages"]:
        if any(stage in r.get("stages", {}) for r in runs):
            row(stage, [_ratio_cell(r.get("stages", {}).get(stage), aim) for r in runs], f"{aim:g}")
    row(f"**screening trial** ({' + '.join(result['trial_stages'])})",
        [_ratio_cell(r.get("trial"), aim_trial) for r in runs], f"{aim_trial:g}")
    row("forward pass again at the end, x", [f"{r['forward_after_seconds'] / r['forward_seconds']:.2f}"
                                             if "forward_after_seconds" in r else "-" for r in runs])
    errors = _errors(runs)
    return lines + ([""] + errors if errors else [])


def render_memory(result: dict, images: int) -> list[str]:
    """Peak resident memory per stage (MiB, and its increase over the stage's start)."""
    runs = [r for r in result["runs"].values() if r["images"] == images and "stages" in r]
    lines = [f"Peak resident memory, MiB (increase over the stage's start), {images} calibration images:", "",
             "| stage | " + " | ".join(r["model"] for r in runs) + " |", "|---|" + "---|" * len(runs)]
    for stage in result["stages"]:
        if any(stage in r["stages"] for r in runs):
            lines.append(f"| {stage} | " + " | ".join(_memory_cell(r["stages"].get(stage)) for r in runs) + " |")
    lines.append("| process peak | " + " | ".join(f"{r['process_peak_rss_mib']:.0f}" for r in runs) + " |")
    return lines


#: what the sweep's per-trial metrics measure
SWEEP_PARTS = {"prune_seconds": "prune (criterion scores, plan, channel removal)",
               "reconstructed_seconds": "least-squares reconstruction",
               "bn_recalibrated_seconds": "BN recalibration (training batches)",
               "score_seconds": "scoring on the calibration split"}


def render_sweep(sweep: dict) -> list[str]:
    """The screening sweep's throughput and the mean seconds of each part of a trial."""
    lines = [f"Screening sweep: {sweep['model']} at {sweep['image_size']} px on an imagefolder of random images, "
             f"{sweep['trials']} trials ({sweep['feasible']} feasible), concurrency {sweep['concurrency']}: "
             f"**{sweep['trials_per_hour']:.0f} trials per hour** ({sweep['trials_wall_seconds']:.0f} s between the "
             f"first trial's start and the last one's report"
             + (f"; the whole sweep {sweep['sweep_seconds']:.0f} s" if sweep["sweep_seconds"] is not None else "")
             + ").", "", "| part of a trial | mean seconds | share |", "|---|---|---|"]
    total = sweep["per_trial_seconds"]["trial_seconds"]
    for part, seconds in sweep["per_trial_seconds"].items():
        if part != "trial_seconds":
            lines.append(f"| {SWEEP_PARTS.get(part, part)} | {seconds:.2f} | {seconds / total:.0%} |")
    lines.append(f"| **trial (its wall time)** | **{total:.2f}** | 100% |")
    lines.append(f"| Tune / Ray between trials (per trial, concurrency {sweep['concurrency']}) | "
                 f"{sweep['tune_and_ray_seconds_per_trial']:.2f} | |")
    return lines


def render(result: dict, sweep: dict | None = None) -> str:
    blocks = []
    for images in sorted({r["images"] for r in result["runs"].values()}):
        blocks += [*render_ratios(result, images), "", *render_memory(result, images), ""]
    if sweep is not None:
        blocks += render_sweep(sweep)
    return "\n".join(blocks).rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", help="a result file of benchmarks/scaling.py")
    parser.add_argument("--sweep", default=None, help="a result file of benchmarks/scaling.py --sweep")
    add_block_arguments(parser)
    args = parser.parse_args()
    result = json.loads(Path(args.result).read_text())
    sweep = json.loads(Path(args.sweep).read_text()) if args.sweep else None
    write_or_print(parser, args, render(result, sweep))


if __name__ == "__main__":
    main()
