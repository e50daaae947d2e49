"""The ``task:`` and ``task_kwargs:`` keys of a sweep or study config, and which task a run uses.

``task`` is a registered task (``classification``, ``segmentation``; see
:func:`pruning.tasks.list_tasks`) or an import path ``package.module:factory`` (imported when the
config is read: trusted sources only, as for models); ``task_kwargs`` its options. Absent, the
task is classification (a checkpoint that records no task is one of it). A task that differs
from the one a checkpoint records is refused: the checkpoint was trained for the recorded one,
and a config's objectives and columns are checked against its ``task:`` when it is read.
"""
from __future__ import annotations

from typing import Any, Mapping

from orchestrator.experiment.checks import ConfigError, check_mapping, check_string

__all__ = ["TASK_KEYS", "resolve_task", "task_spec_from"]

#: the top-level config keys of a task
TASK_KEYS = ("task", "task_kwargs")


def task_spec_from(data: Mapping[str, Any]) -> Any:
    """The :class:`pruning.tasks.TaskSpec` a config's top level names (built once, so a bad name,
    import path or option fails when the config is read), or None when it names none."""
    from pruning.errors import InputError, first_line
    from pruning.tasks import TaskSpec

    if "task" not in data:
        if "task_kwargs" in data:
            raise ConfigError("task_kwargs", "goes with task: name the task too")
        return None
    spec_kwargs = check_mapping("task_kwargs", data.get("task_kwargs"))
    try:
        spec = TaskSpec(check_string("task", data["task"]), spec_kwargs)
        spec.build()
    except InputError as err:
        raise ConfigError("task_kwargs" if "option" in str(err) else "task", first_line(err)) from None
    except TypeError as err:  # a registered task's unknown option
        raise ConfigError("task_kwargs", first_line(err)) from None
    return spec


def resolve_task(configured: Any, recorded: Mapping[str, Any] | None, where: str = "the checkpoint") -> Any:
    """The :class:`~pruning.tasks.TaskSpec` a run uses: ``configured`` (a config's or command line's,
    None: not given) against the ``recorded`` one (a checkpoint's ``meta["task"]``, None: none)."""
    from pruning.tasks import TaskSpec

    if recorded is None:
        return configured if configured is not None else TaskSpec()
    stored = TaskSpec.from_record(recorded)
    if configured is not None and configured != stored:
        raise ConfigError("task", f"{configured.name!r} differs from the task {stored.name!r} {where} records "
                                  f"(with {dict(stored.kwargs)}); drop task: to use it")
    return stored

