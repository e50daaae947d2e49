"""What a sweep and a study open alike, in order: :meth:`Experiment.open` (the run directory
holds no experiment, or one to resume; the tracking server answers; the baselines exist), then
:meth:`Experiment.record` (the resolved config in the run directory), :meth:`Experiment.connect`
(Ray, with the GPUs the config asks for) and :meth:`Experiment.start` (the MLflow parent run
with the resolved config, the baselines' metrics and datasets)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from orchestrator.experiment.checks import ConfigError
from orchestrator.experiment.lock import RunDirLock
from orchestrator.experiment.relocation import move_artifact_locations, recorded_run_dir
from orchestrator.experiment.signals import Termination, terminations_as_interrupts
from orchestrator.experiment.storage import MIN_FREE_BYTES, check_free_space, quiet_disk_errors, storage_error
from orchestrator.experiment.model_settings import check_source_exists
from orchestrator.experiment.run_info import dataset_entity, git_commit, system_tags
from orchestrator.experiment.runner import EXPERIMENT_NAME, check_tracking_reachable, flatten, ray_connection
from orchestrator.experiment.tracking import TAG_COMMIT, TAG_SWEEP, Tracker, resume_command
from pruning.utils import atomic_write

__all__ = ["ExperimentSpec", "Experiment", "check_cluster_cpus", "check_cluster_gpus"]

#: the command that runs each kind of experiment (``prunesweep <command> --resume RUN_DIR``)


@dataclass(frozen=True)
class ExperimentSpec:
    """Which experiment to open: its ``kind`` (``sweep`` or ``study``: the MLflow ``prunesweep.kind``
    tag and the command that resumes it), ``name``, ``run_dir``, MLflow ``tracking_uri`` and
    ``experiment``; ``config``: the resolved config (plain data), recorded as ``config_file`` in
    the run directory and as the parent run's params; ``unique_names``: every trial's run name is
    unique (a study's cells)."""

    kind: str
    name: str
    run_dir: str
    tracking_uri: str
    experiment: str
    config: Mapping[str, Any]
    config_file: str
    unique_names: bool = False

    @classmethod
    def of(cls, kind: str, config, config_file: str, unique_names: bool = False) -> ExperimentSpec:
        """The spec of a sweep's or a study's config (``name``, ``run_dir``, ``tracking_uri``,
        ``tracking.experiment``, ``to_dict()``)."""
        return cls(kind, config.name, config.run_dir, config.tracking_uri, config.tracking.experiment,
                   config.to_dict(), config_file, unique_names)

    @property
    def text(self) -> str:
        """The resolved config as YAML (what the run directory and the parent run record)."""
        import yaml

        return yaml.safe_dump(dict(self.config), sort_keys=False, default_flow_style=None)


class Experiment:
    """One sweep or study being run (or resumed) in its run directory; see the module docstring."""

    def __init__(self, spec: ExperimentSpec, resume: bool, lock: RunDirLock | None = None) -> None:
        self.spec = spec
        self.resume = resume
        self.lock = lock
        #: the SIGTERM/SIGHUP that stopped the experiment, if one did (see :meth:`connect`)
        self.termination = Termination()
        # a resumed copy or moved run directory: its parent run is tagged where it started
        started_in = recorded_run_dir(spec.run_dir, spec.config_file) if resume else None
        self.tracker = Tracker(spec.tracking_uri, spec.experiment, spec.run_dir, kind=spec.kind,
                               unique_names=spec.unique_names, recorded_run_dir=started_in)

    @classmethod
    def open(cls, spec: ExperimentSpec, resume: bool, sources: Iterable[Any] = ()) -> Experiment:
        """Check, before anything loads: no other driver runs in the run directory (its lock is
        taken here and held until :meth:`close`, or the end of a ``with`` block), the run
        directory holds no experiment (``resume``: one Tune can restore), the tracking server
        answers, every baseline ``source`` exists, the run directory has room
        (:data:`~orchestrator.experiment.storage.MIN_FREE_BYTES`). A full disk or a read-only
        filesystem is one line naming the path (:meth:`__exit__` says so for the whole block).
        A resumed copy or moved run directory's own database has its artifact locations pointed
        at it (:func:`~orchestrator.experiment.relocation.move_artifact_locations`)."""
        try:
            lock = RunDirLock(spec.run_dir, spec.kind).acquire()
        except OSError as err:
            raise storage_error(err, spec.run_dir, _resume_if_started(spec)) or err
        try:
            cls._check(spec, resume, sources)
            experiment = cls(spec, resume, lock)
            if resume:
                move_artifact_locations(spec.tracking_uri, experiment.tracker.move)
        except BaseException:
            lock.release()
            raise
        return experiment

    @staticmethod
    def _check(spec: ExperimentSpec, resume: bool, sources: Iterable[Any]) -> None:
        from ray import tune

        experiment = Path(spec.run_dir) / EXPERIMENT_NAME
        word = {"study": "a study"}.get(spec.kind, f"a {spec.kind}")
        if resume and not tune.Tuner.can_restore(str(experiment)):
            raise ConfigError("resume", f"{spec.run_dir} holds no {spec.kind} to resume (no {experiment})")
        if not resume and experiment.exists():
            raise ConfigError("run_dir", f"{spec.run_dir} already holds {word}: resume it with "
                              f"`{resume_command(spec.kind, spec.run_dir)}` or choose another run_dir")
        check_tracking_reachable(spec.tracking_uri)
        for source in sources:
            check_source_exists(source)
        check_free_space(spec.run_dir, MIN_FREE_BYTES, word)

    def close(self) -> None:
        """Let the run directory's lock go (the driver is done with it)."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, kind: Any, error: BaseException | None, trace: Any) -> None:
        """Let the lock go; an error that a full disk or a read-only filesystem caused, anywhere
        in the block (a trial's, Tune's, MLflow's), becomes one line naming the path, with the
        command that resumes the experiment where Tune has started it."""
        self.close()
        stopped = storage_error(error, self.spec.run_dir, _resume_if_started(self.spec)) if error is not None else None
        if stopped is not None:
            raise stopped from None

    @property
    def run_dir(self) -> Path:
        return Path(self.spec.run_dir)

    def record(self) -> None:
        """Write the resolved config into the run directory (a resume keeps the recorded one)."""
        if not self.resume:
            text = self.spec.text
            atomic_write(self.run_dir / self.spec.config_file, lambda tmp: tmp.write_text(text))

    @contextlib.contextmanager
    def connect(self, address: str | None, verbose: bool, gpus: Mapping[str, float]) -> Iterator[None]:
        """Join (or start) Ray for the block; refuse each of ``gpus`` (config key -> GPUs it asks
        for) beyond the cluster's GPUs, where Ray would leave its tasks pending forever. Within
        the block SIGTERM and SIGHUP stop the experiment as Ctrl-C does, recorded in
        :attr:`termination` (:mod:`orchestrator.experiment.signals`), and what Ray, Tune and
        MLflow log about a full disk or a read-only filesystem is dropped (:meth:`__exit__` says
        it in one line)."""
        with ray_connection(address, verbose), quiet_disk_errors(self.spec.run_dir):
            check_cluster_gpus(gpus)
            with terminations_as_interrupts(self.termination):
                yield

    def start(self, *, baseline: Mapping[str, float], setups: Iterable[Any], tags: Mapping[str, str] = (),
              gpus_per_trial: float = 0) -> tuple[str, bool]:
        """Create (a resume: reopen) the MLflow parent run: the resolved config (and its YAML as
        ``config/<config_file>``), ``tags`` with the system's (:func:`system_tags`), the
        ``baseline`` metrics, each of ``setups``' datasets. Returns its id and whether it is new."""
        spec, tracker = self.spec, self.tracker
        parent, created = tracker.start_parent(
            spec.name, params=flatten(spec.config), texts={f"config/{spec.config_file}": spec.text}, reuse=self.resume,
            tags={TAG_SWEEP: spec.name, TAG_COMMIT: git_commit(), **dict(tags), **system_tags(gpus_per_trial)},
        )
        if created:
            tracker.log_metrics(parent, {f"baseline_{k}": v for k, v in baseline.items()})
        for setup in setups:
            self.tracker.log_dataset(parent, dataset_entity(setup.data_config, setup.splits))
        return parent, created


def _resume_if_started(spec: ExperimentSpec) -> str | None:
    """The command that resumes the experiment, None before Tune started it."""
    return resume_command(spec.kind, spec.run_dir) if (Path(spec.run_dir) / EXPERIMENT_NAME).is_dir() else None


def check_cluster_cpus(resources, what: str) -> None:
    """Refuse a trial that asks for more CPUs than the Ray cluster has (Ray would leave it
    pending forever), naming ``<what>.cpus_per_trial``; a concurrency above what the cluster
    runs at once only waits, so it is not refused."""
    import ray

    have = float(ray.cluster_resources().get("CPU", 0))
    if resources.cpus > have:
        raise ConfigError(f"{what}.cpus_per_trial", f"is {resources.cpus:g} but the Ray cluster has {have:g} CPU(s)")


def check_cluster_gpus(gpus: Mapping[str, float]) -> None:
    """Refuse each of ``gpus`` (config key -> GPUs it asks for, per trial or per worker) beyond
    the GPUs of the Ray cluster joined, where Ray would leave its tasks pending forever."""
    import ray

    have = float(ray.cluster_resources().get("GPU", 0))
    for key, want in gpus.items():
        if want > 0 and want > have:
            raise ConfigError(key, f"is {want:g} but the Ray cluster has {have:g} GPU(s); use 0 to run on CPUs")
