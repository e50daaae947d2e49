"""Activation statistics of the unpruned model: mergeable histograms and map entropies (entropy), ranks, moments, APoZ and CHIP sums, computed once and shared."""
from pruning.statistics.measures import (  # noqa: F401
    ENTROPY_ESTIMATORS,
    histogram_entropy,
    map_softmax_entropy,
    batched_map_rank,
    count_zeros,
    leave_one_out_nuclear_norms,
)
from pruning.statistics.state import (  # noqa: F401
    LayerStats,
    ActivationStats,
    StatsFileError,
    VALUE_MODES,
    merge_stats,
    stats_from_context,
)
from pruning.statistics.collection import (  # noqa: F401
    EDGE_BATCHES,
    EDGE_QUANTILE,
    EDGE_SCOPES,
    RANK_IMAGES,
    batch_labels,
    check_rank_images,
    compute_histogram_edges,
    accumulate_stats,
    collect_activation_stats,
)

__all__ = [
    "LayerStats",
    "ActivationStats",
    "StatsFileError",
    "VALUE_MODES",
    "EDGE_SCOPES",
    "EDGE_BATCHES",
    "EDGE_QUANTILE",
    "RANK_IMAGES",
    "ENTROPY_ESTIMATORS",
    "merge_stats",
    "compute_histogram_edges",
    "check_rank_images",
    "batch_labels",
    "accumulate_stats",
    "collect_activation_stats",
    "histogram_entropy",
    "map_softmax_entropy",
    "batched_map_rank",
    "count_zeros",
    "leave_one_out_nuclear_norms",
    "stats_from_context",
]
