"""The requests the API takes, as declared types: one per JSON body, query string and form.

Each type is a pydantic model. The route table (`routing.py`) names each route's types; the
request is validated against them (`validation.py`), a refusal names the field in the error's
`param`, and the OpenAPI document's schemas are generated from the same types (`openapi.py`).
Checks whose wording is OpenAI's (or filesd's own, say so in the README) are written here, once,
as validators that refuse with the exact message (`refuse`); plain type and presence errors
get their wording from `validation.py`.

What depends on the configuration (the purposes accepted, the largest upload) is read from the
validation context (`Limits`), so one declared type serves every server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..batches.objects import COMPLETION_WINDOWS, ENDPOINTS
from ..clock import CLOCK_MAX, is_clock_time
from ..faultrules import FAULT_RULE_FIELDS, FaultRule, FaultRuleError, parse_fault_rule
from ..values import has_control_characters, is_int, is_number, too_long

FILENAME_MAX = 1024
EXPIRES_MIN, EXPIRES_MAX = 3600, 2592000
MIME_TYPE_MAX = 255
METADATA_KEYS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512
LIMIT_MAX = 1000
OFFSET_MAX = 2**63 - 1  # SQLite's largest integer: beyond it the query itself would fail
BATCH_LIMIT_MAX = 100
# The longest file id a request may name: filesd's are 36 characters (a UUID) or 29 (`file-`
# and 24), OpenAI's 29; what is longer names no file, and a batch would store it.
FILE_ID_CHARS = 256
_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_INT = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class Limits:
    """What validation takes from the configuration (the validation context)."""

    purposes: tuple[str, ...]
    max_upload_bytes: int


@dataclass(frozen=True)
class Refusal:
    """The words of a refusal, as the API answers them (400, with this param and code)."""

    message: str
    param: str | None
    code: str | None = None


def refuse(message: str, param: str | None, code: str | None = None) -> PydanticCustomError:
    """A refusal worded in full here: the API answers it as it is (400, this param and code).

    The words travel inside an object, never as the error's template or a string of its
    context: pydantic renders those as UTF-8, and a message may quote what a client sent,
    lone surrogates included (JSON can spell them)."""
    return PydanticCustomError("filesd", "refused", {"refusal": Refusal(message, param, code)})


def _limits(info: ValidationInfo) -> Limits:
    context = info.context
    if not isinstance(context, Limits):
        raise TypeError("validation needs the server's Limits as its context")
    return context


def json_type(value: object) -> str:
    """How OpenAI names the JSON type of a value in its messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


# --- the checks ----------------------------------------------------------------------------


def check_filename(filename: object, param: str) -> str:
    """A file's name, not a path: UTF-8, no control characters, no directories."""
    if not isinstance(filename, str) or not filename:
        raise refuse("'file' must be a file upload: a multipart part with a filename.", param)
    try:
        filename.encode("utf-8")
    except UnicodeEncodeError:
        raise refuse("The filename is not valid UTF-8.", param) from None
    if has_control_characters(filename):
        raise refuse("The filename must not contain control characters.", param)
    if "/" in filename or "\\" in filename or filename in (".", ".."):
        raise refuse("The filename must be a plain name, without '/' or '\\' or '..'.", param)
    if len(filename) > FILENAME_MAX:
        raise refuse(f"The filename is too long (at most {FILENAME_MAX} characters).", param)
    return filename


def check_purpose(purpose: object, purposes: tuple[str, ...]) -> str:
    if not isinstance(purpose, str) or purpose not in purposes:
        listed = ", ".join(repr(p) for p in purposes)
        raise refuse(f"{purpose!r} is not one of [{listed}] - 'purpose'", "purpose")
    return purpose


