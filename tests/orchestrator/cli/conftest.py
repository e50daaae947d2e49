"""Fixtures of the command-line tests: a private dataset cache, fast latency measurements, a
hand-built (untrained) checkpoint that needs no data and the weights of a model of one's own
(``user_models:tiny_cnn`` with width 6)."""
from __future__ import annotations

import functools

import pytest
import torch

from cli_helpers import SMALL_DATA
from user_models import tiny_cnn
from orchestrator.cli import common
from pruning.models import create_model
from pruning.structure import ModelSpec, measure_latency, save_checkpoint


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """A private PRUNESWEEP_CACHE per module (restored afterwards)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNESWEEP_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module", autouse=True)
def fast_latency():
    """Real latency measurements with fewer repetitions, so the modules stay fast on a busy machine."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(common, "measure_latency", functools.partial(measure_latency, warmup=1, repeats=2))
        yield


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """A fresh ResNet-20 checkpoint for Fashion-MNIST, built without any data."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("untrained") / "resnet20.pt"
    save_checkpoint(path, create_model("resnet20", num_classes=10, in_channels=1),
                    ModelSpec("resnet20", 10, 1, (1, 28, 28), meta={"data": SMALL_DATA}))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A state dict of ``tiny_cnn(10, 1, width=6)`` (``--model user_models:tiny_cnn --weights``)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "mine.pt"
    torch.save(tiny_cnn(10, 1, width=6).state_dict(), path)
    return path
