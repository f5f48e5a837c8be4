"""How an instance shares what it has between projects: its concurrency slots (upstream
requests in flight) and its run slots (batches driven at once, `max_running`).

Which batch is claimed next, across instances, is the metadata store's rule
(`storage.rules.claim_order`); these are the two decisions only this process can make, over
its own state.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Collection, Mapping


class FairSlots:
    """`limit` slots shared between projects.

    A slot is taken at once while one is free. Once all are taken, takers queue per project,
    and each slot given back goes to the waiting project that holds the fewest slots (ties:
    the one whose longest waiter has waited longest). So while several projects wait, none
    gains more than its share, however quickly the others give theirs back; a project
    alone may take every slot. A project holding more than its share when others come (it
    was alone) keeps those slots, and the others get each one it gives back until shares
    are even.
    """

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._held: collections.Counter[str] = collections.Counter()
        # project -> its waiters, oldest first: (arrival number, future set once served)
        self._waiting: dict[str, collections.deque[tuple[int, asyncio.Future[None]]]] = {}
        self._arrivals = itertools.count()

    async def acquire(self, project: str) -> None:
        """Take a slot for `project`, waiting for one if none is free. Cancelled while
        waiting, it holds none (a slot handed to it meanwhile goes on to the next)."""
        if self._free > 0 and not self._waiting:
            self._take(project)
            return
        served: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (next(self._arrivals), served)
        self._waiting.setdefault(project, collections.deque()).append(entry)
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

    def _take(self, project: str) -> None:
        self._free -= 1
        self._held[project] += 1

    def _hand_out(self) -> None:
        while self._free > 0 and self._waiting:
            project = min(self._waiting, key=lambda p: (self._held[p], self._waiting[p][0][0]))
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


def run_share(slots: int, projects: int) -> int:
    """Run slots each project may keep while others wait: an even share of `slots` among
    `projects`, at least one (fewer slots than projects: they take turns batch by batch)."""
    return max(1, slots // max(1, projects))


def to_yield(running: Mapping[str, int], waiting: Collection[str], slots: int) -> str | None:
    """The project that should give back one of this instance's `slots` run slots, all of
    them in use: `running` is how many each project holds, `waiting` the projects with a
    batch waiting to start. One that holds more than its share gives way while a waiting
    project holds less than its share (the one holding most gives first); None if no one
    need."""
    share = run_share(slots, len(set(running) | set(waiting)))
    if not any(running.get(project, 0) < share for project in waiting):
        return None
    over = [p for p, held in running.items() if held > share]
    return max(over, key=lambda p: (running[p], p)) if over else None
