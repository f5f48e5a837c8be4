"""`create_app`: all the wiring of a filesd application, nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from ..batches.service import open_batches
from ..clock import Clock
from ..config import Config, ConfigError, reused_token
from ..services.core import Services
from ..services.keys import KeyService
from ..services.settings import StoreSettings
from . import batches, files, health, uploads
from .admin import setup_admin
from .appkeys import (
    ARCHIVES,
    AUTHENTICATOR,
    BATCHES,
    CONFIG,
    DOWNLOAD_SLOTS,
    FILES,
    MAINTENANCE,
    REQUESTS,
    SERVICES,
    UPLOAD_SLOTS,
    UPLOADS,
)
from .auth import Authenticator, auth_middleware
from .boundary import error_middleware
from .console import setup_console
from .drain import DownloadSlots, RequestTracker, UploadSlots
from .errors import add_api_headers
from .expectations import EXPECT, refuse_unmatched_expectations
from .faults import FAULTS, Faults, faults_middleware
from .metrics import METRICS, Metrics, metrics
from .openapi import ROUTES, openapi_json
from .validation import path_params_middleware

log = logging.getLogger(__name__)

# JSON bodies are small; file uploads stream and are capped by [limits] max_file_bytes instead.
CLIENT_MAX_SIZE = 1024 * 1024


def create_app(
    config: Config, *, clock: Callable[[], float] | None = None, new_database: bool = False
) -> web.Application:
    """A filesd application for `config`. The services open on start-up and close on clean-up.

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
    app[DOWNLOAD_SLOTS] = DownloadSlots(
        config.limits.max_concurrent_downloads,
        project_count=lambda: authenticator.project_count,
    )

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        services = await Services.open(
            StoreSettings.from_config(config),
            clock=clock,
            inject_faults=faults_possible,
            new_database=new_database,
        )
        app[SERVICES] = services
        app[FILES] = services.files
        app[UPLOADS] = services.uploads
        app[MAINTENANCE] = services.maintenance
        app[ARCHIVES] = services.archives
        # Before serving: recovery takes every upload found mid-completion for a crash's
        # leftover, which a completion that is really under way is not.
        await services.uploads.recover()
        app[BATCHES], batch_runner = open_batches(services, config.batches, app[FAULTS].take)
        tasks: list[asyncio.Task[None]] = []
        try:
            # A token that is a key made in the database stops start-up (ConfigError).
            await _load_keys(services.keys, authenticator, config)
            if authenticator.open_mode:
                log.warning(
                    "no API keys configured: running open, any bearer token is accepted "
                    "and each distinct token is its own project"
                )
            elif not app[METRICS].has_token:
                log.info("GET /metrics answers 401: set [metrics] token to scrape it")
            tasks = [
                asyncio.create_task(services.maintenance.upkeep()),
                asyncio.create_task(_refresh_keys(services.keys, authenticator, config)),
            ]
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if batch_runner is not None:
                await batch_runner.close()
            await services.close()

    app.cleanup_ctx.append(services_ctx)
    app.on_response_prepare.append(add_api_headers)
    app[METRICS] = Metrics((config.metrics.token, config.admin.token))
    app.on_response_prepare.append(app[METRICS].on_response_prepare)
    app.router.add_get("/metrics", metrics, expect_handler=EXPECT)
    app.router.add_get("/openapi.json", openapi_json, expect_handler=EXPECT)
    if config.admin.token:
        setup_admin(
            app,
            config.admin.token,
            config.admin.journal_size,
            clock if isinstance(clock, Clock) else None,
        )
    # Last, after the admin API's own authentication (setup_admin adds it).
    app.middlewares.append(path_params_middleware)
    # The public routes, side by side: each module declares its own (see routing.py).
    app[ROUTES] = [files.routes, health.routes, uploads.routes, batches.routes]
    for table in app[ROUTES]:
        table.mount(app)
    health.setup_readiness(app)
    if config.ui.enabled:
        setup_console(app)
    # After every route: it answers what none of them matches.
    refuse_unmatched_expectations(app)
    return app


KEY_REFRESH_SECONDS = 2.0


async def _load_keys(
    keys_service: KeyService,
    authenticator: Authenticator,
    config: Config,
    *,
    refused: set[str] | None = None,
) -> None:
    """Take the database's keys into use. At start-up (`refused` None) raises `ConfigError`
    (nothing taken) if the admin or metrics token is one of them (`reused_token`). While
    running, such a key (only `filesd migrate` could bring one) is left out and logged once
    (its id added to `refused`): the others, revocations too, still take effect."""
    keys = await keys_service.all()
    clashing = set()
    for key in keys:
        reused = reused_token(
            config.admin.token,
            config.metrics.token,
            [(key.key_sha256, f"key {key.id} of `filesd keys list`")],
        )
        if reused is None:
            continue
        if refused is None:
            raise ConfigError(reused)
        clashing.add(key.id)
        if key.id not in refused:
            refused.add(key.id)
            log.error("API key %s is not taken into use: %s", key.id, reused)
    authenticator.use_made_keys(
        ((k.key_sha256, k.project) for k in keys if k.revoked_at is None and k.id not in clashing),
        any_made=bool(keys),
    )


async def reload_keys(app: web.Application) -> None:
    """Take keys made or revoked in the database into use now (instead of within 2 s)."""
    await _load_keys(app[SERVICES].keys, app[AUTHENTICATOR], app[CONFIG], refused=set())


async def _refresh_keys(keys: KeyService, authenticator: Authenticator, config: Config) -> None:
    """Keys made or revoked with `filesd keys` take effect within KEY_REFRESH_SECONDS."""
    refused: set[str] = set()
    while True:
        await asyncio.sleep(KEY_REFRESH_SECONDS)
        try:
            await _load_keys(keys, authenticator, config, refused=refused)
        except Exception:
            log.exception("reloading API keys failed")
