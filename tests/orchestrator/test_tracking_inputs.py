"""What a sweep's MLflow runs say about their data and their system: the dataset input (name,
digest, split sizes) of the parent and trial runs, and the parent's system tags. Tracker only (no
Ray, no sweep), on a SQLite store in tmp_path, with tiny in-memory splits."""
from __future__ import annotations

import json
import platform

import pytest
import torch
from torch.utils.data import TensorDataset

from orchestrator.experiment.run_info import dataset_entity, system_tags
from orchestrator.experiment.tracking import DATASET_CONTEXT, Tracker, TrialRecord
from pruning.data import DataConfig, DataSplits


def tiny_splits(calibration: tuple[int, ...] = (1, 4, 7)) -> DataSplits:
    def images(n: int) -> TensorDataset:
        return TensorDataset(torch.zeros(n, 1, 8, 8), torch.zeros(n, dtype=torch.long))

    held_out = torch.tensor(calibration)
    train = torch.tensor([i for i in range(10) if i not in calibration])
    return DataSplits(train=images(len(train)), calibration=images(len(held_out)), test=images(5), num_classes=10,
                      in_channels=1, input_size=(8, 8), name="fashion-mnist", train_indices=train,
                      calibration_indices=held_out)


def test_dataset_digest_is_stable_and_follows_the_split_not_the_root():
    config = DataConfig(calibration_size=3, root="/data/a")
    first = dataset_entity(config, tiny_splits())
    assert first.digest == dataset_entity(config, tiny_splits()).digest and len(first.digest) == 16
    assert dataset_entity(DataConfig(calibration_size=3, root="/data/b"), tiny_splits()).digest == first.digest
    assert dataset_entity(config, tiny_splits((2, 4, 7))).digest != first.digest  # other held-out images
    assert dataset_entity(DataConfig(calibration_size=3, seed=1, root="/data/a"), tiny_splits()).digest != first.digest
    assert json.loads(first.source) == {"uri": "/data/a"}


def test_parent_and_trial_runs_have_the_dataset_input_and_the_parent_the_system_tags(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db", "prunesweep", tmp_path / "run")
    parent, _ = tracker.start_parent("t", tags=system_tags(gpus_per_trial=0))
    dataset = dataset_entity(DataConfig(calibration_size=3), tiny_splits())
    tracker.log_dataset(parent, dataset)
    tracker.log_dataset(parent, dataset)  # a resume logs it again: still one input
    run = tracker.client.get_run(parent)
    [logged] = run.inputs.dataset_inputs
    assert logged.dataset.name == "fashion-mnist" and logged.dataset.digest == dataset.digest
    assert {t.key: t.value for t in logged.tags} == {"mlflow.data.context": DATASET_CONTEXT}
    profile = json.loads(logged.dataset.profile)
    assert (profile["train"], profile["calibration"], profile["test"]) == (7, 3, 5)
    assert profile["num_classes"] == 10 and profile["input"] == [1, 8, 8]
    assert profile["config"]["calibration_size"] == 3

    tags = run.data.tags
    import mlflow
    import ray

    assert tags["prunesweep.torch"] == torch.__version__ and tags["prunesweep.ray"] == ray.__version__
    assert tags["prunesweep.mlflow"] == mlflow.__version__
    assert tags["prunesweep.cuda"] == (torch.version.cuda or "none")
    assert tags["prunesweep.python"] == platform.python_version() and tags["prunesweep.platform"]
    assert tags["prunesweep.device"] == "cpu"

    # every trial run gets the parent's dataset input, once, also when it is logged again
    run_id = tracker.log_trial(TrialRecord("abc", "trial-000", "FAILED", error="ValueError: boom"))
    tracker.log_trial(TrialRecord("abc", "trial-000", "FINISHED", metrics={"accuracy": 0.5}))
    other = Tracker(tracker.uri, "prunesweep", tmp_path / "run")  # the Tune callback's own tracker
    other.find_parent()
    second = other.log_trial(TrialRecord("def", "trial-001", "FINISHED", metrics={"accuracy": 0.4}))
    for trial in (run_id, second):
        [trial_input] = tracker.client.get_run(trial).inputs.dataset_inputs
        assert (trial_input.dataset.name, trial_input.dataset.digest) == ("fashion-mnist", dataset.digest)


@pytest.mark.parametrize("gpus, device", [(0, "cpu"), (0.5, "cuda"), (1, "cuda")])
def test_device_tag_follows_gpus_per_trial(gpus, device):
    assert system_tags(gpus)["prunesweep.device"] == device


def test_trial_runs_of_a_parent_without_dataset_have_no_input(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db", "prunesweep", tmp_path / "run", kind="compare")
    tracker.start_parent("grid")
    run_id = tracker.log_trial(TrialRecord("abc", "l1-0.5-0", "FINISHED", metrics={"accuracy": 0.5}))
    assert not tracker.client.get_run(run_id).inputs.dataset_inputs
