"""Where a batch's requests go: an OpenAI-compatible API over HTTP (or the built-in echo
model, `echo.py`), behind one small interface the runner retries around."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import aiohttp

# Bytes of an upstream answer read at most (a reply larger than this is a failed request).
MAX_ANSWER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Answer:
    """An upstream's HTTP answer: status, JSON body (an error object if it sent none),
    its request id, how long it asked us to wait before retrying (seconds), and whether it
    said to retry (`x-should-retry`, as OpenAI's API and SDKs do), if it did."""

    status: int
    body: Any
    request_id: str | None = None
    retry_after: float | None = None
    should_retry: bool | None = None

    @property
    def retryable(self) -> bool:
        """429 and 5xx are retried, unless the upstream said not to; others only if it
        said to."""
        if self.should_retry is not None:
            return self.should_retry
        return self.status == 429 or self.status >= 500


class Unreachable(Exception):
    """The request got no answer: refused, reset, dropped or timed out."""


class Upstream(Protocol):
    async def send(self, endpoint: str, body: dict[str, Any], project: str) -> Answer:
        """Send one request (`endpoint` is the batch's, e.g. "/v1/chat/completions").
        Raises `Unreachable` when no answer came."""
        ...

    async def close(self) -> None: ...


def retry_after(headers: Any, now: float) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError):
        return None


class HttpUpstream:
    """An OpenAI-compatible API at `base_url` ("https://host/v1"): a request of endpoint
    "/v1/x" goes to `base_url` + "/x", with the API key as a bearer token."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float, connections: int) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def send(self, endpoint: str, body: dict[str, Any], project: str) -> Answer:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        url = self._base + endpoint.removeprefix("/v1")
        data = json.dumps(body).encode()
        try:
            async with self._session.post(url, data=data, headers=self._headers) as response:
                raw = await response.content.read(MAX_ANSWER_BYTES + 1)
                return Answer(
                    response.status,
                    _json_body(raw, response.status),
                    response.headers.get("x-request-id"),
                    retry_after(response.headers, time.time()),
                    _should_retry(response.headers.get("x-should-retry")),
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise Unreachable(f"{type(error).__name__}: {error}".rstrip(": ")) from error

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _should_retry(value: str | None) -> bool | None:
    return {"true": True, "false": False}.get((value or "").lower())


def _json_body(raw: bytes, status: int) -> Any:
    if len(raw) > MAX_ANSWER_BYTES:
        return _error_body(f"The upstream's answer is larger than {MAX_ANSWER_BYTES} bytes.")
    try:
        return json.loads(raw)
    except ValueError:
        text = raw[:500].decode("utf-8", "replace")
        return _error_body(f"The upstream answered {status} without JSON: {text}")


def _error_body(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "upstream_error", "param": None, "code": None}}


def api_key_from(api_key: str, api_key_env: str) -> str:
    """The configured key, else the one in the named environment variable ("" if neither)."""
    if api_key:
        return api_key
    return os.environ.get(api_key_env, "") if api_key_env else ""
