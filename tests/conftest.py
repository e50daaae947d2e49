"""Fixtures shared by the whole suite (tiny models from ``tiny_models``, inputs, batches)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tiny_models import TinyCNN, TinyResNet, with_random_bn_stats

# One intra-op thread: the suite then runs at the same speed on a busy 2-core machine as on an
# idle one (oversubscribed OpenMP threads slow small ops down by orders of magnitude), and
# results do not depend on the thread count.
torch.set_num_threads(1)


@pytest.fixture
def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return with_random_bn_stats(TinyResNet(), 0)


@pytest.fixture
def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return with_random_bn_stats(TinyCNN(), 1)


@pytest.fixture
def example_input() -> torch.Tensor:
    return torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def calibration_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]


# --- real data and one trained baseline, shared by every module that needs them ----------------

_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _have_fashion_mnist() -> bool:
    from pathlib import Path

    from pruning.data import FASHION_MNIST_ROOT

    root = Path(FASHION_MNIST_ROOT)
    return all((root / n).is_file() or (root / f"{n}.gz").is_file() for n in _IDX)


HAVE_FASHION_MNIST = _have_fashion_mnist()


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "fashion_mnist: needs the real Fashion-MNIST files (skipped without them)")


def pytest_collection_modifyitems(config, items) -> None:
    """``@pytest.mark.fashion_mnist`` tests are skipped, with the install hint, where the data is missing."""
    if HAVE_FASHION_MNIST:
        return
    from pruning.data import FASHION_MNIST_ROOT

    skip = pytest.mark.skip(
        reason=f"Fashion-MNIST is not installed in {FASHION_MNIST_ROOT} (apt-get install dataset-fashion-mnist)"
    )
    for item in items:
        if "fashion_mnist" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fashion_mnist() -> str:
    """The Fashion-MNIST root; skips the test where the files are missing."""
    from pruning.data import FASHION_MNIST_ROOT

    if not HAVE_FASHION_MNIST:
        pytest.skip(f"Fashion-MNIST is not installed in {FASHION_MNIST_ROOT} (apt-get install dataset-fashion-mnist)")
    return FASHION_MNIST_ROOT


@pytest.fixture(scope="session")
def trained_resnet20(fashion_mnist, tmp_path_factory) -> dict:
    """``prunesweep train`` once per test session: a ResNet-20 on 512 Fashion-MNIST images (256
    calibration, 256 test, 1 epoch). ``{"data": the command's JSON, "out": checkpoint path}``."""
    import io
    import json
    from contextlib import redirect_stdout

    from orchestrator import cli

    out = tmp_path_factory.mktemp("trained") / "tmp" / "base.pt"
    buffer = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(buffer):
        mp.setenv("PRUNESWEEP_CACHE", str(tmp_path_factory.mktemp("cache")))
        code = cli.main(["train", "--model", "resnet20", "--epochs", "1", "--train-subset", "512",
                         "--calibration-size", "256", "--test-subset", "256", "--batch-size", "64",
                         "--out", str(out), "--json", "--quiet"])
    assert code == 0
    return {"data": json.loads(buffer.getvalue()), "out": out}


@pytest.fixture
def extra_ratio_source():
    """A ratio source registered for one test (then removed): ``half-first``, FLOPs targets only,
    with one option ``first`` (the first group's weight, > 0; the others weigh 1)."""
    from pruning.planning import RatioPlan, RatioSource, RatioSourceError, register_ratio_source
    from pruning.planning.ratio_sources import _base

    @register_ratio_source("half-first")
    class HalfFirst(RatioSource):
        targets = ("flops_reduction",)

        def __init__(self, first: float = 0.5) -> None:
            if not isinstance(first, (int, float)) or not first > 0:
                raise RatioSourceError("first", f"must be > 0, got {first!r}")
            self.first = first

        def options(self):
            return {"first": self.first}

        def make_plan(self, target, inputs, groups):
            weights = {g.name: self.first if i == 0 else 1.0 for i, g in enumerate(groups)}
            return RatioPlan(target.config(allocation="uniform", **target.amount()), weights)

    yield "half-first"
    del _base._SOURCES._factories["half-first"]
