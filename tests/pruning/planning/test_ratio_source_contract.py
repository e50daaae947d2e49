"""The ratio-source contract (see ``pruning/planning/ratio_sources/_base.py``), checked for every
registered source on a tiny ResNet, plus the registry's errors."""
from __future__ import annotations

import json
import math

import pytest
import torch

from pruning.errors import InputError
from pruning.planning import (
    FLOPS_TOLERANCE, RatioInputs, RatioSource, RatioSourceError, RatioTarget, create_ratio_source,
    list_ratio_sources, ratio_source_class, register_ratio_source,
)
from pruning.planning.ratio_sources import ratio_source_options
from pruning.structure import PruningSpace

ALL_SOURCES = list_ratio_sources()


@pytest.fixture
def space(tiny_resnet, example_input):
    return PruningSpace.build(tiny_resnet.eval(), example_input)


@pytest.fixture
def inputs(space, tiny_resnet, calibration_batches):
    """Every input a source may read: the model's activation statistics and linear utilization curves."""
    from pruning.statistics import collect_activation_stats

    stats = collect_activation_stats(tiny_resnet, space.groups, calibration_batches)
    utilization = {g.name: torch.linspace(0.0, 1.0, g.size + 1, dtype=torch.float64) for g in space.groups}
    return RatioInputs(space, stats=stats, utilization=utilization)


def _options(name: str, tmp_path) -> dict:
    """Options a source cannot do without (a schedule file), else none: the defaults."""
    if name == "schedule":
        path = tmp_path / "schedule.json"
        path.write_text(json.dumps({"layer1.conv1": 0.5, "layer2.conv1": 0.25}))
        return {"path": str(path)}
    return {}


@pytest.mark.parametrize("name", ALL_SOURCES)
def test_ratio_source_contract(name, space, inputs, tmp_path):
    source = create_ratio_source(name, **_options(name, tmp_path))
    assert isinstance(source, RatioSource) and source.name == name
    # options: every one listed, defaults filled in; they make an equal source
    assert list(source.options()) == ratio_source_options(name)
    assert create_ratio_source(name, **source.options()) == source
    assert set(source.targets) <= {"flops_reduction", "ratio", "none"} and source.targets
    groups = {g.name for g in space.select("full")}
    scores = {g.name: torch.arange(g.size, dtype=torch.float32) for g in space.groups}
    for kind in ("flops_reduction", "ratio", "none"):
        target = RatioTarget(**({"flops_reduction": 0.4} if kind == "flops_reduction" else
                                {"ratio": 0.3} if kind == "ratio" else {}), max_layer_ratio=0.8)
        if kind not in source.targets:
            with pytest.raises(RatioSourceError, match="target"):
                source.plan(target, inputs)
            continue
        plan = source.plan(target, inputs)
        assert plan == source.plan(target, inputs)  # pure
        assert plan.config.strategy == "full" and plan.config.max_layer_ratio == 0.8
        if plan.ratio_weights is not None:
            assert set(plan.ratio_weights) == groups
            assert all(math.isfinite(w) and w >= 0 for w in plan.ratio_weights.values())
        keep = plan.keep(space, scores if plan.needs_scores else None)
        assert set(keep) <= groups
        if kind == "flops_reduction":
            assert abs(space.reduction(keep) - 0.4) <= FLOPS_TOLERANCE
    # a missing input is one line naming it
    for needed, field in (("needs_stats", "stats"), ("needs_utilization", "utilization")):
        if getattr(source, needed):
            bare = RatioInputs(space, **{k: getattr(inputs, k) for k in ("stats", "utilization") if k != field})
            target = RatioTarget(flops_reduction=0.4)
            with pytest.raises(RatioSourceError, match=field) as err:
                source.plan(target, bare)
            assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ALL_SOURCES)
def test_a_bad_option_value_is_one_line_naming_it(name, tmp_path):
    options = ratio_source_options(name)
    if not options:
        pytest.skip(f"{name} has no options")
    option = options[0]
    with pytest.raises(InputError) as err:
        create_ratio_source(name, **{**_options(name, tmp_path), option: "not-valid" if option != "path" else ""})
    assert option in str(err.value) and "\n" not in str(err.value)


def test_unknown_names_options_and_duplicates_are_refused_with_the_valid_ones():
    with pytest.raises(InputError, match=r"unknown ratio source 'nope'; valid: concentration, global"):
        create_ratio_source("nope")
    with pytest.raises(TypeError, match=r"unknown option\(s\) tua; valid: tau, budget"):
        create_ratio_source("snpfi", tua=0.9)
    with pytest.raises(ValueError, match="'uniform' is already registered"):
        register_ratio_source("uniform")(type("Again", (RatioSource,), {"make_plan": lambda *a: None}))
    assert ratio_source_class("uniform").name == "uniform"


def test_a_target_takes_one_amount():
    with pytest.raises(RatioSourceError, match="both"):
        RatioTarget(flops_reduction=0.3, ratio=0.3)


def test_a_new_source_is_one_class(extra_ratio_source, space, inputs):
    """Registered, it is listed, obeys the contract and plans like the built-in ones."""
    assert extra_ratio_source in list_ratio_sources()
    source = create_ratio_source(extra_ratio_source, first=0.25)
    assert create_ratio_source(extra_ratio_source, **source.options()) == source
    plan = source.plan(RatioTarget(flops_reduction=0.3), inputs)
    assert abs(space.reduction(plan.keep(space)) - 0.3) <= FLOPS_TOLERANCE
    with pytest.raises(RatioSourceError, match="first must be > 0, got 0"):
        create_ratio_source(extra_ratio_source, first=0)
