"""HTTP handlers of the Batch API: create, retrieve, list, cancel. Each translates HTTP to a
`BatchService` call and back; the service's refusals (batches/errors.py) go to OpenAI's
error envelope through the one error boundary (boundary.py)."""

from __future__ import annotations

from aiohttp import web

from ..batches.objects import COMPLETION_WINDOWS, ENDPOINTS, as_batch_object
from ..services.errors import BatchesDisabled
from .appkeys import BATCHES
from .auth import PROJECT
from .bodies import read_json_object
from .errors import InvalidRequest
from .query_params import int_param
from .responses import json_response
from .validation import check_expires_after, check_no_unknown, require

LIMIT_DEFAULT, LIMIT_MAX = 20, 100
METADATA_KEYS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512


def setup_batch_routes(app: web.Application) -> None:
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", retrieve_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)


async def create_batch(request: web.Request) -> web.Response:
    service = request.app[BATCHES]
    if not service.enabled:
        raise BatchesDisabled()
    body = await read_json_object(request)
    check_no_unknown(
        body,
        {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"},
    )
    input_file_id = require(body, "input_file_id", str, "a string")
    endpoint = _one_of(require(body, "endpoint", str, "a string"), ENDPOINTS, "endpoint")
    window = _one_of(
        require(body, "completion_window", str, "a string"), COMPLETION_WINDOWS, "completion_window"
    )
    metadata = _metadata(body.get("metadata"))
    expires_after = None
    if body.get("output_expires_after") is not None:
        policy = require(body, "output_expires_after", dict, "an object")
        check_no_unknown(policy, {"anchor", "seconds"})
        expires_after = check_expires_after(
            policy.get("anchor"), policy.get("seconds"), prefix="output_expires_after"
        )
    batch = await service.create(
        request[PROJECT],
        input_file_id=input_file_id,
        endpoint=endpoint,
        completion_window=window,
        metadata=metadata,
        output_expires_after=expires_after,
    )
    return json_response(as_batch_object(batch))


async def retrieve_batch(request: web.Request) -> web.Response:
    service = request.app[BATCHES]
    batch_id = request.match_info["batch_id"]
    batch = await service.get(request[PROJECT], batch_id)
    return json_response(as_batch_object(batch))


async def cancel_batch(request: web.Request) -> web.Response:
    service = request.app[BATCHES]
    check_no_unknown(await read_json_object(request, allow_empty=True), set())
    batch_id = request.match_info["batch_id"]
    batch = await service.cancel(request[PROJECT], batch_id)
    return json_response(as_batch_object(batch))


async def list_batches(request: web.Request) -> web.Response:
    service = request.app[BATCHES]
    for name in ("after", "limit"):
        if len(request.query.getall(name, [])) > 1:
            raise InvalidRequest(f"Duplicate query parameter '{name}'.", param=name)
    limit = int_param(request.query, "limit", LIMIT_DEFAULT, 1, LIMIT_MAX)
    after = request.query.get("after") or None
    page = await service.list(request[PROJECT], after=after, limit=limit)
    data = [as_batch_object(b) for b in page.batches]
    return json_response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": page.has_more,
        }
    )


def _one_of(value: str, allowed: tuple[str, ...], param: str) -> str:
    if value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        raise InvalidRequest(
            f"Invalid value: {value!r}. Supported values are: {listed}.",
            param=param,
            code="invalid_value",
        )
    return value


def _metadata(raw: object) -> dict[str, str] | None:
    """OpenAI's metadata: up to 16 string pairs, keys up to 64 characters, values 512."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidRequest(
            "Invalid type for 'metadata': expected an object.",
            param="metadata",
            code="invalid_type",
        )
    if len(raw) > METADATA_KEYS:
        raise InvalidRequest(
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{METADATA_KEYS} properties, but got {len(raw)} instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, value in raw.items():
        if len(key) > METADATA_KEY_CHARS:
            raise InvalidRequest(
                f"Invalid 'metadata': key {key[:20]!r}... is longer than "
                f"{METADATA_KEY_CHARS} characters.",
                param="metadata",
                code="invalid_value",
            )
        if not isinstance(value, str):
            raise InvalidRequest(
                f"Invalid type for 'metadata.{key}': expected a string.",
                param=f"metadata.{key}",
                code="invalid_type",
            )
        if len(value) > METADATA_VALUE_CHARS:
            raise InvalidRequest(
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum "
                f"length {METADATA_VALUE_CHARS}, but got a string with length {len(value)} "
                "instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )
    return raw
