"""The one retry policy: how many attempts, and how long to wait between them, for every retry
filesd makes (a batch's requests to its upstream, a batch whose drive failed, results meeting a
busy database, a claim meeting another instance's reclaim).

`Backoff` says how long the n-th wait is (exponential, capped, with jitter so that many
callers do not retry in step); `Retry` runs attempts under it, with tenacity doing the
retrying. The first attempt (and the wait after it) runs directly: most attempts succeed, and
tenacity's machinery costs ~60 µs per call on the benchmark machine, too much for every
upload's claim; only what must be retried enters it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Waits of `first` seconds, then `factor` times longer each time, at most `cap`, each cut
    by a random share of up to `jitter` (0: always the same)."""

    first: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.0

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0 for the first retry)."""
        base = min(self.cap, self.first * self.factor ** min(retry, 64))
        if self.jitter:
            base *= random.uniform(1 - self.jitter, 1.0)
        return base


class _Wait(tenacity.wait.wait_base):
    """tenacity's wait: the outcome's own hint (an upstream's Retry-After) when it gives one,
    else the backoff; never more than `longest`."""

    def __init__(
        self, backoff: Backoff, hint: Callable[[object], float | None], longest: float
    ) -> None:
        self._backoff = backoff
        self._hint = hint
        self._longest = longest

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        hinted = None
        if outcome is not None and not outcome.failed:
            hinted = self._hint(outcome.result())
        # attempt_number counts tenacity's attempts, which follow the first one (made before
        # tenacity starts): its first wait is the backoff's second.
        wait = self._backoff.delay(retry_state.attempt_number) if hinted is None else hinted
        return min(wait, self._longest)


def _no_hint(outcome: object) -> float | None:
    return None


@dataclass(frozen=True)
class Retry:
    """Attempts under a `Backoff`: at most `attempts` (None: no limit) and, when `within` is
    given, none started after that many seconds."""

    backoff: Backoff
    attempts: int | None = None
    within: float | None = None
    # The longest single wait, whatever the backoff or a hint asks for.
    longest: float = 300.0

    async def run(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        again: Callable[[T], bool] = lambda outcome: False,
        again_after: type[BaseException] | tuple[type[BaseException], ...] = (),
        hint: Callable[[T], float | None] = _no_hint,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> T:
        """The outcome of `attempt()`, attempted again while `again(outcome)` holds or it
        raises one of `again_after`. Once the attempts or the time are spent: the last
        outcome, or the last exception raised. Each wait between attempts is `sleep(seconds)`
        (a caller may give back what it holds while it waits); what `sleep` raises ends the
        run with it."""
        if self.attempts is not None and self.attempts <= 1:
            return await attempt()
        started = time.monotonic()
        failure: BaseException | None = None
        try:
            first = await attempt()
        except again_after as error:
            failure = error
            wait = self.backoff.delay(0)
        else:
            if not again(first):
                return first
            hinted = hint(first)
            wait = self.backoff.delay(0) if hinted is None else hinted
        stop: tenacity.stop.stop_base = tenacity.stop_never
        if self.attempts is not None:
            stop = tenacity.stop_after_attempt(self.attempts - 1)
        if self.within is not None:
            left = self.within - (time.monotonic() - started)
            if left <= wait:  # no time for another attempt: the first one's outcome stands
                if failure is not None:
                    raise failure
                return first
            stop = stop | tenacity.stop_before_delay(left - wait)
        await sleep(min(wait, self.longest))
        retrying = tenacity.AsyncRetrying(
            sleep=sleep,
            stop=stop,
            wait=_Wait(self.backoff, hint, self.longest),  # type: ignore[arg-type]
            retry=tenacity.retry_if_exception_type(again_after) | tenacity.retry_if_result(again),
            reraise=True,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        result: T = await retrying(attempt)
        return result
