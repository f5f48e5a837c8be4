"""HTTP handlers of the Files API. Each one translates HTTP to a store call and back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from aiohttp import HttpVersion11, web
from multidict import MultiMapping

from ..models import content_disposition
from ..services.files import ListQuery
from .appkeys import AUTHENTICATOR, CONFIG, STORE, UPLOAD_SLOTS
from .auth import PROJECT
from .content import send_content
from .errors import (
    ApiError,
    InvalidRequest,
    ServerError,
    error_response,
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


def expect_continue(check_length: Callable[[web.Request], None]) -> Any:
    """An `Expect: 100-continue` handler: the key is checked first, then the announced length
    (`check_length` raises for a body that cannot fit); only then is 100 Continue sent, so a
    client without a valid key, or with too much to send, never sends its body.

    aiohttp calls this before any middleware, so errors are returned, not raised.
    """

    async def expect_handler(request: web.Request) -> web.Response | None:
        try:
            request.app[AUTHENTICATOR].project_for(request.headers.get("Authorization"))
            check_length(request)
        except ApiError as error:
            return error_response(error)
        expect = request.headers.get("Expect", "")
        if request.version != HttpVersion11:
            return None
        if expect.lower() != "100-continue":
            return error_response(
                ApiError(f"Unsupported Expect header: {expect}", param="Expect", status=417)
            )
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # The interim response is not part of the response body's size.
        request.writer.output_size = 0
        return None

    return expect_handler


def _check_upload_length(request: web.Request) -> None:
    limit = request.app[STORE].max_file_bytes
    length = request.content_length
    if length is not None and length > limit + FORM_OVERHEAD:
        raise file_too_large(limit)


async def create_file(request: web.Request) -> web.Response:
    _check_upload_length(request)
    config, store = request.app[CONFIG], request.app[STORE]
    with request.app[UPLOAD_SLOTS].take(request[PROJECT]):
        # Refuse early only what is certainly over: the file is at least this large.
        smallest = max(0, (request.content_length or 0) - FORM_OVERHEAD)
        await store.check_quota(request[PROJECT], smallest)
        form = await read_upload_form(request, store, config.files.purposes)
        record = await store.create_file(
            request[PROJECT],
            form.staged,
            filename=form.filename,
            purpose=form.purpose,
            expires_after=form.expires_after,
        )
    return json_response(record.as_file_object())


async def list_files(request: web.Request) -> web.Response:
    query = _list_query(request.query)
    page = await request.app[STORE].list_files(request[PROJECT], query)
    return json_response(page.as_list_object())


async def retrieve_file(request: web.Request) -> web.Response:
    record = await request.app[STORE].get_file(request[PROJECT], request.match_info["file_id"])
    return json_response(record.as_file_object())


async def delete_file(request: web.Request) -> web.Response:
    record = await request.app[STORE].delete_file(request[PROJECT], request.match_info["file_id"])
    return json_response({"id": record.id, "object": "file", "deleted": True})


async def file_content(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    record = await store.get_file(request[PROJECT], request.match_info["file_id"])
    if record.purpose in request.app[CONFIG].files.download_refused:
        raise InvalidRequest(f"Not allowed to download files of purpose: {record.purpose}")
    if record.status == "error":
        raise ServerError(record.status_details or "The file is damaged.", code="file_damaged")
    headers = {**_CONTENT_HEADERS, "Content-Disposition": content_disposition(record.filename)}
    # Validators, conditions and ranges: see filesd.content.
    redirect = request.app[CONFIG].storage.s3.redirect_downloads
    return await send_content(request, store, record, headers, redirect=redirect)


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
