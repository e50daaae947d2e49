"""What the study tests share: tiny baselines (``user_models:tiny_cnn`` weight files, two
"training seeds"), a 16-cell study config over them, and the tracker of a study's parent run."""
from __future__ import annotations

from pathlib import Path

import torch

from orchestrator.experiment import Tracker
from orchestrator.studies import StudyConfig
from orchestrator.studies.run import TRACKING_KIND

TINY_DATA = {"calibration_images": 32, "batch_size": 32, "test_subset": 64}
TINY_RECIPES = {"bn": {"reconstruct": False, "bn_batches": 1, "batch_size": 32},
                "reconstruct": {"reconstruct": True, "bn_batches": 1, "batch_size": 32}}


def tiny_weights(folder: Path, seeds=(0, 1)) -> list[dict]:
    from user_models import tiny_cnn

    entries = []
    for seed in seeds:
        torch.manual_seed(seed)
        path = folder / f"tiny-{seed}.pt"
        torch.save(tiny_cnn(10, 1, width=8).state_dict(), path)
        entries.append({"model": "user_models:tiny_cnn", "weights": str(path), "model_kwargs": {"width": 8},
                        "label": f"tiny{seed}"})
    return entries


def tiny_study(tmp: Path, name: str, **extra) -> dict:
    return {"name": name, "checkpoints": tiny_weights(tmp), "criteria": ["random", "l1"],
            "recipes": {"bn": TINY_RECIPES["bn"]}, "flops_reductions": [0.3, 0.5], "seeds": [0, 1],
            "data": TINY_DATA, "run_dir": str(tmp / name), **extra}


def tracker_of(config: StudyConfig) -> Tracker:
    tracker = Tracker(config.tracking_uri, config.tracking.experiment, config.run_dir, kind=TRACKING_KIND,
                      unique_names=True)
    assert tracker.find_parent() is not None
    return tracker
