"""Cooperative games over channels: the layer game, Shapley-value estimation (exact,
permutation sampling, blocks that merge in order) and SNPFI's utilization strength and
interactions."""
from pruning.games.coalitions import (
    VALUES,
    CoalitionGame,
    FunctionGame,
    all_coalitions,
    coalition_value,
    game_endpoints,
)
from pruning.games.layer import MODES, LayerGame, resolve_trace, trace_model
from pruning.games.estimators import (
    EXACT_MAX_SIZE,
    BoundaryStop,
    stop_reached,
    RunningStats,
    ShapleyEstimate,
    exact_shapley,
    permutation_shapley,
)
from pruning.games.estimation import ShapleyOptions, calibration_batch, estimate_shapley, group_seed
from pruning.games.blocks import BlockMerge, block_merge, estimate_block, shapley_block_plan, shapley_blocks
from pruning.games.snpfi import (
    exact_interaction,
    mean_interaction,
    pairwise_interactions,
    snpfi_sparsity,
    sparsity_from_curve,
    utilization_curve,
)

__all__ = [
    "VALUES",
    "MODES",
    "EXACT_MAX_SIZE",
    "CoalitionGame",
    "FunctionGame",
    "all_coalitions",
    "coalition_value",
    "game_endpoints",
    "LayerGame",
    "trace_model",
    "resolve_trace",
    "RunningStats",
    "BoundaryStop",
    "stop_reached",
    "ShapleyEstimate",
    "exact_shapley",
    "permutation_shapley",
    "ShapleyOptions",
    "estimate_shapley",
    "calibration_batch",
    "group_seed",
    "shapley_block_plan",
    "shapley_blocks",
    "estimate_block",
    "BlockMerge",
    "block_merge",
    "utilization_curve",
    "sparsity_from_curve",
    "snpfi_sparsity",
    "pairwise_interactions",
    "mean_interaction",
    "exact_interaction",
]
