"""Reading request bodies: the pace a client must keep, disconnects, and JSON objects.

A body must keep coming: no gap between reads longer than `[limits] body_timeout` seconds, and
once it has taken that long, an average of at least `[limits] min_body_rate` bytes/s since it
began. Otherwise 408: a client that drips a few bytes at a time cannot hold an upload slot (or a
connection) for as long as it likes. A client that goes away mid-body is a `ClientDisconnected`:
logged as one line at info, never as a server error with a traceback.
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
    """The time limits on one request body (see the module docstring); `min_rate` 0: none."""

    def __init__(self, request: web.BaseRequest, stall_seconds: float, min_rate: int) -> None:
        self._request = request
        self._loop = asyncio.get_running_loop()
        self.stall_seconds = stall_seconds
        self.min_rate = min_rate
        self.started = self._loop.time()
        self.received = 0

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
        self.received += size

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

    def _next_timeout(self) -> tuple[float, bool]:
        """Seconds the next read may take, and whether the average rate (not the stall limit)
        sets it. Past `stall_seconds`, the body must average `min_rate`: with `received` bytes,
        that holds until `started + received / min_rate`."""
        if not self.min_rate:
            return self.stall_seconds, False
        deadline = self.started + max(self.stall_seconds, self.received / self.min_rate)
        remaining = deadline - self._loop.time()
        if remaining < self.stall_seconds:
            return max(remaining, 0.0), True
        return self.stall_seconds, False

    def _too_slow(self, rate_bound: bool) -> RequestTimeout:
        if rate_bound:
            elapsed = self._loop.time() - self.started
            return RequestTimeout(
                f"The request body is too slow: {self.received} bytes in {elapsed:.0f} seconds, "
                f"below the minimum average of {self.min_rate} bytes per second.",
                code="timeout",
            )
        return RequestTimeout(
            f"The request body stalled: no data arrived for {self.stall_seconds:g} seconds.",
            code="timeout",
        )


async def read_json_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request's body as a JSON object (400 otherwise); `{}` for an empty body if
    `allow_empty`. Read at the pace of `BodyPace` and capped by the app's client_max_size."""
    pace = BodyPace.of(request)
    raw = await pace.read(request.read())
    if not raw.strip() and allow_empty:
        return {}
    return parse_json_object(raw)


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
