"""Training loops: bit-identical reruns, learning on a tiny synthetic task, both schedules,
evaluate leaving modes alone, adaptive-BN recalibration recovering from corrupted statistics
without touching weights, and one-line config errors."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from tiny_models import TinyCNN, TinyResNet
from torch import nn
from torch.utils.data import TensorDataset

from pruning.errors import InputError
from pruning.data import make_loader
from pruning.training import EvalResult, TrainConfig, evaluate, recalibrate_bn, seed_everything, train


def _synthetic(count: int, seed: int, classes: int = 4) -> TensorDataset:
    """Each class is a fixed random 8x8 pattern plus noise: learnable in a few dozen steps."""
    templates = torch.randn(classes, 1, 8, 8, generator=torch.Generator().manual_seed(123))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (count,), generator=generator)
    images = templates[labels] + 0.5 * torch.randn(count, 1, 8, 8, generator=generator)
    return TensorDataset(images, labels)


@pytest.fixture(scope="module")
def task() -> tuple[TensorDataset, TensorDataset]:
    return _synthetic(512, seed=0), _synthetic(256, seed=1)


@pytest.fixture(scope="module")
def trained(task) -> nn.Module:
    torch.manual_seed(0)
    model = TinyCNN(num_classes=4)
    train(model, make_loader(task[0], 32, shuffle=True), TrainConfig(epochs=3, lr=0.05), progress=False)
    return model.eval()


def test_training_is_bit_identical_across_runs(task):
    torch.manual_seed(0)
    initial = TinyResNet(num_classes=4)

    def run(schedule: str) -> tuple[nn.Module, list[dict]]:
        model = copy.deepcopy(initial)
        config = TrainConfig(epochs=2, max_batches_per_epoch=3, schedule=schedule, seed=7)
        history = train(model, make_loader(task[0], 16, shuffle=True, seed=7), config, progress=False)
        return model, history

    for schedule in ("cosine", "onecycle"):
        (first, first_history), (second, second_history) = run(schedule), run(schedule)
        assert first_history == second_history
        for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
            assert torch.equal(a, b), name
    assert not torch.equal(first.fc.weight, initial.fc.weight)


def test_training_learns_and_reports_history(task, trained):
    train_set, test_set = task
    torch.manual_seed(0)
    model = TinyCNN(num_classes=4)
    test_loader = make_loader(test_set, 128, shuffle=False)
    before = evaluate(model, test_loader)
    history = train(
        model, make_loader(train_set, 32, shuffle=True), TrainConfig(epochs=3, lr=0.05),
        progress=False, eval_loader=test_loader,
    )
    assert [record["epoch"] for record in history] == [1, 2, 3]
    assert set(history[0]) == {"epoch", "loss", "accuracy", "lr", "eval_loss", "eval_accuracy"}
    assert history[-1]["loss"] < history[0]["loss"] < math.log(4) + 0.5
    assert history[-1]["eval_loss"] < before.loss
    assert history[-1]["eval_accuracy"] > 0.9 > before.score
    # cosine: decreasing, ending near 0 (the last step's lr is lr * (1 - cos(pi / steps)) / 2)
    assert history[0]["lr"] > history[1]["lr"] > history[2]["lr"] > 0
    assert history[2]["lr"] < 1e-3
    assert evaluate(trained, test_loader).score > 0.9


def test_onecycle_warms_up_then_anneals(task):
    model = TinyCNN(num_classes=4)
    # one step per epoch, so the history shows every step's lr; the peak is at 30% of the steps
    config = TrainConfig(epochs=10, lr=0.05, schedule="onecycle", max_batches_per_epoch=1)
    history = train(model, make_loader(task[0], 32, shuffle=True), config, progress=False)
    lrs = [record["lr"] for record in history]
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(0.05)
    assert all(before > after for before, after in zip(lrs[2:], lrs[3:]))


def test_zero_epochs_change_nothing(task):
    model = TinyCNN(num_classes=4)
    state = copy.deepcopy(model.state_dict())
    assert train(model, make_loader(task[0], 32, shuffle=True), TrainConfig(epochs=0), progress=False) == []
    assert all(torch.equal(state[name], value) for name, value in model.state_dict().items())


@pytest.mark.parametrize("max_grad_norm", [None, 1e-3])
def test_a_step_moves_the_weights_by_at_most_lr_times_the_gradient_norm_bound(task, max_grad_norm):
    torch.manual_seed(0)
    model = TinyCNN(num_classes=4)
    before = [p.detach().clone() for p in model.parameters()]
    config = TrainConfig(max_batches_per_epoch=1, lr=0.5, momentum=0.0, weight_decay=0.0, max_grad_norm=max_grad_norm)
    train(model, make_loader(task[0], 32, shuffle=True), config, progress=False)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm().item()
    if max_grad_norm is None:
        assert step > 0.5 * 1e-2  # an ordinary first step is far above the bound below
    else:
        assert 0 < step <= 0.5 * max_grad_norm * (1 + 1e-4)


def test_train_keeps_modes_and_stops_on_divergence(task):
    model = TinyCNN(num_classes=4).eval()
    train(model, make_loader(task[0], 32, shuffle=True), TrainConfig(max_batches_per_epoch=1), progress=False)
    assert not any(module.training for module in model.modules())
    nan_batch = [(torch.full((4, 1, 8, 8), float("nan")), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(FloatingPointError, match="epoch 1, step 1"):
        train(model, nan_batch, TrainConfig(), progress=False)


def test_evaluate_restores_modes(trained, task):
    loader = make_loader(task[1], 64, shuffle=False)
    model = copy.deepcopy(trained)
    reference = evaluate(model, loader)
    assert isinstance(reference, EvalResult) and reference.samples == 256
    assert 0 <= reference.score <= 1 and reference.loss > 0

    model.train()
    model.features[1].eval()  # mixed modes survive too
    modes = [module.training for module in model.modules()]
    state = copy.deepcopy(model.state_dict())
    result = evaluate(model, loader)
    assert [module.training for module in model.modules()] == modes
    # evaluated in eval mode: same numbers, running statistics untouched
    assert result == reference
    assert all(torch.equal(state[name], value) for name, value in model.state_dict().items())
    assert evaluate(model, loader, max_batches=1).samples == 64


def _first_bn_reference(model: TinyCNN, batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """What adaptive BN must give the first BatchNorm: the average over batches of each batch's
    channel mean and unbiased channel variance of the first conv's output."""
    with torch.no_grad():
        outputs = [model.features[0](batch) for batch in batches]
    means = torch.stack([out.mean((0, 2, 3)) for out in outputs]).mean(0)
    variances = torch.stack([out.var((0, 2, 3), unbiased=True) for out in outputs]).mean(0)
    return means, variances


