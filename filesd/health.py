"""Liveness and readiness probes (no key needed; outside /v1)."""

from __future__ import annotations

from aiohttp import web

from .appkeys import STORE
from .errors import ServiceUnavailable


def setup_health_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


async def healthz(request: web.Request) -> web.Response:
    """The process is up and answering."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """The database answers and the data directory takes writes; 503 naming what failed."""
    problems = await request.app[STORE].readiness_problems()
    if problems:
        raise ServiceUnavailable("Not ready: " + "; ".join(problems), code="not_ready")
    return web.json_response({"status": "ready"})
