"""Multipart forms read as a stream: `POST /v1/files` and the parts of an upload.

Fields may come in any order. The one content field is handed, as a stream of large chunks, to
the service that receives it (`receive`), never held in memory; text fields are small and
capped. Any error leaves nothing behind: received content is discarded before the error
propagates.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiohttp import BodyPartReader, web
from aiohttp.hdrs import CONTENT_DISPOSITION
from aiohttp.multipart import (
    BadContentDispositionHeader,
    BadContentDispositionParam,
    content_disposition_filename,
    parse_content_disposition,
)
from pydantic_core import PydanticCustomError

from .bodies import BodyPace
from .errors import InvalidRequest
from .schemas import FileForm, check_filename, check_purpose
from .validation import limits, refused, validate

READ_CHUNK = 1024 * 1024
TEXT_FIELD_MAX = 1024
# Slack for the form around the file: boundaries, part headers, the text fields. A request whose
# Content-Length exceeds the content limit by more than this cannot hold acceptable content.
FORM_OVERHEAD = 64 * 1024


# What a service made of the content it received (owned by the caller: use it or discard it).
Content = TypeVar("Content")
Receive = Callable[[AsyncIterator[bytes]], Awaitable[Content]]
Discard = Callable[[Content], Awaitable[None]]


@dataclass(frozen=True)
class Form(Generic[Content]):
    """A read form: the received content and the text fields."""

    content: Content
    filename: str | None
    fields: dict[str, str]


@dataclass(frozen=True)
class UploadForm(Generic[Content]):
    content: Content
    filename: str
    fields: FileForm


async def read_upload_form(
    request: web.Request, *, receive: Receive[Content], discard: Discard[Content]
) -> UploadForm[Content]:
    """The form of `POST /v1/files`: `file` (with a filename) and the fields of `FileForm`."""
    context = limits(request)

    def check_text(name: str, value: str) -> None:
        if name == "purpose":  # fail before the file is read, when purpose comes first
            try:
                check_purpose(value, context.purposes)
            except PydanticCustomError as error:
                raise refused(error) from None

    form = await read_form(
        request,
        content_field=FileForm.content_field,
        text_fields=FileForm.input_names(),
        receive=receive,
        discard=discard,
        check_text=check_text,
    )
    try:
        try:
            filename = check_filename(form.filename, FileForm.content_field)
        except PydanticCustomError as error:
            raise refused(error) from None
        fields = validate(FileForm, form.fields, context)
    except BaseException:
        await discard(form.content)
        raise
    return UploadForm(form.content, filename, fields)


async def read_form(
    request: web.Request,
    *,
    content_field: str,
    text_fields: tuple[str, ...],
    receive: Receive[Content],
    discard: Discard[Content],
    check_text: Callable[[str, str], None] | None = None,
) -> Form[Content]:
    """Read a form with one content field (streamed) and some small text fields.

    The body must keep the pace of `BodyPace` (`[limits] body_timeout`, `min_body_rate`) or
    the request fails with 408: a slow or stalled client cannot hold an upload slot forever.
    """
    not_a_form = InvalidRequest(
        f"The request must be multipart/form-data with a '{content_field}' field."
    )
    # A plain split: request.content_type goes through the email module's header parser.
    mime_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if mime_type != "multipart/form-data":
        raise not_a_form
    try:
        reader = await request.multipart()
    except (ValueError, KeyError):  # no or a malformed boundary
        raise not_a_form from None
    fields: dict[str, str] = {}
    received: list[Content] = []  # the content, once read (None is a valid content)
    filename: str | None = None
    pace = BodyPace.of(request)
    try:
        while True:
            try:
                part = await pace.read(reader.next())
            except (BadContentDispositionHeader, BadContentDispositionParam):
                # aiohttp's own look at the first part, where warnings are errors (pytest).
                raise _bad_disposition() from None
            except ValueError as e:
                raise InvalidRequest(f"Malformed multipart body: {e}") from None
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise InvalidRequest("Nested multipart bodies are not supported.")
            name, part_filename = _disposition(part)
            if name is None:
                raise InvalidRequest("Every multipart part needs a name.")
            if name in fields or (name == content_field and received):
                raise InvalidRequest(f"Duplicate field '{name}'.", param=name)
            if name == content_field:
                filename = part_filename
                received.append(await receive(_chunks(part, pace)))
            elif name in text_fields:
                fields[name] = await _read_text(part, name, pace)
                if check_text is not None:
                    check_text(name, fields[name])
            else:
                raise InvalidRequest(f"Unrecognized request argument supplied: {name}", param=name)
        if not received:
            raise InvalidRequest(f"'{content_field}' is a required property", param=content_field)
    except BaseException:
        for content in received:
            await discard(content)
        raise
    return Form(received[0], filename, fields)


def _disposition(part: BodyPartReader) -> tuple[str | None, str | None]:
    """The part's name and filename, from its Content-Disposition parsed once (aiohttp's
    `part.name` and `part.filename` parse it again each); 400 if aiohttp cannot parse it.

    aiohttp only warns about such a header and goes on without it (or without the bad
    parameter: a malformed `filename*` would leave the plain `filename`), so the warning is
    caught here, whatever the process's warning filters (pytest makes warnings errors; a user's
    Python only prints them).
    """
    raw = part.headers.get(CONTENT_DISPOSITION)
    if raw is None:
        return None, None  # no name: refused as such by the caller
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kind, params = parse_content_disposition(raw)
    bad = (BadContentDispositionHeader, BadContentDispositionParam)
    if kind is None or any(issubclass(w.category, bad) for w in caught):
        raise _bad_disposition()
    return content_disposition_filename(params, "name"), content_disposition_filename(
        params, "filename"
    )


def _bad_disposition() -> InvalidRequest:
    return InvalidRequest("Malformed Content-Disposition header in a multipart part.")


async def _chunks(part: BodyPartReader, pace: BodyPace) -> AsyncIterator[bytes]:
    """The part's bytes, READ_CHUNK at a time, within the body's pace."""
    while chunk := await _read_chunk(part, READ_CHUNK, pace):
        yield chunk


async def _read_chunk(part: BodyPartReader, size: int, pace: BodyPace) -> bytes:
    """The next chunk, within the body's pace (each read has its own limit, which restarts
    with every chunk, and the average rate is checked across them)."""
    chunk = await pace.read(part.read_chunk(size))
    pace.count(len(chunk))
    return chunk


async def _read_text(part: BodyPartReader, name: str, pace: BodyPace) -> str:
    data = bytearray()
    while chunk := await _read_chunk(part, TEXT_FIELD_MAX + 1, pace):
        data += chunk
        if len(data) > TEXT_FIELD_MAX:
            raise InvalidRequest(
                f"Field '{name}' is too long (at most {TEXT_FIELD_MAX} bytes).", param=name
            )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"Field '{name}' is not valid UTF-8.", param=name) from None
