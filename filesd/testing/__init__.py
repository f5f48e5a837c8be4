"""filesd in your tests: a real server on a free port, and a fresh project per test.

    from filesd.testing import serve

    with serve(limits={"max_file_bytes": 1000}) as server:
        project = server.new_project()
        client = project.openai()          # an `openai.OpenAI` for that project
        client.files.create(file=b"...", purpose="batch")

The server runs in a background thread with its own event loop, on 127.0.0.1 and a free port,
on a temporary data directory unless one is given. Keyword arguments are configuration tables,
as in the TOML file. The pytest plugin (`filesd_server`, `filesd` fixtures) is built on this.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..api.appkeys import AUTHENTICATOR, SERVICES
from ..api.server import running
from ..config import Config, parse_config

if TYPE_CHECKING:
    import openai as openai_sdk  # the methods below are named `openai`


OPENAI_MISSING = (
    "filesd's test clients need the `openai` package, which filesd does not install: "
    "pip install openai"
)


def _openai_sdk() -> ModuleType:
    """The `openai` module, or an ImportError that says in one sentence what to install."""
    try:
        import openai
    except ModuleNotFoundError as error:
        if error.name != "openai":
            raise
        raise ModuleNotFoundError(OPENAI_MISSING, name="openai") from None
    return openai


@dataclass(frozen=True)
class FilesdProject:
    """One project on a server: its API key, and clients for it.

    The clients it makes are its own to close: `close()` closes them (the pytest plugin calls it
    when the test ends, `serve()` when its block ends), so a test that never closes its client
    leaves no socket open. An async client is closed on the event loop it was made in while that
    loop is open; one made outside a running loop and used in a loop that has since closed (as
    with `asyncio.run`) cannot be, and is for its user to close (`async with`).
    """

    base_url: str
    api_key: str
    _clients: list[openai_sdk.OpenAI] = field(default_factory=list, repr=False, compare=False)
    # each with the loop it was made in, when one was running
    _async_clients: list[tuple[openai_sdk.AsyncOpenAI, asyncio.AbstractEventLoop | None]] = field(
        default_factory=list, repr=False, compare=False
    )

    def openai(self, **kwargs: Any) -> openai_sdk.OpenAI:
        """An `openai.OpenAI` for this project (max_retries=0 unless given)."""
        kwargs.setdefault("max_retries", 0)
        client: openai_sdk.OpenAI = _openai_sdk().OpenAI(
            base_url=self.base_url, api_key=self.api_key, **kwargs
        )
        self._clients.append(client)
        return client

    def async_openai(self, **kwargs: Any) -> openai_sdk.AsyncOpenAI:
        """An `openai.AsyncOpenAI` for this project (max_retries=0 unless given)."""
        kwargs.setdefault("max_retries", 0)
        client: openai_sdk.AsyncOpenAI = _openai_sdk().AsyncOpenAI(
            base_url=self.base_url, api_key=self.api_key, **kwargs
        )
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._async_clients.append((client, loop))
        return client

    def close(self) -> None:
        """Close the clients this project made that are still open (see the class's note)."""
        clients, self._clients[:] = list(self._clients), []
        for client in clients:
            client.close()
        async_clients, self._async_clients[:] = list(self._async_clients), []
        for async_client, loop in async_clients:
            if loop is not None and not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(async_client.close())


class FilesdServer:
    """A running filesd: `url` (root), `base_url` (`url` + "/v1"), `data_dir`, `config`."""

    def __init__(self, config: Config, url: str, loop: asyncio.AbstractEventLoop, app: Any):
        self.config = config
        self.url = url
        self.base_url = url + "/v1"
        self.data_dir = config.storage.data_dir
        self._loop = loop
        self._app: web.Application = app
        self._projects: list[FilesdProject] = []

    def new_project(self, name: str | None = None) -> FilesdProject:
        """A project no other caller sees, with its own key.

        Open server (no keys configured, in the file or in the database): a fresh random
        token is a fresh project. Otherwise a key for project `name` (default: a new unique
        name) is made in the database and takes effect at once. The running server decides
        which, so the key always works.
        """
        project = name or f"test-{uuid.uuid4().hex[:12]}"
        future = asyncio.run_coroutine_threadsafe(self._new_key(project), self._loop)
        made = FilesdProject(self.base_url, future.result(timeout=30))
        self._projects.append(made)
        return made

    def close_clients(self) -> None:
        """Close the clients of every project this server handed out (`FilesdProject.close`)."""
        for project in self._projects:
            project.close()

    async def _new_key(self, project: str) -> str:
        from ..api.app import reload_keys

        if self._app[AUTHENTICATOR].open_mode:
            return f"sk-test-{uuid.uuid4().hex}"
        _, key = await self._app[SERVICES].keys.create(project)
        await reload_keys(self._app)
        return key


@contextlib.contextmanager
def serve(
    *, data_dir: str | Path | None = None, new_database: bool = False, **tables: Any
) -> Iterator[FilesdServer]:
    """Run filesd until the block ends. `tables` are configuration tables (`limits={...}`).

    A `data_dir` holding blobs but no database is refused (`DatabaseMissing`, as `filesd
    serve` refuses it) unless `new_database`.
    """
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="filesd-"))
        doc = dict(tables)
        doc["server"] = {**doc.get("server", {}), "host": "127.0.0.1", "port": 0}
        doc["storage"] = {**doc.get("storage", {}), "data_dir": str(data_dir)}
        config = parse_config(doc, base_dir=Path.cwd())
        started: dict[str, Any] = {}
        ready = threading.Event()
        thread = threading.Thread(
            target=_run, args=(config, new_database, started, ready), name="filesd", daemon=True
        )
        thread.start()
        ready.wait(60)
        if "error" in started:
            raise started["error"]
        server = FilesdServer(config, started["url"], started["loop"], started["app"])
        try:
            yield server
        finally:
            server.close_clients()
            started["loop"].call_soon_threadsafe(started["stop"].set)
            thread.join(60)


def _run(
    config: Config, new_database: bool, started: dict[str, Any], ready: threading.Event
) -> None:
    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            try:
                server = await stack.enter_async_context(
                    running(config, access_log=False, new_database=new_database)
                )
            except BaseException as error:
                started["error"] = error
                ready.set()
                return
            started.update(
                url=server.urls[0],
                loop=asyncio.get_running_loop(),
                app=server.app,
                stop=asyncio.Event(),
            )
            ready.set()
            await started["stop"].wait()

    asyncio.run(main())
