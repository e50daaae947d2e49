"""Ratio sources: the contract in ``_base`` and one module per source.

Importing this package imports every source module so that their classes register; adding a
source is one file plus one import line below.
"""
from pruning.planning.ratio_sources._base import (
    TARGETS,
    RatioInputs,
    RatioPlan,
    RatioSource,
    RatioSourceError,
    RatioTarget,
    create_ratio_source,
    list_ratio_sources,
    ratio_source_class,
    ratio_source_options,
    register_ratio_source,
)
from pruning.planning.ratio_sources import uniform  # noqa: F401  (registers uniform)
from pruning.planning.ratio_sources import global_ranking  # noqa: F401  (registers global)
from pruning.planning.ratio_sources import concentration  # noqa: F401  (registers concentration)
from pruning.planning.ratio_sources import snpfi  # noqa: F401  (registers snpfi)
from pruning.planning.ratio_sources import schedule_file  # noqa: F401  (registers schedule)

__all__ = [
    "TARGETS",
    "RatioInputs",
    "RatioPlan",
    "RatioSource",
    "RatioSourceError",
    "RatioTarget",
    "create_ratio_source",
    "list_ratio_sources",
    "ratio_source_class",
    "ratio_source_options",
    "register_ratio_source",
]
