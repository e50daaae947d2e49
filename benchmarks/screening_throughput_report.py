"""Render result files of benchmarks/screening_throughput.py side by side as a Markdown table:
screened schedules per hour and where a screening trial's seconds go, one column per run.

    python benchmarks/screening_throughput_report.py "before=benchmarks/results/a.json" \\
        "after=benchmarks/results/b.json" [--write docs/benchmarks.md --key screening-throughput]
"""
from __future__ import annotations

import argparse
import json

from docs_blocks import add_block_arguments, write_or_print

PARTS = {
    "prune_seconds": "prune (plan + channel removal)",
    "reconstructed_seconds": "least-squares reconstruction",
    "bn_recalibrated_seconds": "BN recalibration (10 training batches of 128)",
    "score_seconds": "scoring on the 2,000 calibration images",
    "rest_of_trial_body": "rest of the trial body (model rebuild, planning, cost)",
    "tune_and_ray": "Tune / Ray (worker, checkpoint, scheduling)",
}


def render(runs: list[tuple[str, dict]]) -> str:
    header = "| | " + " | ".join(label for label, _ in runs) + " |"
    lines = [header, "|---|" + "---|" * len(runs)]

    def row(name: str, cells: list[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    row("screened trials (concurrency)", [f"{r['screened']} ({r['concurrency']})" for _, r in runs])
    row("screening wall time, s", [f"{r['screening_wall_seconds']:.1f}" for _, r in runs])
    row("**screened schedules per hour**", [f"**{r['trials_per_hour']:.0f}**" for _, r in runs])
    row("mean seconds a trial", [f"{r['mean_trial_seconds']:.2f}" for _, r in runs])
    for key, name in PARTS.items():
        row(f"&nbsp;&nbsp;{name}", [f"{r['per_trial_seconds'][key]:.2f}" for _, r in runs])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=FILE")
    add_block_arguments(parser)
    args = parser.parse_args()
    runs = []
    for item in args.runs:
        label, sep, path = item.partition("=")
        if not sep:
            parser.error(f"give each run as LABEL=FILE, got {item!r}")
        runs.append((label, json.loads(open(path).read())))
    write_or_print(parser, args, render(runs))


if __name__ == "__main__":
    main()
