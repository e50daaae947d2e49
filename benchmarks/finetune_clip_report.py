"""Render pairs of benchmarks/sweep_vs_oneshot.py one-shot result files that differ only in
``--finetune-max-grad-norm`` as a Markdown table (into a document's generated block with
``--write DOC --key KEY``).

Per network: every (criterion, ratios, target) run of both files, its calibration accuracy after
reconstruction + BN (the fine-tune's starting point, equal in both: the fine-tune is the only
difference), its test accuracy after the fine-tune with each norm, and the difference; then the
mean, smallest and largest difference, and the runs the fine-tune dropped by more than
``COLLAPSE`` below their starting point, with each norm.

    python benchmarks/finetune_clip_report.py --pair ResNet-20 A_none.json A_5.json --pair VGG-16 B_none.json B_5.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.docs_blocks import add_block_arguments, write_or_print  # noqa: E402

#: a fine-tune that ends this far below its starting accuracy (a fraction) counted as collapsed
COLLAPSE = 0.03


def _norm(result: dict) -> str:
    value = result["settings"].get("finetune_max_grad_norm")
    return "none" if value is None else f"{value:g}"


def _runs(result: dict) -> dict[tuple, dict]:
    return {(r["criterion"], r["ratios"], r["target"]): r for r in result["oneshot"]["rows"]}


def compare(off: dict, on: dict) -> dict:
    """The runs both results hold, paired: starting accuracy, test accuracy without and with
    the clipping, their difference; and the summary of the differences."""
    if _norm(off) != "none" or _norm(on) == "none":
        raise ValueError(f"expected an unclipped and a clipped result, got norms {_norm(off)} and {_norm(on)}")
    first, second = _runs(off), _runs(on)
    rows = []
    for key in sorted(first.keys() & second.keys()):
        a, b = first[key], second[key]
        start = a["bn_recalibrated_accuracy"]
        rows.append({"criterion": key[0], "ratios": key[1], "target": key[2], "start": start,
                     "off": a["test_accuracy"], "on": b["test_accuracy"], "diff": b["test_accuracy"] - a["test_accuracy"],
                     "collapsed_off": a["test_accuracy"] < start - COLLAPSE,
                     "collapsed_on": b["test_accuracy"] < start - COLLAPSE})
    if not rows:
        raise ValueError("the two results share no (criterion, ratios, target) run")
    diffs = [r["diff"] for r in rows]
    return {"norm": _norm(on), "rows": rows, "mean": sum(diffs) / len(diffs), "min": min(diffs), "max": max(diffs),
            "collapsed_off": sum(r["collapsed_off"] for r in rows), "collapsed_on": sum(r["collapsed_on"] for r in rows)}


def render(pairs: list[tuple[str, dict, dict]]) -> str:
    lines = []
    for network, off, on in pairs:
        summary = compare(off, on)
        norm = summary["norm"]
        lines += [f"**{network}** ({len(summary['rows'])} runs; starting point: calibration accuracy after "
                  f"reconstruction + BN; then test accuracy after the fine-tune):", "",
                  f"| criterion | ratios | target | start | no clipping | norm {norm} | difference |",
                  "|---|---|---|---|---|---|---|"]
        for r in summary["rows"]:
            lines.append(f"| {r['criterion']} | {r['ratios']} | -{r['target']:.0%} | {r['start']:.4f} | {r['off']:.4f} "
                         f"| {r['on']:.4f} | {100 * r['diff']:+.2f} |")
        lines += ["", f"Difference (norm {norm} - none), in points: mean {100 * summary['mean']:+.2f}, "
                      f"min {100 * summary['min']:+.2f}, max {100 * summary['max']:+.2f}. Runs ending more than "
                      f"{100 * COLLAPSE:.0f} points below their start: {summary['collapsed_off']} without clipping, "
                      f"{summary['collapsed_on']} with norm {norm}.", ""]
    return "\n".join(lines).rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", nargs=3, action="append", required=True, metavar=("NETWORK", "UNCLIPPED", "CLIPPED"))
    add_block_arguments(parser)
    args = parser.parse_args()
    pairs = [(name, json.loads(Path(a).read_text()), json.loads(Path(b).read_text())) for name, a, b in args.pair]
    write_or_print(parser, args, render(pairs))


if __name__ == "__main__":
    main()
