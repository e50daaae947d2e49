"""Importing user code named by an import path ``package.module:attribute``: a model factory
(:mod:`pruning.models.external`) or a task factory (:mod:`pruning.tasks`).

An import path names code that is run (also when a checkpoint that records it is loaded), so
it must come from an installed, non-standard-library module: trusted sources only.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any

from pruning.errors import InputError, one_line

__all__ = ["import_attribute", "is_import_path"]


def is_import_path(name: str) -> bool:
    """``package.module:attribute`` (a colon, and not one of the model prefixes' ``torchvision:``/``timm:``)."""
    module, sep, attribute = name.partition(":")
    return bool(sep) and bool(attribute) and module not in ("torchvision", "timm")


def import_attribute(path: str, kind: str, error: type[InputError] = InputError) -> Any:
    """The object ``path`` (``package.module:attribute``, dots allowed in both halves) names;
    ``error`` with a one-line message naming ``kind`` and ``path`` when it cannot be imported."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise error(f"{kind} {path!r} is not an import path package.module:factory")
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names or top == "builtins":
        raise error(f"{kind} {path!r}: {module_name!r} is a standard-library module, not a {kind}'s")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise error(f"{kind} {path!r}: cannot import {module_name!r} ({one_line(err)})") from None
    except Exception as err:
        raise error(f"{kind} {path!r}: importing {module_name!r} failed: {one_line(err)}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise error(f"{kind} {path!r}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    return target

