"""The web console: static files under /ui/, and the page `GET /` shows a browser.

The console is three files shipped in the package (filesd/api/ui/), plain JavaScript with no build
step, that talk only to the public /v1 API and the admin API with the key the user pastes (kept
in the tab's sessionStorage). The server side only serves them, under a strict
Content-Security-Policy: no inline script or style, nothing from another origin, no framing.

`GET /` is negotiated on `Accept`: a browser (text/html) gets a small page about the server;
every other client keeps the JSON 404 envelope of an unknown route, as before the console.
With `[ui] enabled = false` none of these routes exist.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from aiohttp import web

from .appkeys import AUTHENTICATOR, CONFIG
from .auth import is_token
from .errors import AuthenticationFailed, invalid_url
from .expectations import EXPECT

# The console's own files: name -> Content-Type. Nothing else under /ui/ is served, so no
# request path ever reaches the file system.
UI_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
UI_DIR = Path(str(resources.files("filesd.api") / "ui"))

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # The files change with the package: revalidate (the ETag makes that a 304).
    "Cache-Control": "no-cache",
}
# `GET /` answers by Accept: a cache must not give a browser's page to an API client.
VARY_ACCEPT = {"Vary": "Accept"}

LANDING_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>filesd</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/ui/app.css">
</head>
<body class="landing">
<main>
<h1>filesd</h1>
<p>A self-hosted server for the OpenAI-compatible Files API. Point an OpenAI SDK at
<code>/v1</code> on this address.</p>
<ul>
<li><a href="/ui/">The web console</a>: see and manage a project's files in the browser</li>
<li><a href="/openapi.json">/openapi.json</a>: the API's OpenAPI document</li>
<li><a href="/healthz">/healthz</a>: liveness</li>
<li><a href="/metrics">/metrics</a>: Prometheus metrics</li>
</ul>
</main>
</body>
</html>
"""


def setup_console(app: web.Application) -> None:
    """Mount `GET /` and /ui/. Other methods on these paths stay the JSON 404 of any unknown
    route (so they are routed for every method, and the handlers refuse what is not a read)."""
    app.router.add_route("*", "/", landing, expect_handler=EXPECT)
    app.router.add_route("*", "/ui", to_console, expect_handler=EXPECT)
    app.router.add_route("*", "/ui/", console_file, expect_handler=EXPECT)
    app.router.add_route("*", "/ui/session", session, expect_handler=EXPECT)
    app.router.add_route("*", "/ui/{name}", console_file, expect_handler=EXPECT)


def wants_html(request: web.Request) -> bool:
    """Whether the client asks for a web page: `text/html` in Accept (browsers send it on
    navigation; API clients send application/json, */* or nothing)."""
    accept = request.headers.get("Accept", "")
    return any(
        part.split(";", 1)[0].strip().lower() == "text/html" and not _q_zero(part)
        for part in accept.split(",")
    )


def _q_zero(media_range: str) -> bool:
    for param in media_range.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value) == 0
            except ValueError:
                return False
    return False


def _only_reads(request: web.Request) -> None:
    if request.method not in ("GET", "HEAD"):
        raise web.HTTPNotFound()


async def landing(request: web.Request) -> web.Response:
    """A browser's page about this server; for anyone else the unknown route's JSON 404."""
    _only_reads(request)
    if not wants_html(request):
        raise invalid_url(request, VARY_ACCEPT)
    return web.Response(
        text=LANDING_PAGE,
        content_type="text/html",
        charset="utf-8",
        headers={**SECURITY_HEADERS, **VARY_ACCEPT},
    )


async def to_console(request: web.Request) -> web.Response:
    _only_reads(request)
    raise web.HTTPPermanentRedirect("/ui/", headers=SECURITY_HEADERS)


async def console_file(request: web.Request) -> web.FileResponse:
    """One of the console's files (`/ui/` is index.html), with the security headers."""
    _only_reads(request)
    name = request.match_info.get("name", "index.html")
    content_type = UI_FILES.get(name)
    if content_type is None:
        # A JSON body under the console's path: nosniff and the policy as for its files.
        raise invalid_url(request, SECURITY_HEADERS)
    return web.FileResponse(
        UI_DIR / name, headers={**SECURITY_HEADERS, "Content-Type": content_type}
    )


async def session(request: web.Request) -> web.Response:
    """What the bearer token opens: `{"api": bool, "admin": bool, "open_mode": bool}`, always a
    200. The console asks this at sign-in instead of probing /v1 and /admin, whose 401 for a
    token that opens only one of them the browser logs as an error. It tells no more than
    those probes do."""
    _only_reads(request)
    authorization = request.headers.get("Authorization")
    authenticator = request.app[AUTHENTICATOR]
    try:
        authenticator.project_for(authorization)
        api = True
    except AuthenticationFailed:
        api = False
    admin_token = request.app[CONFIG].admin.token
    admin = bool(admin_token) and is_token(
        authorization, hashlib.sha256(admin_token.encode()).digest()
    )
    return web.json_response(
        {"api": api, "admin": admin, "open_mode": authenticator.open_mode},
        headers={**SECURITY_HEADERS, "Cache-Control": "no-store"},
    )
