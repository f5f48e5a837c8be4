"""Shared fixtures: real apps from real configs, and real `filesd serve` processes."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import os
import signal
import tarfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from filesd.api.app import create_app
from filesd.api.appkeys import CONFIG
from filesd.api.openapi import ROUTES, openapi_document
from filesd.api.routing import Routes
from filesd.config import CONFIG_ENV, Config, parse_config
from filesd.testing.process import ServerProcess as ServerProcess

from .pg_service import PostgresServer
from .pg_service import start_server as start_postgres
from .s3_service import S3Bucket, fresh_bucket, moto_server

# The servers and commands the tests start read the config they are given, not one the
# developer's shell names (tests about FILESD_CONFIG set it themselves).
os.environ.pop(CONFIG_ENV, None)

ALPHA_KEY = "sk-test-alpha-0123456789"
BETA_KEY = "sk-test-beta-9876543210"
ALPHA = {"Authorization": f"Bearer {ALPHA_KEY}"}
BETA = {"Authorization": f"Bearer {BETA_KEY}"}

KEYS_TOML = f"""
[[auth.keys]]
key = "{ALPHA_KEY}"
project = "alpha"

[[auth.keys]]
key = "{BETA_KEY}"
project = "beta"
"""


def make_config(data_dir: Path, **tables: dict[str, Any]) -> Config:
    """A config with the alpha/beta keys, `data_dir`, and any other tables given."""
    doc: dict[str, Any] = {
        "storage": {"data_dir": str(data_dir)},
        "auth": {
            "keys": [
                {"key": ALPHA_KEY, "project": "alpha"},
                {"key": BETA_KEY, "project": "beta"},
            ]
        },
    }
    doc.update(tables)
    return parse_config(doc, base_dir=data_dir)


def upload_form(
    content: bytes,
    *,
    purpose: str | None = "assistants",
    filename: str = "data.jsonl",
    purpose_first: bool = True,
    extra: dict[str, str] | None = None,
) -> aiohttp.FormData:
    form = aiohttp.FormData()
    if purpose is not None and purpose_first:
        form.add_field("purpose", purpose)
    form.add_field(
        "file", io.BytesIO(content), filename=filename, content_type="application/octet-stream"
    )
    if purpose is not None and not purpose_first:
        form.add_field("purpose", purpose)
    for name, value in (extra or {}).items():
        form.add_field(name, value)
    return form


ClientFactory = Callable[..., Any]
Client = TestClient[Any, Any]

_VIOLATIONS = web.AppKey("openapi_violations", list)


@web.middleware
async def _check_against_openapi(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every response of the end-to-end tests, checked against /openapi.json's document."""
    response: web.StreamResponse = await handler(request)
    resource = request.match_info.route.resource
    if resource is None:
        return response
    routes: list[Routes] = request.app[ROUTES]
    document = openapi_document(request.app[CONFIG], routes)
    method = "get" if request.method == "HEAD" else request.method.lower()
    operation = document["paths"].get(resource.canonical, {}).get(method)
    if operation is None:
        return response  # not part of the public API (admin, metrics, the document itself)
    where = f"{request.method} {resource.canonical} -> {response.status}"
    documented = operation["responses"].get(str(response.status))
    if documented is None:
        request.app[_VIOLATIONS].append(f"{where}: status not documented")
    elif isinstance(response, web.Response) and response.content_type == "application/json":
        schema = documented["content"]["application/json"]["schema"]
        validator = jsonschema.Draft202012Validator(
            {**schema, "components": document["components"]}
        )
        assert isinstance(response.body, bytes | bytearray)
        for error in validator.iter_errors(json.loads(bytes(response.body))):
            request.app[_VIOLATIONS].append(f"{where}: {error.message}")
    return response


@pytest.fixture
async def aiohttp_client(
    aiohttp_client: ClientFactory,
) -> AsyncIterator[ClientFactory]:
    """pytest-aiohttp's client factory, with each app's responses checked against OpenAPI."""
    apps: list[web.Application] = []

    async def factory(app: web.Application, **kwargs: Any) -> Any:
        app[_VIOLATIONS] = []
        app.middlewares.insert(0, _check_against_openapi)
        apps.append(app)
        return await aiohttp_client(app, **kwargs)

    yield factory
    violations = [v for app in apps for v in app[_VIOLATIONS]]
    assert violations == [], "responses that /openapi.json does not describe:\n" + "\n".join(
        violations
    )


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> AsyncIterator[TestClient[Any, Any]]:
    """A test client of an app with keys for projects alpha and beta."""
    yield await aiohttp_client(create_app(make_config(tmp_path / "data")))


async def upload(
    client: TestClient[Any, Any],
    content: bytes,
    headers: dict[str, str] = ALPHA,
    **form: Any,
) -> dict[str, Any]:
    resp = await client.post("/v1/files", data=upload_form(content, **form), headers=headers)
    body = await resp.json()
    assert resp.status == 200, body
    return dict(body)


async def chunks_of(*pieces: bytes) -> AsyncIterator[bytes]:
    """A stream of chunks, as a request body or a blob read hands them to a service."""
    for piece in pieces:
        yield piece


def blob_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "blobs").rglob("*") if p.is_file())


def temp_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "tmp").iterdir()) if (data_dir / "tmp").exists() else []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server for a module, run open: each test uses its own token, so its own
    project."""
    root = tmp_path_factory.mktemp("server")
    proc = ServerProcess(["--data-dir", str(root / "data")], cwd=root)
    yield proc
    assert proc.stop(signal.SIGTERM) == 0


def write_config(path: Path, data_dir: Path, extra: str = "") -> Path:
    path.write_text(f'[storage]\ndata_dir = "{data_dir}"\n{KEYS_TOML}\n{extra}')
    return path


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start real servers (with the alpha/beta keys); all are stopped after the test."""
    started: list[ServerProcess] = []

    def start(data_dir: Path | None = None, extra_config: str = "") -> ServerProcess:
        data_dir = data_dir or tmp_path / "data"
        config = write_config(tmp_path / f"filesd-{len(started)}.toml", data_dir, extra_config)
        server = ServerProcess(["--config", str(config)], cwd=tmp_path)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop(signal.SIGKILL)


async def wait_until(
    condition: Callable[[], object], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """Wait until `condition()` is true (it may be sync or return an awaitable), polling.

    Tests wait for a condition, never for a time: this is the one way they do it. Fails the
    test (naming `what`) if it does not hold within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout:g} s")
        await asyncio.sleep(0.02)


def wait_until_sync(
    condition: Callable[[], object], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """`wait_until` for tests without an event loop of their own."""
    asyncio.run(wait_until(condition, timeout=timeout, what=what))


def tar_archive(members: dict[str, bytes]) -> bytes:
    """A tar archive of `members` (name -> bytes), for import tests."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of one moto S3 server for the session (see tests/s3_service.py)."""
    with moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_server: str) -> Iterator[S3Bucket]:
    """A fresh, empty bucket on the session's S3 server (endpoint, name, credentials)."""
    with fresh_bucket(s3_server) as bucket:
        yield bucket


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the session (tests/pg_service.py); skipped when not installed."""
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """The DSN of a fresh, empty database of the session's PostgreSQL (any process may use it)."""
    with postgres_server.database() as dsn:
        yield dsn
