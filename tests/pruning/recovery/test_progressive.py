"""Progressive pruning (``RecoveryRecipe.steps``): the step widths, the re-scoring between steps,
and ``steps: 1`` as the one-shot pipeline."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pruning.criteria import ScoringContext, create_criterion
from pruning.errors import InputError
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig
from pruning.recovery import RecipeError, RecoveryData, RecoveryRecipe, Rescorer, recover, step_widths
from pruning.structure import PruningSpace, measure_cost

EXAMPLE = torch.zeros(1, 1, 28, 28)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def model(tiny_resnet) -> nn.Module:
    return tiny_resnet.eval()


@pytest.fixture
def data(model) -> RecoveryData:
    with torch.no_grad():
        train_x, calib_x = _images(96, 1), _images(64, 2)
        train_y, calib_y = model(train_x).argmax(1), model(calib_x).argmax(1)
    calibration = [(calib_x[i:i + 32], calib_y[i:i + 32]) for i in range(0, 64, 32)]
    return RecoveryData(calibration=calibration, train=TensorDataset(train_x, train_y), score=calibration,
                        rescorer=Rescorer(create_criterion("l1"), EXAMPLE, ScoringContext(calibration=calibration)))


def _plan(model: nn.Module, reduction: float = 0.7, criterion: str = "l1"):
    return prune_with_criterion(model, EXAMPLE, create_criterion(criterion), PruningConfig(flops_reduction=reduction))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_one_step_is_the_one_shot_pipeline_bit_for_bit(model, data):
    plan = _plan(model)
    one_shot = recover(model, copy.deepcopy(plan), RecoveryRecipe(), dataclasses.replace(data, rescorer=None))
    # the step keys do nothing at steps 1, and no rescorer is read
    stepped = recover(model, plan, RecoveryRecipe(steps=1, step_order="from_input", step_finetune_batches=3), data)
    assert stepped.steps == () and stepped.outcome is plan and stepped.model is plan.model
    assert stepped.scores == one_shot.scores
    a, b = _state(one_shot.model), _state(stepped.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("order", ["together", "from_input"])
def test_steps_reach_the_planned_widths_and_macs_through_monotone_widths(model, data, order):
    plan = _plan(model, 0.7)
    before = _state(model)
    result = recover(model, plan, RecoveryRecipe(steps=4, step_order=order), data)
    widths = step_widths(plan.space, plan.keep, 4, order)
    assert len(result.steps) == len(widths) > 1
    assert widths[-1] == {n: k for n, k in plan.keep.items() if k < plan.space[n].size}
    for earlier, later in zip(widths, widths[1:]):
        assert later != earlier
        for name, k in later.items():
            assert k <= earlier.get(name, plan.space[name].size)
    reductions = [step.macs_reduction for step in result.steps]
    assert reductions == sorted(reductions) and len(set(reductions)) == len(reductions)
    # the final model has the plan's widths, and its measured MACs meet the target within 1 point
    assert result.outcome.keep == plan.keep
    final_space = PruningSpace.build(result.model, EXAMPLE)
    assert {g.name: g.size for g in final_space.groups} == {n: plan.keep.get(n, plan.space[n].size)
                                                           for n in (g.name for g in plan.space.groups)}
    removed = 1 - measure_cost(result.model, (1, 28, 28)).macs / measure_cost(model, (1, 28, 28)).macs
    assert abs(removed - 0.7) <= 0.01
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the unpruned model is not changed


def test_together_steps_remove_the_same_fraction_of_what_is_left(model):
    plan = _plan(model, 0.7)
    widths = step_widths(plan.space, plan.keep, 3, "together")
    left = [1 - plan.space.reduction(w) for w in widths]
    # geometric: 0.3 ** (1/3), 0.3 ** (2/3), 0.3 of the MACs left, as close as whole channels allow
    assert left == pytest.approx([0.3 ** (1 / 3), 0.3 ** (2 / 3), left[-1]], abs=0.06)
    assert left[-1] == pytest.approx(1 - plan.space.reduction(plan.keep))


def test_from_input_steps_prune_each_layer_once_from_the_input_side(model):
    plan = _plan(model, 0.7)
    widths = step_widths(plan.space, plan.keep, 3, "from_input")
    order = {name: i for i, name in enumerate(plan.space.call_order)}
    first = [min(order[p] for n in w for p in plan.space[n].producers) for w in widths]
    seen: dict[str, int] = {}
    for step, w in enumerate(widths):
        for name, k in w.items():
            assert k == plan.keep[name]  # a layer is cut to its final width in one go
            seen.setdefault(name, step)
    newest = [max((min(order[p] for p in plan.space[n].producers) for n, s in seen.items() if s == step), default=-1)
              for step in range(len(widths))]
    assert newest == sorted(newest) and first[0] == min(first)


@pytest.mark.parametrize("criterion", ["l1", "entropy"])
def test_later_steps_score_the_partly_pruned_model(model, data, criterion):
    """A step ranks the channels of the model as the earlier steps left it: other widths, and
    scores that differ from the unpruned model's on the same channels."""
    plan = _plan(model, 0.6)
    scorer = create_criterion(criterion)
    rescorer = dataclasses.replace(data.rescorer, criterion=scorer)
    seen: list[dict[str, torch.Tensor]] = []
    original_score = scorer.score

    def spy(scored_model, groups, context):
        scores = original_score(scored_model, groups, context)
        seen.append({g.name: scores[g.name] for g in groups})
        return scores

    scorer.score = spy
    result = recover(model, plan, RecoveryRecipe(steps=3), dataclasses.replace(data, rescorer=rescorer))
    assert len(seen) == len(result.steps) - 1  # the first step reads the plan's scores
    widths = step_widths(plan.space, plan.keep, 3, "together")
    changed = False
    for name, scores in seen[0].items():
        assert scores.shape == (widths[0].get(name, plan.space[name].size),)
        if name in widths[0]:
            first_kept = torch.sort(torch.argsort(plan.scores[name], descending=True, stable=True)[:widths[0][name]]).values
            changed |= not torch.allclose(scores, plan.scores[name][first_kept])
    assert changed


