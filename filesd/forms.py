"""The multipart form of `POST /v1/files`, read as a stream.

Fields may come in any order. The `file` part is streamed into a blob writer in large chunks and
never held in memory; text fields are small and capped. Any error leaves nothing behind: staged
content is removed before the error propagates.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import BodyPartReader, web

from .blobs import StagedBlob
from .errors import InvalidRequest
from .store import FileStore

READ_CHUNK = 1024 * 1024
TEXT_FIELD_MAX = 1024
FILENAME_MAX = 1024
# Slack for the form around the file: boundaries, part headers, the text fields. A request whose
# Content-Length exceeds max_file_bytes by more than this cannot hold an acceptable file.
FORM_OVERHEAD = 64 * 1024
EXPIRES_MIN, EXPIRES_MAX = 3600, 2592000

_TEXT_FIELDS = ("purpose", "expires_after[anchor]", "expires_after[seconds]")


@dataclass(frozen=True)
class UploadForm:
    staged: StagedBlob
    filename: str
    purpose: str
    expires_after: int | None


async def read_upload_form(
    request: web.Request, store: FileStore, purposes: tuple[str, ...]
) -> UploadForm:
    """Read and validate the form; the caller owns `staged` in the result (create or discard)."""
    not_a_form = InvalidRequest(
        "The request must be multipart/form-data with a 'file' and a 'purpose' field."
    )
    if request.content_type != "multipart/form-data":
        raise not_a_form
    try:
        reader = await request.multipart()
    except (ValueError, KeyError):  # no or a malformed boundary
        raise not_a_form from None
    fields: dict[str, str] = {}
    staged: StagedBlob | None = None
    filename = ""
    try:
        while True:
            try:
                part = await reader.next()
            except ValueError as e:
                raise InvalidRequest(f"Malformed multipart body: {e}") from None
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise InvalidRequest("Nested multipart bodies are not supported.")
            name = part.name
            if name is None:
                raise InvalidRequest("Every multipart part needs a name.")
            if name in fields or (name == "file" and staged is not None):
                raise InvalidRequest(f"Duplicate field '{name}'.", param=name)
            if name == "file":
                filename = _check_filename(part.filename)
                staged = await _stream_file(part, store)
            elif name in _TEXT_FIELDS:
                fields[name] = await _read_text(part, name)
                if name == "purpose":
                    _check_purpose(fields[name], purposes)
            else:
                raise InvalidRequest(f"Unrecognized request argument supplied: {name}", param=name)
        if staged is None:
            raise InvalidRequest("'file' is a required property", param="file")
        if "purpose" not in fields:
            raise InvalidRequest("'purpose' is a required property", param="purpose")
        expires_after = _expires_after(fields)
    except BaseException:
        if staged is not None:
            await store.discard(staged)
        raise
    return UploadForm(staged, filename, fields["purpose"], expires_after)


async def _stream_file(part: BodyPartReader, store: FileStore) -> StagedBlob:
    writer = store.blob_writer()
    try:
        while chunk := await part.read_chunk(READ_CHUNK):
            await writer.write(chunk)
        return await writer.finish()
    except BaseException:
        await writer.abort()
        raise


async def _read_text(part: BodyPartReader, name: str) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(TEXT_FIELD_MAX + 1):
        data += chunk
        if len(data) > TEXT_FIELD_MAX:
            raise InvalidRequest(
                f"Field '{name}' is too long (at most {TEXT_FIELD_MAX} bytes).", param=name
            )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"Field '{name}' is not valid UTF-8.", param=name) from None


def _check_filename(filename: str | None) -> str:
    if not filename:
        raise InvalidRequest(
            "'file' must be a file upload: a multipart part with a filename.", param="file"
        )
    try:
        filename.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("The filename is not valid UTF-8.", param="file") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in filename):
        raise InvalidRequest("The filename must not contain control characters.", param="file")
    if len(filename) > FILENAME_MAX:
        raise InvalidRequest(
            f"The filename is too long (at most {FILENAME_MAX} characters).", param="file"
        )
    return filename


def _check_purpose(purpose: str, purposes: tuple[str, ...]) -> None:
    if purpose not in purposes:
        listed = ", ".join(repr(p) for p in purposes)
        raise InvalidRequest(f"{purpose!r} is not one of [{listed}] - 'purpose'", param="purpose")


def _expires_after(fields: dict[str, str]) -> int | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor is None:
        raise InvalidRequest(
            "'expires_after[anchor]' is required with 'expires_after[seconds]'",
            param="expires_after[anchor]",
        )
    if anchor != "created_at":
        raise InvalidRequest(
            f"Invalid value: {anchor!r}. Supported values are: 'created_at'.",
            param="expires_after[anchor]",
            code="invalid_value",
        )
    if seconds is None:
        raise InvalidRequest(
            "'expires_after[seconds]' is required with 'expires_after[anchor]'",
            param="expires_after[seconds]",
        )
    if not seconds.isascii() or not seconds.isdigit():
        raise InvalidRequest(
            f"Invalid type for 'expires_after[seconds]': expected an integer, got {seconds!r}.",
            param="expires_after[seconds]",
            code="invalid_type",
        )
    value = int(seconds)
    if not EXPIRES_MIN <= value <= EXPIRES_MAX:
        raise InvalidRequest(
            f"Invalid 'expires_after[seconds]': expected a value between {EXPIRES_MIN} and "
            f"{EXPIRES_MAX}, but got {value} instead.",
            param="expires_after[seconds]",
            code="invalid_value",
        )
    return value
