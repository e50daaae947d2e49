"""The one recovery recipe (pruning.recovery.recover): stages, data, determinism, distillation."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pruning.criteria import create_criterion
from pruning.errors import InputError
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig
import dataclasses

from pruning.recovery import STAGES, RecoveryData, RecoveryRecipe, reconstruction_targets, recover
from pruning.training import TrainConfig, recalibrate_bn, train

EXAMPLE = torch.zeros(1, 1, 28, 28)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def teacher(tiny_resnet) -> nn.Module:
    """TinyResNet whose labels below are its own predictions, so accuracy is meaningful."""
    with torch.no_grad():
        tiny_resnet.fc.bias -= tiny_resnet.eval()(_images(256, 9)).mean(0)
    return tiny_resnet.eval()


@pytest.fixture
def data(teacher) -> RecoveryData:
    with torch.no_grad():
        train_x, calib_x = _images(128, 1), _images(64, 2)
        train_y, calib_y = teacher(train_x).argmax(1), teacher(calib_x).argmax(1)
    calibration = [(calib_x[i:i + 32], calib_y[i:i + 32]) for i in range(0, 64, 32)]
    return RecoveryData(calibration=calibration, train=TensorDataset(train_x, train_y), score=calibration)


def _pruned(model: nn.Module):
    return prune_with_criterion(model, EXAMPLE, create_criterion("l1"), PruningConfig(ratio=0.5, strategy="inner"))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_default_recipe_is_the_best_measured_pipeline():
    recipe = RecoveryRecipe()
    assert recipe.reconstruct and recipe.bn_batches > 0 and recipe.finetune_epochs == 0
    assert recipe.stages == ("pruned", "reconstructed", "bn_recalibrated")
    assert RecoveryRecipe(reconstruct=False, bn_batches=0, finetune_epochs=2).stages == ("pruned", "finetuned")


@pytest.mark.parametrize("field, value", [
    ("bn_batches", -1), ("bn_data", "test"), ("finetune_epochs", 1.5), ("finetune_lr", 0.0),
    ("weight_decay", -1e-4), ("finetune_subset", 0), ("distill", 1.5), ("distill_temperature", 0.0),
    ("batch_size", 0), ("reconstruct", "yes"), ("ridge", -1.0), ("finetune_max_grad_norm", 0.0),
    ("finetune_max_grad_norm", "5"), ("reconstruct_rows", -1), ("reconstruct_rows", True),
])
def test_invalid_recipes_are_input_errors_naming_the_field(field, value):
    with pytest.raises(InputError, match=field):
        RecoveryRecipe(**{field: value})


def test_the_renamed_distillation_temperature_key_is_refused_with_its_new_name():
    assert RecoveryRecipe.from_dict({"distill_temperature": 2.0}).distill_temperature == 2.0
    with pytest.raises(InputError, match="^recipe key temperature is now distill_temperature$"):
        RecoveryRecipe.from_dict({"temperature": 2.0})


def test_from_dict_round_trips_and_refuses_unknown_keys():
    recipe = RecoveryRecipe(reconstruct=False, finetune_epochs=3, distill=0.5)
    assert RecoveryRecipe.from_dict(recipe.to_dict()) == recipe
    with pytest.raises(InputError, match="bogus.*valid: reconstruct"):
        RecoveryRecipe.from_dict({"bogus": 1})


def test_every_stage_is_scored_in_order_and_the_original_is_untouched(teacher, data):
    before = _state(teacher)
    outcome = _pruned(teacher)
    recipe = RecoveryRecipe(bn_batches=2, bn_data="calibration", finetune_epochs=1, batch_size=32)
    result = recover(teacher, outcome, recipe, data)
    assert tuple(result.scores) == STAGES == tuple(result.seconds)
    assert all(0.0 <= a <= 1.0 for a in result.scores.values())
    assert result.final_score == result.scores["finetuned"]
    assert result.reconstruction and any(r.status == "refit" for r in result.reconstruction.values())
    assert _same(before, _state(teacher))


def test_the_recipes_row_floor_sets_the_rows_each_fit_samples(teacher, data):
    rows = {}
    for floor in (1, 8):
        result = recover(teacher, _pruned(teacher), RecoveryRecipe(bn_batches=0, reconstruct_rows=floor), data)
        rows[floor] = {name: report.rows for name, report in result.reconstruction.items()}
    assert rows[1].keys() == rows[8].keys()
    assert all(rows[8][name] >= rows[1][name] for name in rows[1]) and rows[8] != rows[1]


@pytest.mark.parametrize("config", [PruningConfig(ratio=0.5, strategy="inner"), PruningConfig(ratio=0.3)])
def test_targets_computed_once_serve_every_pruning_exactly(teacher, data, config):
    """One forward's targets for every layer the model could refit give the same refit, bit for
    bit, as each pruning's own; targets drawn with another seed are not used."""
    recipe = RecoveryRecipe(bn_batches=0)
    shared = reconstruction_targets(teacher, _pruned(teacher).space, data.calibration, recipe)
    results = {}
    for name, targets in (("own", None), ("shared", shared),
                          ("other seed", reconstruction_targets(teacher, _pruned(teacher).space, data.calibration,
                                                                dataclasses.replace(recipe, seed=1)))):
        outcome = prune_with_criterion(teacher, EXAMPLE, create_criterion("l1"), config)
        report = recover(teacher, outcome, recipe, dataclasses.replace(data, targets=targets)).reconstruction
        results[name] = (_state(outcome.model), report)
    assert any(r.check_rows > 0 for r in results["own"][1].values())  # rows were sampled, not all taken
    for name in ("shared", "other seed"):
        assert _same(results[name][0], results["own"][0]) and results[name][1] == results["own"][1]


