"""HTTP handlers of the Files API: each translates HTTP to a call of the files service and back."""

from __future__ import annotations

from aiohttp import web

from ..models import content_disposition
from ..objects import FileDeleted, FileList, FileObject
from ..services.errors import FileTooLarge
from ..services.files import ListQuery
from .appkeys import CONFIG, DOWNLOAD_SLOTS, FILES, UPLOAD_SLOTS
from .auth import PROJECT
from .content import send_content
from .errors import InvalidRequest, ServerError
from .forms import FORM_OVERHEAD, read_upload_form
from .responses import json_response
from .routing import Routes
from .schemas import FileForm, ListFilesQuery

_CONTENT_HEADERS = {
    "Content-Type": "application/octet-stream",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, no-cache",
}

routes = Routes()


def _check_upload_length(request: web.Request) -> None:
    limit = request.app[FILES].max_file_bytes
    length = request.content_length
    if length is not None and length > limit + FORM_OVERHEAD:
        raise FileTooLarge(limit)


@routes.route(
    "POST",
    "/v1/files",
    id="createFile",
    summary="Upload a file",
    form=FileForm,
    ok=FileObject,
    ok_description="The new file",
    errors=(408,),
    guard=_check_upload_length,
    expect=_check_upload_length,
)
async def create_file(request: web.Request) -> web.Response:
    files = request.app[FILES]
    with request.app[UPLOAD_SLOTS].take(request[PROJECT]):
        # Refuse early only what is certainly over: the file is at least this large.
        smallest = max(0, (request.content_length or 0) - FORM_OVERHEAD)
        await files.check_quota(request[PROJECT], smallest)
        form = await read_upload_form(request, receive=files.receive, discard=files.discard)
        policy = form.fields.expires_after
        record = await files.create(
            request[PROJECT],
            form.content,
            filename=form.filename,
            purpose=form.fields.purpose,
            expires_after=policy.seconds if policy is not None else None,
        )
    return json_response(record.as_file_object())


@routes.route(
    "GET",
    "/v1/files",
    id="listFiles",
    summary="List the project's files, newest first",
    query=ListFilesQuery,
    ok=FileList,
    ok_description="A page",
)
async def list_files(request: web.Request, query: ListFilesQuery) -> web.Response:
    wanted = ListQuery(query.purpose, query.limit, query.offset, query.after, query.order)
    page = await request.app[FILES].list(request[PROJECT], wanted)
    return json_response(page.as_list_object())


@routes.route(
    "GET",
    "/v1/files/{file_id}",
    id="retrieveFile",
    summary="A file",
    ok=FileObject,
    ok_description="The file",
    errors=(404,),
)
async def retrieve_file(request: web.Request) -> web.Response:
    record = await request.app[FILES].get(request[PROJECT], request.match_info["file_id"])
    return json_response(record.as_file_object())


@routes.route(
    "DELETE",
    "/v1/files/{file_id}",
    id="deleteFile",
    summary="Delete a file",
    ok=FileDeleted,
    ok_description="Deleted",
    errors=(404,),
)
async def delete_file(request: web.Request) -> web.Response:
    record = await request.app[FILES].delete(request[PROJECT], request.match_info["file_id"])
    deleted: FileDeleted = {"id": record.id, "object": "file", "deleted": True}
    return json_response(deleted)


@routes.route(
    "GET",
    "/v1/files/{file_id}/content",
    id="downloadFile",
    summary="A file's bytes (ranges and conditional requests too)",
    content="application/octet-stream",
    ok_description="The bytes",
    responses={206: "A range of the bytes", 304: "Not modified"},
    errors=(404, 412, 416),
)
async def file_content(request: web.Request) -> web.StreamResponse:
    files = request.app[FILES]
    record = await files.get(request[PROJECT], request.match_info["file_id"])
    if record.purpose in request.app[CONFIG].files.download_refused:
        raise InvalidRequest(f"Not allowed to download files of purpose: {record.purpose}")
    if record.status == "error":
        raise ServerError(record.status_details or "The file is damaged.", code="file_damaged")
    headers = {**_CONTENT_HEADERS, "Content-Disposition": content_disposition(record.filename)}
    # Validators, conditions and ranges: see filesd.api.content.
    redirect = request.app[CONFIG].storage.s3.redirect_downloads
    return await send_content(
        request,
        files,
        record,
        headers,
        slots=request.app[DOWNLOAD_SLOTS],
        project=request[PROJECT],
        redirect=redirect,
    )
