"""HTTP handlers of the Files API: each translates HTTP to a call of the files service and back."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from multidict import MultiMapping

from ..models import content_disposition
from ..services.files import ListQuery
from .appkeys import CONFIG, FILES, UPLOAD_SLOTS
from .auth import PROJECT
from .bodies import expect_continue
from .content import send_content
from .errors import (
    InvalidRequest,
    ServerError,
    file_too_large,
)
from .forms import FORM_OVERHEAD, read_upload_form
from .query_params import int_param
from .responses import json_response

LIMIT_MIN, LIMIT_MAX, LIMIT_DEFAULT = 1, 1000, 100
OFFSET_MAX = 2**63 - 1  # SQLite's largest integer: beyond it the query itself would fail
_CONTENT_HEADERS = {
    "Content-Type": "application/octet-stream",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, no-cache",
}


def setup_routes(app: web.Application) -> None:
    app.router.add_post(
        "/v1/files", create_file, expect_handler=expect_continue(_check_upload_length)
    )
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}", retrieve_file)
    app.router.add_delete("/v1/files/{file_id}", delete_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content)


def _check_upload_length(request: web.Request) -> None:
    limit = request.app[FILES].max_file_bytes
    length = request.content_length
    if length is not None and length > limit + FORM_OVERHEAD:
        raise file_too_large(limit)


async def create_file(request: web.Request) -> web.Response:
    _check_upload_length(request)
    config, files = request.app[CONFIG], request.app[FILES]
    with request.app[UPLOAD_SLOTS].take(request[PROJECT]):
        # Refuse early only what is certainly over: the file is at least this large.
        smallest = max(0, (request.content_length or 0) - FORM_OVERHEAD)
        await files.check_quota(request[PROJECT], smallest)
        form = await read_upload_form(
            request, receive=files.receive, discard=files.discard, purposes=config.files.purposes
        )
        record = await files.create(
            request[PROJECT],
            form.content,
            filename=form.filename,
            purpose=form.purpose,
            expires_after=form.expires_after,
        )
    return json_response(record.as_file_object())


async def list_files(request: web.Request) -> web.Response:
    query = _list_query(request.query)
    page = await request.app[FILES].list(request[PROJECT], query)
    return json_response(page.as_list_object())


async def retrieve_file(request: web.Request) -> web.Response:
    record = await request.app[FILES].get(request[PROJECT], request.match_info["file_id"])
    return json_response(record.as_file_object())


async def delete_file(request: web.Request) -> web.Response:
    record = await request.app[FILES].delete(request[PROJECT], request.match_info["file_id"])
    return json_response({"id": record.id, "object": "file", "deleted": True})


async def file_content(request: web.Request) -> web.StreamResponse:
    files = request.app[FILES]
    record = await files.get(request[PROJECT], request.match_info["file_id"])
    if record.purpose in request.app[CONFIG].files.download_refused:
        raise InvalidRequest(f"Not allowed to download files of purpose: {record.purpose}")
    if record.status == "error":
        raise ServerError(record.status_details or "The file is damaged.", code="file_damaged")
    headers = {**_CONTENT_HEADERS, "Content-Disposition": content_disposition(record.filename)}
    # Validators, conditions and ranges: see filesd.content.
    redirect = request.app[CONFIG].storage.s3.redirect_downloads
    return await send_content(request, files, record, headers, redirect=redirect)


def _list_query(params: MultiMapping[str]) -> ListQuery:
    for name in ("purpose", "limit", "offset", "after", "order"):
        if len(params.getall(name, [])) > 1:
            raise InvalidRequest(f"Duplicate query parameter '{name}'.", param=name)
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest(
            f"Invalid value: {order!r}. Supported values are: 'asc' and 'desc'.",
            param="order",
            code="invalid_value",
        )
    sort: Literal["asc", "desc"] = "asc" if order == "asc" else "desc"
    return ListQuery(
        purpose=params.get("purpose") or None,
        limit=int_param(params, "limit", LIMIT_DEFAULT, LIMIT_MIN, LIMIT_MAX),
        offset=int_param(params, "offset", 0, 0, OFFSET_MAX),
        after=params.get("after") or None,
        order=sort,
    )
