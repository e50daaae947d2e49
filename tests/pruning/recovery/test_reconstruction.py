"""The reconstruction step of pruning.recovery: least-squares refit of the consumer layers."""
from __future__ import annotations

import copy
import tempfile

import pytest
import torch
from torch import nn

from pruning.errors import InputError
from pruning.recovery.least_squares import gram, ridge_update
from pruning.structure import PruningSpace, prune_model
from pruning.recovery import (
    OriginalTargets,
    ReconstructionReport,
    RowBudget,
    consumers_of,
    kept_outputs_of,
    original_targets,
    reconstruct_consumers,
)

MODELS = ("resnet", "cnn")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model_of(request):
    """``model_of(kind)``: a fresh TinyResNet / TinyCNN from the conftest fixtures."""
    return lambda kind: request.getfixturevalue(f"tiny_{kind}")


def _randn(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def calibration() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(_randn(32, 100 + i), torch.zeros(32, dtype=torch.long)) for i in range(8)]


@pytest.fixture(scope="module")
def held_out() -> torch.Tensor:
    return _randn(256, 7)


def _teacher(model: nn.Module) -> nn.Module:
    """A fixed random teacher: centre the classifier's logits over random inputs, so that the
    argmax labels depend on the input (an untrained model's bias picks one class otherwise)."""
    with torch.no_grad():
        model.fc.bias -= model.eval()(_randn(512, 9)).mean(0)
    return model


def _l1_scores(model: nn.Module, space: PruningSpace, names) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    scores = {}
    for name in names:
        weight = modules[space[name].producers[0]].weight.detach()
        scores[name] = weight.abs().sum(dim=tuple(range(1, weight.dim())))
    return scores


def _prune(model: nn.Module, ratio: float):
    """Prune the inner groups by ``ratio`` with L1-norm scores: (space, pruned, kept, consumers)."""
    example = _randn(2, 0)
    space = PruningSpace.build(model, example)
    groups = space.select("inner")
    keep = {g.name: max(1, round(g.size * (1 - ratio))) for g in groups}
    pruned, kept = prune_model(model, example, space, keep, _l1_scores(model, space, keep))
    layers = consumers_of(space, [g.name for g in groups])
    return space, pruned, kept, layers


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("kind", MODELS)
def test_refit_lowers_every_consumer_error(kind, calibration, model_of):
    model = model_of(kind)
    space, pruned, kept, layers = _prune(model, 0.5)
    assert kept and layers
    reports = reconstruct_consumers(model, pruned, layers, calibration, kept_outputs=kept_outputs_of(space, kept))
    assert list(reports) == layers  # forward order
    for name, report in reports.items():
        assert isinstance(report, ReconstructionReport) and report.layer == name
        assert report.status == "refit"
        assert report.error_before > 1e-3, name  # pruning really perturbed the layer
        assert report.error_after < report.error_before, name
        assert report.rows > 0


@pytest.mark.parametrize("kind", MODELS)
def test_recovery_improves_logits_and_teacher_accuracy(kind, calibration, held_out, model_of):
    model = _teacher(model_of(kind))
    teacher = _logits(model, held_out)
    labels = teacher.argmax(1)  # the original is 100% accurate on these labels by construction
    space, pruned, kept, layers = _prune(model, 0.5)
    before = _logits(pruned, held_out)
    reconstruct_consumers(model, pruned, layers, calibration, kept_outputs=kept_outputs_of(space, kept))
    after = _logits(pruned, held_out)

    mse_before = ((before - teacher) ** 2).mean().item()
    mse_after = ((after - teacher) ** 2).mean().item()
    acc_before = (before.argmax(1) == labels).float().mean().item()
    acc_after = (after.argmax(1) == labels).float().mean().item()
    assert len(labels.unique()) >= 5  # the teacher's labels really depend on the input
    assert mse_after < 0.1 * mse_before, (mse_before, mse_after)
    assert acc_after >= acc_before + 0.2, (acc_before, acc_after)


