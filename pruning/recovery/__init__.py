"""After pruning: the one recovery recipe (reconstruction, BN recalibration, fine-tuning and
distillation) and the least-squares reconstruction it uses."""
from pruning.recovery.least_squares import RowBudget  # noqa: F401
from pruning.recovery.reconstruction import (  # noqa: F401
    ReconstructionReport,
    consumers_of,
    kept_outputs_of,
    reconstruct_consumers,
)
from pruning.recovery.targets import LayerTargets, OriginalTargets, original_targets  # noqa: F401
from pruning.recovery.progressive import STEP_ORDERS, Rescorer, StepResult, step_widths  # noqa: F401
from pruning.recovery.recipe import BN_DATA, STAGES, RENAMED_KEYS, RecipeError, RecoveryRecipe  # noqa: F401
from pruning.recovery.stages import (  # noqa: F401
    RecoveryData,
    RecoveryResult,
    reconstruction_targets,
    recover,
    recovery_data_for,
)

__all__ = [
    "LayerTargets",
    "OriginalTargets",
    "ReconstructionReport",
    "RowBudget",
    "consumers_of",
    "original_targets",
    "kept_outputs_of",
    "reconstruct_consumers",
    "STEP_ORDERS",
    "Rescorer",
    "StepResult",
    "step_widths",
    "BN_DATA",
    "STAGES",
    "RENAMED_KEYS",
    "RecipeError",
    "RecoveryData",
    "RecoveryRecipe",
    "RecoveryResult",
    "reconstruction_targets",
    "recover",
    "recovery_data_for",
]
