"""Ratio sources against uniform ratios, with the same criteria, from one or more finished studies
(read back from MLflow): for each recipe, ratio source and target, the mean test-accuracy
difference to ``uniform`` over the criteria both have, and in how many criteria it is ahead;
then, per recipe, every criterion's difference at every target. Studies with the same baselines,
seeds, recipes and targets pair cell for cell (e.g. one with uniform + min-max concentration
ratios and one with the rank fusion only).

    python benchmarks/ratio_sources.py runs/studies/criteria-benchmark-two-baselines \\
        runs/studies/criteria-benchmark-two-baselines-rank [--write DOC.md --key ratio-sources]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.docs_blocks import add_block_arguments, write_or_print  # noqa: E402

REFERENCE = "uniform"


def means(summaries: list[list[dict]]) -> dict[tuple, float]:
    """{(recipe, ratios, criterion, target): mean test accuracy} over the studies' summary rows;
    a key in two studies is an error (they would not pair)."""
    table: dict[tuple, float] = {}
    for summary in summaries:
        for r in summary:
            key = (r["recipe"], r["ratios"], r["criterion"], r["flops_reduction"])
            if key in table:
                raise SystemExit(f"two studies hold {key}: give each ratio source once")
            if r["test_accuracy_mean"] is not None:
                table[key] = r["test_accuracy_mean"]
    return table


def render(table: dict[tuple, float]) -> str:
    recipes = list(dict.fromkeys(k[0] for k in table))
    sources = [s for s in dict.fromkeys(k[1] for k in table) if s != REFERENCE]
    targets = sorted({k[3] for k in table})
    criteria = sorted({k[2] for k in table})

    def difference(recipe, source, criterion, target):
        a, b = table.get((recipe, source, criterion, target)), table.get((recipe, REFERENCE, criterion, target))
        return None if a is None or b is None else a - b

    lines = [f"Test accuracy of each ratio source minus `{REFERENCE}`, same criterion and cells: mean over "
             "criteria, points (criteria ahead / criteria compared).", "",
             "| recipe | ratio source | " + " | ".join(f"-{t:.0%}" for t in targets) + " |",
             "|---|---|" + "---|" * len(targets)]
    for recipe in recipes:
        for source in sources:
            cells = []
            for t in targets:
                d = [x for c in criteria if (x := difference(recipe, source, c, t)) is not None]
                cells.append(f"{100 * sum(d) / len(d):+.2f} ({sum(x > 0 for x in d)}/{len(d)})" if d else "")
            lines.append(f"| {recipe} | {source} | " + " | ".join(cells) + " |")
    for recipe in recipes:
        lines += ["", f"Recipe `{recipe}`, per criterion (points against `{REFERENCE}`):", "",
                  "| criterion | " + " | ".join(f"{s} -{t:.0%}" for s in sources for t in targets) + " |",
                  "|---|" + "---|" * (len(sources) * len(targets))]
        for c in criteria:
            cells = [difference(recipe, s, c, t) for s in sources for t in targets]
            lines.append(f"| {c} | " + " | ".join("" if d is None else f"{100 * d:+.2f}" for d in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", help="finished studies' run directories")
    add_block_arguments(parser)
    args = parser.parse_args()
    from orchestrator.studies import study_report

    table = means([study_report(d).tables.summary for d in args.run_dirs])
    if not any(k[1] == REFERENCE for k in table):
        parser.error(f"no study has the {REFERENCE!r} ratio source to compare against")
    write_or_print(parser, args, render(table))


if __name__ == "__main__":
    main()
