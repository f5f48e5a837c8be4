"""HTTP handlers of the Batch API: create, retrieve, list, cancel. Each translates HTTP to a
`BatchService` call and back; the service's refusals (`services/errors.py`) go to OpenAI's
error envelope through the one error boundary (`boundary.py`)."""

from __future__ import annotations

from aiohttp import web

from ..batches.objects import as_batch_object
from ..objects import BatchList, BatchObject
from ..services.errors import BatchesDisabled
from .appkeys import BATCHES
from .auth import PROJECT
from .responses import json_response
from .routing import Routes
from .schemas import CreateBatch, Empty, ListBatchesQuery

routes = Routes()


def _enabled(request: web.Request) -> None:
    """No upstream, no batches: said before the body is read."""
    if not request.app[BATCHES].enabled:
        raise BatchesDisabled()


@routes.route(
    "POST",
    "/v1/batches",
    id="createBatch",
    summary="Create a batch from an uploaded file of requests",
    body=CreateBatch,
    ok=BatchObject,
    ok_description="The new batch (validating)",
    errors=(408,),
    guard=_enabled,
)
async def create_batch(request: web.Request, body: CreateBatch) -> web.Response:
    policy = body.output_expires_after
    batch = await request.app[BATCHES].create(
        request[PROJECT],
        input_file_id=body.input_file_id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        metadata=body.metadata,
        output_expires_after=policy.seconds if policy is not None else None,
    )
    return json_response(as_batch_object(batch))


@routes.route(
    "GET",
    "/v1/batches",
    id="listBatches",
    summary="The project's batches, newest first",
    query=ListBatchesQuery,
    ok=BatchList,
    ok_description="The project's batches, newest first",
)
async def list_batches(request: web.Request, query: ListBatchesQuery) -> web.Response:
    page = await request.app[BATCHES].list(request[PROJECT], after=query.after, limit=query.limit)
    data = [as_batch_object(b) for b in page.batches]
    answer: BatchList = {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": page.has_more,
    }
    return json_response(answer)


@routes.route(
    "GET",
    "/v1/batches/{batch_id}",
    id="retrieveBatch",
    summary="A batch",
    ok=BatchObject,
    ok_description="The batch",
    errors=(404,),
)
async def retrieve_batch(request: web.Request) -> web.Response:
    batch = await request.app[BATCHES].get(request[PROJECT], request.match_info["batch_id"])
    return json_response(as_batch_object(batch))


@routes.route(
    "POST",
    "/v1/batches/{batch_id}/cancel",
    id="cancelBatch",
    summary="Cancel a batch",
    body=Empty,
    ok=BatchObject,
    ok_description="The batch, cancelling or cancelled",
    errors=(404, 408, 409),
)
async def cancel_batch(request: web.Request, body: Empty) -> web.Response:
    batch = await request.app[BATCHES].cancel(request[PROJECT], request.match_info["batch_id"])
    return json_response(as_batch_object(batch))
