"""The one retry policy (filesd/retry.py): attempts, waits, hints and deadlines."""

from __future__ import annotations

import itertools
import time

import pytest

from filesd.retry import Backoff, Retry

QUICK = Backoff(first=0.001, cap=0.004)


def test_backoff_doubles_up_to_its_cap_and_jitter_only_shortens() -> None:
    backoff = Backoff(first=1.0, cap=60.0)
    assert [backoff.delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert Backoff(first=1.0, cap=60.0).delay(10**6) == 60  # no overflow for a long streak
    jittered = Backoff(first=8.0, cap=60.0, jitter=0.5)
    assert all(4.0 <= jittered.delay(0) <= 8.0 for _ in range(200))


async def test_attempts_until_the_outcome_will_do_or_they_are_spent() -> None:
    tried: list[int] = []

    async def attempt() -> int:
        tried.append(len(tried))
        return len(tried)

    assert await Retry(QUICK, attempts=5).run(attempt, again=lambda n: n < 3) == 3
    assert tried == [0, 1, 2]
    tried.clear()
    # Spent: the last outcome, not an error.
    assert await Retry(QUICK, attempts=4).run(attempt, again=lambda n: True) == 4
    assert len(tried) == 4
    tried.clear()
    assert await Retry(QUICK, attempts=1).run(attempt, again=lambda n: True) == 1


async def test_exceptions_named_are_retried_and_the_last_one_raised() -> None:
    tried = 0

    async def attempt() -> str:
        nonlocal tried
        tried += 1
        if tried < 3:
            raise ConnectionError(f"attempt {tried}")
        return "answered"

    assert await Retry(QUICK, attempts=3).run(attempt, again_after=ConnectionError) == "answered"
    tried = 0
    with pytest.raises(ConnectionError, match="attempt 2"):
        await Retry(QUICK, attempts=2).run(attempt, again_after=ConnectionError)
    tried = 0
    with pytest.raises(ConnectionError, match="attempt 1"):  # not named: never retried
        await Retry(QUICK, attempts=3).run(attempt, again_after=KeyError)


async def test_an_outcomes_hint_sets_the_wait_within_the_longest() -> None:
    started = time.monotonic()
    waits: list[float] = []

    async def attempt() -> float:
        waits.append(time.monotonic() - started)
        return 0.05  # "retry after 50 ms"

    retry = Retry(Backoff(first=30.0, cap=30.0), attempts=3, longest=0.2)
    assert await retry.run(attempt, again=lambda _: True, hint=lambda after: after) == 0.05
    gaps = [b - a for a, b in itertools.pairwise(waits)]
    # The hint (50 ms), not the backoff (30 s): waited at least that, and far less than 30 s.
    assert len(gaps) == 2 and all(0.05 <= gap < 5 for gap in gaps), gaps


async def test_no_attempt_starts_after_the_time_allowed() -> None:
    tried = 0

    async def attempt() -> bool:
        nonlocal tried
        tried += 1
        return False

    # Waits of 0.25 s within 2 s: at most 8 retries after the first attempt however fast the
    # machine, at least one unless it stalls for most of the 2 s (the bounds are far apart, so
    # a busy machine stays between them).
    retry = Retry(Backoff(first=0.25, cap=0.25), within=2.0)
    started = time.monotonic()
    assert await retry.run(attempt, again=lambda ok: not ok) is False
    assert 2 <= tried <= 9 and time.monotonic() - started < 30


async def test_every_wait_is_the_callers_sleep_and_what_it_raises_ends_the_run() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            raise LookupError("told to stop waiting")

    async def attempt() -> float:
        return 7.0  # "retry after 7 s"

    retry = Retry(Backoff(first=30.0, cap=30.0), attempts=10)
    # Both the first wait (before tenacity starts) and tenacity's are the caller's.
    with pytest.raises(LookupError, match="told to stop"):
        await retry.run(attempt, again=lambda _: True, hint=lambda after: after, sleep=sleep)
    assert slept == [7.0, 7.0, 7.0]
    slept.clear()
    assert await Retry(QUICK, attempts=3).run(attempt, again=lambda _: True, sleep=sleep) == 7.0
    assert len(slept) == 2
