"""Where a batch's requests go: an OpenAI-compatible API over HTTP (or the built-in echo
model, `echo.py`), behind one small interface the runner retries around."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import aiohttp
from yarl import URL

log = logging.getLogger(__name__)

# Bytes of an upstream answer read at most, unless configured ([batches] max_response_bytes).
MAX_ANSWER_BYTES = 8 * 1024 * 1024
# Seconds the upstream's list of models (GET /v1/models) is trusted; a model missing from it
# asks again once the list is MODELS_RECHECK seconds old (a model just added upstream).
MODELS_TTL = 300.0
MODELS_RECHECK = 10.0
# Seconds the list may take to come, at most: a batch waits for it before it is validated.
MODELS_TIMEOUT = 30.0


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
    """The request got no answer: refused, reset, dropped or timed out. The message is for
    the tenant (it names no host); `detail` is for the operator's log."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail or message


class BadAnswer(Exception):
    """The upstream answered, but not with something usable: a body over the size limit, a
    redirect, or a 2xx whose body is not a JSON object (holding NaN or Infinity, which are
    no JSON, or nested deeper than the parser goes). Not retried (the same request gets the
    same). The message is for the tenant: it names no host."""


class Upstream(Protocol):
    async def send(self, endpoint: str, body: dict[str, Any], project: str) -> Answer:
        """Send one request (`endpoint` is the batch's, e.g. "/v1/chat/completions").
        Raises `Unreachable` when no answer came."""
        ...

    async def knows_model(self, model: str) -> bool:
        """Whether the upstream serves `model`; True when it cannot say (a model is never
        refused for want of a list)."""
        ...

    async def close(self) -> None: ...


