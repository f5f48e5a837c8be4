"""`ByteBudget`: how many bytes of request lines the runner holds in flight at once.

Concurrency slots bound the number of requests in flight, not their size: eight requests of
24 MiB lines held eight parsed bodies, their encodings and their answers at once (over 600 MiB
for a 200 MB input). The budget bounds their bytes too, over every batch of the instance, so
the memory held is a small multiple of the budget or of one line, whichever is larger.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any


class ByteBudget:
    """At most `limit` bytes taken at once, except that a larger take goes when nothing else is
    taken (alone, so that no line is too large to ever go). First come, first served: a
    large take waiting is not overtaken by smaller ones that would fit."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._taken = 0
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def take(self, size: int, halted: asyncio.Event) -> bool:
        """Take `size` bytes, waiting for them; False (and nothing taken) if `halted` is set
        first. Cancelled while waiting, nothing is taken."""
        if halted.is_set():
            return False
        if not self._waiting and self._fits(size):
            self._taken += size
            return True
        entry = (size, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        halting = asyncio.ensure_future(halted.wait())
        try:
            await asyncio.wait({entry[1], halting}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._abandon(entry)
            raise
        finally:
            halting.cancel()
        if halted.is_set():
            self._abandon(entry)
            return False
        return True

    def give(self, size: int) -> None:
        """Give back `size` bytes taken."""
        self._taken -= size
        self._grant()

    def give_when_done(self, task: asyncio.Future[Any], size: int) -> None:
        """Give back `size` bytes taken once `task` is done, however it ends (even cancelled
        before it ran at all, when no `finally` of its own would)."""
        task.add_done_callback(lambda _: self.give(size))

    def _fits(self, size: int) -> bool:
        return self._taken == 0 or self._taken + size <= self._limit

    def _grant(self) -> None:
        while self._waiting and self._fits(self._waiting[0][0]):
            size, granted = self._waiting.popleft()
            self._taken += size
            granted.set_result(None)

    def _abandon(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        """A waiter goes: what it was granted meanwhile is given back, else its place."""
        size, granted = entry
        if granted.done():
            self.give(size)
        else:
            self._waiting.remove(entry)
            granted.cancel()
            self._grant()  # those behind it may fit now
