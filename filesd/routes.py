"""HTTP handlers of the Files API. Each one translates HTTP to a store call and back."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Literal
from urllib.parse import quote

from aiohttp import HttpVersion11, web
from aiohttp.abc import AbstractStreamWriter
from multidict import MultiMapping

from .appkeys import AUTHENTICATOR, CONFIG, STORE, UPLOAD_SLOTS
from .auth import PROJECT
from .blobs import SMALL_BYTES
from .errors import (
    ApiError,
    InvalidRequest,
    RangeNotSatisfiable,
    ServerError,
    error_response,
    file_too_large,
)
from .forms import FORM_OVERHEAD, read_upload_form
from .store import ListQuery

LIMIT_MIN, LIMIT_MAX, LIMIT_DEFAULT = 1, 1000, 100
OFFSET_MAX = 2**63 - 1  # SQLite's largest integer: beyond it the query itself would fail
# Files up to this size are sent from memory (the store caches them, or reads them whole in one
# thread hop), which beats FileResponse's two hops (open+stat, close) for small bodies.
SMALL_CONTENT = SMALL_BYTES
# Requests with these headers take the FileResponse path, which implements them.
_CONDITIONAL = (
    "Range",
    "If-Range",
    "If-Match",
    "If-None-Match",
    "If-Modified-Since",
    "If-Unmodified-Since",
)
_INT = re.compile(r"-?[0-9]+")
# RFC 9110 §14.1.1, strictly: no whitespace inside a range-spec (aiohttp's own parser, which
# FileResponse uses, refuses it with a bare 416).
_BYTE_RANGE = re.compile(r"([0-9]*)-([0-9]*)", re.ASCII)
# More digits than this (after leading zeros) is beyond any file: 2^63 has 19.
_MAX_DIGITS = 19
# Conditions decided here (with the file's validators) rather than by FileResponse.
_NEED_VALIDATORS = ("If-Match", "If-Unmodified-Since", "If-Range")
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
    return web.json_response(record.as_file_object())


async def list_files(request: web.Request) -> web.Response:
    query = _list_query(request.query)
    page = await request.app[STORE].list_files(request[PROJECT], query)
    return web.json_response(page.as_list_object())


async def retrieve_file(request: web.Request) -> web.Response:
    record = await request.app[STORE].get_file(request[PROJECT], request.match_info["file_id"])
    return web.json_response(record.as_file_object())


async def delete_file(request: web.Request) -> web.Response:
    record = await request.app[STORE].delete_file(request[PROJECT], request.match_info["file_id"])
    return web.json_response({"id": record.id, "object": "file", "deleted": True})


async def file_content(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    record = await store.get_file(request[PROJECT], request.match_info["file_id"])
    if record.purpose in request.app[CONFIG].files.download_refused:
        raise InvalidRequest(f"Not allowed to download files of purpose: {record.purpose}")
    if record.status == "error":
        raise ServerError(record.status_details or "The file is damaged.", code="file_damaged")
    headers = {**_CONTENT_HEADERS, "Content-Disposition": content_disposition(record.filename)}
    if record.bytes <= SMALL_CONTENT and not any(h in request.headers for h in _CONDITIONAL):
        body, st = await store.read_small(record)
        response = web.Response(body=body, headers=headers)
        # The same validators FileResponse sends, so caches see one resource either way.
        response.etag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
        response.last_modified = st.st_mtime
        response.headers["Accept-Ranges"] = "bytes"
        return response
    path = await store.blob_path(record)
    validators = None
    if any(h in request.headers for h in _NEED_VALIDATORS):
        st = await asyncio.to_thread(path.stat)
        # The validators FileResponse sends (it computes them from the same stat).
        validators = Validators(f"{st.st_mtime_ns:x}-{st.st_size:x}", st.st_mtime)
        _check_preconditions(request, validators)
    if _check_range(request, record.bytes, validators):
        return web.FileResponse(path, chunk_size=256 * 1024, headers=headers)
    return _WholeFileResponse(path, chunk_size=256 * 1024, headers=headers)


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback and the exact UTF-8 name (RFC 6266 / RFC 8187)."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in filename)
    value = f'attachment; filename="{fallback}"'
    if fallback != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='!#$&+^`|~')}"
    return value


@dataclass(frozen=True)
class Validators:
    """A download's current validators: the ETag's value (without quotes), Last-Modified."""

    etag: str
    last_modified: float

    @property
    def last_modified_second(self) -> int:
        """Last-Modified as sent: whole seconds, rounded up as aiohttp rounds them."""
        return math.ceil(self.last_modified)

    def headers(self) -> dict[str, str]:
        return {
            "ETag": f'"{self.etag}"',
            "Last-Modified": formatdate(self.last_modified_second, usegmt=True),
        }


def _check_preconditions(request: web.Request, validators: Validators) -> None:
    """If-Match and If-Unmodified-Since (RFC 9110 §13.1.1, §13.1.4): 412 in the envelope, with
    the validators and Cache-Control, when they fail."""
    if_match = request.if_match
    if if_match is not None:
        failed = not any(
            tag.value == "*" or (not tag.is_weak and tag.value == validators.etag)
            for tag in if_match
        )
    else:
        since = request.if_unmodified_since
        failed = since is not None and validators.last_modified_second > since.timestamp()
    if failed:
        raise ApiError(
            "Precondition failed: the file does not match If-Match / If-Unmodified-Since.",
            code="precondition_failed",
            status=412,
            headers={"Cache-Control": _CONTENT_HEADERS["Cache-Control"], **validators.headers()},
        )


def _check_range(request: web.Request, size: int, validators: Validators | None = None) -> bool:
    """Whether the response may follow the request's `Range` (True also when there is none).

    RFC 9110 §14: a Range in another unit than bytes, or with several ranges (no
    multipart/byteranges here), is ignored, and so is one whose If-Range does not match
    `validators` (needed when If-Range is sent): False, send the whole file with 200. A byte
    range is decided here, every case: malformed (whitespace included), unsatisfiable
    (`bytes=-0`, a first byte at or past the end, any range of an empty file) is a 416 in the
    envelope with `Content-Range: bytes */size`; a last byte past the end is the end. The
    range decided is handed to FileResponse as the request's parsed `http_range`, so it never
    parses the header again by its own rules.
    """
    value = request.headers.get("Range")
    if value is None:
        return True
    unit, _, ranges = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in ranges:
        return False
    if "If-Range" in request.headers and not _if_range_matches(request, validators):
        return False
    chosen = _byte_range(ranges, size)
    if chosen is None:
        raise RangeNotSatisfiable(
            f"Range not satisfiable for a file of {size} bytes: {value[:100]}",
            param="Range",
            headers={"Content-Range": f"bytes */{size}"},
        )
    # aiohttp caches the parsed header there (its own `clone` fills it the same way).
    request._cache["http_range"] = chosen
    return True


def _byte_range(spec: str, size: int) -> slice | None:
    """One RFC 9110 range-spec as the slice aiohttp's `http_range` gives (a suffix is a
    negative start), clamped to `size`; None if malformed or unsatisfiable."""
    match = _BYTE_RANGE.fullmatch(spec)
    if match is None or match.group(1) == match.group(2) == "" or size == 0:
        return None
    first, last = (_position(group) for group in match.groups())
    if first is None:  # a suffix: the last `last` bytes (all of them if there are fewer)
        assert last is not None
        return None if last == 0 else slice(-min(last, size), None, 1)
    if first >= size or (last is not None and last < first):
        return None
    return slice(first, None if last is None or last >= size else last + 1, 1)


def _position(digits: str) -> int | None:
    """A byte position: None if absent; anything longer than `_MAX_DIGITS` is 2^63, beyond
    any file (int() would refuse thousands of digits, and need not read them)."""
    if not digits:
        return None
    digits = digits.lstrip("0") or "0"
    return 2**63 if len(digits) > _MAX_DIGITS else int(digits)


def _if_range_matches(request: web.Request, validators: Validators | None) -> bool:
    """If-Range holds an entity tag (strong comparison) or a date (an exact match)."""
    if validators is None:
        return False
    value = request.headers["If-Range"].strip()
    if value.startswith(('"', "W/")):
        return value == f'"{validators.etag}"'
    date = request.if_range
    return date is not None and validators.last_modified_second == date.timestamp()


class _WholeFileResponse(web.FileResponse):
    """A FileResponse that sends the whole file whatever `Range` says: the caller decided to
    ignore it (FileResponse would answer an unknown unit or several ranges with a 416)."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        headers = request.headers.copy()
        del headers["Range"]
        return await super().prepare(request.clone(headers=headers))


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
        limit=_int_param(params, "limit", LIMIT_DEFAULT, LIMIT_MIN, LIMIT_MAX),
        offset=_int_param(params, "offset", 0, 0, OFFSET_MAX),
        after=params.get("after") or None,
        order=sort,
    )


def _int_param(
    params: MultiMapping[str], name: str, default: int, minimum: int, maximum: int | None
) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not _INT.fullmatch(raw) or len(raw) > 19:
        raise InvalidRequest(
            f"Invalid type for '{name}': expected an integer, but got a string instead.",
            param=name,
            code="invalid_type",
        )
    value = int(raw)
    if value < minimum:
        raise InvalidRequest(
            f"Invalid '{name}': integer below minimum value. "
            f"Expected a value >= {minimum}, but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    if maximum is not None and value > maximum:
        raise InvalidRequest(
            f"Invalid '{name}': integer above maximum value. "
            f"Expected a value <= {maximum}, but got {value} instead.",
            param=name,
            code="integer_above_max_value",
        )
    return value
