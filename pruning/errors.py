"""The one base class of "the user asked for something impossible".

Every error raised for bad input (an unknown name, an invalid option, an unreadable or
mismatched file, an unreachable target) is an :class:`InputError`, so the command line can turn
exactly these into one ``error: ...`` line and let every other exception (a bug) keep its
traceback. It subclasses ``ValueError`` so that library callers catching ``ValueError`` keep
working.
"""
from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input; the message is one line that names the bad value and, where there is a
    finite set, the valid ones."""
