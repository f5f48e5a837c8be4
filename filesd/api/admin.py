"""The admin API, for test suites and operators: off unless `[admin] token` is set.

Its own bearer token (compared in constant time), never under /v1:
- POST /admin/reset [{"project": P}]: everything, or one project, gone (rows, blobs, parts);
- GET /admin/projects: each project's files, bytes, and physical bytes after dedupe;
- GET /admin/requests: the last requests to /v1 (filter: method, path, project, status);
- GET|POST|DELETE /admin/faults, DELETE /admin/faults/{id}: fault injection rules;
- GET|POST /admin/clock: freeze, advance or resume the server's clock.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ..clock import Clock
from ..faultrules import FaultRuleError, parse_fault_rule
from ..values import is_finite_number, is_number
from .appkeys import ARCHIVES, CONFIG, MAINTENANCE
from .auth import PROJECT, bearer_token
from .bodies import read_json_object
from .errors import REQUEST_ID, STARTED, AuthenticationFailed, InvalidRequest, NotFound
from .faults import FAULTS
from .responses import json_response

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
    r = app.router
    r.add_post("/admin/reset", reset)
    r.add_get("/admin/projects", projects)
    r.add_get("/admin/requests", requests)
    r.add_get("/admin/faults", list_faults)
    r.add_post("/admin/faults", add_fault)
    r.add_delete("/admin/faults", clear_faults)
    r.add_delete("/admin/faults/{rule_id}", remove_fault)
    r.add_get("/admin/export", export)
    r.add_post("/admin/import", import_)
    r.add_get("/admin/clock", get_clock)
    r.add_post("/admin/clock", set_clock)


def _admin_auth(digest: bytes) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/admin/"):
            token = bearer_token(request.headers.get("Authorization")) or ""
            given = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
            if not token or not hmac.compare_digest(given, digest):
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


async def _body(request: web.Request) -> dict[str, Any]:
    return await read_json_object(request, allow_empty=True)


async def reset(request: web.Request) -> web.Response:
    project = (await _body(request)).get("project")
    if project is not None and not isinstance(project, str):
        raise InvalidRequest("'project' must be a string.", param="project")
    removed = await request.app[MAINTENANCE].reset(project)
    if project is None:
        request.app[JOURNAL].clear()
    return json_response({"reset": True, "project": project, "files_removed": removed})


async def projects(request: web.Request) -> web.Response:
    rows = await request.app[MAINTENANCE].project_usage()
    return json_response({"data": [dataclasses.asdict(row) for row in rows]})


async def requests(request: web.Request) -> web.Response:
    q = request.query
    try:
        limit = int(q.get("limit", "100"))
        status = int(q["status"]) if "status" in q else None
    except ValueError:
        raise InvalidRequest("'limit' and 'status' must be integers.") from None
    journal = request.app[JOURNAL]
    entries = [
        e
        for e in reversed(journal)
        if ("method" not in q or e["method"] == q["method"].upper())
        and ("path" not in q or e["path"].startswith(q["path"]))
        and ("project" not in q or e["project"] == q["project"])
        and (status is None or e["status"] == status)
    ]
    return json_response({"data": entries[: max(0, limit)]})


async def list_faults(request: web.Request) -> web.Response:
    return json_response({"data": request.app[FAULTS].describe()})


async def add_fault(request: web.Request) -> web.Response:
    try:
        rule = parse_fault_rule(await _body(request))
    except FaultRuleError as e:
        raise InvalidRequest(str(e)) from None
    rule_id = request.app[FAULTS].add(rule)
    return json_response({"id": rule_id})


async def clear_faults(request: web.Request) -> web.Response:
    request.app[FAULTS].clear()
    return json_response({"cleared": True})


async def remove_fault(request: web.Request) -> web.Response:
    raw = request.match_info["rule_id"]
    if not raw.isdigit() or not request.app[FAULTS].remove(int(raw)):
        raise NotFound(f"No such fault rule: {raw}", param="rule_id")
    return json_response({"id": int(raw), "deleted": True})


async def export(request: web.Request) -> web.StreamResponse:
    """A tar archive of the live files (of `?project=`, or all) and their blobs.

    Damaged files (and files whose blob is gone) are left out: listed in the manifest's
    `skipped`, and counted in the `X-Filesd-Skipped` header.
    """
    archive = await request.app[ARCHIVES].export(request.query.get("project"))
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-tar",
            "Content-Disposition": 'attachment; filename="filesd-export.tar"',
            "X-Filesd-Skipped": str(len(archive.skipped)),
        }
    )
    response.content_length = archive.length
    await response.prepare(request)
    async for chunk in archive.chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


async def import_(request: web.Request) -> web.Response:
    """Files from an export archive, ids and times kept; 409 if any id exists already."""
    imported = await request.app[ARCHIVES].import_(
        _body_chunks(request), request.app[CONFIG].files.purposes
    )
    return json_response({"imported": imported})


async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    while chunk := await request.content.read(1024 * 1024):
        yield chunk


# The last second of year 9999: a clock beyond it (or NaN) breaks dates and SQLite integers.
CLOCK_MAX = 253402300799


def _valid_time(value: object) -> bool:
    return is_finite_number(value) and 0 <= value <= CLOCK_MAX


def _clock_state(clock: Clock) -> dict[str, Any]:
    return {"time": clock(), "frozen": clock.frozen}


async def get_clock(request: web.Request) -> web.Response:
    return json_response(_clock_state(request.app[CLOCK]))


async def set_clock(request: web.Request) -> web.Response:
    """{"freeze": true, "time"?: T} | {"advance": S} | {"resume": true}."""
    body, clock = await _body(request), request.app[CLOCK]
    if not request.app[CLOCK_ADJUSTABLE]:
        raise InvalidRequest("This server's clock is not adjustable (it was given its own).")
    if body.get("resume") is True:
        clock.resume()
    elif body.get("freeze") is True:
        at = body.get("time")
        if at is not None and not _valid_time(at):
            raise InvalidRequest(
                f"'time' must be Unix seconds between 0 and {CLOCK_MAX}.", param="time"
            )
        clock.freeze(at)
    elif is_number(advance := body.get("advance")):
        if not is_finite_number(advance) or not _valid_time(clock() + advance):
            raise InvalidRequest(
                f"'advance' must keep the clock between 0 and {CLOCK_MAX} Unix seconds.",
                param="advance",
            )
        clock.advance(advance)
    else:
        raise InvalidRequest('Give {"freeze": true}, {"advance": seconds} or {"resume": true}.')
    return json_response(_clock_state(clock))
