"""Ray and Tune plumbing shared by sweeps and studies: joining Ray, and the one block that runs
a set of trials (:class:`TrialsSpec`) through a ``tune.Tuner`` (or its restore) and marks the
parent run FAILED when the driver itself raises."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from orchestrator.disk_errors import DiskError, find_disk_error
from orchestrator.experiment.callback import MlflowTrialLogger, ProgressLines
from orchestrator.experiment.checks import ConfigError
from orchestrator.experiment.storage import MIN_FREE_BYTES, StorageGuard, check_free_space
from orchestrator.experiment.tune_state import StateBackup, recover_state
from orchestrator.experiment.tracking import TUNE_EXPERIMENT, Tracker
from orchestrator.experiment.tracking_server import TrackingUnavailable, check_server, is_server
from pruning.utils import atomic_write

__all__ = [
    "EXPERIMENT_NAME", "check_storage_shared", "check_tracking_reachable", "ray_connection",
    "TrialResources", "TrialsSpec", "TrialOutput", "run_trials", "check_all_logged", "finished_cleanly", "flatten",
]

#: the Tune experiment's folder inside a run directory
EXPERIMENT_NAME = TUNE_EXPERIMENT
#: Tune's experiment-state snapshot period (seconds; Tune's own default is >= 10): a short period
#: keeps the window in which a killed driver forgets a finished trial small
SNAPSHOT_PERIOD_S = "1"
#: how often Tune starts a failed trial again before it is FAILED: once, so that a trial whose
#: worker or node was lost (a killed raylet, an OOM-killed worker) runs again on the nodes left;
#: Tune cannot tell that from a trial that raised, which therefore runs twice before it is FAILED
TRIAL_RETRIES = 1


#: ports of tracking stores reached over TCP, where the URI names none
_DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_tracking_reachable(tracking_uri: str) -> None:
    """A tracking server must answer before anything runs: one line within seconds, not a sweep
    that hangs in MLflow's retries. Inside the private network (``--ray-network auto`` where the
    kernel allows it, ``private``) this machine's 127.0.0.1 is the namespace's own: a server on
    the host's loopback is reached through :mod:`orchestrator.distributed.relay`, one on another
    host is refused."""
    from orchestrator.distributed import LOOPBACK_HOSTS, active

    parts = urllib.parse.urlsplit(tracking_uri)
    if parts.scheme == "sqlite":
        return
    if active():
        if parts.hostname not in LOOPBACK_HOSTS:
            raise ConfigError("tracking.uri", f"{tracking_uri!r} cannot be reached from the private loopback-only "
                              "network that Ray runs in; pass --ray-network host or log to a local server or sqlite file")
        _relay_to_host(tracking_uri, parts)
    if is_server(tracking_uri):
        check_server(tracking_uri)


def _relay_to_host(tracking_uri: str, parts: urllib.parse.SplitResult) -> None:
    """Forward the tracking server's loopback port from the namespace to the host's, and check
    that something accepts there."""
    from orchestrator.distributed import relay

    port = parts.port or _DEFAULT_PORTS.get(parts.scheme.split("+")[0])
    if port is None:
        raise ConfigError("tracking.uri", f"{tracking_uri!r} names no port; give host:port")
    if not relay.available():
        raise ConfigError("tracking.uri", f"{tracking_uri!r} is on the host's loopback, which this private network "
                          "reaches only through the relay that `prunesweep` starts; pass --ray-network host")
    try:
        relay.forward(parts.hostname, port)
        relay.check(parts.hostname, port)
    except OSError as err:
        raise TrackingUnavailable(tracking_uri, err.strerror or str(err),
                                  "start it, or give a tracking.uri (--tracking-uri) that answers") from None


def check_storage_shared(run_dir: str | os.PathLike) -> None:
    """Every alive Ray node must see ``run_dir``, Tune's storage: a trial persists its checkpoint
    there from the node it ran on, and the driver reads the front's models back from there to log
    them. Ray only finds out when a trial on a node that lacks the path saves its checkpoint (that
    trial errors); this asks every node up front (a zero-CPU task pinned to each, seconds), for a
    one-line error before anything runs. One node (a local Ray): nothing to ask."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node["NodeID"] for node in ray.nodes() if node.get("Alive")]
    if len(nodes) < 2:
        return
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    marker = Path(run_dir).absolute() / f".prunesweep-storage-{uuid.uuid4().hex}"
    marker.touch()
    try:
        # os.path.exists itself: a worker imports nothing of this package to run it
        probe = ray.remote(num_cpus=0, max_retries=0)(os.path.exists)
        seen = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                        .remote(str(marker)) for node in nodes], timeout=300)
    finally:
        marker.unlink(missing_ok=True)
    blind = [node for node, ok in zip(nodes, seen) if not ok]
    if blind:
        raise ConfigError("run_dir", f"{Path(run_dir).absolute()} is not visible on {len(blind)} of the {len(nodes)} "
                          f"Ray nodes ({', '.join(n[:12] for n in blind)}); Tune keeps trial checkpoints there: put "
                          "run_dir on a filesystem every node mounts at the same path (NFS), see docs/cluster.md")