def check_expires_after(anchor: object, seconds: object, *, prefix: str) -> int:
    """An `expires_after` policy's seconds; `prefix` names its fields in refusals."""
    if anchor is None:
        raise refuse(
            f"'{prefix}[anchor]' is required with '{prefix}[seconds]'", f"{prefix}[anchor]"
        )
    if anchor != "created_at":
        raise refuse(
            f"Invalid value: {anchor!r}. Supported values are: 'created_at'.",
            f"{prefix}[anchor]",
            "invalid_value",
        )
    if seconds is None:
        raise refuse(
            f"'{prefix}[seconds]' is required with '{prefix}[anchor]'", f"{prefix}[seconds]"
        )
    if isinstance(seconds, str) and seconds.isascii() and seconds.isdigit():
        seconds = int(seconds)
    if not is_int(seconds):
        raise refuse(
            f"Invalid type for '{prefix}[seconds]': expected an integer, got {seconds!r}.",
            f"{prefix}[seconds]",
            "invalid_type",
        )
    if not EXPIRES_MIN <= seconds <= EXPIRES_MAX:
        raise refuse(
            f"Invalid '{prefix}[seconds]': expected a value between {EXPIRES_MIN} and "
            f"{EXPIRES_MAX}, but got {seconds} instead.",
            f"{prefix}[seconds]",
            "invalid_value",
        )
    return seconds


def check_one_of(value: object, allowed: tuple[str, ...], param: str, *, listed: str = "") -> Any:
    """`value` if it is one of `allowed` (only strings get here: types are checked first)."""
    if value not in allowed:
        listed = listed or ", ".join(repr(a) for a in allowed)
        raise refuse(
            f"Invalid value: {value!r}. Supported values are: {listed}.", param, "invalid_value"
        )
    return value


# --- declared field types ------------------------------------------------------------------


def _purpose(value: object, info: ValidationInfo) -> str:
    if not isinstance(value, str):
        return value  # type: ignore[return-value]  # pydantic names the type
    return check_purpose(value, _limits(info).purposes)


# One of the configured purposes; in the OpenAPI document, their list (filled in per server).
Purpose = Annotated[str, BeforeValidator(_purpose), WithJsonSchema({"x-filesd-purposes": True})]


def _filename(param: str) -> Any:
    """A filename given as a JSON string (check_filename's words for an empty one are about a
    multipart part)."""

    def check(value: object) -> object:
        if value == "":
            raise refuse(
                f"Invalid '{param}': string too short. Expected a string with minimum length "
                "1, but got an empty string instead.",
                param,
                "string_below_min_length",
            )
        return check_filename(value, param) if isinstance(value, str) else value

    return BeforeValidator(check)


class ExpiresAfter(BaseModel):
    """An expiry policy: the file expires `seconds` after it was created."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        defer_build=True,
        json_schema_extra={"examples": [{"anchor": "created_at", "seconds": 86400}]},
    )

    anchor: Literal["created_at"]
    seconds: Annotated[int, Field(ge=EXPIRES_MIN, le=EXPIRES_MAX)]


def _policy(prefix: str) -> Any:
    """An `expires_after`-like policy field named `prefix`: absent or null is none; its fields
    checked in OpenAI's order and words."""

    def check(value: object) -> object:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise refuse(
                f"Invalid type for '{prefix}': expected an object, but got "
                f"{json_type(value)} instead.",
                prefix,
                "invalid_type",
            )
        for name in value:
            if name not in ("anchor", "seconds"):
                raise refuse(f"Unrecognized request argument supplied: {name}", name)
        seconds = check_expires_after(value.get("anchor"), value.get("seconds"), prefix=prefix)
        return {"anchor": "created_at", "seconds": seconds}

    return BeforeValidator(check)


