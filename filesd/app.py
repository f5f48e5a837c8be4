"""`create_app`: all the wiring of a filesd application, nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from .appkeys import CONFIG, REQUESTS, STORE
from .auth import Authenticator, auth_middleware
from .config import Config
from .drain import RequestTracker
from .errors import add_request_id, error_middleware
from .routes import setup_routes
from .store import FileStore

log = logging.getLogger(__name__)

# JSON bodies are small; file uploads stream and are capped by [limits] max_file_bytes instead.
CLIENT_MAX_SIZE = 1024 * 1024


def create_app(config: Config, *, clock: Callable[[], float] = time.time) -> web.Application:
    """A filesd application for `config`. The store opens on start-up and closes on clean-up."""
    authenticator = Authenticator(config.auth)
    requests = RequestTracker()
    app = web.Application(
        middlewares=[requests.middleware, error_middleware, auth_middleware(authenticator)],
        client_max_size=CLIENT_MAX_SIZE,
    )
    app[CONFIG] = config
    app[REQUESTS] = requests

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        store = await FileStore.open(
            config.storage.data_dir,
            id_format=config.files.id_format,
            max_file_bytes=config.limits.max_file_bytes,
            clock=clock,
        )
        app[STORE] = store
        if authenticator.open_mode:
            log.warning(
                "no API keys configured: running open, any bearer token is accepted "
                "and each distinct token is its own project"
            )
        sweep = asyncio.create_task(_sweep_orphans(store))
        try:
            yield
        finally:
            sweep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweep
            await store.close()

    app.cleanup_ctx.append(store_ctx)
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(requests.on_response_prepare)
    setup_routes(app)
    return app


async def _sweep_orphans(store: FileStore) -> None:
    """Start-up clean-up of blobs a crash left without a file; serving goes on meanwhile."""
    try:
        await store.sweep_orphans()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("sweeping orphaned blobs failed")
