"""The up-front check that the pruning engine can handle a model a user brings.

:func:`check_prunable` does once, in seconds, what every pruning run does: it traces the model
into its channel groups (:class:`~pruning.structure.PruningSpace`), removes one channel (one
unit where channels go together: a grouped convolution's channel in each group, an attention
head) from every group on a copy, and runs the pruned copy. A model the dependency graph cannot handle
(an op it cannot trace, a coupling it resolves differently, a layer whose shapes break after
pruning) then fails with a one-line :class:`UnprunableModelError` naming the layer, before any
data is scored or any training runs, rather than after a long run.
"""
from __future__ import annotations

import torch
from torch import nn

from pruning.errors import InputError, one_line
from pruning.structure.engine import PruningSpace, prune_model
from pruning.structure.errors import PruningError

__all__ = ["UnprunableModelError", "check_prunable"]


class UnprunableModelError(InputError):
    """A model the pruning engine cannot trace or prune; the message names the layer."""


def check_prunable(model: nn.Module, shape: tuple[int, int, int], name: str = "model"):
    """The model's :class:`~pruning.structure.PruningSpace` on ``(1, *shape)`` inputs, after a
    trial pruning of one channel per group; ``model`` itself is not modified."""
    example = torch.zeros(1, *shape)
    try:
        space = PruningSpace.build(model, example)
    except PruningError as err:
        raise UnprunableModelError(f"{name} cannot be pruned: {err}") from None
    except Exception as err:
        raise UnprunableModelError(
            f"{name} cannot be traced for pruning{_where(err, model)}: {one_line(err)}") from None
    if not space.groups:
        raise UnprunableModelError(f"{name} has no channels the pruning engine can remove "
                                   "(no Conv2d/Linear output besides the classifier's)")
    keep = {g.name: g.size - g.units.width for g in space.groups if g.size > g.units.width}
    scores = {n: torch.arange(space[n].size, dtype=torch.float32) for n in keep}
    try:
        pruned, _ = prune_model(model, example, space, keep, scores)
    except PruningError as err:
        raise UnprunableModelError(f"{name} cannot be pruned: {err}") from None
    except Exception as err:
        raise UnprunableModelError(f"{name} cannot be pruned{_where(err, model)}: {one_line(err)}") from None
    out = _run_pruned(pruned, example, name)
    with torch.no_grad():
        full = _eval_output(model, example)
    if isinstance(out, torch.Tensor) and isinstance(full, torch.Tensor) and out.shape != full.shape:
        raise UnprunableModelError(f"{name} changes its output shape when pruned "
                                   f"({tuple(full.shape)} -> {tuple(out.shape)}): the classifier is not its last layer")
    return space


def _run_pruned(pruned: nn.Module, example: torch.Tensor, name: str):
    """The pruned copy's output; where it fails outside any layer's forward (in the model's own
    code, e.g. a reshape to a width it keeps as an attribute), the last layer that ran is named."""
    finished: list[str] = []
    hooks = [m.register_forward_hook(lambda *_, n=n: finished.append(n)) for n, m in pruned.named_modules() if n]
    try:
        with torch.no_grad():
            return pruned.eval()(example)
    except Exception as err:
        where = _where(err, pruned) or (f" after layer {finished[-1]!r}" if finished else "")
        raise UnprunableModelError(f"{name} does not run once pruned{where}: {one_line(err)}") from None
    finally:
        for hook in hooks:
            hook.remove()


def _eval_output(model: nn.Module, example: torch.Tensor):
    from pruning.utils import preserved_modes

    with preserved_modes(model):
        model.eval()
        return model(example)


def _where(err: BaseException, model: nn.Module) -> str:
    """`` at layer 'name'``: the innermost layer of ``model`` whose forward raised ``err``, or
    else the layer feeding the graph node Torch-Pruning was processing; empty if neither."""
    names = {id(m): n for n, m in model.named_modules() if n}
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name == "forward" and id(owner) in names:
            return f" at layer {names[id(owner)]!r}"
    for frame in reversed(frames):
        node = frame.f_locals.get("node")
        seen, queue = set(), [node] if hasattr(node, "inputs") else []
        while queue:
            current = queue.pop(0)
            if id(current) in seen:
                continue
            seen.add(id(current))
            if id(getattr(current, "module", None)) in names:
                return f" after layer {names[id(current.module)]!r}"
            queue += list(getattr(current, "inputs", ()))
    return ""
