"""The equal-compute report (benchmarks/sweep_vs_oneshot_report.py): the one-shot grid's spread
per target next to the binomial sampling error of one accuracy."""
from benchmarks.sweep_vs_oneshot_report import grid_spread, render


def _result(accuracies: dict[float, list[float]], **extra) -> dict:
    rows = [{"criterion": f"c{i}", "ratios": "uniform", "target": t, "test_accuracy": a, "macs_reduction": t,
             "bn_recalibrated_accuracy": a, "cpu_seconds": 1.0}
            for t, values in accuracies.items() for i, a in enumerate(values)]
    return {"settings": {"targets": list(accuracies), "test_subset": 400}, "base": {"test_accuracy": 0.9, "macs": 1e6},
            "oneshot": {"rows": rows}, **extra}


def test_the_spread_is_over_pipelines_and_the_error_is_binomial_at_the_recorded_split_sizes():
    result = _result({0.5: [0.7, 0.8, 0.9], 0.7: [0.5]}, calibration_split_images=100)
    lines = grid_spread(result, [0.5, 0.7])
    assert "(400 images)" in lines[0] and "(100 images)" in lines[0]
    # mean 0.8: sqrt(0.8 * 0.2 / 400) = 0.02, / 100 = 0.04; std of 0.7/0.8/0.9 = 0.1
    assert lines[2] == "| -50% | 3 | 0.7000 / 0.8000 / 0.9000 | 0.1000 | 0.0200 | 0.0400 |"
    assert len(lines) == 3  # one pipeline at -70%: no spread to show


def test_the_report_shows_the_spread_only_with_a_grid():
    assert "spread against the sampling error" in render(_result({0.5: [0.7, 0.8]}))
    assert "spread against the sampling error" not in render(_result({0.5: [0.7]}))
