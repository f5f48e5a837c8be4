"""Every string a request gives is text: a NUL or a lone surrogate (JSON spells them `\\u0000`,
`\\ud800`) in a path parameter, query parameter, JSON field or form field is a 400 naming it,
on every route and both databases, never a 500 (PostgreSQL refuses a NUL in text, and no UTF-8
encodes a lone surrogate), and changes nothing. In a batch's input file, the stored strings of
a line (`custom_id`, `body.model`) fail the batch naming the line, instead of leaving it
`validating`. The sweep reads the app's route table, so a new route is swept as it is added.

Headers are not swept: aiohttp's parser refuses a NUL in one (a plain 400, before filesd), and
the bytes of a surrogate in one (read as surrogate escapes) are hashed, parsed or compared,
never stored."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import asyncpg
import pytest
from aiohttp import web
from pydantic import BaseModel

from filesd.api import admin
from filesd.api.app import create_app
from filesd.api.openapi import ROUTES
from filesd.api.routing import Operation
from filesd.api.schemas import (
    CompleteUpload,
    CreateBatch,
    CreateUpload,
    FileForm,
    NewFaultRule,
    Request,
    ResetBody,
    SetClock,
)
from filesd.config import Config
from filesd.storage.sqlite import database_path

from .conftest import ALPHA, Client, ClientFactory, blob_files, make_config, temp_files, wait_until

ADMIN_TOKEN = "admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ENDPOINT = "/v1/chat/completions"
FROZEN = 1_800_000_000
TABLES = ("files", "uploads", "upload_parts", "batches", "batch_requests")

# What no text may hold, as a JSON string holds it and as a URL spells it. A URL cannot
# carry a lone surrogate: the UTF-8-like bytes of one are no UTF-8, and reach the server as
# U+FFFD or as the percent-escapes themselves (so only "never a 500, nothing changed" holds).
NUL, SURROGATE = "x\x00y", "x\ud800y"
URL_NUL, URL_SURROGATE = "x%00y", "x%ED%A0%80y"
# What a multipart field holds instead (its text must be UTF-8: a surrogate's bytes are not).
FORM_BAD = {"NUL": b"x\x00y", "surrogate": b"x\xed\xa0\x80y"}


@dataclass
class Backend:
    name: str
    data_dir: Path
    dsn: str = ""

    def config(self) -> Config:
        storage: dict[str, Any] = {"data_dir": str(self.data_dir)}
        if self.dsn:
            storage["database"] = self.dsn
        return make_config(
            self.data_dir,
            storage=storage,
            admin={"token": ADMIN_TOKEN},
            batches={"upstream": "echo"},
            testing={"frozen_time": FROZEN},
        )

    async def rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of the tables that hold what the API makes."""
        if self.dsn:
            conn = await asyncpg.connect(self.dsn)
            try:
                return {t: sorted(map(tuple, await conn.fetch(_select(t)))) for t in TABLES}
            finally:
                await conn.close()
        return await asyncio.to_thread(self._sqlite_rows)

    def _sqlite_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        db = sqlite3.connect(f"file:{database_path(self.data_dir)}?mode=ro", uri=True)
        try:
            return {t: sorted(db.execute(_select(t)).fetchall()) for t in TABLES}
        finally:
            db.close()


def _select(table: str) -> str:
    assert table in TABLES
    return f"SELECT * FROM {table}"  # noqa: S608 (one of TABLES)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    dsn = request.getfixturevalue("postgres_dsn") if request.param == "postgres" else ""
    yield Backend(request.param, tmp_path / "data", dsn)


def headers_for(path: str) -> dict[str, str]:
    return ADMIN if path.startswith("/admin") else ALPHA


def chat_line(custom_id: str, *, model: str = "gpt-4o-mini", content: str = "hi") -> bytes:
    line = {
        "custom_id": custom_id,
        "method": "POST",
        "url": ENDPOINT,
        "body": {"model": model, "messages": [{"role": "user", "content": content}]},
    }
    return json.dumps(line).encode() + b"\n"


async def upload_file(client: Client, content: bytes, filename: str = "in.jsonl") -> str:
    form = multipart(
        [(b'form-data; name="purpose"', b"batch"), (_file_disposition(filename.encode()), content)]
    )
    resp = await client.post("/v1/files", data=form, headers={**ALPHA, **FORM})
    body = await resp.json()
    assert resp.status == 200, body
    return str(body["id"])


