"""Search spaces: an Optuna trial -> a pruning plan (:class:`TrialPlan`).

The contract is in ``_base``; one module per space. Importing this package imports every space
module so that their classes register; adding a space is one file plus one import line below.
"""
from search_spaces._base import (  # noqa: F401  (re-exported)
    ALLOCATION_CHOICES,
    WARM_START_QUANTILES,
    SearchSpace,
    SpaceContext,
    TrialPlan,
    create_search_space,
    list_search_spaces,
    register_space,
    search_space_class,
)
from search_spaces import uniform  # noqa: F401  (registers uniform)
from search_spaces import per_layer  # noqa: F401  (registers per_layer)
from search_spaces import concentration  # noqa: F401  (registers concentration)
from search_spaces import snpfi  # noqa: F401  (registers snpfi)
from search_spaces import stages  # noqa: F401  (registers stages)

__all__ = [
    "ALLOCATION_CHOICES",
    "WARM_START_QUANTILES",
    "SearchSpace",
    "SpaceContext",
    "TrialPlan",
    "create_search_space",
    "list_search_spaces",
    "register_space",
    "search_space_class",
]
