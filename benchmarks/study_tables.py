"""Render a finished study's tables (read back from MLflow) as the Markdown docs/benchmarks.md
shows: the summary, paired and rank tables, the cells, wall time, cells/hour and the saving of
the shared scores; with ``--write FILE`` the block between ``<!-- study:NAME -->`` and
``<!-- /study:NAME -->`` in FILE is replaced (generated, never hand-copied).

    python benchmarks/study_tables.py runs/studies/criteria-benchmark [--write docs/benchmarks.md]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.docs_blocks import write_block  # noqa: E402
from orchestrator.studies import study_report  # noqa: E402


def render(run_dir: str) -> tuple[str, str]:
    """(study name, its Markdown block)."""
    result = study_report(run_dir)
    counts, scores = result.counts, result.scores
    tracker_metrics = _parent_metrics(result)
    wall = tracker_metrics.get("wall_seconds")
    lines = [f"Study `{result.name}`: {counts['cells']} cells, {counts['finished']} finished, {counts['failed']} failed"
             + (f"; its last run (a resumed study's counts only its own cells) took {wall / 60:.1f} min wall "
                f"for {tracker_metrics['cells_ran']:.0f} cells, {tracker_metrics['cells_per_hour']:.0f} cells/hour"
                if wall else "") + ".",
             f"Shared scores: {scores['keys_computed']} score computations took {scores['shared_seconds']:.1f} s; "
             f"scoring in every cell would have taken {scores['unshared_seconds']:.1f} s "
             f"(saved {scores['saved_seconds']:.1f} s).", "", result.tables.markdown().rstrip()]
    return result.name, "\n".join(lines)


def _parent_metrics(result) -> dict:
    from orchestrator.studies.run import TRACKING_KIND
    from orchestrator.sweeps import Tracker

    tracker = Tracker(result.tracking_uri, "prunesweep-compare", result.run_dir, kind=TRACKING_KIND)
    return dict(tracker.client.get_run(result.parent_run_id).data.metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--write", default=None, help="the Markdown file whose study block to replace")
    args = parser.parse_args()
    name, block = render(args.run_dir)
    if args.write is None:
        print(block)
        return
    write_block(args.write, f"study:{name}", block)


if __name__ == "__main__":
    main()
