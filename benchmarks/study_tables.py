"""Render a finished study's tables (read back from MLflow) as Markdown: an overview (per
recipe, the mean test accuracy of every criterion at every ratio source and target, the best of
each column in bold), the summary, paired and rank tables (the
first two folded), the cells, wall time, cells/hour and the saving of the shared scores; with
``--write FILE`` the block between ``<!-- study:NAME -->`` and ``<!-- /study:NAME -->`` in FILE
is replaced (generated, never hand-copied).

    python benchmarks/study_tables.py runs/studies/criteria-benchmark [--write DOC.md] \
        [--plots PREFIX]     # the study's two plots, drawn again: PREFIX-accuracy-vs-macs.png, PREFIX-ranks.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.docs_blocks import write_block  # noqa: E402
from orchestrator.studies import study_parent_metrics, study_phase_times, study_report  # noqa: E402


def render(result, tracker_metrics: dict, phases: dict) -> tuple[str, str]:
    """(study name, its Markdown block) of a :func:`study_report` result, its parent run's
    metrics and its :func:`~orchestrator.studies.study_phase_times`."""
    counts, scores = result.counts, result.scores
    wall = tracker_metrics.get("wall_seconds")
    lines = [f"Study `{result.name}`: {counts['cells']} cells, {counts['finished']} finished, {counts['failed']} failed"
             + (f"; its last run (a resumed study's counts only its own cells) took {wall / 60:.1f} min wall "
                f"for {tracker_metrics['cells_ran']:.0f} cells, {tracker_metrics['cells_per_hour']:.0f} cells/hour"
                if wall else "") + ".",
             *([f"Phases (MLflow start and end times): {phases['before_cells'] / 60:.1f} min from the parent run's "
                f"start to the first cell (the score phase), then {phases['cells'] / 60:.1f} min from the first cell's "
                f"start to the last one's end: {phases['cells_ended'] * 3600 / phases['cells']:.0f} cells/hour in "
                f"the cells phase."] if phases else []),
             f"Shared scores: {scores['keys_computed']} score computations took {scores['shared_seconds']:.1f} s; "
             f"scoring in every cell would have taken {scores['unshared_seconds']:.1f} s "
             f"(saved {scores['saved_seconds']:.1f} s).", "", overview(result.tables.summary), "",
             *([paired_overview(result.tables.paired), ""] if result.tables.paired else []),
             "<details><summary>Every table: intervals, paired tests, ranks</summary>", "",
             result.tables.markdown().rstrip(), "", "</details>"]
    return result.name, "\n".join(lines)


def overview(summary: list[dict]) -> str:
    """Per recipe, one row per criterion and one column per (ratio source, target): the mean
    test accuracy, the best of each column in bold (n: the cells each mean is over)."""
    columns = list(dict.fromkeys((r["ratios"], r["flops_reduction"]) for r in summary))
    parts = []
    for recipe in dict.fromkeys(r["recipe"] for r in summary):
        rows = [r for r in summary if r["recipe"] == recipe]
        mean = {(r["criterion"], r["ratios"], r["flops_reduction"]): r["test_accuracy_mean"] for r in rows}
        best = {c: max((v for (_, *k), v in mean.items() if tuple(k) == c and v is not None), default=None)
                for c in columns}
        n = sorted({r["n"] for r in rows})
        cells = {criterion: ["" if (v := mean.get((criterion, *c))) is None
                             else (f"**{v:.4f}**" if v == best[c] else f"{v:.4f}") for c in columns]
                 for criterion in dict.fromkeys(r["criterion"] for r in rows)}
        parts += [f"Recipe `{recipe}`: mean test accuracy (n = {'/'.join(map(str, n))} per mean).", "",
                  *_criterion_table([f"{ratios} -{target:.0%}" for ratios, target in columns], cells), ""]
    return "\n".join(parts).rstrip()


def _criterion_table(titles: list[str], cells: dict[str, list[str]]) -> list[str]:
    """The lines of a Markdown table with a row per criterion (``cells``: criterion -> its
    cells, one per title)."""
    return ["| criterion | " + " | ".join(titles) + " |", "|---|" + "---|" * len(titles),
            *(f"| {criterion} | " + " | ".join(row) + " |" for criterion, row in cells.items())]


def paired_overview(paired: list[dict]) -> str:
    """One row per criterion and one column per (recipe, ratio source): the mean paired difference
    from the reference in accuracy points, its p-value, in bold where p < 0.05."""
    columns = list(dict.fromkeys((r["recipe"], r["ratios"]) for r in paired))
    by_key = {(r["criterion"], r["recipe"], r["ratios"]): r for r in paired}
    first = paired[0]
    lines = [f"Paired with `{first['reference']}` ({first['test']}, two-sided): mean difference in test accuracy "
             f"points over {'/'.join(map(str, sorted({r['pairs'] for r in paired})))} (checkpoint, seed, target) "
             "pairs, and its p-value; bold: p < 0.05.", ""]
    cells = {criterion: [_paired_cell(by_key.get((criterion, *column))) for column in columns]
             for criterion in dict.fromkeys(r["criterion"] for r in paired)}
    return "\n".join(lines + _criterion_table([f"{recipe} / {ratios}" for recipe, ratios in columns], cells))


def _paired_cell(row: dict | None) -> str:
    if row is None or row["mean_difference"] is None:
        return ""
    text = f"{100 * row['mean_difference']:+.2f} (p {row['p_value']:.2g})"
    return f"**{text}**" if row["p_value"] is not None and row["p_value"] < 0.05 else text


def plot(result, metrics: dict, prefix: str) -> None:
    """The study's plots (as its run logged them, in the current layout), the unpruned line at
    the mean test accuracy of its baselines (from its parent run's ``metrics``)."""
    from orchestrator.studies.plots import plot_accuracy, plot_ranks

    base = [v for k, v in metrics.items() if k.startswith("baseline_") and k.endswith(".test_accuracy")]
    plot_accuracy(result.tables, sum(base) / len(base) if base else None, Path(f"{prefix}-accuracy-vs-macs.png"))
    if result.tables.ranks:
        plot_ranks(result.tables, Path(f"{prefix}-ranks.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--write", default=None, help="the Markdown file whose study block to replace")
    parser.add_argument("--plots", default=None, metavar="PREFIX",
                        help="draw the accuracy and rank plots again from MLflow into PREFIX-*.png")
    args = parser.parse_args()
    result = study_report(args.run_dir)
    metrics = study_parent_metrics(args.run_dir)
    if args.plots:
        plot(result, metrics, args.plots)
    name, block = render(result, metrics, study_phase_times(args.run_dir))
    if args.write is None:
        print(block)
        return
    write_block(args.write, f"study:{name}", block)


if __name__ == "__main__":
    main()
