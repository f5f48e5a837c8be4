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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..api.appkeys import AUTHENTICATOR, SERVICES
from ..api.server import running
from ..config import Config, parse_config

if TYPE_CHECKING:
    import openai as openai_sdk  # the methods below are named `openai`


@dataclass(frozen=True)
class FilesdProject:
    """One project on a server: its API key, and clients for it."""

    base_url: str
    api_key: str

    def openai(self, **kwargs: Any) -> openai_sdk.OpenAI:
        """An `openai.OpenAI` for this project (max_retries=0 unless given)."""
        import openai

        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, **kwargs)

    def async_openai(self, **kwargs: Any) -> openai_sdk.AsyncOpenAI:
        """An `openai.AsyncOpenAI` for this project (max_retries=0 unless given)."""
        import openai

        kwargs.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, **kwargs)


class FilesdServer:
    """A running filesd: `url` (root), `base_url` (`url` + "/v1"), `data_dir`, `config`."""

    def __init__(self, config: Config, url: str, loop: asyncio.AbstractEventLoop, app: Any):
        self.config = config
        self.url = url
        self.base_url = url + "/v1"
        self.data_dir = config.storage.data_dir
        self._loop = loop
        self._app: web.Application = app

    def new_project(self, name: str | None = None) -> FilesdProject:
        """A project no other caller sees, with its own key.

        Open server (no keys configured, in the file or in the database): a fresh random
        token is a fresh project. Otherwise a key for project `name` (default: a new unique
        name) is made in the database and takes effect at once. The running server decides
        which, so the key always works.
        """
        project = name or f"test-{uuid.uuid4().hex[:12]}"
        future = asyncio.run_coroutine_threadsafe(self._new_key(project), self._loop)
        return FilesdProject(self.base_url, future.result(timeout=30))

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
