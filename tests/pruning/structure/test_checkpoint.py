"""Checkpoints of (pruned) models: exact round trips, one-line errors, atomic writes."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pruning.structure import (
    FORMAT,
    CheckpointError,
    ModelSpec,
    layer_widths,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from pruning.criteria import create_criterion
from pruning.models import create_model
from pruning.pipeline import prune_with_criterion
from pruning.planning import PruningConfig
from tiny_models import with_random_bn_stats

SPEC = ModelSpec("resnet20", 10, 1, (1, 28, 28), meta={"criterion": "l1", "flops_reduction": 0.5})
_PRUNED: dict = {}


def pruned_resnet20():
    """A resnet20 (1x28x28) pruned by 50% of its MACs, with non-trivial BN statistics; cached."""
    if not _PRUNED:
        torch.manual_seed(0)
        model = with_random_bn_stats(create_model("resnet20", in_channels=1), 0)
        x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        outcome = prune_with_criterion(model, x, create_criterion("l1"), PruningConfig(flops_reduction=0.5))
        _PRUNED.update(model=outcome.model.eval(), x=x, original=model)
    return _PRUNED["model"], _PRUNED["x"]


def assert_one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(err.value)
    assert "\n" not in message and message.strip() == message and message
    for part in parts:
        assert part in message, message


def test_pruned_resnet20_round_trip(tmp_path):
    model, x = pruned_resnet20()
    path = tmp_path / "ckpt" / "r20.pt"
    save_checkpoint(path, model, SPEC)
    loaded, spec = load_checkpoint(path)
    assert type(loaded) is type(model)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert layer_widths(loaded) == layer_widths(model)
    assert layer_widths(model) != layer_widths(_PRUNED["original"])  # really pruned
    assert (spec.name, spec.num_classes, spec.in_channels, spec.input_shape) == ("resnet20", 10, 1, (1, 28, 28))
    assert spec.meta == SPEC.meta
    assert spec.widths == layer_widths(model)  # refreshed from the model, not taken from SPEC
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # a fresh instance of the registered model may be passed in as well
    again, _ = load_checkpoint(path, create_model("resnet20", in_channels=1))
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert [p.name for p in path.parent.iterdir()] == ["r20.pt"]


def test_read_checkpoint_gives_spec_and_weights(tmp_path):
    model, _ = pruned_resnet20()
    save_checkpoint(tmp_path / "r20.pt", model, SPEC)
    spec, state = read_checkpoint(tmp_path / "r20.pt")
    assert spec.widths["layer1.0.conv1"] == {"in": model.layer1[0].conv1.in_channels,
                                              "out": model.layer1[0].conv1.out_channels, "groups": 1}
    assert spec.widths["fc"] == {"in": model.fc.in_features, "out": 10}
    assert spec.widths["bn1"] == {"out": model.bn1.num_features}
    assert state.keys() == model.state_dict().keys()
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_user_module_round_trip_needs_a_fresh_instance(tmp_path, tiny_resnet, example_input):
    model, TinyResNet = tiny_resnet, type(tiny_resnet)
    outcome = prune_with_criterion(model, example_input, create_criterion("l1"), PruningConfig(ratio=0.5))
    pruned = outcome.model.eval()
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, pruned, ModelSpec(None, 10, 1, (1, 28, 28)))
    loaded, spec = load_checkpoint(path, TinyResNet())
    assert spec.name is None
    with torch.no_grad():
        assert torch.equal(loaded(example_input), pruned(example_input))
    assert layer_widths(loaded) == layer_widths(pruned)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert_one_line(err, "custom model", "model")


def test_depthwise_widths_round_trip(tmp_path, tiny_cnn, example_input):
    model, TinyCNN = tiny_cnn, type(tiny_cnn)
    pruned = prune_with_criterion(model, example_input, create_criterion("l2"), PruningConfig(ratio=0.5)).model
    save_checkpoint(tmp_path / "cnn.pt", pruned, ModelSpec(None, 10, 1, (1, 28, 28)))
    loaded, _ = load_checkpoint(tmp_path / "cnn.pt", TinyCNN())
    assert loaded.features[4].groups == loaded.features[4].in_channels == 4
    assert loaded.hidden.in_features == pruned.hidden.in_features
    with torch.no_grad():
        assert torch.equal(loaded(example_input), pruned.eval()(example_input))


# ---------------------------------------------------------------------------------------------
# errors


def _valid_file(tmp_path):
    model, _ = pruned_resnet20()
    path = tmp_path / "good.pt"
    save_checkpoint(path, model, SPEC)
    return path


def test_corrupt_files_raise_one_line_errors(tmp_path):
    good = _valid_file(tmp_path).read_bytes()
    cases = {
        "truncated.pt": good[: len(good) // 2],
        "garbage.pt": b"hello, world\n" * 20,
        "empty.pt": b"",
        "flipped.pt": good[:100] + bytes(b ^ 0xFF for b in good[100:400]) + good[400:],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(tmp_path / name)
        assert_one_line(err, name)


@pytest.mark.parametrize(
    "payload",
    [
        {"state_dict": {}},  # no spec
        {"spec": "{broken json", "state_dict": {}},
        {"spec": json.dumps({"format": FORMAT}), "state_dict": {}},  # spec without fields
        [1, 2, 3],
        torch.zeros(3),
    ],
    ids=["no-spec", "bad-json", "incomplete-spec", "list", "tensor"],
)
def test_non_checkpoint_torch_files_raise(tmp_path, payload):
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert_one_line(err, "other.pt", "not a prunesweep checkpoint")


def test_other_files_raise(tmp_path):
    text = tmp_path / "notes.json"
    text.write_text(json.dumps({"spec": "x"}))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(text)
    assert_one_line(err, "notes.json", "not a prunesweep checkpoint")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "missing.pt")
    assert_one_line(err, "missing.pt", "does not exist")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path)  # a directory
    assert_one_line(err, "does not exist")
    path = tmp_path / "future.pt"
    torch.save({"spec": json.dumps({"format": "prunesweep-checkpoint/99"}), "state_dict": {}}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert_one_line(err, "prunesweep-checkpoint/99", FORMAT)


@pytest.mark.parametrize("other", ["resnet56", "vgg16", "tiny_resnet", "tiny_cnn"])
def test_loading_into_a_different_architecture_raises(tmp_path, request, other):
    path = _valid_file(tmp_path)
    if other.startswith("tiny"):
        model = request.getfixturevalue(other)
    else:
        model = create_model(other, in_channels=1)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, model)
    assert_one_line(err)


def test_registered_name_that_no_longer_fits_raises(tmp_path):
    """A checkpoint whose recorded name builds a model with other layers (e.g. edited spec)."""
    model, _ = pruned_resnet20()
    path = tmp_path / "mislabelled.pt"
    save_checkpoint(path, model, ModelSpec("resnet56", 10, 1, (1, 28, 28)))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert_one_line(err, "resnet56")


# ---------------------------------------------------------------------------------------------
# atomic writes


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    model, x = pruned_resnet20()
    path = tmp_path / "r20.pt"

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, SPEC)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    # overwriting: a failed save keeps the previous checkpoint intact
    save_checkpoint(path, model, SPEC)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, nn.Linear(2, 2), SPEC)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["r20.pt"]
    assert path.read_bytes() == before
    loaded, _ = load_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_unserialisable_meta_fails_before_writing(tmp_path):
    model, _ = pruned_resnet20()
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "x.pt", model, ModelSpec("resnet20", 10, 1, (1, 28, 28), meta={"f": object()}))
    assert list(tmp_path.iterdir()) == []
