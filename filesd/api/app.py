"""`create_app`: all the wiring of a filesd application, nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from ..clock import Clock
from ..config import Config
from ..services.batches import open_batches
from ..services.files import FileStore, StoreSettings
from ..services.uploads import UploadService
from ..storage.faulty import FaultyBlobs
from .admin import setup_admin
from .appkeys import AUTHENTICATOR, CONFIG, REQUESTS, STORE, UPLOAD_SLOTS, UPLOADS
from .auth import Authenticator, auth_middleware
from .batches import BATCHES, setup_batch_routes
from .boundary import error_middleware
from .console import setup_console
from .drain import RequestTracker, UploadSlots
from .errors import add_api_headers
from .faults import FAULTS, Faults, faults_middleware
from .files import setup_routes
from .health import setup_health_routes
from .metrics import METRICS, Metrics, metrics
from .openapi import openapi_json
from .uploads import setup_upload_routes

log = logging.getLogger(__name__)

# JSON bodies are small; file uploads stream and are capped by [limits] max_file_bytes instead.
CLIENT_MAX_SIZE = 1024 * 1024


def create_app(
    config: Config, *, clock: Callable[[], float] | None = None, new_database: bool = False
) -> web.Application:
    """A filesd application for `config`. The store opens on start-up and closes on clean-up.

    `clock` replaces the server's time (tests); by default it is a `Clock`, real time unless
    `[testing] frozen_time` is set, adjustable through the admin API. Start-up fails with
    `DatabaseMissing` over blobs without a database, unless `new_database`.
    """
    if clock is None:
        clock = Clock(config.testing.frozen_time)
    authenticator = Authenticator(config.auth)
    requests = RequestTracker()
    # Fault rules come from the config or, at run time, from the admin API: without either
    # there can be none, so requests need not look for them (nor blob calls be wrapped).
    faults_possible = bool(config.testing.faults or config.admin.token)
    app = web.Application(
        middlewares=[
            requests.middleware,
            error_middleware,
            auth_middleware(authenticator),
            *([faults_middleware] if faults_possible else []),
        ],
        client_max_size=CLIENT_MAX_SIZE,
    )
    app[FAULTS] = Faults(config.testing.faults, seed=config.testing.id_seed)
    app[CONFIG] = config
    app[AUTHENTICATOR] = authenticator
    app[REQUESTS] = requests
    app[UPLOAD_SLOTS] = UploadSlots(
        config.limits.max_concurrent_uploads,
        per_project=config.limits.max_concurrent_uploads_per_project or None,
        project_count=lambda: authenticator.project_count,
    )

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        store = await FileStore.open(
            StoreSettings.from_config(config),
            clock=clock,
            wrap_blobs=FaultyBlobs if faults_possible else None,
            new_database=new_database,
        )
        uploads = UploadService(store, max_part_bytes=config.limits.max_part_bytes)
        app[STORE] = store
        app[UPLOADS] = uploads
        # Before serving: recovery takes every upload found mid-completion for a crash's
        # leftover, which a completion that is really under way is not.
        await uploads.recover()
        app[BATCHES], batch_runner = open_batches(store, config.batches, app[FAULTS].take)
        await _load_keys(store, authenticator)
        if authenticator.open_mode:
            log.warning(
                "no API keys configured: running open, any bearer token is accepted "
                "and each distinct token is its own project"
            )
        elif not app[METRICS].has_token:
            log.info("GET /metrics answers 401: set [metrics] token to scrape it")
        tasks = [
            asyncio.create_task(_maintain(store, uploads, config)),
            asyncio.create_task(_refresh_keys(store, authenticator)),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if batch_runner is not None:
                await batch_runner.close()
            await store.close()

    app.cleanup_ctx.append(store_ctx)
    app.on_response_prepare.append(add_api_headers)
    app[METRICS] = Metrics((config.metrics.token, config.admin.token))
    app.on_response_prepare.append(app[METRICS].on_response_prepare)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    if config.admin.token:
        setup_admin(
            app,
            config.admin.token,
            config.admin.journal_size,
            clock if isinstance(clock, Clock) else None,
        )
    setup_routes(app)
    setup_health_routes(app)
    setup_upload_routes(app)
    setup_batch_routes(app)
    if config.ui.enabled:
        setup_console(app)
    return app


# Blobs without a row come only from crashes (or failed commits): the whole store is listed
# for them at start-up and then every this many sweeps, not every sweep (a bucket may hold
# millions of objects).
ORPHAN_SWEEP_EVERY = 10


async def _maintain(store: FileStore, uploads: UploadService, config: Config) -> None:
    """Background upkeep while serving, on one instance at a time (the `upkeep` lease, renewed
    between steps and taken over by another instance once its holder stops renewing it).

    Every `sweep_interval` seconds: expired files (already hidden) and uploads, rows deleted
    longer ago than `deleted_retention` (with the blobs that frees), and the completions of
    instances that died. At start-up and every ORPHAN_SWEEP_EVERY sweeps (at least two leases
    apart, so a dead instance's claims have run out): blobs a crash left unreferenced (this
    instance's own uploads caught mid-completion were settled before serving began).
    """
    lease = config.storage.sweep_interval + config.storage.lease_seconds

    async def purge() -> None:
        await store.purge_deleted(config.storage.deleted_retention)

    orphan_interval = max(
        ORPHAN_SWEEP_EVERY * config.storage.sweep_interval, 2 * config.storage.lease_seconds
    )
    orphans_due = 0.0
    while True:
        steps = [store.sweep_expired, purge, uploads.sweep_expired, uploads.recover]
        if time.monotonic() >= orphans_due:
            steps.insert(0, store.sweep_orphans)
        for step in steps:
            try:
                if not await store.take_lease("upkeep", lease):
                    break
                await step()
                if step == store.sweep_orphans:
                    orphans_due = time.monotonic() + orphan_interval
            except Exception:
                log.exception("background %s failed", step.__name__)
        await asyncio.sleep(config.storage.sweep_interval)


KEY_REFRESH_SECONDS = 2.0


async def _load_keys(store: FileStore, authenticator: Authenticator) -> None:
    keys = await store.keys.all()
    authenticator.use_made_keys(
        ((k.key_sha256, k.project) for k in keys if k.revoked_at is None), any_made=bool(keys)
    )


async def reload_keys(app: web.Application) -> None:
    """Take keys made or revoked in the database into use now (instead of within 2 s)."""
    await _load_keys(app[STORE], app[AUTHENTICATOR])


async def _refresh_keys(store: FileStore, authenticator: Authenticator) -> None:
    """Keys made or revoked with `filesd keys` take effect within KEY_REFRESH_SECONDS."""
    while True:
        await asyncio.sleep(KEY_REFRESH_SECONDS)
        try:
            await _load_keys(store, authenticator)
        except Exception:
            log.exception("reloading API keys failed")
