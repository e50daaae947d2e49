"""`export_front` (what `prunesweep pareto --export DIR` writes) on hand-made front rows: one
checked ONNX file per trial, and the whole front or nothing of it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from orchestrator.sweeps.results import export_front
from orchestrator.sweeps.trials import MODEL_FILE
from pruning.errors import InputError
from pruning.export import INPUT_NAME, OUTPUT_NAME, onnx_session
from pruning.models import create_model
from pruning.structure import ModelSpec, load_checkpoint, save_checkpoint


def trial_row(folder, trial: str, model: str = "user_models:tiny_cnn", width: int = 4) -> dict:
    """A front row whose checkpoint is a Tune checkpoint folder holding ``pruned.pt``."""
    checkpoint = folder / trial / "checkpoint_000000"
    checkpoint.mkdir(parents=True)
    kwargs = {"width": width} if model.startswith("user_models") else {}
    torch.manual_seed(len(trial))
    save_checkpoint(checkpoint / MODEL_FILE, create_model(model, num_classes=10, in_channels=1, **kwargs),
                    ModelSpec(model, 10, 1, (1, 28, 28), kwargs=kwargs))
    return {"trial": trial, "checkpoint": str(checkpoint), "run_id": "r" + trial}


def test_each_front_model_is_a_checked_onnx_file_named_by_its_trial(tmp_path):
    rows = [trial_row(tmp_path, "trial-003", width=4), trial_row(tmp_path, "trial-012", width=6)]
    out = tmp_path / "onnx"
    exported = export_front(rows, out)
    assert [e["trial"] for e in exported] == ["trial-003", "trial-012"]
    assert sorted(p.name for p in out.iterdir()) == ["trial-003.onnx", "trial-012.onnx"]
    for row, entry in zip(rows, exported):
        assert entry["file"] == str(out / f"{row['trial']}.onnx") and entry["check"]["passed"]
        model, _ = load_checkpoint(f"{row['checkpoint']}/{MODEL_FILE}")
        x = torch.randn(2, 1, 28, 28)
        with torch.no_grad():
            expected = model(x).numpy()
        got = onnx_session(entry["file"]).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_a_trial_without_checkpoint_is_refused_before_anything_is_written(tmp_path):
    rows = [trial_row(tmp_path, "trial-000"), {"trial": "trial-001", "checkpoint": None}]
    with pytest.raises(InputError, match="trial trial-001 has no pruned checkpoint to export"):
        export_front(rows, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_a_model_that_fails_to_export_removes_the_files_already_written(tmp_path):
    rows = [trial_row(tmp_path, "trial-000"), trial_row(tmp_path, "trial-001", model="export_models:zeta_cnn")]
    with pytest.raises(InputError, match="trial trial-001 cannot be exported to ONNX"):
        export_front(rows, tmp_path / "onnx")
    assert list((tmp_path / "onnx").iterdir()) == []


def test_an_export_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(InputError, match="is a file"):
        export_front([trial_row(tmp_path, "trial-000")], tmp_path / "f")
