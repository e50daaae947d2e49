"""A trial's bookkeeping, not one of its parameters: what names and tags its MLflow run.

The searcher that makes a trial's config (``DefineByRun``, ``FixedConfigs``) puts a
:class:`TrialMeta` under :data:`META_KEY`, the one key of a Tune config that is no parameter;
the trial body and the MLflow logger take it out again with :func:`split_config`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["META_KEY", "TrialMeta", "split_config", "plain_config", "typed_config"]

#: the Tune config key of a trial's :class:`TrialMeta`
META_KEY = "trial_meta"


@dataclass(frozen=True)
class TrialMeta:
    """``number``: Optuna's trial number (the MLflow run ``trial-NNN`` and its
    ``prunesweep.trial_number`` tag); ``name``: the run's name where given instead (``refine-NNN``,
    a study cell's id); ``stage`` and ``refines``: the tags ``prunesweep.stage`` and
    ``prunesweep.refines`` (the screening trial a refined one runs again); ``steps``: the recovery
    steps a refined trial runs instead of its recipe's (one of those ``sweep.refine.recipe.steps``
    lists; None: the recipe's)."""

    number: int | None = None
    name: str | None = None
    stage: str | None = None
    refines: str | None = None
    steps: int | None = None

    def run_name(self) -> str | None:
        """The MLflow run name this names, if any."""
        if self.name:
            return self.name
        return f"trial-{int(self.number):03d}" if self.number is not None else None

    def __str__(self) -> str:  # what Tune puts in the trial's folder name
        return self.run_name() or "trial"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


def split_config(config: Mapping[str, Any] | None) -> tuple[dict[str, Any], TrialMeta]:
    """A Tune trial config's parameters and its :class:`TrialMeta` (empty where it has none)."""
    params = dict(config or {})
    meta = params.pop(META_KEY, None)
    return params, meta if isinstance(meta, TrialMeta) else TrialMeta()


def plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial config as plain data (JSON): its :class:`TrialMeta` as a mapping."""
    params, meta = split_config(config)
    return {**params, META_KEY: meta.to_dict()}


def typed_config(plain: Mapping[str, Any]) -> dict[str, Any]:
    """A trial config back from :func:`plain_config`."""
    params = dict(plain)
    meta = TrialMeta(**params.pop(META_KEY, {}))
    return {**params, META_KEY: meta}
