"""Slots shared fairly between projects: who gets the next one when several wait.

The batch runner's concurrency slots (upstream requests in flight) and the HTTP layer's
download slots (reads from the blob backend) follow this one rule.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Callable


class FairSlots:
    """`limit` slots shared between projects, each holding at most `share()` of them (None:
    no cap; asked at each decision, as it may change).

    A slot is taken at once while one is free and the project is under its share. Otherwise
    takers queue per project, and each slot given back goes to the waiting project under its
    share that holds the fewest slots (ties: the one whose longest waiter has waited
    longest). So while several projects wait, none gains more than an even share, however
    quickly the others give theirs back; a project alone may take every slot it may hold. A
    project holding more than an even share when others come (it was alone) keeps those
    slots, and the others get each one it gives back until shares are even.
    """

    def __init__(self, limit: int, share: Callable[[], int | None] = lambda: None) -> None:
        self.limit = limit
        self._share = share
        self._free = limit
        self._held: collections.Counter[str] = collections.Counter()
        # project -> its waiters, oldest first: (arrival number, future set once served)
        self._waiting: dict[str, collections.deque[tuple[int, asyncio.Future[None]]]] = {}
        self._arrivals = itertools.count()

    async def acquire(self, project: str) -> None:
        """Take a slot for `project`, waiting for one if none is free. Cancelled while
        waiting, it holds none (a slot handed to it meanwhile goes on to the next)."""
        if self._free > 0 and project not in self._waiting and self._under(project, self._share()):
            self._take(project)
            return
        served: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (next(self._arrivals), served)
        self._waiting.setdefault(project, collections.deque()).append(entry)
        # Slots may be free for a waiter whose share has grown since (fewer projects now).
        self._hand_out()
        try:
            await served
        except asyncio.CancelledError:
            if served.done() and not served.cancelled():
                self.release(project)
            else:
                self._forget(project, entry)
            raise

    def release(self, project: str) -> None:
        """Give back a slot `project` took."""
        self._held[project] -= 1
        if self._held[project] <= 0:
            del self._held[project]
        self._free += 1
        self._hand_out()

    @property
    def in_use(self) -> int:
        return self.limit - self._free

    @property
    def contended(self) -> bool:
        """Whether a taker waits for a slot."""
        return any(not served.done() for q in self._waiting.values() for _, served in q)

    def _under(self, project: str, share: int | None) -> bool:
        """Whether `project` holds fewer than `share` slots (None: no cap)."""
        return share is None or self._held[project] < share

    def _take(self, project: str) -> None:
        self._free -= 1
        self._held[project] += 1

    def _hand_out(self) -> None:
        share = self._share()  # once: it may cost (counting projects)
        while self._free > 0:
            eligible = [p for p in self._waiting if self._under(p, share)]
            if not eligible:
                return
            project = min(eligible, key=lambda p: (self._held[p], self._waiting[p][0][0]))
            queue = self._waiting[project]
            _, served = queue.popleft()
            if not queue:
                del self._waiting[project]
            if served.done():  # its taker was cancelled and is leaving
                continue
            self._take(project)
            served.set_result(None)

    def _forget(self, project: str, entry: tuple[int, asyncio.Future[None]]) -> None:
        queue = self._waiting.get(project)
        if queue is None:
            return
        if entry in queue:
            queue.remove(entry)
        if not queue:
            del self._waiting[project]
