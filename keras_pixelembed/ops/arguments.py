"""Constructor-argument checks whose errors name the argument, the value, and what was expected."""

from __future__ import annotations

import math

import numpy as np


def check_number(name: str, value, *, minimum: float | None = None, strict: bool = False) -> float:
    """Returns `float(value)` or raises a `ValueError` that names the argument."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = "" if minimum is None else (f" {'>' if strict else '>='} {minimum}")
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a finite number{bound}. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def check_integer(name: str, value, *, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """Returns `int(value)` (or None when allowed) or raises a `ValueError` that names the argument."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if ok and minimum is not None:
        ok = value >= minimum
    if not ok:
        bound = "" if minimum is None else f" >= {minimum}"
        either = " or None" if allow_none else ""
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected an integer{bound}{either}. "
            f"Received: {name}={value!r}"
        )
    return int(value)
