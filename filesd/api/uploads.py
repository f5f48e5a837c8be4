"""HTTP handlers of the Uploads API: create, add a part, complete, cancel."""

from __future__ import annotations

from aiohttp import web

from ..objects import UploadObject, UploadPartObject
from ..services.errors import PartTooLarge
from .appkeys import CONFIG, UPLOAD_SLOTS, UPLOADS
from .auth import PROJECT
from .forms import FORM_OVERHEAD, read_form
from .responses import json_response
from .routing import Routes
from .schemas import CompleteUpload, CreateUpload, Empty, PartForm

routes = Routes()


def _check_part_length(request: web.Request) -> None:
    limit = request.app[CONFIG].limits.max_part_bytes
    if request.content_length is not None and request.content_length > limit + FORM_OVERHEAD:
        raise PartTooLarge(limit)


@routes.route(
    "POST",
    "/v1/uploads",
    id="createUpload",
    summary="Create an upload, to be sent in parts",
    body=CreateUpload,
    ok=UploadObject,
    ok_description="The upload",
    errors=(408,),
)
async def create_upload(request: web.Request, body: CreateUpload) -> web.Response:
    policy = body.expires_after
    upload = await request.app[UPLOADS].create(
        request[PROJECT],
        filename=body.filename,
        purpose=body.purpose,
        mime_type=body.mime_type,
        size=body.bytes,
        file_expires_after=policy.seconds if policy is not None else None,
    )
    return json_response(upload.as_upload_object())


@routes.route(
    "POST",
    "/v1/uploads/{upload_id}/parts",
    id="addUploadPart",
    summary="Add a part to an upload",
    form=PartForm,
    ok=UploadPartObject,
    ok_description="The part",
    errors=(404, 408),
    expect=_check_part_length,
)
async def add_part(request: web.Request) -> web.Response:
    uploads = request.app[UPLOADS]
    project, upload_id = request[PROJECT], request.match_info["upload_id"]
    # Refuse before reading the body: no point receiving 64 MiB for a finished upload.
    await uploads.get_pending(project, upload_id)
    _check_part_length(request)
    with request.app[UPLOAD_SLOTS].take(project):
        form = await read_form(
            request,
            content_field=PartForm.content_field,
            text_fields=PartForm.input_names(),
            receive=uploads.receive_part,
            discard=uploads.discard,
        )
        part = await uploads.add_part(project, upload_id, form.content)
    return json_response(part.as_part_object())


@routes.route(
    "POST",
    "/v1/uploads/{upload_id}/complete",
    id="completeUpload",
    summary="Join the parts, in the order given, into a file",
    body=CompleteUpload,
    ok=UploadObject,
    ok_description="The completed upload",
    errors=(404, 408),
)
async def complete_upload(request: web.Request, body: CompleteUpload) -> web.Response:
    upload, record = await request.app[UPLOADS].complete(
        request[PROJECT], request.match_info["upload_id"], body.part_ids, body.md5
    )
    return json_response(upload.as_upload_object(record))


@routes.route(
    "POST",
    "/v1/uploads/{upload_id}/cancel",
    id="cancelUpload",
    summary="Cancel an upload",
    body=Empty,
    ok=UploadObject,
    ok_description="The cancelled upload",
    errors=(404, 408),
)
async def cancel_upload(request: web.Request, body: Empty) -> web.Response:
    upload = await request.app[UPLOADS].cancel(request[PROJECT], request.match_info["upload_id"])
    return json_response(upload.as_upload_object())
