"""The scoring budget of the ``shapley`` and ``snpfi`` criteria (``max_forward_passes``): what
the models actually run stays within it, the reports state it, bad budgets are refused."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning.criteria import ScoringContext, create_criterion
from pruning.errors import InputError
from pruning.games import FunctionGame, GameRequest, PermutationSampling, permutation_shapley, plan_game
from pruning.structure import PruningSpace


class MacCounter:
    """Forward hooks on every Conv2d / Linear: the multiply-accumulates the model really runs,
    and the images that enter its first layer (full forwards)."""

    def __init__(self, model: nn.Module, first: str) -> None:
        self.macs = 0.0
        self.full_images = 0
        self.handles = []
        for name, module in model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                self.handles.append(module.register_forward_hook(self._count(name == first)))

    def _count(self, is_first: bool):
        def hook(module, args, output):
            per_output = (module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                          if isinstance(module, nn.Conv2d) else module.in_features)
            self.macs += output.numel() * per_output
            if is_first:
                self.full_images += output.shape[0]
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _macs_per_image(model: nn.Module, image: torch.Tensor) -> float:
    counter = MacCounter(model, "")
    with torch.no_grad():
        model.eval()(image[:1])
    counter.close()
    return counter.macs


@pytest.mark.parametrize("name", ["shapley", "snpfi"])
@pytest.mark.parametrize("budget", [0.5, 1.0, 3.0])
def test_the_budget_bounds_the_forward_passes_run(name, budget, tiny_resnet, example_input, calibration_batches):
    space = PruningSpace.build(tiny_resnet, example_input)
    images = sum(len(x) for x, _ in calibration_batches)
    per_image = _macs_per_image(tiny_resnet, calibration_batches[0][0])
    criterion = create_criterion(name, max_forward_passes=budget, max_permutations=64)
    counter = MacCounter(tiny_resnet, "conv1")
    try:
        if name == "snpfi":
            criterion.score_and_sparsity(tiny_resnet, space.groups, ScoringContext(calibration=calibration_batches))
        else:
            criterion.score(tiny_resnet, space.groups, ScoringContext(calibration=calibration_batches))
    finally:
        counter.close()
    passes = counter.macs / (per_image * images)
    assert passes <= budget * (1 + 1e-6)
    assert counter.full_images <= budget * images  # forwards from the first layer on, the dearest
    report = criterion.budget_report
    assert report["passes_spent"] == pytest.approx(passes, rel=1e-6)  # the meter charges what runs
    assert report["max_forward_passes"] == budget and report["charged_here"]


def test_a_bigger_budget_buys_more_and_the_reports_say_what_was_spent(tiny_resnet, example_input, calibration_batches):
    space = PruningSpace.build(tiny_resnet, example_input)
    context = ScoringContext(calibration=calibration_batches)
    small = create_criterion("shapley", max_forward_passes=0.5, max_permutations=64)
    large = create_criterion("shapley", max_forward_passes=20.0, max_permutations=64)
    small.score(tiny_resnet, space.groups, context)
    large.score(tiny_resnet, space.groups, context)
    assert small.budget_report["truncated"] and small.budget_report["groups_truncated"] >= 1
    assert large.budget_report["permutations"] > small.budget_report["permutations"]
    assert large.budget_report["passes_spent"] <= 20.0
    for name, row in small.last_report.items():
        assert {"budget_passes", "passes", "permutations", "images_per_coalition", "positions",
                "truncated", "estimated"} <= set(row), name
        assert row["passes"] <= row["budget_passes"] + 1e-9 or not row["estimated"]
    uncapped = create_criterion("shapley", max_forward_passes=None, max_permutations=4)
    uncapped.score(tiny_resnet, space.groups, context)
    assert not uncapped.budget_report["truncated"] and uncapped.budget_report["max_forward_passes"] is None
    assert all(r["permutations"] == 4 for r in uncapped.last_report.values())


@pytest.mark.parametrize("budget", [0, -1.0, float("inf"), float("nan"), "1", True])
def test_a_bad_budget_is_a_one_line_input_error(budget):
    for name in ("shapley", "snpfi"):
        with pytest.raises(InputError, match="max_forward_passes must be a finite number > 0") as caught:
            create_criterion(name, max_forward_passes=budget)
        assert "\n" not in str(caught.value)


def test_a_budget_below_the_recorded_forward_is_refused(tiny_resnet, example_input, calibration_batches):
    space = PruningSpace.build(tiny_resnet, example_input)
    with pytest.raises(InputError, match="max_forward_passes 0.01 is below the") as caught:
        create_criterion("shapley", max_forward_passes=0.01).score(
            tiny_resnet, space.groups, ScoringContext(calibration=calibration_batches))
    assert "\n" not in str(caught.value)


def test_plans_degrade_permutations_then_images_then_positions():
    request = GameRequest(size=64, fraction=0.5, images=16, max_permutations=8, step=2)
    calibration = 64
    full = plan_game(request, float("inf"), calibration)
    assert (full.images, full.positions, full.permutations) == (16, 64, 8)
    def cost(plan):
        return plan.coalitions(64) * plan.images * 0.5 / calibration
    for share in (100.0, 40.0, 2.0, 0.5, 0.1):
        plan = plan_game(request, share, calibration)
        assert plan is not None and cost(plan) <= share
    assert plan_game(request, 40.0, calibration).images == 16  # permutations go first
    assert plan_game(request, 2.0, calibration).images < 16  # then images per coalition
    coarse = plan_game(request, 0.1, calibration)
    assert coarse.images == 1 and coarse.positions < 64  # then the positions of a permutation
    assert plan_game(request, 0.01, calibration) is None  # not even one coarse pair


def test_coarse_permutations_keep_efficiency_and_the_order_of_an_additive_game():
    weights = torch.linspace(0.1, 3.2, 32).tolist()
    game = FunctionGame(32, lambda s: sum(weights[i] for i in s))
    estimate = permutation_shapley(game, PermutationSampling(max_permutations=400, antithetic=True, positions=4),
                                   seed=0)
    assert float(estimate.values.sum()) == pytest.approx(sum(weights))
    assert game.coalitions == 2 + 400 * 3  # endpoints, then 3 interior prefixes per permutation
    # each sample is the mean of a random quarter, so values shrink to the mean but keep the order
    assert torch.corrcoef(torch.stack([estimate.values, torch.tensor(weights, dtype=torch.float64)]))[0, 1] > 0.9
    exact = permutation_shapley(game, PermutationSampling(max_permutations=2, antithetic=True, positions=32), seed=0)
    assert torch.allclose(exact.values, torch.tensor(weights, dtype=torch.float64))
