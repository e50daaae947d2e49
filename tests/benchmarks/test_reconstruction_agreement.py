"""The side-by-side report of two reconstructions' accuracies: means over seeds, and a verdict."""
from __future__ import annotations

import json

from benchmarks.reconstruction_agreement import render


def _write(path, accuracies):
    rows = [{"criterion": c, "target": t, "seed": s, "reconstruct": True, "reconstructed": a, "bn_recalibrated": a - 0.01}
            for (c, t, s), a in accuracies.items()]
    path.write_text(json.dumps({"rows": rows}))
    return str(path)


def test_the_verdict_is_on_the_mean_over_seeds_and_names_the_worst_seed(tmp_path):
    before = _write(tmp_path / "before.json", {("random", 0.5, 0): 0.90, ("random", 0.5, 1): 0.90, ("l1", 0.5, 0): 0.91})
    close = _write(tmp_path / "close.json", {("random", 0.5, 0): 0.897, ("random", 0.5, 1): 0.902, ("l1", 0.5, 0): 0.91})
    text = render(before, close, 0.002)
    assert "| random | 50% | 2 | 0.9000 | 0.8995 | -0.0005 |" in text
    assert "0.05 points on a mean over seeds, within the 0.2-point tolerance (0.30 on a single seed)" in text
    far = _write(tmp_path / "far.json", {("random", 0.5, 0): 0.90, ("random", 0.5, 1): 0.90, ("l1", 0.5, 0): 0.905})
    assert "0.50 points on a mean over seeds, **beyond** the 0.2-point tolerance" in render(before, far, 0.002)
