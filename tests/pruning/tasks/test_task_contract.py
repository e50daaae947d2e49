"""The task contract (pruning/tasks/_base.py), checked for every registered task and one task from
an import path; the segmentation canvases; import-path errors."""
from __future__ import annotations

import pytest
import torch

from pruning.data import DataConfig, make_loader
from pruning.errors import InputError
from pruning.models import create_model
from pruning.tasks import Metric, TaskSpec, create_task, list_tasks
from pruning.tasks._base import TaskSourceError

TASKS = [*list_tasks(), "user_tasks:multilabel"]
#: a model each task's outputs fit
MODELS = {"classification": "user_models:tiny_cnn", "segmentation": "unet-small", "user_tasks:multilabel": "user_models:tiny_cnn"}
SMALL = DataConfig(calibration_size=64, train_subset=96, test_subset=48)


@pytest.fixture(scope="module")
def data(fashion_mnist):
    return {name: create_task(name).load_data(SMALL) for name in TASKS}


def _batch(data, name, split="calibration", size=12):
    inputs, targets = next(iter(make_loader(getattr(data[name], split), size, shuffle=False)))
    return inputs, targets


def _model(data, name):
    torch.manual_seed(0)
    splits = data[name]
    return create_model(MODELS[name], num_classes=splits.num_classes, in_channels=splits.in_channels).eval()


def test_registry_lists_the_built_in_tasks():
    assert {"classification", "segmentation"} <= set(list_tasks())


@pytest.mark.parametrize("name", TASKS)
def test_metrics_are_named_once_with_a_primary_one(name):
    task = create_task(name)
    names = [m.name for m in task.metrics]
    assert task.primary in names and len(set(names)) == len(names)
    assert all(isinstance(m, Metric) and m.direction in ("max", "min") for m in task.metrics)
    assert task.game_values and all(v in task.game_values for v in task.reference_values)


@pytest.mark.parametrize("name", TASKS)
def test_data_yields_inputs_and_targets_the_model_accepts(data, name):
    task, splits = create_task(name), data[name]
    assert len(splits.train) and len(splits.calibration) and len(splits.test)
    inputs, targets = _batch(data, name)
    assert inputs.shape[1:] == (splits.in_channels, *splits.input_size) and len(targets) == len(inputs)
    model = _model(data, name)
    example = task.example_inputs((splits.in_channels, *splits.input_size))
    expected = task.output_shape(splits)
    assert expected is None or model(example).shape == (example.shape[0], *expected)
    if task.class_labels:
        assert targets.dim() == 1 and targets.dtype == torch.long


@pytest.mark.parametrize("name", TASKS)
def test_loss_is_a_differentiable_mean_and_metrics_are_all_reported(data, name):
    task, model = create_task(name), _model(data, name)
    inputs, targets = _batch(data, name)
    outputs = model(inputs)
    loss = task.loss(outputs, targets)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    per_input = task.sample_loss(outputs.detach(), targets)
    assert per_input.shape == (len(inputs),)
    assert per_input.mean().item() == pytest.approx(loss.item(), rel=1e-5)
    assert task.summed_loss(outputs.detach(), targets).item() == pytest.approx(per_input.sum().item(), rel=1e-5)
    meter = task.metric_meter()
    meter.update(outputs.detach()[:6], targets[:6])
    meter.update(outputs.detach()[6:], targets[6:])
    assert set(meter.compute()) == {m.name for m in task.metrics}


@pytest.mark.parametrize("name", TASKS)
def test_game_values_rank_coalitions_and_distillation_vanishes_at_agreement(data, name):
    task, model = create_task(name), _model(data, name)
    inputs, targets = _batch(data, name, size=4)
    with torch.no_grad():
        full = model(inputs)
    outputs = torch.stack([full, torch.zeros_like(full), full + torch.randn_like(full)])
    reference = task.game_reference(full)
    for value in task.game_values:
        worth = task.game_value(outputs, targets, value, reference if value in task.reference_values else None)
        assert worth.shape == (3,) and worth.dtype == torch.float64 and torch.isfinite(worth).all()
    with pytest.raises(InputError, match="no game value 'nope'"):
        task.game_value(outputs, targets, "nope")
    assert task.distillation_loss(full, full, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert task.distillation_loss(full, full + torch.randn_like(full), 4.0).item() > 0


def test_segmentation_canvases_are_deterministic_label_maps(data):
    splits = data["segmentation"]
    assert splits.num_classes == 11 and splits.input_size == (56, 56) and len(splits.test) == 48 // 3
    canvas, labels = splits.test[0]
    again = create_task("segmentation").load_data(SMALL).test[0]
    assert torch.equal(canvas, again[0]) and torch.equal(labels, again[1])
    assert labels.shape == (56, 56) and labels.dtype == torch.long
    present = labels.unique()
    assert present[0] == 0 and 1 < len(present) <= 4  # background and up to 3 items' classes
    assert (canvas[0][labels == 0] < canvas[0][labels > 0].min()).float().mean() > 0.95


def test_segmentation_metrics_of_a_perfect_and_a_background_prediction():
    task = create_task("segmentation")
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 2:5, 2:5] = 3
    perfect = torch.nn.functional.one_hot(labels, 11).permute(0, 3, 1, 2).float()
    meter = task.metric_meter()
    meter.update(perfect, labels)
    assert meter.compute() == {"miou": 1.0, "pixel_accuracy": 1.0}
    meter = task.metric_meter()
    meter.update(torch.nn.functional.one_hot(torch.zeros_like(labels), 11).permute(0, 3, 1, 2).float(), labels)
    result = meter.compute()
    assert result["pixel_accuracy"] == pytest.approx(1 - 9 / 64)
    assert result["miou"] == pytest.approx((1 - 9 / 64) / 2)  # background's IoU and class 3's 0


@pytest.mark.parametrize(("name", "message"), [
    ("nope", "unknown task 'nope'; valid: classification, segmentation"),
    ("no_such_module:task", "cannot import 'no_such_module'"),
    ("user_tasks:missing", "has no attribute 'missing'"),
    ("user_tasks:not_a_task", "returned 'int', not a pruning.tasks.Task"),
    ("os:getcwd", "standard-library module"),
])
def test_bad_task_names_fail_in_one_line(name, message):
    with pytest.raises(InputError, match=message) as raised:
        TaskSpec(name).build()
    assert "\n" not in str(raised.value)


def test_unknown_task_options_are_refused():
    with pytest.raises(TypeError, match="unknown option"):
        create_task("segmentation", colour=True)
    with pytest.raises(TaskSourceError, match="could not be built"):
        create_task("user_tasks:multilabel", colour=True)
    with pytest.raises(InputError, match="canvas_size"):
        create_task("segmentation", canvas_size=0)


def test_a_spec_records_and_rebuilds_its_task():
    spec = TaskSpec("segmentation", {"items": 2})
    assert TaskSpec.from_record(spec.to_dict()) == spec
    assert TaskSpec.from_record(None) == TaskSpec() and TaskSpec().name == "classification"
    assert spec.build().items == 2 and create_task("user_tasks:multilabel").name == "user_tasks:multilabel"