def test_step_results_carry_the_seconds_of_every_stage(model, data):
    plan = _plan(model, 0.6)
    result = recover(model, plan, RecoveryRecipe(steps=3, step_finetune_batches=1, batch_size=32), data)
    *between, last = result.steps
    for step in between:
        assert set(step.seconds) == {"scored", "pruned", "reconstructed", "bn_recalibrated", "finetuned"}
        assert step.score is not None and 0 <= step.score <= 1
    assert set(last.seconds) == {"scored", "pruned"} and last.score is None
    metrics = result.step_metrics()
    assert metrics["step1_finetuned_seconds"] >= 0 and f"step{last.number}_pruned_seconds" in metrics
    assert result.total_seconds == pytest.approx(sum(result.seconds.values())
                                                 + sum(sum(s.seconds.values()) for s in result.steps))


def test_the_kept_indices_are_the_unpruned_models_channels(model, data):
    plan = _plan(model, 0.7)
    result = recover(model, plan, RecoveryRecipe(steps=3, bn_batches=0), data)
    kept = result.outcome.kept_indices["conv1"]  # the stem: read from the image, never refitted
    assert len(kept) == plan.keep["conv1"] and torch.equal(kept, kept.sort().values)
    assert torch.equal(result.model.conv1.weight, model.conv1.weight[kept])


def test_progressive_recipes_are_checked():
    with pytest.raises(RecipeError, match="steps must be an integer >= 1, got 0"):
        RecoveryRecipe(steps=0)
    with pytest.raises(RecipeError, match="step_order 'sideways' is unknown; valid: together, from_input"):
        RecoveryRecipe(step_order="sideways")
    with pytest.raises(RecipeError, match="step_finetune_batches must be an integer >= 0"):
        RecoveryRecipe(step_finetune_batches=-1)
    assert RecoveryRecipe.from_dict({"steps": 4}).steps == 4


def test_steps_without_a_rescorer_are_refused_before_any_stage(model, data):
    plan = _plan(model, 0.5)
    before = _state(plan.model)
    with pytest.raises(InputError, match="prunes in 2 steps .* no rescorer"):
        recover(model, plan, RecoveryRecipe(steps=2), dataclasses.replace(data, rescorer=None))
    after = _state(plan.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_plan_that_prunes_nothing_takes_no_steps(model, data):
    plan = _plan(model, 0.0)
    result = recover(model, plan, RecoveryRecipe(steps=4), data)
    assert result.steps == () and result.model is plan.model


def test_one_step_runs_exactly_the_one_shot_stages(model, data):
    """``steps: 1`` is reconstruction, BN recalibration and fine-tuning of the one-shot pruning,
    each as its own function runs it: the recipe adds nothing between them."""
    from pruning.data import make_loader
    from pruning.recovery import consumers_of, kept_outputs_of, reconstruct_consumers
    from pruning.training import TrainConfig, recalibrate_bn, train

    recipe = RecoveryRecipe(steps=1, bn_batches=2, finetune_epochs=1, batch_size=32, seed=3)
    plan = _plan(model, 0.5)
    by_hand = copy.deepcopy(plan.model)
    recovered = recover(model, plan, recipe, dataclasses.replace(data, score=None)).model
    reconstruct_consumers(model, by_hand, consumers_of(plan.space, plan.kept_indices), data.calibration,
                          ridge=recipe.ridge, kept_outputs=kept_outputs_of(plan.space, plan.kept_indices), seed=3)
    recalibrate_bn(by_hand, make_loader(data.train, 32, shuffle=True, seed=3), 2)
    train(by_hand, make_loader(data.train, 32, shuffle=True, seed=3),
          TrainConfig(epochs=1, lr=recipe.finetune_lr, weight_decay=recipe.weight_decay, batch_size=32, seed=3,
                      max_grad_norm=recipe.finetune_max_grad_norm), progress=False)
    a, b = _state(recovered), _state(by_hand)
    assert all(torch.equal(a[k], b[k]) for k in a)
