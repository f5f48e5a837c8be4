"""Type checks of decoded JSON and TOML values (pure; no I/O).

In Python `bool` is a subclass of `int`, so `isinstance(True, int)` holds; in a config file or a
request body `true` is never a number. Every number check goes through these helpers.
"""

from __future__ import annotations

import math
from typing import TypeGuard


def is_int(value: object) -> TypeGuard[int]:
    """An integer, and not a boolean."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    """An integer or a float, and not a boolean (NaN and infinities included)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite_number(value: object) -> TypeGuard[int | float]:
    """A number that is neither NaN nor infinite, and fits a float (a 400-digit int does not)."""
    if not is_number(value):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def is_instance(value: object, kinds: type | tuple[type, ...]) -> bool:
    """`isinstance(value, kinds)`, except that a boolean is never an int or a float."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)
