"""``data.image_size`` in sweep and study configs: validated with its key path, refused for a
dataset other than imagefolder, left out of the resolved config while unset, and the size the
baseline's data is loaded at (else the checkpoint's)."""
from __future__ import annotations

import pytest

from image_folders import write_image_folder
from orchestrator.studies import StudyConfig
from orchestrator.experiment import ConfigError, DataSettings, prepare_baseline
from orchestrator.sweeps import SweepConfig
from pruning.structure import ModelSpec, save_checkpoint
from user_models import tiny_cnn

SPACE = {"space": {"name": "uniform"}}
FOLDER_MODEL = {"model": "user_models:tiny_cnn", "model_kwargs": {"width": 4}, "dataset": "imagefolder"}
STUDY = {"criteria": ["random", "l1"], "flops_reductions": [0.5]}


def refused(build, data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        build(data)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.fixture
def folder_checkpoint(tmp_path):
    """A tiny 3-channel, 2-class model recorded at 16 x 16 on an image folder of 4 + 2 images."""
    write_image_folder(tmp_path, {"train": 4, "val": 1}, ("a", "b"), (20, 24))
    path = tmp_path / "tiny.pt"
    data = {"name": "imagefolder", "root": str(tmp_path), "calibration_size": 4, "image_size": 16}
    save_checkpoint(path, tiny_cnn(2, 3, width=4),
                    ModelSpec("user_models:tiny_cnn", 2, 3, (3, 16, 16), meta={"data": data}, kwargs={"width": 4}))
    return path


def test_image_size_is_validated_with_its_key():
    assert DataSettings.from_dict({"image_size": 64}).image_size == 64
    for bad in (0, -8, 1.5, "64", True):
        message = refused(DataSettings.from_dict, {"image_size": bad})
        assert message.startswith("data.image_size: must be")


def test_image_size_applies_only_to_an_imagefolder_model():
    config = SweepConfig.from_dict({**FOLDER_MODEL, **SPACE, "data": {"image_size": 64}})
    assert config.data.image_size == 64
    message = refused(SweepConfig.from_dict, {**FOLDER_MODEL, "dataset": "cifar10", **SPACE, "data": {"image_size": 64}})
    assert message.startswith("data.image_size: applies only to dataset imagefolder, not 'cifar10'")
    study = {**STUDY, "checkpoints": [{**FOLDER_MODEL, "dataset": "mnist"}], "data": {"image_size": 64}}
    assert refused(StudyConfig.from_dict, study).startswith("data.image_size: applies only to dataset imagefolder")
    assert StudyConfig.from_dict({**study, "checkpoints": [FOLDER_MODEL]}).data.image_size == 64


def test_resolved_config_lists_image_size_only_when_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain = SweepConfig.from_dict({"checkpoint": "b.pt", **SPACE})
    assert "image_size" not in plain.to_dict()["data"]
    sized = SweepConfig.from_dict({"checkpoint": "b.pt", **SPACE, "data": {"image_size": 48}})
    assert sized.to_dict()["data"]["image_size"] == 48
    assert SweepConfig.from_dict(sized.to_dict()) == sized  # what --resume reads back


def test_baseline_data_is_loaded_at_the_configured_size(folder_checkpoint):
    recorded = prepare_baseline(str(folder_checkpoint), DataSettings(calibration_images=4, batch_size=4))
    assert recorded.data_config.image_size == 16 and recorded.shape == (3, 16, 16)
    sized = prepare_baseline(str(folder_checkpoint), DataSettings(calibration_images=4, batch_size=4, image_size=12))
    assert sized.data_config.image_size == 12 and sized.shape == (3, 12, 12)
    assert tuple(sized.batches[0][0].shape) == (4, 3, 12, 12)
    assert sized.splits.test[0][0].shape == (3, 12, 12)
    # the spec trials save their checkpoints from records the size they ran at
    assert sized.spec.input_shape == (3, 12, 12) and sized.spec.meta["data"]["image_size"] == 12


def test_a_checkpoint_of_another_dataset_refuses_image_size(tmp_path):
    path = tmp_path / "fmnist.pt"
    save_checkpoint(path, tiny_cnn(10, 1, width=4), ModelSpec("user_models:tiny_cnn", 10, 1, (1, 28, 28),
                                                             meta={"data": {"name": "fashion-mnist"}},
                                                             kwargs={"width": 4}))
    message = refused(lambda data: prepare_baseline(str(path), DataSettings(**data)), {"image_size": 32})
    assert message.startswith("data.image_size: applies only to dataset imagefolder, not 'fashion-mnist'")
