"""`prunesweep prune --ratios` resolves through the ratio-source registry of pruning.planning: a
source registered there is listed by `info`, its target rules and option checks are the command
line's, and it prunes."""
from __future__ import annotations

import pytest

from cli_helpers import QUICK, assert_bad_input, run_json
from pruning.planning import list_ratio_sources

MODEL = ["--model", "user_models:tiny_cnn", "--model-kwargs", '{"width": 6}', "--dataset", "fashion-mnist"]


def test_info_lists_every_registered_source_and_a_file(capsys, extra_ratio_source):
    ratios = run_json(capsys, "info")["ratios"]
    assert extra_ratio_source in ratios and "FILE.json" in ratios
    assert set(ratios) == (set(list_ratio_sources()) - {"schedule"}) | {"FILE.json"}  # a file names the schedule


def test_a_registered_source_s_targets_are_the_command_line_s(capsys, untrained, extra_ratio_source):
    assert_bad_input(capsys, ["prune", "--checkpoint", untrained, "--ratios", extra_ratio_source, "--ratio", "0.3"],
                     f"--ratios {extra_ratio_source} takes --flops-reduction, not --ratio")
    assert_bad_input(capsys, ["prune", "--checkpoint", untrained, "--ratios", "snpfi", "--ratio", "0.3"],
                     "--ratios snpfi takes no target or --flops-reduction, not --ratio")


@pytest.mark.parametrize("argv, needles", [
    (["--alpha", "2"], ["--alpha", "must be in [0, 1], got 2.0"]),  # the concentration source's check
    (["--ratios", "concentration", "--alpha", "-1"], ["--alpha", "-1"]),
    (["--snpfi-budget", "global", "--tau", "0"], ["--tau", "must be in (0, 1], got 0.0"]),  # the snpfi source's
    (["--ratios", "schedule"], ["unknown --ratios 'schedule'", "a JSON file"]),  # the file source is named by its file
])
def test_source_options_are_checked_by_the_sources(argv, needles, capsys, untrained):
    assert_bad_input(capsys, ["prune", "--checkpoint", untrained, "--flops-reduction", "0.3", *argv], *needles)


@pytest.mark.fashion_mnist
def test_a_registered_source_prunes_to_the_target(weights, fashion_mnist, capsys, extra_ratio_source):
    data = run_json(capsys, "prune", *MODEL, "--weights", weights, "--ratios", extra_ratio_source,
                    "--flops-reduction", "0.3", "--no-reconstruct", *QUICK)
    pruning = data["pruning"]
    assert pruning["ratios"] == extra_ratio_source and abs(pruning["macs_reduction"] - 0.3) <= 0.05
    ratios = [1 - kept / channels for kept, channels in pruning["channels"].values()]
    assert ratios[0] < max(ratios)  # the first group weighs half: it loses less than the most pruned
