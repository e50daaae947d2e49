"""What a sweep's parent run records about where it ran and on what: the code's git commit,
system tags and the dataset as an MLflow run input (logged by
:class:`~orchestrator.experiment.tracking.Tracker`)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["git_commit", "system_tags", "dataset_entity"]


def git_commit(path: str | os.PathLike | None = None) -> str:
    """``git rev-parse HEAD`` of the repository holding ``path`` (this package), or "unknown"."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else "unknown"


def system_tags(gpus_per_trial: float = 0) -> dict[str, str]:
    """The parent run's system tags: torch, Ray, MLflow, CUDA (``torch.version.cuda`` or "none")
    and Python versions, the host platform and the device trials run on ("cuda" when
    ``gpus_per_trial`` > 0, else "cpu")."""
    import platform

    import mlflow
    import ray
    import torch

    return {
        "prunesweep.torch": torch.__version__, "prunesweep.ray": ray.__version__,
        "prunesweep.mlflow": mlflow.__version__, "prunesweep.cuda": torch.version.cuda or "none",
        "prunesweep.device": "cuda" if gpus_per_trial > 0 else "cpu",
        "prunesweep.python": platform.python_version(), "prunesweep.platform": platform.platform(),
    }


def dataset_entity(data_config: Any, splits: Any):
    """The MLflow dataset (``mlflow.entities.Dataset``) of a sweep's data: ``splits.name``; a digest
    (16 hex digits of SHA-256) of the data config (its root aside) and the train / calibration indices and test size;
    the split sizes, classes and input shape as its profile; its root (or the name) as source."""
    import dataclasses
    import hashlib
    import json

    import torch
    from mlflow.entities import Dataset

    config = dataclasses.asdict(data_config) if dataclasses.is_dataclass(data_config) else dict(data_config)
    sizes = {"train": len(splits.train), "calibration": len(splits.calibration), "test": len(splits.test)}
    content = {k: v for k, v in config.items() if k not in ("root", "download")}  # not where the files are
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode())
    for indices in (splits.train_indices, splits.calibration_indices):
        digest.update(indices.to(dtype=torch.int64).numpy().tobytes())
    digest.update(str(sizes["test"]).encode())
    profile = {**sizes, "num_classes": int(splits.num_classes),
               "input": [int(splits.in_channels), *map(int, splits.input_size)], "config": config}
    root = config.get("root")
    source = json.dumps({"uri": str(Path(root).absolute()) if root else splits.name})
    return Dataset(name=splits.name, digest=digest.hexdigest()[:16], source_type="local", source=source,
                   profile=json.dumps(profile, default=str))
