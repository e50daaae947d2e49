"""How many channels each layer keeps: FLOPs-targeted allocation (uniform, global, proportional, explicit schedules),
information-concentration layer weights, and the ratio sources (:mod:`pruning.planning.ratio_sources`) that
turn a target into a plan."""
from pruning.planning.schedule import (  # noqa: F401
    ALLOCATIONS,
    FLOPS_TOLERANCE,
    InfeasibleTargetError,
    PruningConfig,
    keep_from_ratios,
    allocate_proportional,
    allocate_global,
    plan_pruning,
    ratios_of,
    reachable_reduction,
    save_schedule,
    load_schedule,
)
from pruning.planning.utilization import allocate_utilization  # noqa: F401
from pruning.planning.concentration import (  # noqa: F401
    layer_indicators,
    information_concentration,
    concentration_weights,
)
from pruning.planning.ratio_sources import (  # noqa: F401
    RatioInputs,
    RatioPlan,
    RatioSource,
    RatioSourceError,
    RatioTarget,
    create_ratio_source,
    list_ratio_sources,
    ratio_source_class,
    register_ratio_source,
)

__all__ = [
    "ALLOCATIONS",
    "FLOPS_TOLERANCE",
    "InfeasibleTargetError",
    "PruningConfig",
    "keep_from_ratios",
    "allocate_proportional",
    "allocate_global",
    "plan_pruning",
    "ratios_of",
    "reachable_reduction",
    "save_schedule",
    "load_schedule",
    "layer_indicators",
    "information_concentration",
    "concentration_weights",
    "allocate_utilization",
    "RatioInputs",
    "RatioPlan",
    "RatioSource",
    "RatioSourceError",
    "RatioTarget",
    "create_ratio_source",
    "list_ratio_sources",
    "ratio_source_class",
    "register_ratio_source",
]