@pytest.mark.parametrize("kind", MODELS)
def test_only_listed_layers_change(kind, calibration, model_of):
    model = model_of(kind)
    original_state = copy.deepcopy(model.state_dict())
    space, pruned, kept, layers = _prune(model, 0.5)
    listed = set(layers[:1])  # refit only the first consumer
    state = copy.deepcopy(pruned.state_dict())
    reconstruct_consumers(model, pruned, sorted(listed), calibration, kept_outputs=kept_outputs_of(space, kept))
    changed = {k for k, v in pruned.state_dict().items() if not torch.equal(v, state[k])}
    assert changed and {k.rsplit(".", 1)[0] for k in changed} <= listed
    for key, value in model.state_dict().items():  # the original is never modified
        assert torch.equal(value, original_state[key]), key


@pytest.mark.parametrize("kind", MODELS)
def test_nothing_pruned_keeps_outputs(kind, calibration, held_out, model_of):
    model = model_of(kind)
    space, pruned, kept, layers = _prune(model, 0.0)
    assert kept == {}
    layers = consumers_of(space, [g.name for g in space.groups])
    reports = reconstruct_consumers(model, pruned, layers, calibration[:2])
    assert list(reports) == layers
    for report in reports.values():
        assert report.status == "kept"  # nothing to gain: the weights stay as they are
        assert report.error_before < 1e-6  # the targets' float16 rounding: about 4e-8
        assert report.error_after < 1e-6
    torch.testing.assert_close(_logits(pruned, held_out), _logits(model, held_out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kind, names",
    [
        ("resnet", ["layer2.conv1", "layer2.shortcut.0"]),  # stride 2, 3x3 padded and 1x1
        ("cnn", ["features.0", "features.4", "hidden"]),  # biased conv, depthwise conv, linear
    ],
)
def test_perturbed_layers_are_solved_back(kind, names, calibration, model_of):
    """The original weights solve the least squares exactly: a perturbed copy must come back."""
    model = model_of(kind)
    damaged = copy.deepcopy(model)
    modules = dict(damaged.named_modules())
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name in names:
            for p in modules[name].parameters():
                p.add_(torch.randn(p.shape, generator=g) * p.std())
    reports = reconstruct_consumers(model, damaged, names, calibration, ridge=1e-8)
    for name in names:
        assert reports[name].status == "refit"
        assert reports[name].error_before > 0.1
        assert reports[name].error_after < 1e-6, reports[name]
        original = dict(model.named_modules())[name]
        if isinstance(original, nn.Conv2d):  # (dead ReLU inputs leave some linear weights free)
            torch.testing.assert_close(modules[name].weight, original.weight, rtol=1e-3, atol=1e-3)


def test_row_budget_bounds_rows_and_progress_is_a_bar(calibration, model_of, capsys):
    model = model_of("resnet")
    space, pruned, kept, layers = _prune(model, 0.5)
    batches = iter(calibration)  # a one-shot iterator is fine
    budget = RowBudget(rows_per_column=2, min_rows_per_column=1, cost=0.05, min_rows=50)
    reports = reconstruct_consumers(model, pruned, layers, batches, budget=budget, seed=1, progress=True)
    modules = dict(model.named_modules())
    for name, report in reports.items():
        assert 50 <= report.rows <= max(50, 2 * modules[name].in_channels * 9), name
        assert report.check_rows >= 50 // 4
        assert report.error_after < report.error_before
    logged = capsys.readouterr().err
    assert "reconstruction" in logged and f"{len(layers)}/{len(layers)}" in logged


def test_sampled_receptive_fields_of_large_inputs_are_solved_back():
    """Only the sampled rows' receptive fields are gathered (3 images of 4 x 400 x 400 would
    unfold to about 17 M elements), padding included: each sampled row must still meet its own
    target, so a perturbed layer comes back exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 3, 3, padding=1))
    damaged = copy.deepcopy(model)
    with torch.no_grad():
        damaged[0].weight.add_(torch.randn(damaged[0].weight.shape))
        damaged[0].bias.add_(1.0)
    x = torch.randn(3, 4, 400, 400, generator=torch.Generator().manual_seed(1))
    budget = RowBudget(rows_per_column=1, min_rows_per_column=0, cost=1, min_rows=3000, check_fraction=0)
    reports = reconstruct_consumers(model, damaged, ["0"], [x], ridge=0.0, budget=budget)
    assert reports["0"].status == "refit" and reports["0"].rows == 3000
    assert reports["0"].error_before > 0.1 and reports["0"].error_after < 1e-6  # float16 targets: about 4e-8
    torch.testing.assert_close(damaged[0].weight, model[0].weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(damaged[0].bias, model[0].bias, rtol=1e-4, atol=1e-5)


def test_batching_of_the_calibration_data_does_not_change_the_fit(calibration, model_of):
    """Rows are numbered over the whole calibration set: the same images in two batches or in
    one give the same fit."""
    model = model_of("resnet")
    space, pruned, kept, layers = _prune(model, 0.5)
    other = copy.deepcopy(pruned)
    images = torch.cat([x for x, _ in calibration[:2]])
    whole = reconstruct_consumers(model, pruned, layers, [images], budget=RowBudget.unbounded())
    halves = reconstruct_consumers(model, other, layers, calibration[:2], budget=RowBudget.unbounded())
    for name in layers:
        assert whole[name].rows == halves[name].rows
        assert whole[name].error_after == pytest.approx(halves[name].error_after, rel=1e-9)
    for (k, a), b in zip(pruned.state_dict().items(), other.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)


def test_modes_hooks_and_errors(calibration, model_of):
    model = model_of("cnn")
    space, pruned, kept, layers = _prune(model, 0.5)
    model.train()
    pruned.train()
    pruned.features[1].eval()  # a mixed-mode submodule must be restored as it was
    with pytest.raises(InputError, match="kept_outputs"):  # features.7's own outputs were pruned
        reconstruct_consumers(model, pruned, layers, calibration)
    reconstruct_consumers(model, pruned, layers, calibration[:1], kept_outputs=kept_outputs_of(space, kept))
    for net in (model, pruned):
        for name, m in net.named_modules():
            assert not m._forward_hooks and not m._forward_pre_hooks, name
    assert model.training and pruned.training and not pruned.features[1].training
    assert all(m.training for m in model.modules())
    with pytest.raises(InputError, match="unknown layer"):
        reconstruct_consumers(model, pruned, ["nope"], calibration)
    with pytest.raises(InputError, match="Conv2d and Linear"):
        reconstruct_consumers(model, pruned, ["features.1"], calibration)
    with pytest.raises(InputError, match="ridge must be >= 0"):
        reconstruct_consumers(model, pruned, layers, calibration, ridge=-1.0)
    with pytest.raises(InputError, match="min_rows must be an integer >= 1"):
        RowBudget(min_rows=0)
    with pytest.raises(InputError, match="cost must be > 0"):
        RowBudget(cost=0)
    with pytest.raises(InputError, match=r"min_rows_per_column must be in \[0, rows_per_column=8"):
        RowBudget(rows_per_column=8, min_rows_per_column=16)
    with pytest.raises(InputError, match="memory_mib must be an integer >= 0 or None"):
        reconstruct_consumers(model, pruned, layers, calibration, memory_mib=-1)
    with pytest.raises(InputError, match="at least one calibration batch"):
        reconstruct_consumers(model, pruned, layers, [])
    assert reconstruct_consumers(model, pruned, [], calibration) == {}


def test_consumers_of_is_ordered_and_deduplicated(model_of):
    model = model_of("resnet")
    space = PruningSpace.build(model, _randn(2, 0))
    everything = consumers_of(space, [g.name for g in reversed(space.groups)] * 2)
    assert len(everything) == len(set(everything))
    order = [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert everything == sorted(everything, key=order.index)
    inner = consumers_of(space, [g.name for g in space.select("inner")])
    assert inner == ["layer1.conv2", "layer2.conv2"]


@pytest.mark.parametrize("memory_mib", [None, 1024])
def test_one_pass_through_each_model_equals_refitting_one_layer_at_a_time(memory_mib, calibration, model_of):
    """The original runs once per batch and the pruned model once (in one forward of every image,
    or streamed node by node through its graph; plus the one-image forward that finds the call
    order), and the result is that of refitting the layers one after another, each on the model
    the previous refits left."""
    model = model_of("resnet")
    space, pruned, kept, layers = _prune(model, 0.5)
    one_by_one = copy.deepcopy(pruned)
    calls = {"original": [], "pruned": []}
    handles = [model.register_forward_hook(lambda m, a, o: calls["original"].append(a[0].shape[0])),
               pruned.register_forward_hook(lambda m, a, o: calls["pruned"].append(a[0].shape[0]))]
    reports = reconstruct_consumers(model, pruned, layers, calibration, budget=RowBudget.unbounded(),
                                    memory_mib=memory_mib)
    for handle in handles:
        handle.remove()
    assert calls["original"] == [len(x) for x, _ in calibration]
    assert calls["pruned"] == [1, sum(len(x) for x, _ in calibration)] if memory_mib is None else [1]
    for name in reports:  # call order
        reconstruct_consumers(model, one_by_one, [name], calibration, budget=RowBudget.unbounded())
    assert any(r.status == "refit" for r in reports.values())
    for (k, a), b in zip(pruned.state_dict().items(), one_by_one.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("kind", MODELS)
def test_streamed_pass_within_any_memory_bound_equals_one_pass(kind, calibration, model_of, tmp_path, monkeypatch):
    """Streaming the pruned pass batch by batch, with every value beyond the bound in files (0 MiB:
    all of them), gives the fit of one forward of every image at once, in-place ops included
    (TinyResNet's ReLUs and residual additions)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = model_of(kind)
    space, pruned, kept, layers = _prune(model, 0.5)
    options = dict(kept_outputs=kept_outputs_of(space, kept))
    results = {}
    for memory_mib in (None, 0, 1024):
        net = copy.deepcopy(pruned)
        results[memory_mib] = (reconstruct_consumers(model, net, layers, calibration, memory_mib=memory_mib, **options),
                               net.state_dict())
    reference_reports, reference = results[None]
    for memory_mib in (0, 1024):
        reports, state = results[memory_mib]
        assert [r.status for r in reports.values()] == [r.status for r in reference_reports.values()]
        for k, value in reference.items():
            torch.testing.assert_close(state[k], value, rtol=1e-5, atol=1e-6, msg=k)
    assert not list(tmp_path.iterdir())  # the spill folder is removed


@pytest.mark.parametrize("rows", [40, 400])  # the dual form (rows < columns) and the normal equations
def test_ridge_update_is_the_closed_form_ridge_solution(rows):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, rows, 100, generator=g)
    residual = torch.randn(3, rows, 5, generator=g)
    ridge = 1e-2
    weights = torch.randn(3, 100, 5, generator=g)
    target = residual + torch.bmm(x, weights)
    change = ridge_update(x, target, weights, ridge, weight_columns=99)  # the last column is a bias's
    x64, r64 = x.double(), residual.double()
    scale = x64[:, :, :99].pow(2).sum(1).mean(1)
    system = x64.transpose(1, 2) @ x64 + ridge * scale[:, None, None] * torch.eye(100, dtype=torch.float64)
    expected = torch.linalg.solve(system, x64.transpose(1, 2) @ r64)
    torch.testing.assert_close(change.double(), expected, rtol=1e-3, atol=1e-4)


def test_fit_on_every_row_equals_the_closed_form_least_squares(calibration, model_of):
    """Today's exact fit as a reference: the first consumer (its inputs do not depend on other
    refits) against ``torch.linalg.lstsq`` on every unfolded row, in float64."""
    model = model_of("resnet")
    space, pruned, kept, layers = _prune(model, 0.5)
    name = layers[0]
    layer, reference = dict(pruned.named_modules())[name], dict(model.named_modules())[name]
    inputs, outputs = [], []
    handles = [layer.register_forward_hook(lambda m, a, o: inputs.append(a[0])),
               reference.register_forward_hook(lambda m, a, o: outputs.append(o))]
    images = torch.cat([x for x, _ in calibration[:2]])
    _logits(pruned, images), _logits(model, images)
    for handle in handles:
        handle.remove()
    kept_out = kept_outputs_of(space, kept).get(name)
    y = outputs[0] if kept_out is None else outputs[0][:, kept_out]
    x = torch.nn.functional.unfold(inputs[0], layer.kernel_size, padding=layer.padding, stride=layer.stride)
    x = x.transpose(1, 2).reshape(-1, x.shape[1]).double()
    y = y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1]).double()
    expected = torch.linalg.lstsq(x, y).solution.T.reshape(layer.weight.shape)

    reports = reconstruct_consumers(model, pruned, [name], calibration[:2], ridge=1e-9, budget=RowBudget.unbounded(),
                                    kept_outputs=kept_outputs_of(space, kept))
    assert reports[name].status == "refit" and reports[name].rows == x.shape[0]
    # float32 products, float64 solve: within 1e-3 of the largest weight
    torch.testing.assert_close(layer.weight.double(), expected, rtol=0, atol=1e-3 * float(expected.abs().max()))


