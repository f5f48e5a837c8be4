"""The admin API, for test suites and operators: off unless `[admin] token` is set.

Its own bearer token (compared in constant time), never under /v1:
- POST /admin/reset [{"project": P}]: everything, or one project, gone (rows, blobs, parts);
- GET /admin/projects: each project's files, bytes, and physical bytes after dedupe;
- GET /admin/requests: the last requests to /v1 (filter: method, path, project, status);
- GET|POST|DELETE /admin/faults, DELETE /admin/faults/{id}: fault injection rules;
- GET|POST /admin/clock: freeze, advance or resume the server's clock.

Its routes are declared like the public ones (`routing.Routes`, their requests' types in
`schemas.py`), but mounted here and left out of the OpenAPI document: the admin API is
filesd's own, not OpenAI's.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ..clock import CLOCK_MAX, Clock, is_clock_time
from ..values import is_finite_number
from .appkeys import ARCHIVES, CONFIG, MAINTENANCE
from .auth import PROJECT, is_token
from .errors import REQUEST_ID, STARTED, AuthenticationFailed, InvalidRequest, NotFound
from .faults import FAULTS
from .responses import json_response
from .routing import Routes
from .schemas import ExportQuery, JournalQuery, NewFaultRule, ResetBody, SetClock

routes = Routes()

JOURNAL: web.AppKey[collections.deque[dict[str, Any]]] = web.AppKey("journal")
CLOCK = web.AppKey("clock", Clock)
CLOCK_ADJUSTABLE = web.AppKey("clock_adjustable", bool)


def setup_admin(app: web.Application, token: str, journal_size: int, clock: Clock | None) -> None:
    """Mount the admin API. Without a `Clock` (a test's own time source), /admin/clock is 400."""
    app[JOURNAL] = collections.deque(maxlen=journal_size)
    app[CLOCK] = clock if clock is not None else Clock()
    app[CLOCK_ADJUSTABLE] = clock is not None
    app.middlewares.append(_admin_auth(hashlib.sha256(token.encode()).digest()))
    app.on_response_prepare.append(_record)
    routes.mount(app)


def _admin_auth(digest: bytes) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/admin/") and not is_token(
            request.headers.get("Authorization"), digest
        ):
            raise AuthenticationFailed("The admin API needs the admin token ([admin] token).")
        return await handler(request)

    return middleware


async def _record(request: web.BaseRequest, response: web.StreamResponse) -> None:
    if not isinstance(request, web.Request) or not request.path.startswith("/v1"):
        return
    started = request.get(STARTED)
    request.app[JOURNAL].append(
        {
            "time": time.time(),
            "method": request.method,
            "path": request.path_qs,
            "project": request.get(PROJECT),
            "status": response.status,
            "bytes_in": request.content_length or 0,
            "bytes_out": response.content_length or 0,
            "duration_ms": round((time.monotonic() - started) * 1000, 3) if started else None,
            "request_id": request.get(REQUEST_ID),
        }
    )


@routes.route(
    "POST",
    "/admin/reset",
    id="adminReset",
    summary="Everything, or one project, gone",
    body=ResetBody,
    secured=False,
)
async def reset(request: web.Request, body: ResetBody) -> web.Response:
    removed = await request.app[MAINTENANCE].reset(body.project)
    if body.project is None:
        request.app[JOURNAL].clear()
    return json_response({"reset": True, "project": body.project, "files_removed": removed})


@routes.route(
    "GET",
    "/admin/projects",
    id="adminProjects",
    summary="Each project's files and bytes",
    secured=False,
)
async def projects(request: web.Request) -> web.Response:
    rows = await request.app[MAINTENANCE].project_usage()
    return json_response({"data": [dataclasses.asdict(row) for row in rows]})


@routes.route(
    "GET",
    "/admin/requests",
    id="adminRequests",
    summary="The last requests to /v1",
    query=JournalQuery,
    secured=False,
)
async def requests(request: web.Request, query: JournalQuery) -> web.Response:
    method = query.method.upper() if query.method is not None else None
    journal = request.app[JOURNAL]
    entries = [
        e
        for e in reversed(journal)
        if (method is None or e["method"] == method)
        and (query.path is None or e["path"].startswith(query.path))
        and (query.project is None or e["project"] == query.project)
        and (query.status is None or e["status"] == query.status)
    ]
    return json_response({"data": entries[: max(0, query.limit)]})


