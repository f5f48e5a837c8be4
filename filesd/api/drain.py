"""Requests in flight: the graceful drain, and the caps on concurrent uploads and downloads.

Graceful drain: let requests in flight finish, including ones still reading their body.

aiohttp's own shutdown stops feeding received bytes to handlers as soon as it starts
(aio-libs/aiohttp#2298), so an upload in mid-body would wait out the timeout and be lost.
filesd therefore drains first: stop listening, ask clients to close their connections, and
wait until no handler is running; only then does aiohttp's shutdown run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Iterator

from aiohttp import web
from aiohttp.typedefs import Handler

from ..slots import FairSlots
from .errors import TooManyRequests


class RequestTracker:
    """Counts handlers running; once draining, every response closes its connection."""

    def __init__(self) -> None:
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    @property
    def running(self) -> int:
        return self._running

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._running += 1
        self._idle.clear()
        try:
            response = await handler(request)
            if self.draining:
                response.force_close()
            return response
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    async def drain(self) -> None:
        """Start draining and wait until no handler is running (bound it with a timeout)."""
        self.draining = True
        await self._idle.wait()


class _Share:
    """How many slots one project may hold: `per_project` when configured, always. Otherwise
    half the slots, and only while `project_count()` says more than one project has keys: a
    single tenant (one CI key) has nobody to share with, and in open mode any token is a new
    project, so a share per project would bind nobody."""

    def __init__(
        self, limit: int, per_project: int | None, project_count: Callable[[], int]
    ) -> None:
        self.limit = limit
        self._explicit = per_project
        self._project_count = project_count

    @property
    def per_project(self) -> int | None:
        """The share one project may hold now; None: no share applies."""
        if self._explicit is not None:
            return self._explicit
        if self._project_count() > 1:
            return max(1, self.limit // 2)
        return None


class UploadSlots(_Share):
    """At most `limit` uploads stream at once, and one project holds at most its share of
    them (see `_Share`). The next one is refused with 429 at once.

    Uploads hold a slot while their body arrives, so slow clients cannot take them all.
    """

    def __init__(
        self,
        limit: int,
        *,
        per_project: int | None = None,
        project_count: Callable[[], int] = lambda: 2,
    ) -> None:
        super().__init__(limit, per_project, project_count)
        self.in_use = 0
        self._by_project: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def take(self, project: str | None = None) -> Iterator[None]:
        if self.in_use >= self.limit:
            raise _too_many(f"Too many uploads in progress (at most {self.limit}). Retry shortly.")
        share = self.per_project
        if project is not None and share is not None and self._by_project[project] >= share:
            raise _too_many(
                "Too many uploads in progress for this project (at most "
                f"{share} at once). Retry shortly."
            )
        # Counted whether a share applies now or not: it may apply before this one is done.
        self.in_use += 1
        if project is not None:
            self._by_project[project] += 1
        try:
            yield
        finally:
            self.in_use -= 1
            if project is not None:
                self._by_project[project] -= 1
                if not self._by_project[project]:
                    del self._by_project[project]


class DownloadSlots(FairSlots):
    """At most `limit` downloads read from the blob backend at once (on S3 each holds a pooled
    connection to the bucket while it reads), and one project at most its share of them (see
    `_Share`); the next slot goes to the waiting project holding the fewest. A download waits
    for its slot rather than being refused: slots turn over fast, since a reader that stops
    reading gives its slot back once another download waits (`filesd.api.content`), so a
    wait is bounded by honest readers' pace, never by a stalled one's.
    """

    def __init__(
        self,
        limit: int,
        *,
        per_project: int | None = None,
        project_count: Callable[[], int] = lambda: 2,
    ) -> None:
        rule = _Share(limit, per_project, project_count)
        super().__init__(limit, share=lambda: rule.per_project)


def _too_many(message: str) -> TooManyRequests:
    return TooManyRequests(
        message,
        code="rate_limit_exceeded",
        headers={"Retry-After": "1", "retry-after-ms": "1000"},
    )
