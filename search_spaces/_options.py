"""Option validation and parameter helpers of the search spaces: one-line ``ValueError`` s that
name the option and its value (the contract in ``search_spaces._base``)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from pruning.criteria import list_criteria


def _float_range(option: str, value: Any, *, lo: float, hi: float, hi_open: bool = False,
                 positive: bool = False) -> tuple[float, float]:
    """A (low, high) pair with low <= high inside [lo, hi] (or [lo, hi)); lists are accepted."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{option} must be a (low, high) pair of numbers, got {value!r}") from None
    upper = f"{hi})" if hi_open else f"{hi}]"
    inside = all(
        math.isfinite(v) and lo <= v and (v < hi if hi_open else v <= hi) and (v > 0 or not positive)
        for v in (low, high)
    )
    if not inside:
        where = f"(0, {upper}" if positive else f"[{lo}, {upper}"
        raise ValueError(f"{option} must lie within {where}, got {value!r}")
    if low > high:
        raise ValueError(f"{option} must be (low, high) with low <= high, got {value!r}")
    return low, high


def _int_range(option: str, value: Any, *, lo: int = 0) -> tuple[int, int]:
    try:
        low, high = value
    except (TypeError, ValueError):
        raise ValueError(f"{option} must be a (low, high) pair of integers, got {value!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
        raise ValueError(f"{option} must be a (low, high) pair of integers, got {value!r}")
    if low < lo:
        raise ValueError(f"{option} must be >= {lo}, got {value!r}")
    if low > high:
        raise ValueError(f"{option} must be (low, high) with low <= high, got {value!r}")
    return low, high


def _criteria(value: Any) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names:
        raise ValueError("criteria must name at least one criterion, got an empty list")
    valid = list_criteria()
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"criteria: unknown criterion {unknown[0]!r}; valid: {', '.join(valid)}")
    if len(set(names)) != len(names):
        raise ValueError(f"criteria must not repeat a name, got {list(names)!r}")
    return names


def _round_to(value: Any) -> int | tuple[int, ...]:
    """One width multiple (fixed) or a list of at least two distinct ones (searched), as a tuple."""
    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if whole(value):
        return value
    if not isinstance(value, (list, tuple)) or not all(whole(v) for v in value):
        raise ValueError(f"round_to must be an integer >= 1 or a list of integers >= 1, got {value!r}")
    if len(value) < 2:
        raise ValueError(f"round_to must list at least two values to search (or be one integer), got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"round_to must not repeat a value, got {list(value)!r}")
    return tuple(value)


def _clip(value: float, bounds: tuple[float, float]) -> float:
    return min(max(value, bounds[0]), bounds[1])


def _unique(values: Sequence[Any]) -> list[Any]:
    """``values`` without repeats, in order."""
    return list(dict.fromkeys(values))


def _param(params: Mapping[str, Any], name: str) -> Any:
    try:
        return params[name]
    except KeyError:
        raise ValueError(f"missing parameter {name!r} (have: {', '.join(params) or 'none'})") from None


def _choice(params: Mapping[str, Any], name: str, choices: Sequence[int]) -> int:
    """An integer categorical parameter (logged parameters may read "8"), one of ``choices``."""
    value = int(_param(params, name))
    if value not in choices:
        raise ValueError(f"{name} {value!r} is not one of the space's choices {', '.join(map(str, choices))}")
    return value