@contextlib.contextmanager
def ray_connection(address: str | None, log_to_driver: bool) -> Iterator[None]:
    """Join ``address``, or start Ray locally, unless it is already initialised (then reuse it);
    a Ray started here is shut down on exit, none of its processes left. ``log_to_driver``: the
    Ray workers' own output (Tune's per-checkpoint lines) on this console; a failed trial's error
    reaches MLflow anyway."""
    from orchestrator.distributed import connect, shutdown

    connection = connect(address, log_to_driver=log_to_driver)
    try:
        yield
    finally:
        if connection.started:
            shutdown()


@contextlib.contextmanager
def _tune_environment(verbose: bool) -> Iterator[None]:
    """Frequent experiment snapshots; Tune's console output (its experiment heading, which it
    prints whatever its verbosity, and its INFO lines) only when ``verbose``, then on stderr:
    stdout stays clean for ``--json``, and the progress lines are the console's record."""
    previous = os.environ.get("TUNE_GLOBAL_CHECKPOINT_S")
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = previous or SNAPSHOT_PERIOD_S
    tune_logger = logging.getLogger("ray.tune")
    level = tune_logger.level
    try:
        with contextlib.ExitStack() as stack:
            sink = sys.stderr if verbose else stack.enter_context(open(os.devnull, "w"))
            stack.enter_context(contextlib.redirect_stdout(sink))
            if not verbose:
                tune_logger.setLevel(logging.WARNING)
            yield
    finally:
        tune_logger.setLevel(level)
        if previous is None:
            os.environ.pop("TUNE_GLOBAL_CHECKPOINT_S", None)


@dataclass(frozen=True)
class TrialResources:
    """What one trial holds (``cpus``, ``gpus``; fractions allowed) and how many run at once."""

    cpus: float = 1
    gpus: float = 0
    concurrency: int = 1

    def shared(self, concurrency: int) -> TrialResources:
        """The resources that ``concurrency`` trials at a time get from what ``self.concurrency``
        trials held (the same totals)."""
        share = self.concurrency / concurrency
        return TrialResources(self.cpus * share, self.gpus * share, concurrency)


@dataclass(frozen=True)
class TrialsSpec:
    """One Tune experiment of trials: ``count`` calls of ``trial`` (``sweep_trial`` /
    ``study_cell``; a config from the searcher that ``make_search`` builds, with ``refs`` and
    ``settings``: the shared objects' references and what every trial reads), with ``resources``;
    its state in ``<run_dir>/<folder>``; ``stage`` labels its progress lines; ``trial_bytes``:
    about what one trial keeps in the run directory (its checkpoint), for the free-space check."""

    trial: Callable[..., None]
    settings: Any
    refs: Any
    resources: TrialResources
    count: int
    make_search: Callable[[], Any]
    folder: str = EXPERIMENT_NAME
    stage: str = "trials"
    trial_bytes: int = 0


@dataclass(frozen=True)
class TrialOutput:
    """How ended trials are recorded: ``metric_names`` (numbers) and ``tag_names`` (strings) of
    their results logged to MLflow, and the numbers whose names match one of ``metric_patterns``
    (regular expressions of whole names: metrics that come in a varying number); on the console,
    with ``progress``, one line per ended trial showing its ``score`` (the task's primary metric)
    and MACs (``bar``: one bar for them all) and no Tune status tables unless ``verbose`` brings
    Tune's own output back."""

    metric_names: Sequence[str]
    tag_names: Sequence[str]
    progress: bool = True
    verbose: bool = False
    bar: bool = False
    metric_patterns: Sequence[str] = ()
    score: str = "accuracy"