async def run_batch(client: Client, lines: bytes) -> dict[str, Any]:
    """A batch of `lines` on the echo model, once it is final."""
    file_id = await upload_file(client, lines)
    resp = await client.post(
        "/v1/batches",
        json={"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"},
        headers=ALPHA,
    )
    batch = await resp.json()
    assert resp.status == 200, batch
    seen: dict[str, Any] = {}

    async def final() -> bool:
        seen.update(await (await client.get(f"/v1/batches/{batch['id']}", headers=ALPHA)).json())
        return seen["status"] in ("completed", "failed", "expired", "cancelled")

    await wait_until(final, timeout=60, what=f"batch {batch['id']} final")
    return seen


BOUNDARY = "text-sweep"
FORM = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
JSON = {"Content-Type": "application/json"}


def multipart(parts: list[tuple[bytes, bytes]]) -> bytes:
    """Raw multipart: (Content-Disposition value, content) pairs, bytes as they go on the wire."""
    out = b""
    for disposition, content in parts:
        out += b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: " + disposition
        out += b"\r\n\r\n" + content + b"\r\n"
    return out + b"--" + BOUNDARY.encode() + b"--\r\n"


def _file_disposition(filename: bytes) -> bytes:
    return b'form-data; name="file"; filename="' + filename + b'"'


# --- the sweep ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request of the sweep: `param` holds what no text may hold."""

    method: str
    path: str
    param: str
    json: Any = None
    form: bytes | None = None
    # Whether the server can see the flaw (not so for a surrogate in a URL: see URL_SURROGATE).
    refused: bool = True

    def __str__(self) -> str:
        given = self.json if self.json is not None else self.form
        return f"{self.method} {self.path} [{self.param}] {given!r}"[:300]


