"""Cost measurement: measured MACs agree with Torch-Pruning's counter and with the engine's
analytic MAC model, before and after pruning; latency runs and leaves the thread count alone."""
from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from pruning.errors import InputError
from pruning.structure import PruningSpace, prune_model
from pruning.structure import (
    LatencyResult,
    ModelCost,
    count_macs,
    count_params,
    measure_cost,
    measure_latency,
)

TINY_MODELS = ["tiny_resnet", "tiny_cnn"]

try:
    from pruning.models import create_model
except ImportError:  # the model zoo is optional for these tests
    create_model = None


def _tp_layer_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Torch-Pruning's ops over Conv2d/Linear layers, less one bias addition per output element.

    Torch-Pruning counts a bias add as one op per output element; ``count_macs`` (like the
    engine) counts multiply-accumulates only, so without the bias term the two must agree exactly.
    """
    output_sizes: dict[nn.Module, int] = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o: output_sizes.__setitem__(mod, o.numel()))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    _, _, layer_ops, _ = tp.utils.count_ops_and_params(model, example, layer_wise=True)
    return int(sum(layer_ops[m] - (size if m.bias is not None else 0) for m, size in output_sizes.items()))


def _zoo_cases() -> list:
    if create_model is None:
        return []
    return [
        pytest.param("resnet20", (1, 28, 28), id="resnet20-1x28x28"),
        pytest.param("vgg16", (3, 32, 32), id="vgg16-3x32x32"),
    ]


@pytest.mark.parametrize("model_name", TINY_MODELS)
def test_count_macs_matches_torch_pruning_and_engine(model_name, request, example_input):
    model = request.getfixturevalue(model_name)
    single = example_input[:1]
    macs = count_macs(model, example_input)
    assert macs == _tp_layer_macs(model, single)
    assert macs == PruningSpace.build(model, example_input).base_macs
    # Torch-Pruning's total adds BN, ReLU, pooling and bias ops on top of the layers' MACs
    total_ops, params = tp.utils.count_ops_and_params(model, single)
    assert total_ops > macs
    assert params == count_params(model)


@pytest.mark.parametrize("name, shape", _zoo_cases())
def test_count_macs_on_zoo_models(name, shape):
    model = create_model(name, in_channels=shape[0]).eval()
    example = torch.randn(1, *shape)
    macs = count_macs(model, example)
    assert macs == PruningSpace.build(model, example).base_macs
    assert macs == _tp_layer_macs(model, example)
    # At real widths the convolutions dominate: BN/ReLU/pool/bias ops add ~1% (resnet20 at
    # 28x28: 0.99%, vgg16 at 32x32: 0.30%), so Torch-Pruning's total stays within 2%.
    total_ops, _ = tp.utils.count_ops_and_params(model, example)
    assert macs <= total_ops <= 1.02 * macs


@pytest.mark.parametrize("model_name", TINY_MODELS)
def test_count_macs_of_pruned_model_matches_plan(model_name, request, example_input):
    model = request.getfixturevalue(model_name)
    space = PruningSpace.build(model, example_input)
    keep = {g.name: g.size // 2 for g in space.groups}
    scores = {g.name: torch.arange(g.size, dtype=torch.float32) for g in space.groups}
    pruned, _ = prune_model(model, example_input, space, keep, scores)
    assert count_macs(pruned, example_input) == space.macs(keep)
    assert count_macs(pruned, example_input) < count_macs(model, example_input)


def test_count_macs_restores_mixed_modes(tiny_resnet, example_input):
    tiny_resnet.train()
    tiny_resnet.layer1.eval()
    before = {name: m.training for name, m in tiny_resnet.named_modules()}
    running_mean = tiny_resnet.bn1.running_mean.clone()
    count_macs(tiny_resnet, example_input)
    assert {name: m.training for name, m in tiny_resnet.named_modules()} == before
    assert torch.equal(tiny_resnet.bn1.running_mean, running_mean)  # ran in eval mode


def test_measure_cost(tiny_cnn, example_input):
    cost = measure_cost(tiny_cnn, (1, 28, 28))
    assert cost == ModelCost(macs=count_macs(tiny_cnn, example_input), params=count_params(tiny_cnn))
    with pytest.raises(InputError, match=r"\(1, 28\)"):
        measure_cost(tiny_cnn, (1, 28))


def test_measure_latency_returns_positive_times_and_restores_threads(tiny_cnn):
    previous = torch.get_num_threads()
    result = measure_latency(tiny_cnn, (1, 28, 28), batch_size=2, threads=1, warmup=1, repeats=3)
    assert isinstance(result, LatencyResult)
    assert 0 < result.min_ms <= result.median_ms <= result.max_ms
    assert (result.batch_size, result.threads, result.repeats) == (2, 1, 3)
    assert torch.get_num_threads() == previous
    assert not tiny_cnn.training


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"threads": 0}, "threads"),
        ({"warmup": -1}, "warmup"),
        ({"repeats": 0}, "repeats"),
    ],
)
def test_measure_latency_rejects_bad_arguments(tiny_cnn, kwargs, bad):
    with pytest.raises(InputError, match=bad):
        measure_latency(tiny_cnn, (1, 28, 28), **kwargs)
