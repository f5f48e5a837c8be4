"""Requests checked against their declared types (`schemas.py`): the refusal, in OpenAI's
envelope and words, names the field in its `param`.

A request with several problems is answered with one, as OpenAI does: an unknown top-level
field first, then the first problem in the order the type declares its fields. Only then is
every string the request gave refused if it is no text (`refuse_bad_text`), and so are the
path's parameters, on every route (`path_params_middleware`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from ..values import text_refusal
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
    """`data` as `model`, or `InvalidRequest` naming the first problem; once `model` takes
    it, a string of any field given (`model.input_names()`) that is no text is the problem."""
    if isinstance(data, dict) and model.model_config.get("extra") == "forbid":
        # Before pydantic, which cannot even read a key that is no valid Unicode (JSON can
        # spell a lone surrogate): whatever it is, it is not a field.
        names = model.input_names()
        for name in data:
            if name not in names:
                raise InvalidRequest(f"Unrecognized request argument supplied: {name}", param=name)
    try:
        validated = model.model_validate(data, context=context)
    except ValidationError as error:
        raise refusal(model, error) from None
    if isinstance(data, Mapping):
        # What the request gave, not what the type made of it: a field the chosen variant
        # does not use (SetClock's) is refused all the same.
        for name in model.input_names():
            if name in data:
                refuse_bad_text(data[name], name)
    return validated


def refuse_bad_text(value: object, param: str) -> None:
    """`InvalidRequest` (400, `param` naming where) if a string in `value` (itself, or in its
    arrays and objects, keys too) is no text: it holds a NUL or a lone surrogate (see
    `values.text_refusal`), which no id can hold and not every database can store. A bad key is
    named by its object, a bad value by `param.key`, a bad item by its array."""
    pending: list[tuple[object, str]] = [(value, param)]
    while pending:
        item, where = pending.pop()
        if isinstance(item, str):
            message = text_refusal(item, where)
            if message is not None:
                raise InvalidRequest(message, param=where, code="invalid_value")
        elif isinstance(item, Mapping):
            # Reversed onto the stack, so that the first problem in the given order is named.
            for key, inner in reversed(list(item.items())):
                pending.append((inner, f"{where}.{key}"))
                pending.append((key, where))
        elif isinstance(item, list | tuple):
            pending.extend((inner, where) for inner in reversed(item))


@web.middleware
async def path_params_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Each parameter of the matched route's path refused (400, `param` naming it) if it is no
    text (`refuse_bad_text`): an id with a NUL in it cannot exist, and PostgreSQL refuses to
    even look for one. Mounted after every authentication: a request without a key learns
    nothing of its path."""
    for name, value in request.match_info.items():
        refuse_bad_text(value, name)
    return await handler(request)


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
    if kind == "string_unicode" and isinstance(given, str):
        message = text_refusal(given, str(name))
        if message is not None:
            return InvalidRequest(message, param=name, code="invalid_value")
    if kind in _EXPECTED:
        return InvalidRequest(
            f"Invalid type for '{name}': expected {_EXPECTED[kind]}, but got "
            f"{json_type(given)} instead.",
            param=name,
            code="invalid_type",
        )
    return InvalidRequest(f"Invalid '{name}': {problem['msg']}.", param=name, code="invalid_value")