class Seeded:
    """What the sweep's app holds before it starts: ids to put in the paths, and a valid
    request of every type a route takes (the sweep spoils one field of it at a time). A type
    missing here fails the sweep: a new route's requests must be swept too."""

    def __init__(self, file_id: str, upload_id: str, batch_id: str, rule_id: int) -> None:
        self.path_values = {
            "file_id": file_id,
            "upload_id": upload_id,
            "batch_id": batch_id,
            "rule_id": str(rule_id),
            "name": "index.html",
        }
        self.valid: dict[type[Request], dict[str, Any]] = {
            CreateUpload: {
                "bytes": 3,
                "filename": "f.txt",
                "mime_type": "text/plain",
                "purpose": "batch",
                "expires_after": {"anchor": "created_at", "seconds": 3600},
            },
            CompleteUpload: {"part_ids": ["part_x"], "md5": "0" * 32},
            CreateBatch: {
                "input_file_id": file_id,
                "endpoint": ENDPOINT,
                "completion_window": "24h",
                "metadata": {"k": "v"},
                "output_expires_after": {"anchor": "created_at", "seconds": 3600},
            },
            ResetBody: {"project": "alpha"},
            # Freeze chosen, so that each of the others is given and not used.
            SetClock: {"freeze": True, "time": FROZEN, "advance": 1, "resume": False},
            NewFaultRule: {
                "method": "GET",
                "route": "/v1/never",
                "project": "alpha",
                "message": "m",
                "code": "c",
                "retry_after": 1,
                "retry_after_ms": 1,
                "should_retry": True,
                "latency_ms": 1,
                "slow_ms": 1,
                "count": 1,
                "probability": 1,
            },
            FileForm: {
                "purpose": "batch",
                "expires_after[anchor]": "created_at",
                "expires_after[seconds]": "3600",
            },
        }

    def cases(self, app: web.Application) -> Iterator[Case]:
        declared = {
            (op.method, op.path): op
            for table in [*app[ROUTES], admin.routes]
            for op in table.operations
        }
        for route in app.router.routes():
            resource = route.resource
            if resource is None:
                continue
            method = "GET" if route.method == "*" else route.method
            template = resource.canonical
            op = declared.get((route.method, template)) or declared.get(("GET", template))
            yield from self._path_cases(method, template)
            if op is None:
                continue
            path = template.format_map(self.path_values)
            yield from self._query_cases(method, path, op)
            if method != "HEAD":
                yield from self._body_cases(method, path, op)

    def _path_cases(self, method: str, template: str) -> Iterator[Case]:
        for name in re.findall(r"\{(\w+)\}", template):
            for bad, refused in ((URL_NUL, True), (URL_SURROGATE, False)):
                path = template.format_map({**self.path_values, name: bad})
                yield Case(method, path, name, refused=refused)

    def _query_cases(self, method: str, path: str, op: Operation) -> Iterator[Case]:
        if op.query is None:
            return
        for name in op.query.input_names():
            for bad, refused in ((URL_NUL, True), (URL_SURROGATE, False)):
                yield Case(method, f"{path}?{name}={bad}", name, refused=refused)

    def _body_cases(self, method: str, path: str, op: Operation) -> Iterator[Case]:
        if op.body is not None and op.body.input_names():
            valid = self.valid[op.body]
            for name in op.body.input_names():
                for spoiled in _spoiled(valid.get(name), free_keys=_free_keys(op.body, name)):
                    yield Case(method, path, name, json={**valid, name: spoiled})
        if op.form is not None:
            yield from self._form_cases(method, path, op.form)

    def _form_cases(self, method: str, path: str, form: type[Request]) -> Iterator[Case]:
        content_field: str = getattr(form, "content_field")  # noqa: B009 (a ClassVar of forms)
        if not form.input_names():  # the part of an upload: bytes, whatever its filename
            return
        valid: dict[str, str] = self.valid[form]
        for bad in FORM_BAD.values():
            for name in form.input_names():
                fields = {**{k: v.encode() for k, v in valid.items()}, name: bad}
                parts = [(f'form-data; name="{k}"'.encode(), v) for k, v in fields.items()]
                body = multipart([*parts, (_file_disposition(b"in.jsonl"), b"{}\n")])
                yield Case(method, path, name, form=body)
        parts = [(f'form-data; name="{k}"'.encode(), v.encode()) for k, v in valid.items()]
        # The filename: a NUL percent-encoded (RFC 5987; aiohttp's parser refuses one raw in a
        # header, before filesd sees it), a surrogate's bytes raw.
        for disposition in (
            b"form-data; name=\"file\"; filename*=utf-8''in%00.jsonl",
            _file_disposition(b"in" + FORM_BAD["surrogate"]),
        ):
            body = multipart([*parts, (disposition, b"{}\n")])
            yield Case(method, path, content_field, form=body)


def _spoiled(valid: object, *, free_keys: bool) -> Iterator[object]:
    """The field's value spoiled each way: the field itself a bad string, and what its object
    (each value; a key, if the object may have any) or its array (an item) holds."""
    for bad in (NUL, SURROGATE):
        yield bad
        if isinstance(valid, dict):
            for key in valid:
                yield {**valid, key: bad}
            if free_keys:
                yield {**valid, bad: next(iter(valid.values()))}
        if isinstance(valid, list):
            yield [*valid, bad]


def _free_keys(model: type[Request], name: str) -> bool:
    """Whether the field is an object of any keys (metadata), not one of declared fields."""
    field = model.model_fields.get(name)
    annotation = field.annotation if field is not None else None
    kinds = (annotation, *get_args(annotation))
    return not any(isinstance(k, type) and issubclass(k, BaseModel) for k in kinds)


def _names(param: str | None, field: str) -> bool:
    """Whether an error's `param` names the field, or a place in it (`metadata.k`,
    `expires_after[anchor]`)."""
    return param is not None and (param == field or param.startswith((f"{field}.", f"{field}[")))


async def seed(client: Client) -> Seeded:
    file_id = await upload_file(client, chat_line("a"))
    resp = await client.post(
        "/v1/uploads",
        json={"bytes": 3, "filename": "f.txt", "mime_type": "text/plain", "purpose": "batch"},
        headers=ALPHA,
    )
    assert resp.status == 200
    upload_id = (await resp.json())["id"]
    batch = await run_batch(client, chat_line("b"))
    assert batch["status"] == "completed", batch
    resp = await client.post(
        "/admin/faults", json={"route": "/v1/never", "status": 500}, headers=ADMIN
    )
    assert resp.status == 200
    rule_id = (await resp.json())["id"]
    return Seeded(file_id, upload_id, batch["id"], rule_id)


