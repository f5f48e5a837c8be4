"""Checks of client input shared by the multipart and JSON routes; each raises `InvalidRequest`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..values import has_control_characters, is_instance, is_int
from .errors import InvalidRequest

FILENAME_MAX = 1024
EXPIRES_MIN, EXPIRES_MAX = 3600, 2592000


def check_filename(filename: object, *, param: str = "file") -> str:
    if not isinstance(filename, str) or not filename:
        raise InvalidRequest(
            "'file' must be a file upload: a multipart part with a filename.", param=param
        )
    try:
        filename.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("The filename is not valid UTF-8.", param=param) from None
    if has_control_characters(filename):
        raise InvalidRequest("The filename must not contain control characters.", param=param)
    # A file's name, not a path: no directories, no "." or "..".
    if "/" in filename or "\\" in filename or filename in (".", ".."):
        raise InvalidRequest(
            "The filename must be a plain name, without '/' or '\\' or '..'.", param=param
        )
    if len(filename) > FILENAME_MAX:
        raise InvalidRequest(
            f"The filename is too long (at most {FILENAME_MAX} characters).", param=param
        )
    return filename


def check_purpose(purpose: object, purposes: tuple[str, ...]) -> str:
    if not isinstance(purpose, str) or purpose not in purposes:
        listed = ", ".join(repr(p) for p in purposes)
        raise InvalidRequest(f"{purpose!r} is not one of [{listed}] - 'purpose'", param="purpose")
    return purpose


def check_expires_after(anchor: object, seconds: object, *, prefix: str) -> int:
    """Validate an `expires_after` policy; `prefix` names its fields in errors."""
    if anchor is None:
        raise InvalidRequest(
            f"'{prefix}[anchor]' is required with '{prefix}[seconds]'", param=f"{prefix}[anchor]"
        )
    if anchor != "created_at":
        raise InvalidRequest(
            f"Invalid value: {anchor!r}. Supported values are: 'created_at'.",
            param=f"{prefix}[anchor]",
            code="invalid_value",
        )
    if seconds is None:
        raise InvalidRequest(
            f"'{prefix}[seconds]' is required with '{prefix}[anchor]'", param=f"{prefix}[seconds]"
        )
    if isinstance(seconds, str) and seconds.isascii() and seconds.isdigit():
        seconds = int(seconds)
    if not is_int(seconds):
        raise InvalidRequest(
            f"Invalid type for '{prefix}[seconds]': expected an integer, got {seconds!r}.",
            param=f"{prefix}[seconds]",
            code="invalid_type",
        )
    if not EXPIRES_MIN <= seconds <= EXPIRES_MAX:
        raise InvalidRequest(
            f"Invalid '{prefix}[seconds]': expected a value between {EXPIRES_MIN} and "
            f"{EXPIRES_MAX}, but got {seconds} instead.",
            param=f"{prefix}[seconds]",
            code="invalid_value",
        )
    return seconds


def check_no_unknown(body: Mapping[str, Any], allowed: set[str]) -> None:
    for name in body:
        if name not in allowed:
            raise InvalidRequest(f"Unrecognized request argument supplied: {name}", param=name)


def require(body: Mapping[str, Any], name: str, kind: type, what: str) -> Any:
    """`body[name]`, which must be present and of `kind` (bool is never an int)."""
    if name not in body or body[name] is None:
        raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name)
    value = body[name]
    if not is_instance(value, kind):
        raise InvalidRequest(
            f"Invalid type for '{name}': expected {what}, but got {_json_type(value)} instead.",
            param=name,
            code="invalid_type",
        )
    return value


def _json_type(value: object) -> str:
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