def test_reconstruction_brings_the_pruned_logits_closer_to_the_original(teacher, data):
    x = _images(64, 5)
    with torch.no_grad():
        target = teacher(x)
    plain, rebuilt = _pruned(teacher), _pruned(teacher)
    recover(teacher, plain, RecoveryRecipe(reconstruct=False, bn_batches=0), data)
    recover(teacher, rebuilt, RecoveryRecipe(bn_batches=0), data)
    with torch.no_grad():
        error_plain = (plain.model.eval()(x) - target).pow(2).mean()
        error_rebuilt = (rebuilt.model.eval()(x) - target).pow(2).mean()
    assert error_rebuilt < 0.5 * error_plain


def test_bn_on_calibration_cycles_the_calibration_batches(teacher, data):
    outcome, reference = _pruned(teacher), _pruned(teacher)
    recover(teacher, outcome, RecoveryRecipe(reconstruct=False, bn_batches=6, bn_data="calibration"), data)
    # an equal-weight average over the two batches seen three times each = over the two once
    recalibrate_bn(reference.model, data.calibration, 2)
    cycled, once = _state(outcome.model), _state(reference.model)
    stats = [k for k in cycled if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.allclose(cycled[k], once[k], atol=1e-6) for k in stats)


def test_bn_on_train_reads_training_images(teacher, data):
    on_train, on_calibration = _pruned(teacher), _pruned(teacher)
    recover(teacher, on_train, RecoveryRecipe(reconstruct=False, bn_batches=2, batch_size=32), data)
    recover(teacher, on_calibration, RecoveryRecipe(reconstruct=False, bn_batches=2, bn_data="calibration"), data)
    assert not _same(_state(on_train.model), _state(on_calibration.model))


def test_a_recipe_repeats_bit_for_bit(teacher, data):
    recipe = RecoveryRecipe(bn_batches=2, finetune_epochs=1, finetune_subset=64, batch_size=32, seed=3)
    first, second = _pruned(teacher), _pruned(teacher)
    a = recover(teacher, first, recipe, data)
    b = recover(teacher, second, recipe, data)
    assert a.scores == b.scores
    assert _same(_state(first.model), _state(second.model))


