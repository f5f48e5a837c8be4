"""Running an application on a TCP socket until SIGTERM or Ctrl-C, then draining it."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

from aiohttp import web

from .accesslog import AccessLogger
from .app import create_app
from .appkeys import REQUESTS
from .config import Config

SHUTDOWN_TIMEOUT = 30.0


def format_url(address: Any) -> str:
    """The http URL of a listening socket address (IPv4 or IPv6 tuple)."""
    host, port = address[0], address[1]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def serve(config: Config) -> None:
    """Serve until SIGTERM/SIGINT; requests in flight are finished (up to SHUTDOWN_TIMEOUT)."""
    app = create_app(config)
    runner = web.AppRunner(
        app,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("aiohttp.access") if config.log.access_log else None,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port)
        await site.start()
        urls = ", ".join(format_url(a) for a in runner.addresses)
        print(f"filesd listening on {urls} (data in {config.storage.data_dir})", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        requests = app[REQUESTS]
        print(
            f"filesd shutting down: finishing {requests.running} request(s) in flight",
            file=sys.stderr,
            flush=True,
        )
        for running_site in runner.sites:
            await running_site.stop()  # stops listening; open connections carry on
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
    finally:
        await runner.cleanup()
