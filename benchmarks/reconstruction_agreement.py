"""Set two result files of benchmarks/criteria_accuracy.py side by side, per (criterion, target):
the accuracy after reconstruction (and after the BN recalibration that follows), mean over the
seeds both files hold, with one version of the reconstruction against another, on the same
checkpoint, calibration and test images. Used to check that a faster reconstruction keeps the
accuracy of the exact one: the verdict is on the means (a seed moves the random criterion's
channels and the sampled rows), the largest single-seed loss is stated too.

    python benchmarks/reconstruction_agreement.py BEFORE.json AFTER.json \\
        [--tolerance 0.002] [--write docs/scale.md --key reconstruction-agreement]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.docs_blocks import add_block_arguments, write_or_print  # noqa: E402

STAGES = ("reconstructed", "bn_recalibrated")


def _rows(path: str) -> dict[tuple, dict]:
    result = json.loads(Path(path).read_text())
    return {(r["criterion"], r["target"], r["seed"]): r for r in result["rows"] if r.get("reconstruct", True)}


def render(before_path: str, after_path: str, tolerance: float) -> str:
    before, after = _rows(before_path), _rows(after_path)
    shared = before.keys() & after.keys()
    if not shared:
        raise SystemExit(f"{before_path} and {after_path} have no (criterion, target, seed) in common")
    cases = sorted({key[:2] for key in shared}, key=lambda c: (c[0] != "random", c))
    lines = ["| criterion | target | seeds | " + " | ".join(f"{s} before | {s} after | difference" for s in STAGES) + " |",
             "|---|---|---|" + "---|---|---|" * len(STAGES)]
    worst_mean = worst_seed = 0.0
    for case in cases:
        keys = sorted(k for k in shared if k[:2] == case)
        cells = []
        for stage in STAGES:
            b = statistics.fmean(before[k][stage] for k in keys)
            a = statistics.fmean(after[k][stage] for k in keys)
            cells += [f"{b:.4f}", f"{a:.4f}", f"{a - b:+.4f}"]
            if stage == STAGES[0]:
                worst_mean = max(worst_mean, b - a)
                worst_seed = max([worst_seed] + [before[k][stage] - after[k][stage] for k in keys])
        lines.append(f"| {case[0]} | {case[1]:.0%} | {len(keys)} | " + " | ".join(cells) + " |")
    verdict = "within" if worst_mean <= tolerance else "**beyond**"
    return ("\n".join(lines) + f"\n\nLargest loss after reconstruction: {worst_mean * 100:.2f} points on a mean over "
            f"seeds, {verdict} the {tolerance * 100:.1f}-point tolerance ({worst_seed * 100:.2f} on a single seed).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--tolerance", type=float, default=0.002, help="accuracy the reconstruction may lose")
    add_block_arguments(parser)
    args = parser.parse_args()
    write_or_print(parser, args, render(args.before, args.after, args.tolerance))


if __name__ == "__main__":
    main()