class Request(BaseModel):
    """A request body or query: unknown fields refused, types strict. `missing` words a
    required field that is absent (`{name}` is the field)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)
    missing: ClassVar[str] = "Missing required parameter: '{name}'."
    # Whether a JSON body may be left out altogether (read as `{}`).
    body_optional: ClassVar[bool] = False
    # Whether a query parameter given twice is refused (else the first counts).
    duplicates_refused: ClassVar[bool] = True

    @classmethod
    def input_names(cls) -> tuple[str, ...]:
        """The names a request may give (its fields)."""
        return tuple(cls.model_fields)


# --- the Files API -------------------------------------------------------------------------


def _limit_query(default: int, maximum: int) -> Any:
    def parse(raw: object) -> object:
        return query_int(raw, "limit", default, 1, maximum)

    return BeforeValidator(parse)


def query_int(raw: object, name: str, default: int, minimum: int, maximum: int | None) -> int:
    """An integer query parameter (`default` when absent or empty), as OpenAI checks it."""
    if raw is None or raw == "":
        return default
    if not isinstance(raw, str) or not _INT.fullmatch(raw) or len(raw) > 19:
        raise refuse(
            f"Invalid type for '{name}': expected an integer, but got a string instead.",
            name,
            "invalid_type",
        )
    value = int(raw)
    if value < minimum:
        raise refuse(
            f"Invalid '{name}': integer below minimum value. "
            f"Expected a value >= {minimum}, but got {value} instead.",
            name,
            "integer_below_min_value",
        )
    if maximum is not None and value > maximum:
        raise refuse(
            f"Invalid '{name}': integer above maximum value. "
            f"Expected a value <= {maximum}, but got {value} instead.",
            name,
            "integer_above_max_value",
        )
    return value


def _offset(raw: object) -> object:
    return query_int(raw, "offset", 0, 0, OFFSET_MAX)


def _order(raw: object) -> object:
    value = "desc" if raw is None else raw
    return check_one_of(value, ("asc", "desc"), "order", listed="'asc' and 'desc'")


def _blank_is_none(raw: object) -> object:
    return raw or None


class ListFilesQuery(Request):
    """GET /v1/files: a page of the project's files (checked in this order)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True, defer_build=True)

    order: Annotated[Literal["asc", "desc"], BeforeValidator(_order)] = "desc"
    limit: Annotated[
        int, Field(ge=1, le=LIMIT_MAX, examples=[10]), _limit_query(100, LIMIT_MAX)
    ] = 100
    offset: Annotated[int, Field(ge=0), BeforeValidator(_offset)] = 0
    purpose: Annotated[str | None, BeforeValidator(_blank_is_none)] = None
    after: Annotated[str | None, BeforeValidator(_blank_is_none)] = None


class FileForm(Request):
    """POST /v1/files: the text fields of the form, beside its `file` (a multipart part with a
    filename, streamed)."""

    missing: ClassVar[str] = "'{name}' is a required property"
    content_field: ClassVar[str] = "file"

    purpose: Purpose
    expires_after: Annotated[ExpiresAfter | None, _policy("expires_after")] = None

    @model_validator(mode="before")
    @classmethod
    def _policy_parts(cls, fields: Any) -> Any:
        """The policy comes in one of two shapes: its fields as parts of their own,
        `expires_after[anchor]` and `expires_after[seconds]` (what OpenAI's SDKs send), or one
        part `expires_after` holding the object as JSON (OpenAPI's encoding of an object in a
        form, what generated clients send). Both at once is refused: they could disagree."""
        if not isinstance(fields, Mapping):
            return fields
        flat = dict(fields)
        anchor = flat.pop("expires_after[anchor]", None)
        seconds = flat.pop("expires_after[seconds]", None)
        whole = flat.pop("expires_after", None)
        if whole is not None and (anchor is not None or seconds is not None):
            raise refuse(
                "Give 'expires_after' either as one part holding a JSON object or as the parts "
                "'expires_after[anchor]' and 'expires_after[seconds]', not both.",
                "expires_after",
            )
        if isinstance(whole, str):
            try:
                flat["expires_after"] = json.loads(whole)
            except (ValueError, RecursionError):
                raise refuse(
                    "Invalid 'expires_after': expected a JSON object such as "
                    '{"anchor": "created_at", "seconds": 3600}, but the part is not valid JSON.',
                    "expires_after",
                    "invalid_value",
                ) from None
        elif anchor is not None or seconds is not None:
            flat["expires_after"] = {"anchor": anchor, "seconds": seconds}
        return flat

    @classmethod
    def input_names(cls) -> tuple[str, ...]:
        return ("purpose", "expires_after", "expires_after[anchor]", "expires_after[seconds]")


# --- the Uploads API -----------------------------------------------------------------------


