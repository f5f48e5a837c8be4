"""Reading request bodies: the pace a client must keep, disconnects, and JSON objects
(`Expect: 100-continue`, answered before the body is read, is in `expectations.py`).

A body must keep coming: no gap between reads longer than `[limits] body_timeout` seconds, and
after its first `body_timeout` seconds every further window of `body_timeout` seconds must
bring at least `min_body_rate` x `body_timeout` bytes. Otherwise 408, saying which of the two it
was: a client that drips a few bytes at a time cannot hold an upload slot (or a connection) for
as long as it likes. The windows are what make this hold against a burst: an average since the
start would let 32 KiB sent at once buy minutes of dripping. A client that goes away mid-body is
a `ClientDisconnected`: logged as one line at info, never as a server error with a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiohttp import web

from .appkeys import CONFIG
from .errors import InvalidRequest, RequestTimeout

log = logging.getLogger(__name__)
_T = TypeVar("_T")

BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The API expects a JSON payload, but what was sent was "
    "not valid JSON.)"
)


class ClientDisconnected(InvalidRequest):
    """The client closed the connection before its request body was complete. Nobody reads
    the answer; it is an error so that everything staged for the request is discarded."""


class BodyPace:
    """The time limits on one request body (see the module docstring); `min_rate` 0: none.

    Every read goes through `read`, and what it returned is reported to `count`. Windows are
    tumbling: the first (the grace period) asks nothing but the stall limit; each later one
    asks `min_rate * stall_seconds` bytes, and a read is allowed to wait only until the end of
    a window that has not got them yet. A window that passes while the server itself is busy
    between reads (writing to disk, say) is not held against the client.
    """

    def __init__(self, request: web.BaseRequest, stall_seconds: float, min_rate: int) -> None:
        self._request = request
        self._loop = asyncio.get_running_loop()
        self.stall_seconds = stall_seconds
        self.min_rate = min_rate
        self.started = self._loop.time()
        self.received = 0
        self._window_end = self.started + stall_seconds
        self._window_need = 0.0  # the grace period
        self._window_got = 0

    @classmethod
    def of(cls, request: web.Request) -> BodyPace:
        """The pace `[limits]` asks of `request`'s body."""
        limits = request.app[CONFIG].limits
        return cls(request, limits.body_timeout, limits.min_body_rate)

    async def read(self, operation: Awaitable[_T]) -> _T:
        """Await one read of the body within the limits (408 beyond; `ClientDisconnected` if the
        client went away). Count what it returned with `count`."""
        timeout, rate_bound = self._next_timeout()
        try:
            async with asyncio.timeout(timeout):
                return await operation
        except TimeoutError:
            raise self._too_slow(rate_bound) from None
        except ConnectionResetError:
            raise self.disconnected() from None

    def count(self, size: int) -> None:
        """Report `size` bytes returned by the last `read`."""
        self.received += size
        if self._window_got < self._window_need:
            # The read was allowed to wait only until this window's end, and it returned in
            # time: its bytes count for this window even if the callback ran a moment later.
            self._window_got += size
        else:
            self._advance(self._loop.time())
            self._window_got += size

    def disconnected(self) -> ClientDisconnected:
        elapsed = self._loop.time() - self.started
        log.info(
            "client disconnected mid-body: %s %s after %d bytes in %.1f s",
            self._request.method,
            self._request.path,
            self.received,
            elapsed,
        )
        return ClientDisconnected(
            "The client closed the connection before the request body was complete.",
            code="client_disconnected",
        )

    def _advance(self, now: float) -> None:
        """Move on to the window holding `now` (the windows before it got what they needed)."""
        if now < self._window_end:
            return
        passed = int((now - self._window_end) // self.stall_seconds) + 1
        self._window_end += passed * self.stall_seconds
        self._window_need = self.min_rate * self.stall_seconds
        self._window_got = 0

    def _next_timeout(self) -> tuple[float, bool]:
        """Seconds the next read may take, and whether the window's rate (not the stall limit)
        sets it. A window still short of its bytes ends the wait at its end; one that is over
        and still short allows only what has already arrived (a timeout of 0 lets a read of
        buffered bytes complete)."""
        if not self.min_rate:
            return self.stall_seconds, False
        now = self._loop.time()
        if self._window_got >= self._window_need:
            self._advance(now)
        if self._window_got >= self._window_need:
            return self.stall_seconds, False
        remaining = self._window_end - now
        if remaining < self.stall_seconds:
            return max(remaining, 0.0), True
        return self.stall_seconds, False

    def _too_slow(self, rate_bound: bool) -> RequestTimeout:
        if rate_bound:
            return RequestTimeout(
                f"The request body is too slow: {self._window_got} bytes in the last "
                f"{self.stall_seconds:g} seconds, below the minimum of {self.min_rate} bytes "
                f"per second ({self.received} bytes received in all).",
                code="timeout",
            )
        return RequestTimeout(
            f"The request body stalled: no data arrived for {self.stall_seconds:g} seconds "
            f"({self.received} bytes received in all).",
            code="timeout",
        )


async def read_json_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request's body as a JSON object (400 otherwise); `{}` for an empty body if
    `allow_empty`. Read at the pace of `BodyPace`, chunk by chunk, and capped by the app's
    client_max_size (413 beyond it)."""
    pace = BodyPace.of(request)
    limit = request.client_max_size
    raw = bytearray()
    while chunk := await pace.read(request.content.readany()):
        pace.count(len(chunk))
        raw += chunk
        if limit and len(raw) > limit:
            raise web.HTTPRequestEntityTooLarge(limit, len(raw))
    if not raw.strip() and allow_empty:
        return {}
    return parse_json_object(bytes(raw))


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Strict JSON: no NaN or Infinity (json.loads accepts them, and `1e999`), and deep nesting
    is a 400 like any other bad body (json.loads raises RecursionError for it)."""
    try:
        body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise InvalidRequest(BAD_JSON) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range")
    return value