@pytest.mark.parametrize("kind", MODELS)
def test_default_budget_is_close_to_the_fit_on_every_row(kind, calibration, held_out, model_of):
    """The measured bound of the row budget on a small model: the logits of the budgeted refit
    are within 10% (relative MSE vs the unpruned model's) of those of the fit on every row,
    with a small fraction of the rows."""
    model = _teacher(model_of(kind))
    space, pruned, kept, layers = _prune(model, 0.5)
    exact = copy.deepcopy(pruned)
    options = dict(kept_outputs=kept_outputs_of(space, kept))
    budgeted = reconstruct_consumers(model, pruned, layers, calibration, **options)
    everything = reconstruct_consumers(model, exact, layers, calibration, budget=RowBudget.unbounded(), **options)
    teacher = _logits(model, held_out)

    def relative_mse(net):
        return float(((_logits(net, held_out) - teacher) ** 2).sum() / (teacher ** 2).sum())

    assert relative_mse(pruned) <= 1.1 * relative_mse(exact) + 1e-4, (relative_mse(pruned), relative_mse(exact))
    assert sum(r.rows for r in budgeted.values()) < 0.5 * sum(r.rows for r in everything.values())


def test_precomputed_targets_give_the_same_fit(calibration, model_of):
    """A sweep computes the original's targets once (for every layer any trial may refit) and
    shares them: the fit is the one that computes them itself."""
    model = model_of("cnn")
    space, pruned, kept, layers = _prune(model, 0.5)
    shared = copy.deepcopy(pruned)
    options = dict(kept_outputs=kept_outputs_of(space, kept), seed=3)
    everything = consumers_of(space, [g.name for g in space.groups])
    targets = original_targets(model, everything, calibration, seed=3)
    assert isinstance(targets, OriginalTargets) and set(targets.layers) == set(everything)
    own = reconstruct_consumers(model, pruned, layers, calibration, **options)
    reused = reconstruct_consumers(model, shared, layers, calibration, targets=targets, **options)
    assert own == reused
    for (k, a), b in zip(pruned.state_dict().items(), shared.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    with pytest.raises(InputError, match="precomputed targets cover 256 images"):
        reconstruct_consumers(model, shared, layers, calibration[:1], targets=targets, **options)


@pytest.mark.parametrize("groups,rows,columns,block", [(1, 50, 7, 3), (3, 40, 16, 16), (2, 9, 20, 6), (1, 5, 1, 4)])
def test_gram_equals_the_full_product(groups, rows, columns, block):
    """The strip-wise product (upper blocks and their mirror) is x^T x for any width and strip."""
    x = torch.randn(groups, rows, columns, generator=torch.Generator().manual_seed(columns))
    got = gram(x, block=block)
    torch.testing.assert_close(got, torch.bmm(x.transpose(1, 2), x), rtol=1e-5, atol=1e-5)
    assert torch.equal(got, got.transpose(1, 2))
