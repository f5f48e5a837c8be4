"""GET /openapi.json: an OpenAPI 3.1 document of every public route.

Kept true by the tests: every response of the end-to-end tests is validated against it, and
schemathesis runs against a live server with it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..config import Config
from .appkeys import CONFIG


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _json(_ref("Error"), "An error, in OpenAI's envelope") for s in statuses}


NULLABLE_STRING = {"type": ["string", "null"]}
NULLABLE_INT = {"type": ["integer", "null"]}


def openapi_document(config: Config) -> dict[str, Any]:
    purposes = list(config.files.purposes)
    file_id = {"name": "file_id", "in": "path", "required": True, "schema": {"type": "string"}}
    upload_id = {"name": "upload_id", "in": "path", "required": True, "schema": {"type": "string"}}
    common = (400, 401, 413, 429, 500, 503, 507)
    v1: dict[str, Any] = {"security": [{"bearer": []}]}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "filesd",
            "version": "1",
            "description": "A self-hosted server for the OpenAI-compatible Files and Uploads APIs.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "additionalProperties": False,
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["message", "type", "param", "code"],
                            "additionalProperties": False,
                            "properties": {
                                "message": {"type": "string"},
                                "type": {"type": "string"},
                                "param": NULLABLE_STRING,
                                "code": NULLABLE_STRING,
                            },
                        }
                    },
                },
                "File": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "id",
                        "object",
                        "bytes",
                        "created_at",
                        "filename",
                        "purpose",
                        "status",
                        "status_details",
                        "expires_at",
                    ],
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"const": "file"},
                        "bytes": {"type": "integer", "minimum": 0},
                        "created_at": {"type": "integer"},
                        "filename": {"type": "string"},
                        "purpose": {"type": "string"},
                        "status": {"enum": ["processed", "error"]},
                        "status_details": NULLABLE_STRING,
                        "expires_at": NULLABLE_INT,
                    },
                },
                "FileList": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["object", "data", "total", "has_more", "first_id", "last_id"],
                    "properties": {
                        "object": {"const": "list"},
                        "data": {"type": "array", "items": _ref("File")},
                        "total": {"type": "integer", "minimum": 0},
                        "has_more": {"type": "boolean"},
                        "first_id": NULLABLE_STRING,
                        "last_id": NULLABLE_STRING,
                    },
                },
                "FileDeleted": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["id", "object", "deleted"],
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"const": "file"},
                        "deleted": {"const": True},
                    },
                },
                "Upload": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "id",
                        "object",
                        "bytes",
                        "created_at",
                        "filename",
                        "purpose",
                        "status",
                        "expires_at",
                        "file",
                    ],
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"const": "upload"},
                        "bytes": {"type": "integer", "minimum": 0},
                        "created_at": {"type": "integer"},
                        "filename": {"type": "string"},
                        "purpose": {"type": "string"},
                        "status": {"enum": ["pending", "completed", "cancelled", "expired"]},
                        "expires_at": {"type": "integer"},
                        "file": {"oneOf": [_ref("File"), {"type": "null"}]},
                    },
                },
                "UploadPart": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["id", "object", "created_at", "upload_id"],
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"const": "upload.part"},
                        "created_at": {"type": "integer"},
                        "upload_id": {"type": "string"},
                    },
                },
                **BATCH_SCHEMAS,
            },
        },
        "paths": {
            "/v1/files": {
                "post": {
                    **v1,
                    "operationId": "createFile",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["file", "purpose"],
                                    "properties": {
                                        "file": {"type": "string", "format": "binary"},
                                        "purpose": {"enum": purposes},
                                        "expires_after[anchor]": {"const": "created_at"},
                                        "expires_after[seconds]": {
                                            "type": "integer",
                                            "minimum": 3600,
                                            "maximum": 2592000,
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(_ref("File"), "The new file"),
                        **_errors(408, *common),
                    },
                },
                "get": {
                    **v1,
                    "operationId": "listFiles",
                    "parameters": [
                        {"name": "purpose", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                        {
                            "name": "offset",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                        {"name": "after", "in": "query", "schema": {"type": "string"}},
                        {"name": "order", "in": "query", "schema": {"enum": ["asc", "desc"]}},
                    ],
                    "responses": {"200": _json(_ref("FileList"), "A page"), **_errors(*common)},
                },
            },
            "/v1/files/{file_id}": {
                "parameters": [file_id],
                "get": {
                    **v1,
                    "operationId": "retrieveFile",
                    "responses": {"200": _json(_ref("File"), "The file"), **_errors(404, *common)},
                },
                "delete": {
                    **v1,
                    "operationId": "deleteFile",
                    "responses": {
                        "200": _json(_ref("FileDeleted"), "Deleted"),
                        **_errors(404, *common),
                    },
                },
            },
            "/v1/files/{file_id}/content": {
                "parameters": [file_id],
                "get": {
                    **v1,
                    "operationId": "downloadFile",
                    "responses": {
                        "200": {
                            "description": "The bytes",
                            "content": {
                                "application/octet-stream": {
                                    "schema": {"type": "string", "format": "binary"}
                                }
                            },
                        },
                        "206": {"description": "A range of the bytes"},
                        "304": {"description": "Not modified"},
                        **_errors(404, 412, 416, *common),
                    },
                },
            },
            "/v1/uploads": {
                "post": {
                    **v1,
                    "operationId": "createUpload",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["bytes", "filename", "mime_type", "purpose"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "bytes": {"type": "integer", "minimum": 0},
                                        "filename": {"type": "string", "minLength": 1},
                                        "mime_type": {"type": "string", "minLength": 1},
                                        "purpose": {"enum": purposes},
                                        "expires_after": {
                                            "type": "object",
                                            "required": ["anchor", "seconds"],
                                            "properties": {
                                                "anchor": {"const": "created_at"},
                                                "seconds": {
                                                    "type": "integer",
                                                    "minimum": 3600,
                                                    "maximum": 2592000,
                                                },
                                            },
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(_ref("Upload"), "The upload"),
                        **_errors(408, *common),
                    },
                },
            },
            "/v1/uploads/{upload_id}/parts": {
                "parameters": [upload_id],
                "post": {
                    **v1,
                    "operationId": "addUploadPart",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["data"],
                                    "properties": {"data": {"type": "string", "format": "binary"}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(_ref("UploadPart"), "The part"),
                        **_errors(404, 408, *common),
                    },
                },
            },
            "/v1/uploads/{upload_id}/complete": {
                "parameters": [upload_id],
                "post": {
                    **v1,
                    "operationId": "completeUpload",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["part_ids"],
                                    "properties": {
                                        "part_ids": {"type": "array", "items": {"type": "string"}},
                                        "md5": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(_ref("Upload"), "The completed upload"),
                        **_errors(404, 408, *common),
                    },
                },
            },
            "/v1/uploads/{upload_id}/cancel": {
                "parameters": [upload_id],
                "post": {
                    **v1,
                    "operationId": "cancelUpload",
                    "responses": {
                        "200": _json(_ref("Upload"), "The cancelled upload"),
                        **_errors(404, 408, *common),
                    },
                },
            },
            **_batch_paths(v1, common),
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "responses": {"200": _json({"type": "object"}, "Alive")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "responses": {"200": _json({"type": "object"}, "Ready"), **_errors(503)},
                }
            },
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[CONFIG]))


# --- the Batch API --------------------------------------------------------------------------

_TIMESTAMPS = (
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
_BATCH_ERROR = {
    "type": "object",
    "required": ["code", "message", "param", "line"],
    "properties": {
        "code": NULLABLE_STRING,
        "message": NULLABLE_STRING,
        "param": NULLABLE_STRING,
        "line": NULLABLE_INT,
    },
}
_BATCH_STATUSES = [
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
_COUNT = {"type": "integer", "minimum": 0}

BATCH_SCHEMAS: dict[str, Any] = {
    "Batch": {
        "type": "object",
        "additionalProperties": False,
        "required": [
            "id",
            "object",
            "endpoint",
            "model",
            "errors",
            "input_file_id",
            "completion_window",
            "status",
            "output_file_id",
            "error_file_id",
            "created_at",
            *_TIMESTAMPS,
            "request_counts",
            "usage",
            "metadata",
        ],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "batch"},
            "endpoint": {"type": "string"},
            "model": NULLABLE_STRING,
            "errors": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["object", "data"],
                        "properties": {
                            "object": {"const": "list"},
                            "data": {"type": "array", "items": _BATCH_ERROR},
                        },
                    },
                ]
            },
            "input_file_id": {"type": "string"},
            "completion_window": {"type": "string"},
            "status": {"enum": _BATCH_STATUSES},
            "output_file_id": NULLABLE_STRING,
            "error_file_id": NULLABLE_STRING,
            "created_at": {"type": "integer"},
            **{name: NULLABLE_INT for name in _TIMESTAMPS},
            "request_counts": {
                "type": "object",
                "additionalProperties": False,
                "required": ["total", "completed", "failed"],
                "properties": {"total": _COUNT, "completed": _COUNT, "failed": _COUNT},
            },
            "usage": {
                "type": "object",
                "required": [
                    "input_tokens",
                    "input_tokens_details",
                    "output_tokens",
                    "output_tokens_details",
                    "total_tokens",
                ],
                "properties": {
                    "input_tokens": _COUNT,
                    "input_tokens_details": {
                        "type": "object",
                        "required": ["cached_tokens"],
                        "properties": {"cached_tokens": _COUNT},
                    },
                    "output_tokens": _COUNT,
                    "output_tokens_details": {
                        "type": "object",
                        "required": ["reasoning_tokens"],
                        "properties": {"reasoning_tokens": _COUNT},
                    },
                    "total_tokens": _COUNT,
                },
            },
            "metadata": {
                "oneOf": [
                    {"type": "null"},
                    {"type": "object", "additionalProperties": {"type": "string"}},
                ]
            },
        },
    },
    "BatchList": {
        "type": "object",
        "additionalProperties": False,
        "required": ["object", "data", "first_id", "last_id", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref("Batch")},
            "first_id": NULLABLE_STRING,
            "last_id": NULLABLE_STRING,
            "has_more": {"type": "boolean"},
        },
    },
}


def _batch_paths(v1: dict[str, Any], common: tuple[int, ...]) -> dict[str, Any]:
    batch_id = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}}
    create_body = {
        "type": "object",
        "required": ["input_file_id", "endpoint", "completion_window"],
        "additionalProperties": False,
        "properties": {
            "input_file_id": {"type": "string"},
            "endpoint": {
                "enum": [
                    "/v1/chat/completions",
                    "/v1/embeddings",
                    "/v1/completions",
                    "/v1/responses",
                ]
            },
            "completion_window": {"const": "24h"},
            "metadata": {
                "type": ["object", "null"],
                "maxProperties": 16,
                "additionalProperties": {"type": "string", "maxLength": 512},
            },
            "output_expires_after": {
                "type": "object",
                "required": ["anchor", "seconds"],
                "properties": {
                    "anchor": {"const": "created_at"},
                    "seconds": {"type": "integer", "minimum": 3600, "maximum": 2592000},
                },
            },
        },
    }
    return {
        "/v1/batches": {
            "post": {
                **v1,
                "operationId": "createBatch",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": create_body}},
                },
                "responses": {
                    "200": _json(_ref("Batch"), "The new batch (validating)"),
                    **_errors(404, 408, *common),
                },
            },
            "get": {
                **v1,
                "operationId": "listBatches",
                "parameters": [
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                ],
                "responses": {
                    "200": _json(_ref("BatchList"), "The project's batches, newest first"),
                    **_errors(*common),
                },
            },
        },
        "/v1/batches/{batch_id}": {
            "parameters": [batch_id],
            "get": {
                **v1,
                "operationId": "retrieveBatch",
                "responses": {
                    "200": _json(_ref("Batch"), "The batch"),
                    **_errors(404, *common),
                },
            },
        },
        "/v1/batches/{batch_id}/cancel": {
            "parameters": [batch_id],
            "post": {
                **v1,
                "operationId": "cancelBatch",
                "responses": {
                    "200": _json(_ref("Batch"), "The batch, cancelling or cancelled"),
                    **_errors(404, 408, 409, *common),
                },
            },
        },
    }
