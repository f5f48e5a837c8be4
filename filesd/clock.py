"""Time and randomness that tests can control: a settable clock, and seeded ids."""

from __future__ import annotations

import time
from typing import TypeGuard

from .values import is_finite_number

# The last second of year 9999: a clock beyond it (or NaN) breaks dates and SQLite integers.
CLOCK_MAX = 253402300799


def is_clock_time(value: object) -> TypeGuard[int | float]:
    """Unix seconds the clock can show: a finite number from 0 to CLOCK_MAX (where it is set:
    `[testing] frozen_time`, POST /admin/clock)."""
    return is_finite_number(value) and 0 <= value <= CLOCK_MAX


class Clock:
    """Real time, unless frozen at a moment; a frozen clock can be moved (for expiry tests).

    Callable: `clock()` is the current Unix time as a float.
    """

    def __init__(self, frozen_at: float | None = None) -> None:
        self._frozen_at = frozen_at
        self._offset = 0.0

    def __call__(self) -> float:
        if self._frozen_at is not None:
            return self._frozen_at
        return time.time() + self._offset

    @property
    def frozen(self) -> bool:
        return self._frozen_at is not None

    def freeze(self, at: float | None = None) -> None:
        """Stop time at `at` (default: now)."""
        self._frozen_at = self() if at is None else at

    def advance(self, seconds: float) -> None:
        """Move time forward (or back): a frozen clock jumps, a running one runs ahead."""
        if self._frozen_at is not None:
            self._frozen_at += seconds
        else:
            self._offset += seconds

    def resume(self) -> None:
        """Real time again, from the real present."""
        self._frozen_at = None
        self._offset = 0.0
