"""``prunesweep compare``: a fixed criterion x FLOPs-target x seed grid run as Tune trials
(``grid_search``, no Optuna), logged to MLflow with a mean/std table and a plot."""
from __future__ import annotations

import json
import math
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from orchestrator.report import format_table
from orchestrator.sweeps.baseline import compute_baseline_statistics, needs_statistics, prepare_baseline, say
from orchestrator.sweeps.checks import ConfigError
from orchestrator.sweeps.compare_config import CompareConfig
from orchestrator.sweeps.run_info import dataset_entity, system_tags
from orchestrator.sweeps.runner import (
    EXPERIMENT_NAME,
    check_tracking_reachable,
    ray_connection,
    run_trials,
    start_parent_run,
)
from orchestrator.sweeps.tracking import Tracker, TrialRecord
from orchestrator.sweeps.trials import COMPARE_METRICS, COMPARE_TAGS, TrialSettings, compare_trial, import_paths_of
from pruning.utils import atomic_write

__all__ = ["CompareResult", "summarize_cells", "run_compare"]

#: metrics averaged over seeds in every table row
_SUMMARIZED = ("test_accuracy", "accuracy", "macs_reduction", "bn_accuracy")


@dataclass
class CompareResult:
    name: str
    run_dir: str
    tracking_uri: str
    parent_run_id: str
    baseline: dict[str, float]
    rows: list[dict[str, Any]]
    trials: list[TrialRecord]

    COLUMNS = ("criterion", "flops_reduction", "n", "failed", "test_accuracy_mean", "test_accuracy_std",
               "accuracy_mean", "accuracy_std", "macs_reduction_mean")

    @property
    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"

    def table(self) -> str:
        return format_table([[row.get(c) for c in self.COLUMNS] for row in self.rows], self.COLUMNS)

    def text(self) -> str:
        return (f"compare {self.name}: {len(self.trials)} runs; baseline test accuracy "
                f"{self.baseline.get('test_accuracy', float('nan')):.4f}\n{self.table()}\n"
                f"MLflow: {self.ui_command}   (parent run {self.parent_run_id})")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "run_dir": self.run_dir, "tracking_uri": self.tracking_uri,
                "parent_run_id": self.parent_run_id, "baseline": self.baseline, "rows": self.rows,
                "trials": [asdict(t) for t in self.trials], "mlflow_ui": self.ui_command}


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize_cells(config: CompareConfig, records: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    """One row per criterion and FLOPs target: finished (``n``) and failed runs, and the mean and
    std over seeds of each summarized metric (None where no run finished)."""
    rows = []
    for criterion in config.criteria:
        for target in config.flops_reductions:
            cell = [r for r in records if r.params.get("criterion") == criterion
                    and math.isclose(float(r.params.get("flops_reduction", "nan")), target)]
            done = [r for r in cell if r.status == "FINISHED"]
            row: dict[str, Any] = {"criterion": criterion, "flops_reduction": target, "n": len(done),
                                   "failed": sum(r.status == "FAILED" for r in cell)}
            for metric in _SUMMARIZED:
                row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std(
                    [r.metrics[metric] for r in done if metric in r.metrics])
            rows.append(row)
    return rows


def _plot_compare(rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, float], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for criterion in dict.fromkeys(r["criterion"] for r in rows):
        cells = [r for r in rows if r["criterion"] == criterion and r["test_accuracy_mean"] is not None]
        if cells:
            ax.errorbar([r["flops_reduction"] for r in cells], [r["test_accuracy_mean"] for r in cells],
                        yerr=[r["test_accuracy_std"] for r in cells], marker="o", capsize=3, label=criterion)
    if "test_accuracy" in baseline:
        ax.axhline(baseline["test_accuracy"], color="0.5", linestyle="--", label="unpruned")
    ax.set_xlabel("FLOPs (MACs) reduction target")
    ax.set_ylabel("test accuracy (mean +- std over seeds)")
    ax.grid(True, alpha=0.3)
    if ax.has_data():
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def run_compare(config: CompareConfig, *, address: str | None = None, progress: bool = True) -> CompareResult:
    """Run the criterion x FLOPs-target x seed grid as Tune trials; log a table and a plot."""
    from ray import tune

    from orchestrator.sweeps.model_settings import check_source_exists

    check_source_exists(config.source)  # the checkpoint or the weights file
    check_tracking_reachable(config.tracking_uri)
    if (Path(config.run_dir) / EXPERIMENT_NAME).exists():
        raise ConfigError("run_dir", f"{config.run_dir} already holds a comparison; choose another --run-dir or --name")
    threads = max(1, int(config.cpus_per_trial))
    setup = prepare_baseline(config.source, config.data, threads=threads, progress=progress)
    with ray_connection(address, progress):
        import ray

        if config.gpus_per_trial > float(ray.cluster_resources().get("GPU", 0)):
            raise ConfigError("gpus_per_trial", f"is {config.gpus_per_trial:g} but the Ray cluster has "
                              f"{float(ray.cluster_resources().get('GPU', 0)):g} GPU(s); use 0 to run on CPUs")
        needs, chip = needs_statistics(config.criteria)
        stats = None
        if needs:
            say(progress, "computing activation statistics")
            stats = compute_baseline_statistics(setup.model, setup.space, setup.batches, chip=chip, progress=progress,
                                                workers=config.concurrency, cpus_per_worker=config.cpus_per_trial)
        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
        atomic_write(Path(config.run_dir) / "compare.yaml", lambda tmp: tmp.write_text(text))
        tracker = Tracker(config.tracking_uri, config.tracking.experiment, config.run_dir, kind="compare")
        parent, _ = start_parent_run(tracker, config.name, config.to_dict(), {"config/compare.yaml": text},
                                     baseline=setup.metrics, reuse=False,
                                     tags=system_tags(config.gpus_per_trial))
        tracker.log_dataset(parent, dataset_entity(setup.data_config, setup.splits))
        settings = TrialSettings(data_config=asdict(setup.data_config), shape=setup.shape, seed=0, threads=threads,
                                 baseline=dict(setup.metrics), recipe=config.recipe, strategy=config.strategy,
                                 import_paths=import_paths_of(setup.spec.name))
        run_trials(
            tracker, compare_trial, settings, setup, stats=stats, cpus_per_trial=config.cpus_per_trial,
            gpus_per_trial=config.gpus_per_trial,
            concurrency=config.concurrency, metric_names=COMPARE_METRICS, tag_names=COMPARE_TAGS,
            param_space={"criterion": tune.grid_search(list(config.criteria)),
                         "flops_reduction": tune.grid_search(list(config.flops_reductions)),
                         "seed": tune.grid_search(list(config.seeds))},
            progress=progress,
        )
        records = tracker.read_trials()
        rows = summarize_cells(config, records)
        result = CompareResult(config.name, config.run_dir, config.tracking_uri, parent, dict(setup.metrics), rows, records)
        tracker.log_text(parent, result.table() + "\n", "compare/table.txt")
        tracker.log_text(parent, json.dumps(rows, indent=2), "compare/table.json")
        with tempfile.TemporaryDirectory(prefix="prunesweep-compare-") as folder:
            tracker.log_file(parent, _plot_compare(rows, setup.metrics, Path(folder) / "compare.png"), "compare")
        tracker.log_metrics(parent, {f"{row['criterion']}.{row['flops_reduction']:g}.test_accuracy_mean":
                                     row["test_accuracy_mean"] for row in rows if row["test_accuracy_mean"] is not None})
        tracker.finish_parent("FINISHED")
        return result