def test_recalibrate_bn_recovers_corrupted_statistics(trained, task):
    train_set, test_set = task
    test_loader = make_loader(test_set, 128, shuffle=False)
    clean = evaluate(trained, test_loader)

    model = copy.deepcopy(trained)
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    for norm in norms:
        norm.running_mean += 3.0
        norm.running_var *= 20.0
    norms[1].momentum = 0.3  # a non-default momentum must come back too
    assert evaluate(model, test_loader).score < clean.score - 0.2

    parameters = copy.deepcopy(dict(model.named_parameters()))
    calibration_loader = make_loader(train_set, 64, shuffle=False)
    assert recalibrate_bn(model, calibration_loader, num_batches=4) is model

    batches = [images for images, _ in list(calibration_loader)[:4]]
    expected_mean, expected_var = _first_bn_reference(model, batches)
    torch.testing.assert_close(norms[0].running_mean, expected_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norms[0].running_var, expected_var, rtol=1e-4, atol=1e-5)
    assert all(norm.num_batches_tracked.item() == 4 for norm in norms)
    assert [norm.momentum for norm in norms] == [0.1, 0.3, 0.1]
    assert all(torch.equal(parameters[name], value) for name, value in model.named_parameters())
    assert not any(module.training for module in model.modules())
    recovered = evaluate(model, test_loader)
    assert recovered.score > clean.score - 0.05
    assert recovered.loss < clean.loss * 1.5


def test_recalibrate_bn_keeps_other_modules_in_their_mode():
    # dropout must stay off while statistics are gathered, or it would inflate the variances
    model = nn.Sequential(nn.Dropout(0.9), nn.BatchNorm1d(3)).train()
    inputs = torch.randn(64, 3, generator=torch.Generator().manual_seed(0)) * 2 + 1
    recalibrate_bn(model, [(inputs, torch.zeros(64))], num_batches=5)
    torch.testing.assert_close(model[1].running_mean, inputs.mean(0))
    torch.testing.assert_close(model[1].running_var, inputs.var(0))
    assert model.training and model[0].training and model[1].training


def test_recalibrate_bn_slices_a_batch_too_large_for_one_cpu_pass():
    """64 images of 224 px run as two passes of 32 (the CPU's pixel bound): the same mean, and
    the variance as the average of two unbiased estimates of it."""
    calls = []
    norm = nn.BatchNorm2d(3)
    norm.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    inputs = torch.randn(64, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 + 1
    recalibrate_bn(norm, [(inputs, torch.zeros(64))], num_batches=1)
    assert calls == [32, 32]
    torch.testing.assert_close(norm.running_mean, inputs.mean((0, 2, 3)))
    torch.testing.assert_close(norm.running_var, inputs.var((0, 2, 3)), rtol=1e-3, atol=0)


def test_recalibrate_bn_refuses_empty_input():
    with pytest.raises(InputError, match="num_batches must be > 0"):
        recalibrate_bn(nn.BatchNorm1d(2), [], num_batches=0)
    with pytest.raises(InputError, match="got no batches"):
        recalibrate_bn(nn.BatchNorm1d(2), [], num_batches=3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": -1}, "epochs must be an integer >= 0, got -1"),
        ({"epochs": 1.5}, "epochs must be an integer >= 0, got 1.5"),
        ({"lr": 0}, "lr must be > 0, got 0"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
        ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
        ({"schedule": "step"}, "schedule 'step' is unknown; valid: cosine, onecycle"),
        ({"batch_size": 0}, "batch_size must be > 0, got 0"),
        ({"max_batches_per_epoch": 0}, "max_batches_per_epoch must be > 0 or None, got 0"),
        ({"max_grad_norm": 0.0}, "max_grad_norm must be > 0 or None, got 0.0"),
    ],
)
def test_train_config_validation(options: dict, message: str):
    with pytest.raises(InputError, match=message):
        TrainConfig(**options)


def test_seed_everything_repeats_draws():
    seed_everything(5)
    first = torch.rand(3)
    seed_everything(5)
    assert torch.equal(first, torch.rand(3))
