"""HTTP handlers of the Uploads API: create, add a part, complete, cancel."""

from __future__ import annotations

import re

from aiohttp import web

from ..services.errors import PartTooLarge
from .appkeys import CONFIG, UPLOAD_SLOTS, UPLOADS
from .auth import PROJECT
from .bodies import expect_continue, read_json_object
from .errors import InvalidRequest
from .forms import FORM_OVERHEAD, read_form
from .responses import json_response
from .validation import (
    check_expires_after,
    check_filename,
    check_no_unknown,
    check_purpose,
    require,
)

_MD5 = re.compile(r"[0-9a-fA-F]{32}")
MIME_TYPE_MAX = 255


def setup_upload_routes(app: web.Application) -> None:
    app.router.add_post("/v1/uploads", create_upload)
    app.router.add_post(
        "/v1/uploads/{upload_id}/parts",
        add_part,
        expect_handler=expect_continue(_check_part_length),
    )
    app.router.add_post("/v1/uploads/{upload_id}/complete", complete_upload)
    app.router.add_post("/v1/uploads/{upload_id}/cancel", cancel_upload)


async def create_upload(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    body = await read_json_object(request)
    check_no_unknown(body, {"bytes", "filename", "mime_type", "purpose", "expires_after"})
    size = require(body, "bytes", int, "an integer")
    if not 0 <= size <= config.limits.max_upload_bytes:
        raise InvalidRequest(
            f"Invalid 'bytes': an upload holds 0 to {config.limits.max_upload_bytes} bytes, "
            f"but got {size}.",
            param="bytes",
            code="invalid_value",
        )
    filename = check_filename(require(body, "filename", str, "a string"), param="filename")
    mime_type = require(body, "mime_type", str, "a string")
    if not mime_type or len(mime_type) > MIME_TYPE_MAX:
        raise InvalidRequest(
            f"Invalid 'mime_type': expected 1 to {MIME_TYPE_MAX} characters.", param="mime_type"
        )
    purpose = check_purpose(require(body, "purpose", str, "a string"), config.files.purposes)
    file_expires_after = None
    if body.get("expires_after") is not None:
        policy = require(body, "expires_after", dict, "an object")
        check_no_unknown(policy, {"anchor", "seconds"})
        file_expires_after = check_expires_after(
            policy.get("anchor"), policy.get("seconds"), prefix="expires_after"
        )
    upload = await request.app[UPLOADS].create(
        request[PROJECT],
        filename=filename,
        purpose=purpose,
        mime_type=mime_type,
        size=size,
        file_expires_after=file_expires_after,
    )
    return json_response(upload.as_upload_object())


async def add_part(request: web.Request) -> web.Response:
    uploads = request.app[UPLOADS]
    project, upload_id = request[PROJECT], request.match_info["upload_id"]
    # Refuse before reading the body: no point receiving 64 MiB for a finished upload.
    await uploads.get_pending(project, upload_id)
    _check_part_length(request)
    with request.app[UPLOAD_SLOTS].take(project):
        form = await read_form(
            request,
            content_field="data",
            text_fields=(),
            receive=uploads.receive_part,
            discard=uploads.discard,
        )
        part = await uploads.add_part(project, upload_id, form.content)
    return json_response(part.as_part_object())


async def complete_upload(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    check_no_unknown(body, {"part_ids", "md5"})
    part_ids = require(body, "part_ids", list, "an array")
    if not all(isinstance(p, str) for p in part_ids):
        raise InvalidRequest(
            "Invalid 'part_ids': expected an array of strings.",
            param="part_ids",
            code="invalid_type",
        )
    md5 = body.get("md5")
    if md5 is not None and (not isinstance(md5, str) or not _MD5.fullmatch(md5)):
        raise InvalidRequest(
            "Invalid 'md5': expected 32 hexadecimal characters.", param="md5", code="invalid_value"
        )
    upload, record = await request.app[UPLOADS].complete(
        request[PROJECT], request.match_info["upload_id"], part_ids, md5
    )
    return json_response(upload.as_upload_object(record))


async def cancel_upload(request: web.Request) -> web.Response:
    check_no_unknown(await read_json_object(request, allow_empty=True), set())
    upload = await request.app[UPLOADS].cancel(request[PROJECT], request.match_info["upload_id"])
    return json_response(upload.as_upload_object())


def _check_part_length(request: web.Request) -> None:
    limit = request.app[CONFIG].limits.max_part_bytes
    if request.content_length is not None and request.content_length > limit + FORM_OVERHEAD:
        raise PartTooLarge(limit)
