"""Pruning plans: validation of the request, FLOPs targets met on the physically pruned model,
allocations (uniform, proportional, global, explicit) and JSON schedules."""
from __future__ import annotations

import json
import math

import pytest
import torch

from pruning.criteria import ScoringContext, create_criterion
from pruning.structure import PruningError, PruningSpace, prune_model
from pruning.structure import count_macs
from pruning.models import create_model
from pruning.planning import (
    ALLOCATIONS,
    FLOPS_TOLERANCE,
    InfeasibleTargetError,
    PruningConfig,
    allocate_global,
    allocate_proportional,
    keep_from_ratios,
    load_schedule,
    plan_pruning,
    ratios_of,
    save_schedule,
)
from pruning.planning.widths import WidthGrid

SHAPES = {
    "tiny_resnet": (1, 28, 28),
    "tiny_cnn": (1, 28, 28),
    "resnet20": (1, 28, 28),
    "resnet56": (3, 32, 32),
}
_CACHE: dict = {}


@pytest.fixture
def prepared(request):
    """name -> (model, example input, space, l1 scores of every group, measured base MACs),
    cached; the tiny models are the conftest fixtures of the same name."""

    def get(name: str):
        if name not in _CACHE:
            if name in ("tiny_resnet", "tiny_cnn"):
                model = request.getfixturevalue(name)
            else:
                torch.manual_seed(0)
                model = create_model(name, in_channels=SHAPES[name][0]).eval()
            x = torch.randn(1, *SHAPES[name], generator=torch.Generator().manual_seed(0))
            space = PruningSpace.build(model, x)
            scores = create_criterion("l1").score(model, space.groups, ScoringContext())
            _CACHE[name] = (model, x, space, scores, count_macs(model, x))
        return _CACHE[name]

    return get


def measured_reduction(prepared, name: str, keep) -> float:
    model, x, space, scores, base = prepared(name)
    pruned, _ = prune_model(model, x, space, keep, scores)
    return 1.0 - count_macs(pruned, x) / base