def run_trials(tracker: Tracker, trials: TrialsSpec, output: TrialOutput, *, resume: bool = False):
    """Run ``trials`` as Tune trials, each logged to MLflow as a nested run of ``tracker``'s
    parent; returns Tune's ``ResultGrid``. ``resume`` restores the experiment in
    ``<run_dir>/<trials.folder>`` (its searcher and callbacks included) instead of starting one.
    Every Ray node must see the run directory, Tune's storage (:func:`check_storage_shared`).
    A raising driver marks the parent run FAILED; trials the logger could not log because the
    tracking server did not answer (Tune keeps them) raise ``TrackingUnavailable``, one line.
    Before Tune starts, the run directory's free space is checked (:func:`check_free_space`)
    and a resume makes Tune's newest state readable (:func:`recover_state`). A trial that failed for
    lack of space or on a read-only filesystem stops the experiment as Ctrl-C does
    (:class:`StorageGuard`): the parent run is KILLED and its ``OSError`` raised, which
    :class:`~orchestrator.experiment.experiment.Experiment` turns into one line.
    """
    from ray import tune

    # set on every run: the console style is process-wide (a restored experiment's callbacks
    # come back from its pickled state), so a study's bar must not outlive the study
    ProgressLines.enabled, ProgressLines.as_bar = output.progress, output.bar
    resources = trials.resources
    experiment = Path(tracker.run_dir) / trials.folder
    check_free_space(tracker.run_dir, MIN_FREE_BYTES + (0 if resume else trials.count * trials.trial_bytes),
                     f"{trials.count} {trials.stage} trial(s)")
    note = recover_state(experiment, f"the {tracker.kind}") if resume else None
    if note:
        print(note, file=sys.stderr, flush=True)
    try:
        check_storage_shared(tracker.run_dir)
        with _tune_environment(output.progress and output.verbose):
            trainable = tune.with_resources(functools.partial(trials.trial, refs=trials.refs, settings=trials.settings),
                                            {"cpu": resources.cpus, "gpu": resources.gpus})
            if resume:
                _move_search_storage(experiment)
                # the run directory may have been copied or moved since Tune pickled its callbacks
                MlflowTrialLogger.restoring, StateBackup.restoring = tracker, str(experiment)
                try:
                    tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
                finally:
                    MlflowTrialLogger.restoring = StateBackup.restoring = None
            else:
                tuner = _new_tuner(tracker, trainable, trials, output)
            MlflowTrialLogger.unlogged.pop(tracker.run_dir, None)
            StorageGuard.stopped.pop(tracker.run_dir, None)
            results = tuner.fit()
    except TrackingUnavailable:
        raise  # marking the parent FAILED would wait on the same server again
    except BaseException as err:
        # after a full disk Tune fails reading back what it cut short (a trial's pickled error)
        stopped = StorageGuard.stopped.pop(tracker.run_dir, None) or find_disk_error(err)
        if stopped is None:
            with contextlib.suppress(Exception):
                tracker.finish_parent("FAILED")
            raise
        raise _stopped_by_disk(tracker, stopped) from err
    stopped = StorageGuard.stopped.pop(tracker.run_dir, None)
    if stopped is not None:
        raise _stopped_by_disk(tracker, stopped)
    check_all_logged(tracker)
    return results


def _stopped_by_disk(tracker: Tracker, stopped: DiskError) -> OSError:
    """Mark the parent run KILLED (resumable) after a full disk or a read-only filesystem stopped
    the experiment, and the ``OSError`` to raise for it."""
    with contextlib.suppress(Exception):  # the tracking store may lie on the same full disk
        tracker.finish_parent("KILLED")
    return stopped.as_os_error()


def _move_search_storage(experiment: Path) -> None:
    """Point the storage of the trials a restored searcher creates at ``experiment``'s folder:
    Tune saves it with the search state, where the run directory was then, and moves only the
    trials it restores (a copied or moved run directory's new trials would go to the old place)."""
    import ray.cloudpickle as cloudpickle
    from ray.tune.search.search_generator import SearchGenerator

    saved = sorted(experiment.glob(SearchGenerator.CKPT_FILE_TMPL.format("*")))
    if not saved:
        return
    state = cloudpickle.loads(saved[-1].read_bytes())
    storage = state["experiment"].spec.get("storage") if state.get("experiment") is not None else None
    where = (str(experiment.parent), experiment.name)
    if storage is None or (storage.storage_fs_path, storage.experiment_dir_name) == where:
        return
    storage.storage_fs_path, storage.experiment_dir_name = where
    atomic_write(saved[-1], lambda tmp: tmp.write_bytes(cloudpickle.dumps(state)))


def _new_tuner(tracker: Tracker, trainable, trials: TrialsSpec, output: TrialOutput):
    from ray import tune

    callback = MlflowTrialLogger(tracker, output.metric_names, output.tag_names, output.metric_patterns)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=trials.make_search(), num_samples=trials.count,
                                    max_concurrent_trials=trials.resources.concurrency,
                                    # a trial reuses a finished one's worker: no process start and
                                    # torch import (seconds) per trial
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            storage_path=tracker.run_dir, name=trials.folder,
            callbacks=[callback, ProgressLines(trials.stage, trials.count, output.score), StorageGuard(tracker.run_dir),
                       StateBackup(str(Path(tracker.run_dir) / trials.folder))],
            failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES, fail_fast=False),
            verbose=1 if output.progress and output.verbose else 0,
        ),
    )


def check_all_logged(tracker: Tracker) -> None:
    """Stop with one line when the trial logger could not log every ended trial, the server
    still unreachable at the experiment's end (Tune keeps the results: a resume logs them)."""
    missing = MlflowTrialLogger.unlogged.pop(tracker.run_dir, None)
    if missing:
        reason, names = missing
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        hint = tracker.resume_hint()
        raise TrackingUnavailable(tracker.uri, reason, f"{len(names)} ended trial(s) are not logged ({shown})"
                                  + (f"; {hint}" if hint else ""))


def finished_cleanly(results, expected: int) -> bool:
    """All ``expected`` trials were created and ended (terminated or errored): not interrupted."""
    return len(results) >= expected and results.num_terminated + results.num_errors >= len(results)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept as values): MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
