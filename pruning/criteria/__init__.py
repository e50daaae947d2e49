"""Channel-importance criteria: the contract in ``_base`` and one module per criterion.

Importing this package imports every criterion module so that their classes register; adding a
criterion is one file plus one import line below.
"""
from pruning.criteria._base import (  # noqa: F401  (re-exported)
    Batch,
    Criterion,
    ModuleCriterion,
    ScoringContext,
    StatisticsCriterion,
    create_criterion,
    criteria_with_class_scores,
    criterion_class,
    list_criteria,
    register_criterion,
    statistics_options,
)
from pruning.criteria import apoz  # noqa: F401  (registers apoz, mean-activation)
from pruning.criteria import bn_scale  # noqa: F401  (registers bn-scale)
from pruning.criteria import chip  # noqa: F401  (registers chip)
from pruning.criteria import entropy  # noqa: F401  (registers entropy)
from pruning.criteria import fpgm  # noqa: F401  (registers fpgm)
from pruning.criteria import hrank  # noqa: F401  (registers hrank)
from pruning.criteria import magnitude  # noqa: F401  (registers l1, l2)
from pruning.criteria import random  # noqa: F401  (registers random)
from pruning.criteria import taylor  # noqa: F401  (registers taylor)
from pruning.criteria import shapley  # noqa: F401  (registers shapley)
from pruning.criteria import snpfi  # noqa: F401  (registers snpfi)