def _upload_bytes(value: object, info: ValidationInfo) -> object:
    if not is_int(value):
        return value
    most = _limits(info).max_upload_bytes
    if not 0 <= value <= most:
        raise refuse(
            f"Invalid 'bytes': an upload holds 0 to {most} bytes, but got {value}.",
            "bytes",
            "invalid_value",
        )
    return value


def _mime_type(value: object) -> object:
    if isinstance(value, str) and (not value or len(value) > MIME_TYPE_MAX):
        raise refuse(f"Invalid 'mime_type': expected 1 to {MIME_TYPE_MAX} characters.", "mime_type")
    return value


class CreateUpload(Request):
    """POST /v1/uploads."""

    bytes: Annotated[int, Field(ge=0), BeforeValidator(_upload_bytes)]
    filename: Annotated[str, Field(min_length=1), _filename("filename")]
    mime_type: Annotated[
        str, Field(min_length=1, max_length=MIME_TYPE_MAX), BeforeValidator(_mime_type)
    ]
    purpose: Purpose
    expires_after: Annotated[ExpiresAfter | None, _policy("expires_after")] = None


class PartForm(Request):
    """POST /v1/uploads/{upload_id}/parts: no text fields, the part's bytes in `data`."""

    content_field: ClassVar[str] = "data"

    @classmethod
    def input_names(cls) -> tuple[str, ...]:
        return ()


def _part_ids(value: object) -> object:
    if isinstance(value, list) and not all(isinstance(p, str) for p in value):
        raise refuse(
            "Invalid 'part_ids': expected an array of strings.", "part_ids", "invalid_type"
        )
    return value


def _md5(value: object) -> object:
    if value is not None and (not isinstance(value, str) or not _MD5.fullmatch(value)):
        raise refuse("Invalid 'md5': expected 32 hexadecimal characters.", "md5", "invalid_value")
    return value


class CompleteUpload(Request):
    """POST /v1/uploads/{upload_id}/complete."""

    part_ids: Annotated[list[str], BeforeValidator(_part_ids)]
    md5: Annotated[Annotated[str, Field(pattern=_MD5.pattern)] | None, BeforeValidator(_md5)] = None


class Empty(Request):
    """A body of nothing (or `{}`): cancels."""

    body_optional = True


# --- the Batch API -------------------------------------------------------------------------


def _endpoint(value: object) -> object:
    return check_one_of(value, ENDPOINTS, "endpoint") if isinstance(value, str) else value


def _window(value: object) -> object:
    if isinstance(value, str):
        return check_one_of(value, COMPLETION_WINDOWS, "completion_window")
    return value


def _metadata(raw: object) -> object:
    """OpenAI's metadata: up to 16 string pairs, keys up to 64 characters, values 512."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise refuse("Invalid type for 'metadata': expected an object.", "metadata", "invalid_type")
    if len(raw) > METADATA_KEYS:
        raise refuse(
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{METADATA_KEYS} properties, but got {len(raw)} instead.",
            "metadata",
            "object_above_max_properties",
        )
    for key, value in raw.items():
        if len(key) > METADATA_KEY_CHARS:
            raise refuse(
                f"Invalid 'metadata': key {key[:20]!r}... is longer than "
                f"{METADATA_KEY_CHARS} characters.",
                "metadata",
                "invalid_value",
            )
        if not isinstance(value, str):
            raise refuse(
                f"Invalid type for 'metadata.{key}': expected a string, but got "
                f"{json_type(value)} instead.",
                f"metadata.{key}",
                "invalid_type",
            )
        if len(value) > METADATA_VALUE_CHARS:
            raise refuse(
                too_long(f"metadata.{key}", METADATA_VALUE_CHARS, len(value)),
                f"metadata.{key}",
                "string_above_max_length",
            )
    return raw


Metadata = Annotated[
    Annotated[
        dict[str, Annotated[str, Field(max_length=METADATA_VALUE_CHARS)]],
        Field(max_length=METADATA_KEYS),
    ]
    | None,
    BeforeValidator(_metadata),
]


def _file_id(param: str) -> Any:
    """A file id of at most FILE_ID_CHARS characters (any other string is left to name no
    file, as OpenAI answers it)."""

    def check(value: object) -> object:
        if isinstance(value, str) and len(value) > FILE_ID_CHARS:
            raise refuse(
                too_long(param, FILE_ID_CHARS, len(value)), param, "string_above_max_length"
            )
        return value

    return BeforeValidator(check)


class CreateBatch(Request):
    """POST /v1/batches."""

    input_file_id: Annotated[str, Field(max_length=FILE_ID_CHARS), _file_id("input_file_id")]
    endpoint: Annotated[str, BeforeValidator(_endpoint), WithJsonSchema({"enum": list(ENDPOINTS)})]
    completion_window: Annotated[
        str, BeforeValidator(_window), WithJsonSchema({"enum": list(COMPLETION_WINDOWS)})
    ]
    metadata: Metadata = None
    output_expires_after: Annotated[ExpiresAfter | None, _policy("output_expires_after")] = None


class ListBatchesQuery(Request):
    """GET /v1/batches: a page of the project's batches, newest first."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True, defer_build=True)

    limit: Annotated[
        int, Field(ge=1, le=BATCH_LIMIT_MAX, examples=[10]), _limit_query(20, BATCH_LIMIT_MAX)
    ] = 20
    after: Annotated[str | None, BeforeValidator(_blank_is_none)] = None