async def state(client: Client, backend: Backend) -> dict[str, Any]:
    """Everything a request could have changed."""
    faults = await (await client.get("/admin/faults", headers=ADMIN)).json()
    clock = await (await client.get("/admin/clock", headers=ADMIN)).json()
    return {
        "rows": await backend.rows(),
        "blobs": blob_files(backend.data_dir),
        "temp": temp_files(backend.data_dir),
        "faults": faults,
        "clock": clock,
    }


async def test_no_route_takes_a_nul_or_a_lone_surrogate(
    aiohttp_client: ClientFactory, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(backend.config())
    client: Client = await aiohttp_client(app)
    seeded = await seed(client)
    before = await state(client, backend)
    problems: list[str] = []
    swept: set[str] = set()
    cases = list(seeded.cases(app))
    for case in cases:
        headers = headers_for(case.path)
        data: bytes | None = None
        if case.json is not None:
            data, headers = json.dumps(case.json).encode(), {**headers, **JSON}
        elif case.form is not None:
            data, headers = case.form, {**headers, **FORM}
        resp = await client.request(case.method, case.path, data=data, headers=headers)
        text = (await resp.read()).decode("utf-8", "replace")
        answer = json.loads(text) if text and resp.content_type == "application/json" else {}
        error = answer.get("error")
        if case.refused:
            if resp.status != 400 or (
                case.method != "HEAD"
                and (
                    error is None
                    or error["type"] != "invalid_request_error"
                    or not _names(error["param"], case.param)
                )
            ):
                problems.append(f"{case}: {resp.status} {text[:200]}")
        elif resp.status >= 500 or (
            resp.status >= 400 and case.method != "HEAD" and not (error and error["message"])
        ):
            problems.append(f"{case}: {resp.status} {text[:200]}")
        if await state(client, backend) != before:
            problems.append(f"{case}: changed what the server holds")
            before = await state(client, backend)
        swept.add(f"{case.method} {case.param}")
    assert problems == [], "\n".join(problems)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    # The route table was read: each source of strings was swept.
    for expected in (
        "GET file_id",
        "POST batch_id",
        "HEAD after",
        "GET after",
        "POST input_file_id",
        "POST mime_type",
        "POST part_ids",
        "POST project",
        "POST purpose",
        "POST file",
        "POST message",
        "DELETE rule_id",
        "GET name",
    ):
        assert expected in swept, expected


# --- a batch's input file ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "param"),
    [
        (chat_line("\ud800"), "custom_id"),
        (chat_line("a\x00b"), "custom_id"),
        (chat_line("c", model="\ud800"), "body.model"),
        (chat_line("c", model="m\x00"), "body.model"),
    ],
    ids=["custom_id-surrogate", "custom_id-nul", "model-surrogate", "model-nul"],
)
async def test_a_line_whose_stored_strings_are_no_text_fails_the_batch_naming_it(
    aiohttp_client: ClientFactory, backend: Backend, line: bytes, param: str
) -> None:
    client: Client = await aiohttp_client(create_app(backend.config()))
    batch = await run_batch(client, chat_line("a") + line + chat_line("b"))
    assert batch["status"] == "failed", batch
    errors = batch["errors"]["data"]
    assert [(e["code"], e["line"], e["param"]) for e in errors] == [("invalid_value", 2, param)]
    assert errors[0]["message"]
    assert batch["output_file_id"] is None and batch["error_file_id"] is None


async def test_a_request_body_may_hold_any_text(
    aiohttp_client: ClientFactory, backend: Backend
) -> None:
    """What is sent upstream is not stored as text: a NUL or a lone surrogate in a message
    goes there and back."""
    client: Client = await aiohttp_client(create_app(backend.config()))
    lines = chat_line("a", content="nul \x00") + chat_line("b", content="lone \ud800")
    batch = await run_batch(client, lines)
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    resp = await client.get(f"/v1/files/{batch['output_file_id']}/content", headers=ALPHA)
    assert resp.status == 200
    answers = [json.loads(line) for line in (await resp.read()).splitlines()]
    assert sorted(a["custom_id"] for a in answers) == ["a", "b"]
