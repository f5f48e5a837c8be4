"""The manifest of an export archive, checked field by field before anything is imported.

An archive comes from outside (an operator's file, or anyone holding the admin token), so its
manifest is untrusted input: every file entry must have exactly the fields of a `FileRecord`,
each of the right type and range, and the whole manifest is refused at the first bad entry.
Pure: no I/O, no HTTP.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping
from typing import Any

from ..models import FileRecord
from ..values import has_control_characters, is_int

FORMAT = "filesd-export"
FORMAT_VERSION = 1
# Well beyond any real Unix time in seconds (year 9999), and within SQLite's 64-bit integers.
_MAX_TIME = 253_402_300_799
_MAX_BYTES = 2**63 - 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
_STATUSES = ("processed", "error")
_FIELDS = tuple(f.name for f in dataclasses.fields(FileRecord))
_TEXT_MAX = 1024


class ManifestError(ValueError):
    """The manifest is malformed; the message names the entry and the field."""


def parse_manifest(doc: object, purposes: Collection[str]) -> list[FileRecord]:
    """The files of a manifest, or `ManifestError` naming the first problem.

    `purposes` are the purposes this server accepts: a file of another purpose could never have
    been uploaded here, so it is refused rather than imported as a file no route expects.
    """
    if not isinstance(doc, Mapping):
        raise ManifestError("the manifest must be a JSON object")
    if doc.get("version") != FORMAT_VERSION:
        raise ManifestError(f"the manifest must have version {FORMAT_VERSION}")
    entries = doc.get("files")
    if not isinstance(entries, list):
        raise ManifestError("the manifest's 'files' must be an array")
    records: list[FileRecord] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        record = _record(entry, f"files[{i}]", purposes)
        if record.id in seen:
            raise ManifestError(f"files[{i}].id: {record.id!r} appears more than once")
        seen.add(record.id)
        records.append(record)
    return records


def _record(entry: object, where: str, purposes: Collection[str]) -> FileRecord:
    if not isinstance(entry, Mapping):
        raise ManifestError(f"{where}: must be an object")
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        raise ManifestError(f"{where}.{unknown[0]}: unknown field")
    missing = [name for name in _FIELDS if name not in entry]
    if missing:
        raise ManifestError(f"{where}.{missing[0]}: missing")
    fields: dict[str, Any] = {}
    for name in ("id", "project", "filename", "purpose", "sha256", "status"):
        fields[name] = _text(entry[name], f"{where}.{name}")
    if "/" in fields["filename"] or "\\" in fields["filename"] or fields["filename"] in ("..", "."):
        raise ManifestError(f"{where}.filename: must be a plain name")
    if fields["purpose"] not in purposes:
        raise ManifestError(f"{where}.purpose: {fields['purpose']!r} is not an accepted purpose")
    if not _SHA256.fullmatch(fields["sha256"]):
        raise ManifestError(f"{where}.sha256: must be 64 lowercase hexadecimal digits")
    if fields["status"] not in _STATUSES:
        raise ManifestError(f"{where}.status: must be one of {list(_STATUSES)}")
    fields["bytes"] = _integer(entry["bytes"], f"{where}.bytes", _MAX_BYTES)
    fields["created_at"] = _integer(entry["created_at"], f"{where}.created_at", _MAX_TIME)
    expires_at = entry["expires_at"]
    fields["expires_at"] = (
        None if expires_at is None else _integer(expires_at, f"{where}.expires_at", _MAX_TIME)
    )
    details = entry["status_details"]
    fields["status_details"] = (
        None if details is None else _text(details, f"{where}.status_details")
    )
    return FileRecord(**fields)


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: must be a non-empty string")
    if len(value) > _TEXT_MAX:
        raise ManifestError(f"{where}: longer than {_TEXT_MAX} characters")
    if has_control_characters(value):
        raise ManifestError(f"{where}: must not contain control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ManifestError(f"{where}: not valid UTF-8") from None
    return value


def _integer(value: object, where: str, maximum: int) -> int:
    if not is_int(value):
        raise ManifestError(f"{where}: must be an integer")
    if not 0 <= value <= maximum:
        raise ManifestError(f"{where}: must be between 0 and {maximum}")
    return value
