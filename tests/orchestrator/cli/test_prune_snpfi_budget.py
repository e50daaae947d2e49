"""`prunesweep prune --ratios snpfi` with SNPFI's options: the global budget (layers competing by
utilization lost per MAC) is the plan itself and meets the FLOPs target; the interaction window
is checked at the command line."""
from __future__ import annotations

import pytest

from cli_helpers import QUICK, assert_bad_input, run_json

MODEL = ["--model", "user_models:tiny_cnn", "--model-kwargs", '{"width": 6}', "--dataset", "fashion-mnist"]


@pytest.mark.fashion_mnist
def test_global_budget_with_interactions_meets_the_target(weights, fashion_mnist, capsys):
    data = run_json(capsys, "prune", *MODEL, "--weights", weights, "--criterion", "l1", "--ratios", "snpfi",
                    "--snpfi-budget", "global", "--snpfi-interactions", "4", "--flops-reduction", "0.4",
                    "--max-layer-ratio", "0.8", *QUICK)
    pruning = data["pruning"]
    assert pruning["ratios"] == "snpfi" and abs(pruning["macs_reduction"] - 0.4) <= 0.05
    ratios = [1 - kept / channels for kept, channels in pruning["channels"].values()]
    assert max(ratios) <= 0.8 + 1e-9 and len(set(round(r, 6) for r in ratios)) > 1  # layer-wise, capped


def test_a_negative_interaction_window_is_a_one_line_error(capsys, weights):
    assert_bad_input(capsys, ["prune", *MODEL, "--weights", str(weights), "--criterion", "snpfi",
                              "--ratios", "snpfi", "--snpfi-interactions", "-1"], "--snpfi-interactions", "-1")
