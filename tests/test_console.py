"""The web console's server side, without a browser: what `GET /` answers whom, the headers
and content types of the console's files, `[ui] enabled = false`, and that the pages hold no
inline script or style (the Content-Security-Policy would block it). The browser itself is
driven in tests/test_console_browser.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from filesd.api.app import create_app
from filesd.api.console import UI_FILES
from filesd.config import ConfigError, parse_config

from .conftest import ALPHA, ALPHA_KEY, Client, ClientFactory, make_config

ROOT = Path(__file__).resolve().parent.parent
UI = ROOT / "filesd" / "api" / "ui"
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
SECURITY = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
NOT_FOUND_ROOT = {
    "error": {
        "message": "Invalid URL (GET /)",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
}


@pytest.fixture
async def off(aiohttp_client: ClientFactory, tmp_path: Path) -> Client:
    """An app with the console turned off."""
    client: Client = await aiohttp_client(
        create_app(make_config(tmp_path / "off", ui={"enabled": False}))
    )
    return client


def assert_secure(headers: Any) -> None:
    for name, value in SECURITY.items():
        assert headers[name] == value, name
    directives = (d.strip().partition(" ") for d in headers["Content-Security-Policy"].split(";"))
    policy = {name: value for name, _, value in directives}
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in headers["Content-Security-Policy"]


async def test_a_browser_gets_a_page_about_the_server(client: Client) -> None:
    resp = await client.get("/", headers=BROWSER)
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert_secure(resp.headers)
    assert resp.headers["Vary"] == "Accept"
    page = await resp.text()
    for link in ("/ui/", "/openapi.json", "/healthz", "/metrics"):
        assert f'href="{link}"' in page
    # Its own (empty) icon: no request for /favicon.ico, whose 404 the browser logs as an error.
    assert '<link rel="icon" href="data:,">' in page
    assert "x-request-id" in resp.headers


@pytest.mark.parametrize(
    "accept",
    [None, "*/*", "application/json", "application/json, text/plain, */*", "text/html;q=0"],
)
async def test_api_clients_keep_the_json_404_for_the_root(
    client: Client, off: Client, accept: str | None
) -> None:
    headers = {**ALPHA, **({"Accept": accept} if accept else {})}
    on_resp, off_resp = await client.get("/", headers=headers), await off.get("/", headers=headers)
    for resp in (on_resp, off_resp):
        assert resp.status == 404
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await resp.json() == NOT_FOUND_ROOT
        assert "Content-Security-Policy" not in resp.headers
    # The same URL answers a browser with a page: a cache must key on Accept.
    assert on_resp.headers["Vary"] == "Accept"
    assert "Vary" not in off_resp.headers


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_other_methods_on_console_paths_are_the_unknown_route_404(
    client: Client, method: str
) -> None:
    for path in ("/", "/ui/", "/ui/app.js"):
        resp = await client.request(method, path, headers=BROWSER)
        assert resp.status == 404
        body = await resp.json()
        assert body["error"]["message"] == f"Invalid URL ({method} {path})"


@pytest.mark.parametrize(
    ("path", "content_type", "file"),
    [
        ("/ui/", "text/html", "index.html"),
        ("/ui/index.html", "text/html", "index.html"),
        ("/ui/app.js", "text/javascript", "app.js"),
        ("/ui/app.css", "text/css", "app.css"),
    ],
)
async def test_console_files_with_their_types_and_the_security_headers(
    client: Client, path: str, content_type: str, file: str
) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.content_type == content_type
    assert resp.charset == "utf-8"
    assert_secure(resp.headers)
    assert await resp.read() == (UI / file).read_bytes()
    head = await client.head(path)
    assert head.status == 200 and head.content_type == content_type
    again = await client.get(path, headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304
    assert_secure(again.headers)


async def test_ui_without_slash_redirects_to_the_console(client: Client) -> None:
    resp = await client.get("/ui", allow_redirects=False)
    assert resp.status == 308
    assert resp.headers["Location"] == "/ui/"
    assert_secure(resp.headers)


@pytest.mark.parametrize(
    "path", ["/ui/nope.js", "/ui/..%2Fconsole.py", "/ui/%2E%2E/config.py", "/ui/app.js/x"]
)
async def test_only_the_consoles_own_files_are_served(client: Client, path: str) -> None:
    resp = await client.get(path, headers=BROWSER)
    assert resp.status == 404
    assert (await resp.json())["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["/ui/nope", "/ui/nope.js", "/ui/index.htm"])
async def test_a_json_404_under_ui_has_the_security_headers(client: Client, path: str) -> None:
    """The unknown route's envelope, unchanged, with nosniff and the policy of the console."""
    resp = await client.get(path, headers=BROWSER)
    assert resp.status == 404
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert_secure(resp.headers)
    body = await resp.json()
    assert body == {
        "error": {
            "message": f"Invalid URL (GET {path})",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


@pytest.mark.parametrize("path", ["/", "/ui", "/ui/", "/ui/app.js", "/ui/app.css"])
async def test_ui_disabled_is_the_json_404(off: Client, path: str) -> None:
    resp = await off.get(path, headers=BROWSER, allow_redirects=False)
    assert resp.status == 404
    assert await resp.json() == {
        "error": {
            "message": f"Invalid URL (GET {path})",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


def test_ui_enabled_is_checked_and_named(tmp_path: Path) -> None:
    assert parse_config({}, base_dir=tmp_path).ui.enabled is True
    assert parse_config({"ui": {"enabled": False}}, base_dir=tmp_path).ui.enabled is False
    with pytest.raises(ConfigError, match=r"^ui\.enabled: expected a boolean, got a string"):
        parse_config({"ui": {"enabled": "no"}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^ui\.theme: unknown key"):
        parse_config({"ui": {"theme": "dark"}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^ui: expected a table"):
        parse_config({"ui": True}, base_dir=tmp_path)


class _Page(HTMLParser):
    """What the CSP cares about in a page: scripts, styles, event handlers, outside URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.scripts: list[str] = []
        self.in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script":
            self.in_script = True
            if not attributes.get("src"):
                self.problems.append("a <script> without src")
            else:
                self.scripts.append(attributes["src"] or "")
        if tag == "style":
            self.problems.append("a <style> element")
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"an inline handler {name} on <{tag}>")
            if name == "style":
                self.problems.append(f"a style attribute on <{tag}>")
            if name in ("src", "href", "action") and re.match(
                r"(?i)\s*(javascript:|//|\w+://)", value or ""
            ):
                self.problems.append(f"{name}={value!r} on <{tag}>: not this server's")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self.in_script = False

    def handle_data(self, data: str) -> None:
        if self.in_script and data.strip():
            self.problems.append("inline script text")


@pytest.mark.parametrize("path", ["/", "/ui/"])
async def test_pages_hold_no_inline_script_or_style(client: Client, path: str) -> None:
    resp = await client.get(path, headers=BROWSER)
    page = _Page()
    page.feed(await resp.text())
    assert page.problems == []
    if path == "/ui/":
        assert page.scripts == ["/ui/app.js"]


def test_the_script_talks_only_to_the_api_and_the_admin_api() -> None:
    """Every absolute path in app.js is under /v1/ or /admin/, or the console's own
    /ui/session (no other endpoint, no origin)."""
    script = (UI / "app.js").read_text()
    paths = re.findall(r"""["'`](/[a-z][^"'`]*)""", script)
    assert paths, "no paths found: the pattern no longer matches the script"
    assert [p for p in paths if not p.startswith(("/v1/", "/admin/")) and p != "/ui/session"] == []
    assert re.search(r"https?://(?!www\.w3\.org/2000/svg)", script) is None
    # Text from the server is set with textContent: nothing in the script parses HTML.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "srcdoc", "document.write"):
        assert sink not in script, sink
    assert "document.cookie" not in script
    assert "localStorage" not in script


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_script_parses() -> None:
    result = subprocess.run(
        ["node", "--check", str(UI / "app.js")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def test_every_console_file_exists_and_nothing_else_is_there() -> None:
    assert sorted(p.name for p in UI.iterdir()) == sorted(UI_FILES)


@pytest.mark.slow
def test_a_built_wheel_ships_the_console(tmp_path: Path) -> None:
    """A non-editable install gets the files: build a wheel from a copy of the sources (the
    build writes next to them, so never in the checkout) and look inside."""
    source = tmp_path / "src"
    shutil.copytree(
        ROOT / "filesd", source / "filesd", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("filesd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"filesd/api/ui/{name}" for name in UI_FILES} <= names
    assert "filesd/api/console.py" in names


ADMIN_TOKEN = "admin-token-0123456789"


@pytest.mark.parametrize(
    ("keys", "token", "opens"),
    [
        (True, ALPHA_KEY, {"api": True, "admin": False, "open_mode": False}),
        (True, ADMIN_TOKEN, {"api": False, "admin": True, "open_mode": False}),
        (True, "sk-nobody-0000000000", {"api": False, "admin": False, "open_mode": False}),
        (True, None, {"api": False, "admin": False, "open_mode": False}),
        (False, ADMIN_TOKEN, {"api": True, "admin": True, "open_mode": True}),
        (False, "any-token", {"api": True, "admin": False, "open_mode": True}),
    ],
)
async def test_the_session_says_what_a_token_opens_with_a_200(
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    keys: bool,
    token: str | None,
    opens: dict[str, bool],
) -> None:
    """The console's sign-in asks /ui/session: never a 401 (which the browser logs as an
    error) for a key that opens only /v1 or only /admin."""
    config = make_config(tmp_path / "data", admin={"token": ADMIN_TOKEN})
    if not keys:
        config = parse_config(
            {"storage": {"data_dir": str(tmp_path / "data")}, "admin": {"token": ADMIN_TOKEN}},
            base_dir=tmp_path,
        )
    client: Client = await aiohttp_client(create_app(config))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = await client.get("/ui/session", headers=headers)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    assert await resp.json() == opens
    # Only a read: another method is the unknown route's 404.
    assert (await client.post("/ui/session", headers=headers)).status == 404
