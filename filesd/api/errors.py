"""API errors in OpenAI's envelope: the error types, and the headers every response carries.

Every error response is `{"error": {"message", "type", "param", "code"}}` with
`Content-Type: application/json`. Which exception becomes which error is decided in one place,
`boundary.py`; this module knows nothing of the services (so `import filesd.api.auth` does
not load the database).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping

from aiohttp import web

from .responses import json_response

REQUEST_ID = web.RequestKey("request_id", str)
STARTED = web.RequestKey("started", float)
# The API version OpenAI reports in its `openai-version` header.
OPENAI_VERSION = "2020-10-01"


def new_request_id() -> str:
    """`req_` and 32 hex digits. Request ids correlate logs and reports; they are not secrets,
    so a fast PRNG serves (a urandom syscall per request showed in profiles)."""
    return f"req_{random.getrandbits(128):032x}"


class ApiError(Exception):
    """An error the client sees. Subclasses fix the status and the OpenAI error type."""

    status = 400
    type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


class InvalidRequest(ApiError):
    status = 400


class AuthenticationFailed(ApiError):
    status = 401


class NotFound(ApiError):
    status = 404


class MethodNotAllowed(ApiError):
    status = 405


class PayloadTooLarge(ApiError):
    status = 413


class RangeNotSatisfiable(ApiError):
    status = 416


class ServerError(ApiError):
    status = 500
    type = "server_error"


class TooManyRequests(ApiError):
    status = 429
    type = "requests"


class RequestTimeout(ApiError):
    status = 408


class ServiceUnavailable(ApiError):
    status = 503
    type = "server_error"


class InsufficientStorage(ApiError):
    status = 507
    type = "server_error"


def error_response(error: ApiError) -> web.Response:
    body = {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }
    return json_response(body, status=error.status, headers=error.headers)


def invalid_url(request: web.BaseRequest, headers: Mapping[str, str] | None = None) -> NotFound:
    """OpenAI's 404 for a route that does not exist; a path of the API without its `/v1`
    (a client's `base_url` missing it) is told where the API lives."""
    message = f"Invalid URL ({request.method} {request.path})"
    if request.path.split("/")[1] in _API_ROOTS:
        message += (
            f": the API is served under /v1, e.g. base_url='{request.scheme}://{request.host}/v1'"
        )
    return NotFound(message, headers=headers)


# The first segments of the API's paths after /v1.
_API_ROOTS = frozenset({"files", "batches", "uploads"})


async def add_api_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """on_response_prepare: the headers OpenAI sends that clients read, on every response."""
    response.headers["x-request-id"] = request.get(REQUEST_ID) or new_request_id()
    response.headers["openai-version"] = OPENAI_VERSION
    started = request.get(STARTED)
    if started is not None:
        elapsed_ms = int((time.monotonic() - started) * 1000)
        response.headers["openai-processing-ms"] = str(elapsed_ms)
