"""Requests checked against their declared types (`schemas.py`): the refusal, in OpenAI's
envelope and words, names the field in its `param`.

A request with several problems is answered with one, as OpenAI does: an unknown top-level
field first, then the first problem in the order the type declares its fields.
"""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web
from pydantic import ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from .appkeys import CONFIG
from .bodies import read_json_object
from .errors import InvalidRequest
from .schemas import Limits, Refusal, Request, json_type

R = TypeVar("R", bound=Request)

# What a type error's field expected, by pydantic's error type.
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "bool_type": "a boolean",
    "float_type": "a number",
}


def limits(request: web.Request) -> Limits:
    """What validation takes from the server's configuration."""
    config = request.app[CONFIG]
    return Limits(config.files.purposes, config.limits.max_upload_bytes)


def validate(model: type[R], data: object, context: Limits) -> R:
    """`data` as `model`, or `InvalidRequest` naming the first problem."""
    if isinstance(data, dict) and model.model_config.get("extra") == "forbid":
        # Before pydantic, which cannot even read a key that is no valid Unicode (JSON can
        # spell a lone surrogate): whatever it is, it is not a field.
        names = model.input_names()
        for name in data:
            if name not in names:
                raise InvalidRequest(f"Unrecognized request argument supplied: {name}", param=name)
    try:
        return model.model_validate(data, context=context)
    except ValidationError as error:
        raise refusal(model, error) from None


async def json_body(request: web.Request, model: type[R], *, allow_empty: bool = False) -> R:
    """The request's JSON body as `model` (see `bodies.read_json_object`)."""
    return validate(
        model, await read_json_object(request, allow_empty=allow_empty), limits(request)
    )


def query(request: web.Request, model: type[R]) -> R:
    """The request's query string as `model`: each of its fields given at most once (others
    are ignored, as OpenAI ignores them)."""
    values: dict[str, str] = {}
    for name in model.model_fields:
        given = request.query.getall(name, [])
        if len(given) > 1 and model.duplicates_refused:
            raise InvalidRequest(f"Duplicate query parameter '{name}'.", param=name)
        if given:
            values[name] = given[0]
    return validate(model, values, limits(request))


def refused(error: PydanticCustomError) -> InvalidRequest:
    """A refusal of `schemas.refuse`, as the API answers it."""
    return _refused((error.context or {})["refusal"])


def _refused(refusal: Refusal) -> InvalidRequest:
    return InvalidRequest(refusal.message, param=refusal.param, code=refusal.code)


def refusal(model: type[Request], error: ValidationError) -> InvalidRequest:
    """The `InvalidRequest` for the first problem of a failed validation of `model`."""
    errors = error.errors(include_url=False)
    unknown = [e for e in errors if e["type"] == "extra_forbidden" and len(e["loc"]) == 1]
    return _answer(model, (unknown or errors)[0])


def _answer(model: type[Request], problem: ErrorDetails) -> InvalidRequest:
    kind = problem["type"]
    if kind == "filesd":
        return _refused((problem.get("ctx") or {})["refusal"])
    # A field of a field (a metadata value) is named by its path, as OpenAI names it.
    name = ".".join(str(part) for part in problem["loc"]) if problem["loc"] else None
    given = problem.get("input")
    if kind == "extra_forbidden":
        return InvalidRequest(f"Unrecognized request argument supplied: {name}", param=name)
    if kind == "missing" or (kind in _EXPECTED and given is None):
        return InvalidRequest(model.missing.format(name=name), param=name)
    if kind == "string_unicode":
        return InvalidRequest(
            f"Invalid '{name}': the string is not valid Unicode.", param=name, code="invalid_value"
        )
    if kind in _EXPECTED:
        return InvalidRequest(
            f"Invalid type for '{name}': expected {_EXPECTED[kind]}, but got "
            f"{json_type(given)} instead.",
            param=name,
            code="invalid_type",
        )
    return InvalidRequest(f"Invalid '{name}': {problem['msg']}.", param=name, code="invalid_value")