# ---------------------------------------------------------------------------------------------
# FLOPs targets, measured on the pruned model


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("allocation", ["uniform", "global"])
@pytest.mark.parametrize("strategy", ["full", "inner"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_flops_target_met_on_the_pruned_model(name, strategy, allocation, target, prepared):
    _, _, space, scores, _ = prepared(name)
    config = PruningConfig(strategy=strategy, allocation=allocation, flops_reduction=target)
    keep = plan_pruning(space, scores, config)
    allowed = {g.name for g in space.select(strategy)}
    assert set(keep) == allowed  # only the strategy's groups are planned
    for g in space.select(strategy):
        assert max(1, g.size - math.floor(0.9 * g.size)) <= keep[g.name] <= g.size  # cap and floor
    measured = measured_reduction(prepared, name, keep)
    assert measured == pytest.approx(space.reduction(keep), abs=1e-9)
    assert abs(measured - target) <= FLOPS_TOLERANCE, f"{measured:.4f} for a {target} target"


def test_uniform_flops_target_is_near_uniform(prepared):
    _, _, space, scores, _ = prepared("resnet56")
    keep = plan_pruning(space, scores, PruningConfig(flops_reduction=0.5))
    ratios = [1 - keep[g.name] / g.size for g in space.groups]
    assert max(ratios) - min(ratios) <= 2 / 16 + 1e-9  # within about one channel of the 16-wide layers


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet20"])
def test_allocate_proportional_with_non_uniform_weights(name, prepared):
    _, _, space, scores, _ = prepared(name)
    groups = space.groups
    weights = {g.name: float(i + 1) for i, g in enumerate(groups)}  # later layers pruned harder
    keep = allocate_proportional(space, groups, weights, 0.5)
    assert abs(measured_reduction(prepared, name, keep) - 0.5) <= FLOPS_TOLERANCE
    ratios = {g.name: 1 - keep[g.name] / g.size for g in groups}
    first, last = groups[0].name, groups[-1].name
    assert ratios[last] > ratios[first] + 0.2
    uniform = allocate_proportional(space, groups, {g.name: 1.0 for g in groups}, 0.5)
    assert uniform != keep
    via_plan = plan_pruning(space, scores, PruningConfig(flops_reduction=0.5), ratio_weights=weights)
    assert via_plan == keep


def test_allocate_proportional_zero_weight_and_cap(prepared):
    _, _, space, _, _ = prepared("resnet20")
    groups = space.select("inner")
    weights = {g.name: 1.0 for g in groups}
    weights["layer1.0.conv1"] = 0.0
    keep = allocate_proportional(space, groups, weights, 0.3, WidthGrid(cap=0.5))
    assert abs(space.reduction(keep) - 0.3) <= FLOPS_TOLERANCE
    assert all(keep[g.name] >= g.size - math.floor(0.5 * g.size) for g in groups)
    assert keep["layer1.0.conv1"] >= 15  # a zero weight prunes (next to) nothing


def test_allocate_proportional_rejects_bad_weights(prepared):
    _, _, space, _, _ = prepared("tiny_resnet")
    groups = space.groups
    with pytest.raises(PruningError, match="no ratio weight for layer.*layer2.conv2"):
        allocate_proportional(space, groups, {g.name: 1.0 for g in groups[:-1]}, 0.3)
    with pytest.raises(PruningError, match="finite and non-negative"):
        allocate_proportional(space, groups, {**{g.name: 1.0 for g in groups}, "conv1": -1.0}, 0.3)
    with pytest.raises(PruningError, match=r"\[0, 1\)"):
        allocate_proportional(space, groups, {g.name: 1.0 for g in groups}, 1.0)


# ---------------------------------------------------------------------------------------------
# infeasible targets and bad requests


def test_infeasible_target_names_the_reachable_maximum(prepared):
    _, _, space, scores, _ = prepared("resnet20")
    most = space.reduction({g.name: g.size - math.floor(0.9 * g.size) for g in space.select("inner")})
    assert 0.8 < most < 0.89
    for allocation in ALLOCATIONS:
        with pytest.raises(InfeasibleTargetError) as info:
            plan_pruning(space, scores, PruningConfig(strategy="inner", allocation=allocation, flops_reduction=0.9))
        assert f"at most {most:.3f}" in str(info.value)
        assert "0.900" in str(info.value)
        assert isinstance(info.value, PruningError)
    # the same target is reachable when the residual groups may be pruned too
    keep = plan_pruning(space, scores, PruningConfig(strategy="full", flops_reduction=0.9))
    assert abs(space.reduction(keep) - 0.9) <= FLOPS_TOLERANCE
    # a tighter cap makes a moderate target infeasible
    with pytest.raises(InfeasibleTargetError, match="per-layer cap 0.2"):
        plan_pruning(space, scores, PruningConfig(flops_reduction=0.5, max_layer_ratio=0.2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ratio=0.5, flops_reduction=0.5), "exactly one of ratio, flops_reduction, schedule.*ratio, flops_reduction"),
        (dict(ratio=0.5, schedule={}), "exactly one.*ratio, schedule"),
        (dict(flops_reduction=0.5, schedule={"conv1": 0.5}), "exactly one.*flops_reduction, schedule"),
        (dict(), r"exactly one.*\(got none\)"),
        (dict(ratio=1.0), r"ratio must be in \[0, 1\), got 1.0"),
        (dict(ratio=-0.1), r"ratio must be in \[0, 1\)"),
        (dict(ratio=float("nan")), r"ratio must be in \[0, 1\)"),
        (dict(ratio=True), r"ratio must be in \[0, 1\)"),
        (dict(ratio="0.5"), r"ratio must be in \[0, 1\)"),
        (dict(flops_reduction=1.5), r"flops_reduction must be in \[0, 1\)"),
        (dict(schedule={"conv1": 1.0}), r"ratio of layer 'conv1' must be in \[0, 1\)"),
        (dict(ratio=0.5, strategy="outer"), "unknown strategy 'outer'; valid: full, inner"),
        (dict(ratio=0.5, allocation="random"), "unknown allocation 'random'; valid: uniform, global"),
        (dict(ratio=0.5, max_layer_ratio=1.0), r"max_layer_ratio must be in \(0, 1\)"),
        (dict(ratio=0.5, min_channels=0), "min_channels must be >= 1"),
        (dict(ratio=0.5, round_to=0), "round_to must be an integer >= 1, got 0"),
        (dict(ratio=0.5, round_to=8.0), "round_to must be an integer >= 1, got 8.0"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(PruningError, match=match):
        PruningConfig(**kwargs)


def test_plan_rejects_weights_where_they_do_not_apply(prepared):
    _, _, space, scores, _ = prepared("tiny_resnet")
    weights = {g.name: 1.0 for g in space.groups}
    with pytest.raises(PruningError, match="not global"):
        plan_pruning(space, scores, PruningConfig(allocation="global", flops_reduction=0.3), weights)
    with pytest.raises(PruningError, match="need a FLOPs target"):
        plan_pruning(space, scores, PruningConfig(ratio=0.3), weights)


# ---------------------------------------------------------------------------------------------
# channel ratios, ratio 0 and the global ranking


def test_uniform_ratio_and_keep_from_ratios(prepared):
    _, _, space, scores, _ = prepared("resnet20")
    keep = plan_pruning(space, scores, PruningConfig(ratio=0.25))
    assert keep == {g.name: g.size - round(0.25 * g.size) for g in space.groups}
    keep = plan_pruning(space, scores, PruningConfig(ratio=0.5, strategy="inner"))
    assert keep == {g.name: g.size // 2 for g in space.select("inner")}
    groups = space.groups
    assert keep_from_ratios(groups, {"conv1": 0.99})["conv1"] == 1  # never below one channel
    assert keep_from_ratios(groups, {"conv1": 0.9}, min_channels=4)["conv1"] == 4
    assert keep_from_ratios(groups, {})["conv1"] == 16


@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_cnn", "resnet20"])
@pytest.mark.parametrize(
    "config",
    [
        PruningConfig(ratio=0.0),
        PruningConfig(ratio=0.0, allocation="global"),
        PruningConfig(flops_reduction=0.0),
        PruningConfig(flops_reduction=0.0, allocation="global"),
        PruningConfig(schedule={}),
        PruningConfig(schedule={"layer1.0.conv1": 0.0}),  # only valid on resnet20, skipped elsewhere
    ],
    ids=["ratio", "global-ratio", "flops", "global-flops", "empty-schedule", "zero-schedule"],
)
def test_ratio_zero_is_bit_identical(name, config, prepared):
    model, x, space, scores, _ = prepared(name)
    if config.schedule and name != "resnet20":
        config = PruningConfig(schedule={g.name: 0.0 for g in space.groups})
    keep = plan_pruning(space, scores, config)
    assert all(keep[n] == space[n].size for n in keep)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, kept = prune_model(model, x, space, keep, scores)
    assert kept == {}
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
        assert torch.equal(pruned.state_dict()[k], v)


def test_global_ratio_removes_the_lowest_normalised_scores(prepared):
    _, _, space, _, _ = prepared("resnet20")
    groups = space.groups
    g = torch.Generator().manual_seed(0)
    scores = {grp.name: torch.rand(grp.size, generator=g) * (i + 1) for i, grp in enumerate(groups)}
    keep = allocate_global(space, groups, scores, ratio=0.3)
    total = sum(grp.size for grp in groups)
    assert total - sum(keep.values()) == round(0.3 * total)
    normalised = {n: s / s.abs().mean() for n, s in scores.items()}
    threshold = sorted(float(v) for s in normalised.values() for v in s)[round(0.3 * total) - 1]
    for grp in groups:  # (no layer hits the 90% cap at 30%)
        assert keep[grp.name] == int((normalised[grp.name] > threshold).sum())
    # the per-layer cap and floor hold even when one layer has all the lowest scores
    scores["layer1.0.conv1"] = torch.full((16,), -100.0)
    keep = allocate_global(space, groups, scores, ratio=0.3, grid=WidthGrid(cap=0.5, min_channels=10))
    assert keep["layer1.0.conv1"] == 10
    with pytest.raises(PruningError, match="exactly one of ratio or flops_reduction"):
        allocate_global(space, groups, scores, ratio=0.3, flops_reduction=0.3)


# ---------------------------------------------------------------------------------------------
# explicit schedules and their JSON form


def test_explicit_schedule_is_exactly_keep_from_ratios(prepared):
    _, _, space, scores, _ = prepared("resnet20")
    schedule = {"conv1": 0.25, "layer1.0.conv1": 0.5, "layer3.2.conv1": 0.3, "layer2.0.conv2": 0.7}
    keep = plan_pruning(space, scores, PruningConfig(schedule=schedule))
    assert keep == keep_from_ratios(space.groups, schedule)
    assert keep["conv1"] == 12 and keep["layer1.0.conv1"] == 8 and keep["layer2.0.conv2"] == 10
    assert keep["layer3.2.conv1"] == 64 - round(0.3 * 64)
    assert keep["layer1.1.conv1"] == 16  # layers not named keep every channel
    keep = plan_pruning(space, scores, PruningConfig(schedule=schedule, min_channels=13))
    assert keep == keep_from_ratios(space.groups, schedule, 13)
    assert keep["conv1"] == 13
    with pytest.raises(PruningError, match="not prunable under strategy 'inner': conv1.*valid: layer1.0.conv1"):
        plan_pruning(space, scores, PruningConfig(schedule=schedule, strategy="inner"))
    with pytest.raises(PruningError, match="fc"):
        plan_pruning(space, scores, PruningConfig(schedule={"fc": 0.5}))


def test_schedule_json_round_trip_reproduces_the_plan(tmp_path, prepared):
    model, x, space, scores, _ = prepared("resnet20")
    keep = plan_pruning(space, scores, PruningConfig(allocation="global", flops_reduction=0.5))
    path = tmp_path / "sub" / "schedule.json"
    save_schedule(path, ratios_of(space, keep))
    loaded = load_schedule(path)
    assert loaded == ratios_of(space, keep)
    assert json.loads(path.read_text()) == loaded
    assert plan_pruning(space, scores, PruningConfig(schedule=loaded)) == keep
    assert [p.name for p in path.parent.iterdir()] == ["schedule.json"]  # no temporary left behind


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "not valid JSON"),
        ('["conv1", 0.5]', "must hold a JSON object"),
        ('{"conv1": "0.5"}', "must hold a JSON object"),
        ('{"conv1": null}', "must hold a JSON object"),
        ('{"conv1": false}', "must hold a JSON object"),
        ('{"conv1": 1.0}', r"ratio of layer 'conv1' must be in \[0, 1\)"),
        ('{"conv1": -0.5}', r"must be in \[0, 1\)"),
        ('{"conv1": NaN}', r"must be in \[0, 1\)"),
    ],
)
def test_load_schedule_rejects_bad_files(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(PruningError, match=match):
        load_schedule(path)


def test_load_schedule_missing_and_binary(tmp_path):
    with pytest.raises(PruningError, match="does not exist"):
        load_schedule(tmp_path / "missing.json")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PruningError, match="not valid JSON"):
        load_schedule(binary)


def test_save_schedule_failure_leaves_nothing_behind(tmp_path):
    path = tmp_path / "schedule.json"
    save_schedule(path, {"conv1": 0.5})
    with pytest.raises(TypeError):
        save_schedule(path, {"conv1": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["schedule.json"]
    assert load_schedule(path) == {"conv1": 0.5}  # the previous schedule is intact


def test_ratios_of_inverts_keep(prepared):
    _, _, space, _, _ = prepared("tiny_cnn")
    keep = {"features.0": 3, "features.7": 12, "hidden": 5}
    ratios = ratios_of(space, keep)
    assert ratios == pytest.approx({"features.0": 5 / 8, "features.7": 0.0, "hidden": 19 / 24})
    assert keep_from_ratios(space.groups, ratios) == keep


# ---------------------------------------------------------------------------------------------
# channel rounding (round_to): widths inference libraries run fast


def _on_grid(space, strategy, keep, step):
    return all(keep[g.name] == g.size or keep[g.name] % step == 0 for g in space.select(strategy))


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("allocation", ["uniform", "global"])
@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
def test_round_to_keeps_multiples_and_meets_the_target(name, allocation, target, prepared):
    _, _, space, scores, _ = prepared(name)
    config = PruningConfig(allocation=allocation, flops_reduction=target, round_to=8)
    keep = plan_pruning(space, scores, config)
    assert _on_grid(space, "full", keep, 8)
    assert all(keep[g.name] >= min(8, g.size) for g in space.groups)
    assert abs(measured_reduction(prepared, name, keep) - target) <= FLOPS_TOLERANCE
    assert keep != plan_pruning(space, scores, PruningConfig(allocation=allocation, flops_reduction=target))


def test_round_to_rounds_ratios_and_schedules_to_the_nearest_multiple(prepared):
    _, _, space, scores, _ = prepared("resnet20")
    sizes = {g.name: g.size for g in space.groups}
    keep = plan_pruning(space, scores, PruningConfig(ratio=0.3, round_to=8))
    # 16 channels - 30% = 11 kept -> 8 (nearer than 16); 32 -> 22 -> 24; 64 -> 45 -> 48
    assert {keep[n] for n in keep if sizes[n] == 16} == {8}
    assert {keep[n] for n in keep if sizes[n] == 32} == {24}
    assert {keep[n] for n in keep if sizes[n] == 64} == {48}
    first = space.groups[0].name
    schedule = plan_pruning(space, scores, PruningConfig(schedule={first: 0.9}, round_to=8))
    assert schedule[first] == 8 and all(schedule[n] == sizes[n] for n in schedule if n != first)  # never below 8
    assert keep_from_ratios(space.groups, {first: 0.3}, round_to=8)[first] == 8


def test_round_to_unreachable_target_says_why(prepared):
    _, _, space, scores, _ = prepared("tiny_resnet")
    with pytest.raises(InfeasibleTargetError, match="widths multiples of 64"):
        plan_pruning(space, scores, PruningConfig(flops_reduction=0.5, round_to=64))
