"""What the search-space tests share: the space variants every contract test covers, the tiny
model's contexts, and a sweep's steps (a study, a sampled plan, channel scores)."""
from __future__ import annotations

import optuna
import torch

from pruning.statistics import StatsOptions, collect_activation_stats
from pruning.structure import PruningSpace
from search_spaces import SpaceContext, list_search_spaces

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: every registered space with its defaults, plus the option sets that change its parameters
VARIANTS = [(name, {}) for name in list_search_spaces()] + [
    ("per_layer", {"prior": "uniform"}), ("per_layer", {"prior": "concentration"}),
]
VARIANT_IDS = [name + "".join(f"-{k}={v}" for k, v in options.items()) for name, options in VARIANTS]


def build_contexts(model, example_input, calibration_batches) -> dict[str, SpaceContext]:
    """One context per strategy on ``model``, with stats and utilization curves."""
    space = PruningSpace.build(model, example_input)
    batches = [(x[:8], y[:8]) for x, y in calibration_batches]
    stats = collect_activation_stats(model, space.groups, batches, StatsOptions(bins=8))
    # synthetic U(k): 0 at k = 0, rising concavely to 1 at k = n, a different shape per layer
    utilization = {}
    for i, group in enumerate(space.groups):
        k = torch.arange(group.size + 1, dtype=torch.float64)
        utilization[group.name] = (k / group.size) ** (0.2 + 0.2 * i)
    return {
        strategy: SpaceContext(space=space, strategy=strategy, stats=stats, utilization=utilization)
        for strategy in ("full", "inner")
    }


def new_study() -> optuna.Study:
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))


def sample_plan(space, trial: optuna.Trial, context: SpaceContext):
    """What a sweep does with a trial: the space defines its parameters, then plans from them."""
    space.define(trial, context)
    return space.to_plan(trial.params, context)


def random_scores(context) -> dict[str, torch.Tensor]:
    """Random channel scores: what a global-ranking plan is planned from."""
    generator = torch.Generator().manual_seed(0)
    return {g.name: torch.rand(g.size, generator=generator) for g in context.space.select(context.strategy)}
