"""The gradient-clipping report (benchmarks/finetune_clip_report.py): runs paired by (criterion,
ratios, target), the differences summarised, collapses counted against the fine-tune's start."""
import pytest

from benchmarks.finetune_clip_report import compare, render


def _result(norm, runs: dict[tuple, tuple[float, float]]) -> dict:
    rows = [{"criterion": c, "ratios": r, "target": t, "bn_recalibrated_accuracy": start, "test_accuracy": test}
            for (c, r, t), (start, test) in runs.items()]
    return {"settings": {"finetune_max_grad_norm": norm}, "oneshot": {"rows": rows}}


def test_runs_are_paired_and_a_collapse_is_an_end_below_the_start():
    off = _result(None, {("l1", "uniform", 0.5): (0.90, 0.91), ("hrank", "concentration", 0.5): (0.88, 0.19),
                         ("apoz", "uniform", 0.7): (0.80, 0.70)})
    on = _result(5.0, {("l1", "uniform", 0.5): (0.90, 0.90), ("hrank", "concentration", 0.5): (0.88, 0.88)})
    summary = compare(off, on)
    assert [r["criterion"] for r in summary["rows"]] == ["hrank", "l1"]  # only the runs both hold
    assert summary["min"] == pytest.approx(-0.01) and summary["max"] == pytest.approx(0.69)
    assert summary["mean"] == pytest.approx(0.34)
    assert (summary["collapsed_off"], summary["collapsed_on"]) == (1, 0)
    text = render([("VGG-16", off, on)])
    assert "| hrank | concentration | -50% | 0.8800 | 0.1900 | 0.8800 | +69.00 |" in text
    assert "1 without clipping, 0 with norm 5" in text


def test_the_files_must_be_an_unclipped_and_a_clipped_run_of_shared_pipelines():
    run = {("l1", "uniform", 0.5): (0.9, 0.9)}
    with pytest.raises(ValueError, match="unclipped and a clipped"):
        compare(_result(5.0, run), _result(5.0, run))
    with pytest.raises(ValueError, match="share no"):
        compare(_result(None, run), _result(5.0, {("l2", "uniform", 0.5): (0.9, 0.9)}))