def shown_url(url: str | URL) -> str:
    """`url` as logs and messages may show it: scheme://host:port/path, built from those parts
    alone, so that no user, password, query or fragment (where a secret may sit) is ever
    written anywhere."""
    parsed = URL(url) if isinstance(url, str) else url
    host = parsed.host or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    port = f":{parsed.explicit_port}" if parsed.explicit_port is not None else ""
    return f"{parsed.scheme}://{host}{port}{parsed.path}"


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
    "/v1/x" goes to `base_url` + "/x", with the API key as a bearer token; without a key,
    credentials in the URL ("https://user:password@host/v1") go as HTTP basic auth (with a
    key they are not sent: a request has one Authorization). Redirects are not
    followed: a redirect is an unusable answer (following one would send a tenant's prompt
    to, or record as its answer what is fetched from, wherever the upstream points)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float,
        connections: int,
        read_timeout: float | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        url = URL(base_url.rstrip("/"))
        # aiohttp never sees the URL's credentials, so none of its errors can quote them.
        self._base = str(url.with_user(None))
        self._shown = shown_url(url)
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        elif url.user is not None or url.password is not None:
            self._headers["Authorization"] = aiohttp.encode_basic_auth(
                url.user or "", url.password or ""
            )
        # sock_read bounds each read of the answer, so a slow drip fails early.
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_read=read_timeout)
        self._connections = connections
        self._max_answer = max_answer_bytes
        self._session: aiohttp.ClientSession | None = None
        # (time.monotonic() it was fetched, the model names or None: no list offered).
        self._models: tuple[float, frozenset[str] | None] | None = None
        self._models_lock = asyncio.Lock()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def send(self, endpoint: str, body: dict[str, Any], project: str) -> Answer:
        session = self._open()
        path = endpoint.removeprefix("/v1")
        data = json.dumps(body).encode()
        try:
            async with session.post(
                self._base + path, data=data, headers=self._headers, allow_redirects=False
            ) as response:
                status = response.status
                if 300 <= status < 400:
                    raise BadAnswer(
                        f"The upstream answered {status}, a redirect: redirects are not followed."
                    )
                raw = await _read_capped(response, self._max_answer)
                if raw is None:
                    raise BadAnswer(
                        f"The upstream's answer ({status}) is larger than {self._max_answer} "
                        "bytes ([batches] max_response_bytes)."
                    )
                answer: Any
                if 200 <= status < 300:
                    answer = _json_object(raw, status)
                else:
                    answer = _json_body(raw, status)
                return Answer(
                    status,
                    answer,
                    response.headers.get("x-request-id"),
                    retry_after(response.headers, time.time()),
                    _should_retry(response.headers.get("x-should-retry")),
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            # The tenant sees the kind of failure; the operator's log gets where it went.
            kind = "timed out" if isinstance(error, TimeoutError) else type(error).__name__
            raise Unreachable(
                f"The upstream could not be reached ({kind}).",
                f"{self._shown}{path}: {type(error).__name__}: {_error_text(error)}",
            ) from error

    async def knows_model(self, model: str) -> bool:
        """Whether `model` is in the upstream's `GET /v1/models` list (kept MODELS_TTL
        seconds); True when it offers none (no such route, an error, no answer within
        MODELS_TIMEOUT seconds, not a list of models). While the list is fetched again, the
        last one answers (a batch of one project does not wait on another's refetch), and a
        fetch that fails keeps the last list that came."""
        cached = self._models
        if cached is not None:
            fetched, names = cached
            age = time.monotonic() - fetched
            known = names is None or model in names
            if self._models_lock.locked() or (age < MODELS_TTL and (known or age < MODELS_RECHECK)):
                return known
        async with self._models_lock:
            current = self._models
            if current is None or current is cached:  # nobody fetched it while this waited
                names = await self._fetch_models()
                if names is None and cached is not None:
                    names = cached[1]
                current = self._models = (time.monotonic(), names)
        return current[1] is None or model in current[1]

    async def _fetch_models(self) -> frozenset[str] | None:
        """The upstream's model names, or None however that fails. Its own session: a fetch
        never waits for a connection the batches' requests hold."""
        url = self._base + "/models"
        timeout = aiohttp.ClientTimeout(total=min(MODELS_TIMEOUT, self._timeout.total or 1e9))
        headers = {k: v for k, v in self._headers.items() if k != "Content-Type"}
        status = 0
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url, headers=headers, allow_redirects=False) as response,
            ):
                raw = await _read_capped(response, self._max_answer)
                status = response.status
            listed = _json_object(raw, status) if raw is not None and status == 200 else None
        except Exception as error:  # whatever it is, the list is not to be had
            if isinstance(error, BadAnswer):
                error_text = "not a JSON object"
            elif isinstance(error, aiohttp.ClientError | OSError):
                error_text = _error_text(error)
            else:
                error_text = type(error).__name__
            log.info(
                "no model list from %s/models (%s): batches may name any model",
                self._shown,
                error_text,
            )
            return None
        data = listed.get("data") if listed is not None else None
        if not isinstance(data, list):
            log.info(
                "no model list from %s/models (it answered %d): batches may name any model",
                self._shown,
                status,
            )
            return None
        return frozenset(
            item["id"]
            for item in data
            if isinstance(item, dict) and isinstance(item.get("id"), str)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _error_text(error: BaseException) -> str:
    """What a network error says, without the URL some of aiohttp's quote whole (its query
    may hold a key): their status and message, or nothing."""
    if isinstance(error, aiohttp.InvalidURL):
        return "invalid URL"
    if isinstance(error, aiohttp.ClientResponseError):
        return f"{error.status}, {error.message}"
    return str(error)


def _should_retry(value: str | None) -> bool | None:
    return {"true": True, "false": False}.get((value or "").lower())


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes | None:
    """The whole body, read to its end however it arrives (chunked, in pieces, with pauses);
    None as soon as it is known to be over `cap` bytes (never more than cap + a chunk in
    memory)."""
    if response.content_length is not None and response.content_length > cap:
        return None
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > cap:
            return None
    return bytes(body)


class _Unreadable(ValueError):
    """JSON that `_read_json` refuses, in words for the tenant."""


def _read_json(raw: bytes) -> Any:
    """The JSON value of `raw`, as RFC 8259 has it. Raises ValueError if it is none,
    `_Unreadable` if it holds NaN or Infinity (Python's parser takes them, and an output line
    holding them would be no JSON either) or is nested deeper than Python's parser goes
    (which raises RecursionError for it)."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise _Unreadable("its JSON is nested too deeply to be read") from None


def _no_constant(name: str) -> Any:
    raise _Unreadable(f"its body holds {name}, which is not JSON")


def _json_object(raw: bytes, status: int) -> dict[str, Any]:
    """The JSON object of a 2xx answer; anything else is a `BadAnswer`."""
    try:
        body = _read_json(raw)
    except _Unreadable as error:
        raise BadAnswer(f"The upstream answered {status}, but {error}.") from None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise BadAnswer(f"The upstream answered {status} without a JSON object.")
    return body


def _json_body(raw: bytes, status: int) -> Any:
    """The JSON body of an answer that is no success, else an error object saying why."""
    try:
        return _read_json(raw)
    except _Unreadable as error:
        return _error_body(f"The upstream answered {status}, but {error}.")
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
