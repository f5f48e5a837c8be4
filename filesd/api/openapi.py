"""GET /openapi.json: an OpenAPI 3.1 document of every public route, generated from the route
table (`routing.py`) and the declared types it names (`schemas.py`, `filesd.objects`), never
written by hand: what it says is what the routes validate and answer.

Kept true by the tests: every response of the end-to-end tests is validated against it, and
schemathesis runs against a live server with it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter

from ..config import Config
from ..objects import Error
from .appkeys import CONFIG
from .responses import json_response
from .routing import COMMON_ERRORS, Operation, Routes

_REF = "#/components/schemas/{model}"
_PURPOSES = {"x-filesd-purposes": True}
_PATH_PARAM = re.compile(r"{(\w+)}")


def openapi_document(config: Config, routes: Iterable[Routes]) -> dict[str, Any]:
    """The document of `routes` for a server configured by `config` (its purposes)."""
    operations = [op for table in routes for op in table.operations]
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for op in operations:
        item = paths.setdefault(op.path, {})
        params = [_path_parameter(name) for name in _PATH_PARAM.findall(op.path)]
        if params:
            item["parameters"] = params
        item[op.method.lower()] = _operation(op, components)
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "filesd",
            "version": "1",
            "description": "A self-hosted server for the OpenAI-compatible Files, Uploads and "
            "Batch APIs.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": components,
        },
        "paths": paths,
    }
    filled: dict[str, Any] = _fill_purposes(document, list(config.files.purposes))
    return filled


def _operation(op: Operation, components: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"operationId": op.id, "summary": op.summary}
    if op.secured:
        doc["security"] = [{"bearer": []}]
    if op.query is not None:
        schema = _schema(op.query, components, inline=True)
        doc["parameters"] = [
            {"name": name, "in": "query", "schema": prop}
            for name, prop in schema["properties"].items()
        ]
    if op.body is not None:
        doc["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema(op.body, components)}},
        }
    if op.form is not None:
        doc["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": _form_schema(op.form, components)}},
        }
    responses: dict[str, Any] = {}
    if op.ok is not None:
        responses["200"] = _json(_schema(op.ok, components), op.ok_description)
    elif op.content is not None:
        binary = {"schema": {"type": "string", "format": "binary"}}
        responses["200"] = {"description": op.ok_description, "content": {op.content: binary}}
    for status, description in op.responses.items():
        responses[str(status)] = {"description": description}
    error = _schema(Error, components)
    for status in sorted({*op.errors, *(COMMON_ERRORS if op.secured else ())}):
        responses[str(status)] = _json(error, "An error, in OpenAI's envelope")
    doc["responses"] = responses
    return doc


def _schema(declared: Any, components: dict[str, Any], *, inline: bool = False) -> Any:
    """A reference to the declared type's schema in `components` (added there, with the types
    it uses), or with `inline` the schema itself."""
    schema = _generated(declared)
    components.update(schema.get("$defs", {}))
    own = {k: v for k, v in schema.items() if k != "$defs"}
    if inline:
        return own
    name = getattr(declared, "__name__", str(declared))
    components[name] = own
    return {"$ref": _REF.format(model=name)}


@functools.cache
def _generated(declared: Any) -> dict[str, Any]:
    schema = TypeAdapter(declared).json_schema(ref_template=_REF)
    return _without_titles(schema)  # type: ignore[no-any-return]


def _form_schema(form: Any, components: dict[str, Any]) -> dict[str, Any]:
    """A multipart form: its text fields and its content field, binary. An object field (a
    policy: `expires_after`) is declared as the object, which OpenAPI encodes as one part of
    JSON (what generated clients send); the form takes its fields as bracketed parts too
    (`expires_after[seconds]`, what OpenAI's SDKs send), as OpenAI's own document declares it."""
    schema = _generated(form)
    components.update(schema.get("$defs", {}))
    properties = dict(schema.get("properties", {}))
    properties[form.content_field] = {"type": "string", "format": "binary"}
    return {
        "type": "object",
        "required": [form.content_field, *schema.get("required", [])],
        "properties": properties,
        "additionalProperties": False,
    }


def _path_parameter(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _json(schema: Any, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _without_titles(schema: Any) -> Any:
    """pydantic's generated titles (a field's name again) left out: noise in the document."""
    if isinstance(schema, dict):
        return {k: _without_titles(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_without_titles(v) for v in schema]
    return schema


def _fill_purposes(schema: Any, purposes: list[str]) -> Any:
    """The configured purposes where a declared type says "one of the purposes"."""
    if schema == _PURPOSES:
        return {"enum": purposes}
    if isinstance(schema, dict):
        return {k: _fill_purposes(v, purposes) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_fill_purposes(v, purposes) for v in schema]
    return schema


ROUTES: web.AppKey[list[Routes]] = web.AppKey("routes")


async def openapi_json(request: web.Request) -> web.Response:
    routes: list[Routes] = request.app[ROUTES]
    return json_response(openapi_document(request.app[CONFIG], routes))
