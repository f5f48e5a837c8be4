"""Fault injection at the HTTP boundary: the active rules and the middleware applying them."""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import asdict
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ..faultrules import FaultRule, storage_fault
from .auth import PROJECT
from .errors import ApiError, error_response

_DEFAULT_MESSAGES = {
    408: "Request timed out.",
    429: "Rate limit reached for requests.",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
}
_TYPES = {429: "requests", 500: "server_error", 502: "server_error", 503: "server_error"}


class Faults:
    """The rules in force, each with the number of matches it has left (None: no limit)."""

    def __init__(self, rules: tuple[FaultRule, ...] = (), seed: int | None = None) -> None:
        self._ids = itertools.count(1)
        self._rules: dict[int, tuple[FaultRule, int | None]] = {}
        self._random = random.Random(seed)
        for rule in rules:
            self.add(rule)

    def add(self, rule: FaultRule) -> int:
        rule_id = next(self._ids)
        self._rules[rule_id] = (rule, rule.count)
        return rule_id

    def remove(self, rule_id: int) -> bool:
        return self._rules.pop(rule_id, None) is not None

    def clear(self) -> None:
        self._rules.clear()

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"id": rule_id, "remaining": left, **asdict(rule)}
            for rule_id, (rule, left) in self._rules.items()
        ]

    def take(self, method: str, route: str, project: str | None) -> FaultRule | None:
        """The first rule that matches and fires for this request; spends one of its count."""
        for rule_id, (rule, left) in list(self._rules.items()):
            if not rule.matches(method, route, project):
                continue
            if rule.probability < 1 and self._random.random() >= rule.probability:
                continue
            if left is not None:
                if left <= 1:
                    del self._rules[rule_id]
                else:
                    self._rules[rule_id] = (rule, left - 1)
            return rule
        return None


FAULTS = web.AppKey("faults", Faults)


@web.middleware
async def faults_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply the first matching rule (after authentication, so rules can name a project).

    Never to the admin API: a catch-all rule must not lock a test suite out of clearing it.
    """
    if request.path.startswith("/admin/"):
        return await handler(request)
    faults = request.app[FAULTS]
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else request.path
    rule = faults.take(request.method, route, request.get(PROJECT))
    if rule is None:
        return await handler(request)
    if rule.latency_ms:
        await asyncio.sleep(rule.latency_ms / 1000)
    if rule.status is not None:
        return error_response(_injected_error(rule))
    if rule.disconnect:
        return await _cut_mid_body(request, await handler(request))
    if rule.storage is not None:
        token = storage_fault.set(rule)
        try:
            return await handler(request)
        finally:
            storage_fault.reset(token)
    return await handler(request)


async def _cut_mid_body(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Send the status line, the headers (announcing the whole length) and half the body, then
    drop the connection: the client sees a body cut short."""
    raw = response.body if isinstance(response, web.Response) else None
    body = bytes(raw) if isinstance(raw, bytes | bytearray) else b""
    cut = web.StreamResponse(status=response.status, headers=response.headers)
    cut.content_length = len(body) or None
    await cut.prepare(request)
    if body:
        await cut.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()  # close, not abort: what was written still goes out first
    return cut


def _injected_error(rule: FaultRule) -> ApiError:
    assert rule.status is not None
    headers: dict[str, str] = {}
    if rule.retry_after is not None:
        headers["Retry-After"] = f"{rule.retry_after:g}"
    if rule.retry_after_ms is not None:
        headers["retry-after-ms"] = str(rule.retry_after_ms)
    if rule.should_retry is not None:
        headers["x-should-retry"] = "true" if rule.should_retry else "false"
    error = ApiError(
        rule.message or _DEFAULT_MESSAGES.get(rule.status, "Injected fault."),
        code=rule.code,
        headers=headers,
        status=rule.status,
    )
    error.type = _TYPES.get(rule.status, "invalid_request_error")
    return error