@routes.route("GET", "/admin/faults", id="adminFaults", summary="The fault rules", secured=False)
async def list_faults(request: web.Request) -> web.Response:
    return json_response({"data": request.app[FAULTS].describe()})


@routes.route(
    "POST",
    "/admin/faults",
    id="adminAddFault",
    summary="Add a fault rule",
    body=NewFaultRule,
    secured=False,
)
async def add_fault(request: web.Request, body: NewFaultRule) -> web.Response:
    rule_id = request.app[FAULTS].add(body.rule)
    return json_response({"id": rule_id})


@routes.route(
    "DELETE",
    "/admin/faults",
    id="adminClearFaults",
    summary="Remove every fault rule",
    secured=False,
)
async def clear_faults(request: web.Request) -> web.Response:
    request.app[FAULTS].clear()
    return json_response({"cleared": True})


@routes.route(
    "DELETE",
    "/admin/faults/{rule_id}",
    id="adminRemoveFault",
    summary="Remove a fault rule",
    secured=False,
)
async def remove_fault(request: web.Request) -> web.Response:
    raw = request.match_info["rule_id"]
    if not raw.isdigit() or not request.app[FAULTS].remove(int(raw)):
        raise NotFound(f"No such fault rule: {raw}", param="rule_id")
    return json_response({"id": int(raw), "deleted": True})


@routes.route(
    "GET",
    "/admin/export",
    id="adminExport",
    summary="The live files as a tar archive",
    query=ExportQuery,
    secured=False,
)
async def export(request: web.Request, query: ExportQuery) -> web.StreamResponse:
    """A tar archive of the live files (of `?project=`, or all) and their blobs.

    Damaged files (and files whose blob is gone) are left out: listed in the manifest's
    `skipped`, and counted in the `X-Filesd-Skipped` header.
    """
    archive = await request.app[ARCHIVES].export(query.project)
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-tar",
            "Content-Disposition": 'attachment; filename="filesd-export.tar"',
            "X-Filesd-Skipped": str(len(archive.skipped)),
        }
    )
    response.content_length = archive.length
    await response.prepare(request)
    # A HEAD gets the headers alone: aiohttp would send whatever is written, even then.
    if request.method != "HEAD":
        async for chunk in archive.chunks:
            await response.write(chunk)
    await response.write_eof()
    return response


@routes.route(
    "POST", "/admin/import", id="adminImport", summary="Files from an export archive", secured=False
)
async def import_(request: web.Request) -> web.Response:
    """Files from an export archive, ids and times kept; 409 if any id exists already."""
    imported = await request.app[ARCHIVES].import_(
        _body_chunks(request), request.app[CONFIG].files.purposes
    )
    return json_response({"imported": imported})


async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    while chunk := await request.content.read(1024 * 1024):
        yield chunk


def _clock_adjustable(request: web.Request) -> None:
    if not request.app[CLOCK_ADJUSTABLE]:
        raise InvalidRequest("This server's clock is not adjustable (it was given its own).")


def _clock_state(clock: Clock) -> dict[str, Any]:
    return {"time": clock(), "frozen": clock.frozen}


@routes.route("GET", "/admin/clock", id="adminClock", summary="The server's clock", secured=False)
async def get_clock(request: web.Request) -> web.Response:
    return json_response(_clock_state(request.app[CLOCK]))


@routes.route(
    "POST",
    "/admin/clock",
    id="adminSetClock",
    summary="Freeze, advance or resume the clock",
    body=SetClock,
    secured=False,
    guard=_clock_adjustable,
)
async def set_clock(request: web.Request, body: SetClock) -> web.Response:
    clock = request.app[CLOCK]
    if body.resume:
        clock.resume()
    elif body.freeze:
        clock.freeze(body.time)
    elif body.advance is not None:  # the declared type leaves no other choice
        if not is_finite_number(body.advance) or not is_clock_time(clock() + body.advance):
            raise InvalidRequest(
                f"'advance' must keep the clock between 0 and {CLOCK_MAX} Unix seconds.",
                param="advance",
            )
        clock.advance(body.advance)
    return json_response(_clock_state(clock))
