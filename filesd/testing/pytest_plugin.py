"""pytest fixtures for code that talks to an OpenAI-compatible Files API.

    def test_upload(filesd):
        client = filesd.openai()
        f = client.files.create(file=b"hello", purpose="batch")
        assert client.files.content(f.id).read() == b"hello"

- `filesd_server` (session): one real filesd for the run, on a free port and a temporary data
  directory; `.url`, `.base_url`, `.data_dir`, `.new_project()`.
- `filesd` (function): a fresh, empty project on it for each test (tests never see each other's
  files, under pytest-xdist too: every worker has its own server); `.base_url`, `.api_key`,
  `.openai()`, `.async_openai()` (max_retries=0 unless given; the clients are closed when the
  test ends).
- Settings: the ini option `filesd_config` (TOML, added to the server's configuration), and the
  marker `@pytest.mark.filesd(limits={...})`, which gives that test a server of its own with
  those tables added.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from typing import Any

import pytest

from . import FilesdProject, FilesdServer, serve


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "filesd_config",
        "TOML added to the configuration of the filesd_server fixture's server",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "filesd(**tables): run this test against its own filesd with these settings"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Close the test's clients as soon as it returns: an async test's event loop (pytest-asyncio's
    or pytest-aiohttp's) is still open then, and is closed before the fixture's teardown."""
    try:
        return (yield)
    finally:
        project = getattr(item, "funcargs", {}).get("filesd")
        if isinstance(project, FilesdProject):
            project.close()


def _ini_tables(config: pytest.Config) -> dict[str, Any]:
    text = str(config.getini("filesd_config") or "")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise pytest.UsageError(f"filesd_config is not valid TOML: {e}") from None


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for name, table in extra.items():
        merged[name] = {**merged.get(name, {}), **table} if isinstance(table, dict) else table
    return merged


@pytest.fixture(scope="session")
def filesd_server(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FilesdServer]:
    with serve(data_dir=tmp_path_factory.mktemp("filesd"), **_ini_tables(pytestconfig)) as server:
        yield server


@pytest.fixture
def filesd(
    request: pytest.FixtureRequest,
    pytestconfig: pytest.Config,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FilesdProject]:
    marker = request.node.get_closest_marker("filesd")
    if marker is None:
        server: FilesdServer = request.getfixturevalue("filesd_server")
        project = server.new_project()
        yield project
        # now, not at the session's end: a socket left to the garbage collector warns in
        # whichever later test happens to collect it
        project.close()
        return
    tables = _merged(_ini_tables(pytestconfig), dict(marker.kwargs))
    with serve(data_dir=tmp_path_factory.mktemp("filesd"), **tables) as own:
        yield own.new_project()
