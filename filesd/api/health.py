"""Liveness and readiness probes (no key needed; outside /v1).

Readiness costs a database query and a file created, fsynced and removed in the data
directory, so its answer is kept for `Readiness.TTL` seconds and probes arriving together
share one check: a prober polling hard cannot turn /readyz into disk load.

A keyless probe is told ready or not, and what is wrong in general words ("the database is
not usable"); the errors themselves name hosts, ports and paths of the set-up, so they go to
the log (when the answer changes) and to a probe carrying the admin or metrics token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from aiohttp import web
from typing_extensions import TypedDict

from ..services.maintenance import Unready
from .appkeys import MAINTENANCE
from .auth import bearer_token
from .errors import ServiceUnavailable
from .metrics import METRICS
from .responses import json_response
from .routing import Routes

log = logging.getLogger(__name__)


class Readiness:
    """What keeps the server from serving, checked at most once per `ttl` seconds.

    `check` returns the problems (empty: ready). Probes within `ttl` of the last check's start
    get its answer; probes arriving while a check runs wait for that same check. A change of
    the answer is logged, with the problems' details.
    """

    TTL = 1.0
    # A check that hangs (a stuck disk, a database locked for good) is a "not ready" answer
    # after this long, not a probe that hangs with it.
    TIMEOUT = 5.0

    def __init__(
        self,
        check: Callable[[], Awaitable[list[Unready]]],
        *,
        ttl: float = TTL,
        timeout: float = TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The check itself: a seam a test may wrap from outside.
        self.check = check
        self._ttl = ttl
        self._timeout = timeout
        self.clock = clock
        self._answer: list[Unready] | None = None
        self._checked_at = 0.0
        self._running: asyncio.Task[list[Unready]] | None = None

    async def problems(self) -> list[Unready]:
        if self._answer is not None and self.clock() - self._checked_at < self._ttl:
            return list(self._answer)
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._refresh())
        # Shielded: one probe's client going away must not cancel the check the others share;
        # a check past the timeout goes on (the next probe waits for it) but answers no.
        try:
            async with asyncio.timeout(self._timeout):
                return list(await asyncio.shield(self._running))
        except TimeoutError:
            took = f"the readiness check took over {self._timeout:g} s"
            return [Unready(took, took)]

    async def _refresh(self) -> list[Unready]:
        started = self.clock()
        problems = await self.check()
        if problems and problems != self._answer:
            log.warning("not ready: %s", "; ".join(p.detail for p in problems))
        elif not problems and self._answer:
            log.info("ready again")
        self._answer, self._checked_at = problems, started
        return problems


READINESS = web.AppKey("readiness", Readiness)


class Health(TypedDict):
    status: Literal["ok", "ready"]


routes = Routes()


def setup_readiness(app: web.Application) -> None:
    app[READINESS] = Readiness(lambda: app[MAINTENANCE].readiness_problems())


@routes.route(
    "GET",
    "/healthz",
    id="healthz",
    summary="Liveness",
    ok=Health,
    ok_description="Alive",
    secured=False,
)
async def healthz(request: web.Request) -> web.Response:
    """The process is up and answering."""
    return json_response({"status": "ok"})


@routes.route(
    "GET",
    "/readyz",
    id="readyz",
    summary="Readiness",
    ok=Health,
    ok_description="Ready",
    secured=False,
    errors=(503,),
)
async def readyz(request: web.Request) -> web.Response:
    """The database answers and is still in place, and the blob storage takes writes; 503
    saying what failed (in general words, or in detail to the admin or metrics token). Answers
    may be up to `Readiness.TTL` seconds old."""
    problems = await request.app[READINESS].problems()
    if problems:
        token = bearer_token(request.headers.get("Authorization"))
        if request.app[METRICS].accepts(token):
            told = [p.detail for p in problems]
        else:
            told = list(dict.fromkeys(p.what for p in problems))
        raise ServiceUnavailable("Not ready: " + "; ".join(told), code="not_ready")
    return json_response({"status": "ready"})
