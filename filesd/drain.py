"""Requests in flight: the graceful drain, and the cap on concurrent uploads.

Graceful drain: let requests in flight finish, including ones still reading their body.

aiohttp's own shutdown stops feeding received bytes to handlers as soon as it starts
(aio-libs/aiohttp#2298), so an upload in mid-body would wait out the timeout and be lost.
filesd therefore drains first: stop listening, ask clients to close their connections, and
wait until no handler is running; only then does aiohttp's shutdown run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from aiohttp import web
from aiohttp.typedefs import Handler

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


class UploadSlots:
    """At most `limit` uploads stream at once; the next one is refused with 429 at once.

    Uploads hold a slot while their body arrives, so slow clients cannot take them all.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    @contextlib.contextmanager
    def take(self) -> Iterator[None]:
        if self.in_use >= self.limit:
            raise TooManyRequests(
                f"Too many uploads in progress (at most {self.limit}). Retry shortly.",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1", "retry-after-ms": "1000"},
            )
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