def test_the_fine_tune_clips_its_gradients_to_the_recipes_norm(teacher, data):
    def finetuned(max_norm):
        outcome = _pruned(teacher)
        recipe = RecoveryRecipe(reconstruct=False, bn_batches=0, finetune_epochs=1, finetune_subset=32,
                                batch_size=32, finetune_lr=0.5, weight_decay=0.0, finetune_max_grad_norm=max_norm)
        before = _state(outcome.model)
        recover(teacher, outcome, recipe, data)
        after = _state(outcome.model)
        # one Nesterov step from rest moves the weights by lr * (1 + momentum) * the clipped gradient
        return torch.cat([(after[k] - before[k]).flatten() for k in before if before[k].is_floating_point()
                          and "running" not in k]).norm().item()

    assert finetuned(1e-4) <= 0.5 * 1.9 * 1e-4 * (1 + 1e-3) < finetuned(None)


def test_missing_data_is_refused_before_any_stage_runs(teacher, data):
    outcome = _pruned(teacher)
    before = _state(outcome.model)
    no_train = RecoveryData(calibration=data.calibration)
    with pytest.raises(ValueError, match="training data"):
        recover(teacher, outcome, RecoveryRecipe(finetune_epochs=1), no_train)
    with pytest.raises(ValueError, match="calibration"):
        recover(teacher, outcome, RecoveryRecipe(bn_batches=0), RecoveryData(calibration=[]))
    assert _same(before, _state(outcome.model))


def test_without_a_score_loader_nothing_is_scored(teacher, data):
    result = recover(teacher, _pruned(teacher), RecoveryRecipe(bn_batches=1, bn_data="calibration"),
                     RecoveryData(calibration=data.calibration))
    assert result.scores == {} and result.final_score is None
    assert tuple(result.seconds) == ("pruned", "reconstructed", "bn_recalibrated")


def test_distillation_changes_fine_tuning_and_needs_a_teacher(teacher, data):
    plain, distilled = _pruned(teacher), _pruned(teacher)
    common = dict(reconstruct=False, bn_batches=0, finetune_epochs=1, batch_size=32)
    recover(teacher, plain, RecoveryRecipe(**common), data)
    recover(teacher, distilled, RecoveryRecipe(distill=1.0, **common), data)
    assert not _same(_state(plain.model), _state(distilled.model))
    with pytest.raises(ValueError, match="teacher"):
        train(copy.deepcopy(teacher), data.calibration, TrainConfig(distill=0.5), progress=False)


def test_pure_distillation_leaves_a_copy_of_the_teacher_unchanged(data):
    """distill=1 trains on the teacher's soft targets only: a student that IS the teacher has a
    zero loss gradient, so its weights do not move (weight decay off; no BatchNorm, whose train
    mode would make the two differ)."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    student = copy.deepcopy(teacher)
    loader = [(x, torch.zeros(len(x), dtype=torch.long)) for x, _ in data.calibration]
    train(student, loader, TrainConfig(distill=1.0, lr=0.1, weight_decay=0.0, momentum=0.0), progress=False,
          teacher=teacher)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(teacher.parameters(), student.parameters()))
    cross_entropy = copy.deepcopy(teacher)
    train(cross_entropy, loader, TrainConfig(lr=0.1, weight_decay=0.0, momentum=0.0), progress=False)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(teacher.parameters(), cross_entropy.parameters()))


def test_a_distillation_weight_of_zero_is_plain_cross_entropy(data, teacher):
    """With distill 0 the teacher is never consulted: the weights equal those trained without one."""
    with_teacher, without = copy.deepcopy(teacher), copy.deepcopy(teacher)
    config = TrainConfig(distill=0.0, lr=0.05)
    train(with_teacher, data.calibration, config, progress=False, teacher=teacher)
    train(without, data.calibration, config, progress=False)
    assert _same(_state(with_teacher), _state(without))
    assert not _same(_state(with_teacher), _state(teacher))
