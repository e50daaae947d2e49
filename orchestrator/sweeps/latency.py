"""Latency on the deployment runtime as a sweep objective (``objectives: {latency_ms: min}``).

The ``sweep.latency`` section says where the model is deployed (:class:`LatencySettings`: a
:class:`~pruning.latency.LatencyTarget` plus the table's grid). The driver checks the runtime
runs here before anything else, then builds the network's latency table once
(:func:`load_or_build_table`, the sweep phase ``latency_table``; kept in
``<run_dir>/baseline/latency-table.json`` and read back on a resume) and hands it to the trials:

* a screening trial (and every trial of a one-stage sweep) reports the table's prediction:
  ``latency_ms`` = ``latency_predicted_ms``;
* a refined trial exports its model and times it: ``latency_ms`` = ``latency_measured_ms``,
  with ``latency_error`` = predicted / measured - 1;
* the front's models not measured in their trial are measured by the driver at the end
  (:func:`front_latency`), so every front row carries its measured latency and the error.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from orchestrator.experiment.checks import ConfigError, check_choice, check_int, check_keys, check_mapping
from pruning.errors import InputError
from pruning.latency import DEVICES, LatencyTable, LatencyTarget, build_latency_table, check_available, list_runtimes
from pruning.utils import atomic_write

__all__ = ["LATENCY_METRICS", "TABLE_FILE", "LatencySettings", "check_runtime", "load_or_build_table",
           "trial_latency", "front_latency", "front_error_summary"]

#: what a trial with a latency table reports (the measured ones and the error where it measured)
LATENCY_METRICS = ("latency_ms", "latency_predicted_ms", "latency_measured_ms", "latency_error")
TABLE_FILE = "latency-table.json"


@dataclass(frozen=True)
class LatencySettings:
    """``sweep.latency``: the deployment target of the ``latency_ms`` objective, written flat in
    the config (``{runtime, device, batch, threads, warmup, repeats, table_points}``).

    target: the :class:`~pruning.latency.LatencyTarget` (default: onnxruntime on the CPU, batch 1,
        one thread; ``tensorrt`` is onnxruntime's TensorRT provider, a GPU only).
    table_points: widths per layer dimension the latency table times (more: finer, slower to build).
    """

    target: LatencyTarget = field(default_factory=LatencyTarget)
    table_points: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.target, LatencyTarget):
            raise ConfigError("sweep.latency", f"must be a mapping, got {type(self.target).__name__}")
        check_int("sweep.latency.table_points", self.table_points, lo=2)

    @classmethod
    def from_dict(cls, data: Any) -> LatencySettings:
        """The section's keys checked one by one, so that an error names its key path."""
        data = dict(check_mapping("sweep.latency", data))
        check_keys("sweep.latency.", data, [*_TARGET_KEYS, "table_points"])
        for key, valid in (("runtime", list_runtimes()), ("device", DEVICES)):
            if key in data:
                check_choice(f"sweep.latency.{key}", data[key], valid)
        for key, low in (("batch", 1), ("threads", 1), ("warmup", 0), ("repeats", 1)):
            if key in data:
                check_int(f"sweep.latency.{key}", data[key], lo=low)
        return cls(LatencyTarget(**{k: data[k] for k in _TARGET_KEYS if k in data}), data.get("table_points", 8))

    def to_dict(self) -> dict[str, Any]:
        return {**self.target.to_dict(), "table_points": self.table_points}


#: the keys of ``sweep.latency`` that are the :class:`~pruning.latency.LatencyTarget`'s
_TARGET_KEYS = tuple(f.name for f in fields(LatencyTarget))


def check_runtime(settings: LatencySettings) -> None:
    """A runtime that cannot run here is one :class:`ConfigError` line, before any trial."""
    try:
        check_available(settings.target)
    except InputError as err:
        raise ConfigError("sweep.latency.runtime", str(err)) from None


def load_or_build_table(setup, folder: str | Path, settings: LatencySettings, progress: bool) -> LatencyTable:
    """The baseline's latency table on ``settings``' target: read back from ``folder`` when it
    was built there for the same target and grid, else built (and written, atomically)."""
    from orchestrator.experiment.baseline import say
    from pruning.latency import create_runtime

    path = Path(folder) / TABLE_FILE
    if path.is_file():
        table = LatencyTable.from_dict(json.loads(path.read_text()))
        if table.target == settings.target and table.meta.get("points") == settings.table_points \
                and tuple(table.input_shape) == tuple(setup.shape):
            say(progress, f"latency table read back from {path}")
            return table
    say(progress, f"building the latency table on {settings.target.describe()}")
    shown = {"step": -1}

    def report(done: int, total: int) -> None:
        step = 10 * done // total
        if progress and step > shown["step"]:
            shown["step"] = step
            say(True, f"  latency table: {done}/{total} layer timings")

    table = build_latency_table(setup.model, tuple(setup.shape), create_runtime(settings.target.runtime), settings.target,
                                settings.table_points, report)
    text = json.dumps(table.to_dict())
    atomic_write(path, lambda tmp: tmp.write_text(text))
    say(progress, f"latency table: {table.measurements} layer timings in {table.build_seconds:.0f} s; unpruned "
                  f"{table.baseline_ms:.3g} ms measured")
    return table


def trial_latency(pruned, table: LatencyTable, measure: bool) -> dict[str, float]:
    """A trial's latency metrics: the table's prediction, and with ``measure`` the exported model
    timed on the target (then the objective's value) and the prediction's relative error."""
    from pruning.latency import create_runtime

    predicted = table.predict(pruned)
    if not measure:
        return {"latency_ms": predicted, "latency_predicted_ms": predicted}
    measured = create_runtime(table.target.runtime).time_model(pruned, tuple(table.input_shape), table.target).median_ms
    return {"latency_ms": measured, "latency_predicted_ms": predicted, "latency_measured_ms": measured,
            "latency_error": predicted / measured - 1.0}


def front_latency(point: Mapping[str, Any], model, table: LatencyTable) -> dict[str, float]:
    """The latency metrics a front trial lacks: its exported model measured on the table's target
    (by the driver at the end of the sweep, one model at a time: no trial competes for the CPU);
    nothing where its trial measured it already."""
    if point.get("latency_measured_ms") is not None:
        return {}
    metrics = trial_latency(model, table, measure=True)
    return {k: metrics[k] for k in ("latency_predicted_ms", "latency_measured_ms", "latency_error")}


def front_error_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The parent run's summary of the latency model on the front: the median absolute relative
    error of its predictions (none where no front row was measured)."""
    errors = [abs(row["latency_error"]) for row in rows if row.get("latency_error") is not None]
    return {"front_latency_error_median": statistics.median(errors)} if errors else {}
