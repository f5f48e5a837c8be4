"""Running an application on a TCP socket until SIGTERM or Ctrl-C, then draining it.

`running` is the one way a filesd server starts, for `filesd serve` and for
`filesd.testing.serve` alike: the app, its listener and the connection limits of `[server]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..config import Config, ConfigError, describe_storage
from .accesslog import AccessLogger
from .app import create_app
from .appkeys import CONNECTIONS, REQUESTS
from .connections import AcceptErrorLog, ConnectionGate, fit_descriptor_limit, protocol_factory

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 30.0
BACKLOG = 128


def format_url(address: Any) -> str:
    """The http URL of a listening socket address (IPv4 or IPv6 tuple)."""
    host, port = address[0], address[1]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


@dataclass
class RunningServer:
    """A started server: its application and the URLs it listens on."""

    app: web.Application
    urls: list[str]
    listener: asyncio.Server

    def stop_listening(self) -> None:
        """Accept no new connections; open ones carry on."""
        self.listener.close()


@contextlib.asynccontextmanager
async def running(
    config: Config, *, access_log: bool | None = None, new_database: bool = False
) -> AsyncIterator[RunningServer]:
    """Start filesd for `config` on `[server] host` and `port`; on exit stop listening and shut
    the application down (requests in flight get up to SHUTDOWN_TIMEOUT seconds).

    `access_log` overrides `[log] access_log`. Connections get `[server] header_timeout`,
    `keepalive_timeout` and `max_connections`, and responses `[limits] min_body_rate` over each
    window of `body_timeout`; accept errors are logged once per interval.
    `new_database`: start even over blobs that have no database (see `DatabaseMissing`).
    """
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptErrorLog(loop))
    app = create_app(config, new_database=new_database)
    gate = app[CONNECTIONS] = ConnectionGate(config.server.max_connections)
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    listener: asyncio.Server | None = None
    try:
        assert runner.server is not None
        log_access = config.log.access_log if access_log is None else access_log
        factory = protocol_factory(
            runner.server,
            gate=gate,
            header_timeout=config.server.header_timeout,
            send_window=config.limits.body_timeout,
            min_send_rate=config.limits.min_body_rate,
            keepalive_timeout=config.server.keepalive_timeout,
            access_log_class=AccessLogger,
            access_log=logging.getLogger("aiohttp.access") if log_access else None,
        )
        listener = await _listen(loop, factory, config)
        urls = [format_url(sock.getsockname()) for sock in listener.sockets]
        yield RunningServer(app, urls, listener)
    finally:
        if listener is not None:
            listener.close()
        await runner.cleanup()


async def _listen(
    loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.Protocol], config: Config
) -> asyncio.Server:
    """Listen on `[server] host` and `port`; a failure is a `ConfigError` naming the setting
    to change (the raw errno names neither)."""
    host, port = config.server.host, config.server.port
    try:
        return await loop.create_server(factory, host, port, reuse_address=True, backlog=BACKLOG)
    except socket.gaierror as e:
        raise ConfigError(
            f"server.host (--host): cannot resolve {host!r} ({e.strerror or e})"
        ) from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"server.port (--port): port {port} on {host} is already in use by another "
                "process; choose another port, or 0 for a free one"
            ) from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(
                f"server.host (--host): {host!r} is not an address of this machine"
            ) from None
        raise


async def serve(config: Config, *, new_database: bool = False) -> None:
    """Serve until SIGTERM/SIGINT; requests in flight are finished (up to SHUTDOWN_TIMEOUT)."""
    fit_descriptor_limit(config.server.max_connections)
    async with running(config, new_database=new_database) as server:
        print(
            f"filesd listening on {', '.join(server.urls)} ({describe_storage(config.storage)})",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        requests = server.app[REQUESTS]
        print(
            f"filesd shutting down: finishing {requests.running} request(s) in flight",
            file=sys.stderr,
            flush=True,
        )
        server.stop_listening()
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                await requests.drain()
        except TimeoutError:
            print(
                f"filesd: {requests.running} request(s) still running after "
                f"{SHUTDOWN_TIMEOUT:.0f}s; cancelling them",
                file=sys.stderr,
                flush=True,
            )
