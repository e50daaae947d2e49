"""The one base class of "the user asked for something impossible".

Every error raised for bad input (an unknown name, an invalid option, an unreadable or
mismatched file, an unreachable target) is an :class:`InputError`, so the command line can turn
exactly these into one ``error: ...`` line and let every other exception (a bug) keep its
traceback. It subclasses ``ValueError`` so that library callers catching ``ValueError`` keep
working.
"""
from __future__ import annotations

__all__ = ["InputError", "first_line", "one_line"]


class InputError(ValueError):
    """Bad input; the message is one line that names the bad value and, where there is a
    finite set, the valid ones."""


def first_line(err: BaseException) -> str:
    """An exception's first message line (its type's name when it has no message): what a
    one-line error quotes of an error raised by code it called."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def one_line(err: BaseException) -> str:
    """An exception's type and first message line (its type's name when it has no message)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