# --- the admin API (filesd's own: outside /v1 and the OpenAPI document) ---------------------

CLOCK_CHOICES = 'Give {"freeze": true}, {"advance": seconds} or {"resume": true}.'


class AdminRequest(Request):
    """A request of the admin API: the body may be left out, unknown fields are ignored, and
    of a query parameter given twice the first counts."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True, defer_build=True)
    body_optional = True
    duplicates_refused = False


def _project_string(value: object) -> object:
    if value is not None and not isinstance(value, str):
        raise refuse("'project' must be a string.", "project")
    return value


class ResetBody(AdminRequest):
    """POST /admin/reset: everything, or one project."""

    project: Annotated[str | None, BeforeValidator(_project_string)] = None


def _journal_int(raw: object, info: ValidationInfo) -> object:
    if isinstance(raw, str):
        try:
            return int(raw)
        except ValueError:
            raise refuse(f"'{info.field_name}' must be an integer.", info.field_name) from None
    return raw


class JournalQuery(AdminRequest):
    """GET /admin/requests: the last requests to /v1, newest first, filtered."""

    limit: Annotated[int, BeforeValidator(_journal_int)] = 100
    status: Annotated[int | None, BeforeValidator(_journal_int)] = None
    method: str | None = None
    path: str | None = None
    project: str | None = None


class ExportQuery(AdminRequest):
    """GET /admin/export: the live files of one project, or of all."""

    project: str | None = None


class SetClock(AdminRequest):
    """POST /admin/clock: the first that applies of {"resume": true}, {"freeze": true,
    "time"?: T} (Unix seconds) and {"advance": S} (seconds, may be negative); what the
    chosen one does not use is not looked at."""

    resume: bool = False
    freeze: bool = False
    time: int | float | None = None
    advance: int | float | None = None

    @model_validator(mode="before")
    @classmethod
    def _choice(cls, data: object) -> object:
        if not isinstance(data, Mapping):
            return data
        if data.get("resume") is True:
            return {"resume": True}
        if data.get("freeze") is True:
            at = data.get("time")
            if at is not None and not is_clock_time(at):
                raise refuse(f"'time' must be Unix seconds between 0 and {CLOCK_MAX}.", "time")
            return {"freeze": True, "time": at}
        if is_number(advance := data.get("advance")):
            return {"advance": advance}
        raise refuse(CLOCK_CHOICES, None)


class NewFaultRule(AdminRequest):
    """POST /admin/faults: a fault rule, read as the configuration's `[testing] faults` are
    (`faultrules.parse_fault_rule`, whose refusals name the field)."""

    rule: FaultRule

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, data: object) -> object:
        if not isinstance(data, Mapping):
            return data
        try:
            return {"rule": parse_fault_rule(data)}
        except FaultRuleError as error:
            raise refuse(str(error), error.field) from None

    @classmethod
    def input_names(cls) -> tuple[str, ...]:
        return FAULT_RULE_FIELDS
