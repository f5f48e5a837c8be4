"""The console's layout as a person sees it, in the real browser of test_console_browser.py:
a walk through every view at 1280 px and 390 px that names every problem at once (columns cut
off, buttons stacked, a page wider than the window or shifting between views, a message left
from the view before, errors in the browser's console), and the admin token's landing view."""

from __future__ import annotations

import json
import signal
import urllib.error
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from filesd.testing.process import ServerProcess

from .conftest import ALPHA_KEY, wait_until_sync
from .test_console_browser import (
    ADMIN_TOKEN,
    SMALL,
    Console,
    _api,
    _upload,
    browser,
    console_server,
    downloads,
    screenshots,
)

pytestmark = pytest.mark.slow
# The browser and its server, as in test_console_browser.py.
__all__ = ["browser", "console_server", "downloads", "screenshots"]


LONG_NAME = "quarterly-evaluation-results-with-a-rather-long-descriptive-name-v2.jsonl"

# Each visible table's header cells whose right edge lies past their scroll box: cut off.
COLUMNS_CUT = """return Array.from(document.querySelectorAll('.view:not([hidden]) .scroll'))
  .flatMap(box => Array.from(box.querySelectorAll('th')).filter(
    th => th.getBoundingClientRect().right > box.getBoundingClientRect().right + 1)
  .map(th => box.querySelector('table').id + ':' + th.textContent.trim()));"""


def _failed_batch(url: str) -> str:
    file = _upload(url, ALPHA_KEY, b"not json\n", "broken.jsonl", "batch")
    body = {
        "input_file_id": file["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    batch = _api(
        url,
        "POST",
        "/v1/batches",
        json.dumps(body).encode(),
        **{"Content-Type": "application/json"},
    )
    wait_until_sync(
        lambda: _api(url, "GET", f"/v1/batches/{batch['id']}")["status"] == "failed",
        what="the batch fails validation",
    )
    return str(batch["id"])


class Layout:
    """What a person sees wrong in a view, collected rather than asserted one by one: the test
    names every problem of a walk at once."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.problems: list[str] = []

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    def view(self, name: str, columns: bool = True) -> None:
        """The page no wider than the window and, with `columns` (a wide window; a narrow one
        scrolls a table in its own box), every column of the view's tables in sight."""
        if columns:
            cut = self.console.js(COLUMNS_CUT)
            self.check(cut == [], f"{name}: columns cut off: {cut}")
        wide = self.console.js("return [document.scrollingElement.scrollWidth, window.innerWidth]")
        self.check(wide[0] <= wide[1], f"{name}: the page scrolls sideways ({wide})")

    def live_label(self, name: str) -> None:
        """The journal's "Live" on the line of its checkbox, not under it."""
        live = self.console.js(
            "const box = document.getElementById('j-live').getBoundingClientRect();"
            " const label = document.getElementById('j-live').parentElement"
            ".getBoundingClientRect(); return [box.height, label.height];"
        )
        self.check(live[1] < 2 * max(live[0], 16), f"{name}: 'Live' sits under its box: {live}")


def test_the_layout_through_every_view(
    browser: Any, console_server: ServerProcess, screenshots: Path
) -> None:
    """A walk through every view at 1280 px and at 390 px as alpha and as the admin: a row's
    buttons side by side, long names on one line, every column in sight, nothing that shifts,
    nothing left from the view before, a failed batch's reasons, and a browser console with
    no error (no 401 of a probe, no favicon 404)."""
    url = console_server.url
    _upload(url, ALPHA_KEY, SMALL, LONG_NAME, "user_data")
    batch_id = _failed_batch(url)
    rule = {"method": "GET", "route": "/v1/nothing-here", "status": 503}
    _api(
        url,
        "POST",
        "/admin/faults",
        json.dumps(rule).encode(),
        ADMIN_TOKEN,
        **{"Content-Type": "application/json"},
    )
    # A request with a long query: the journal's path column must not push "ms" out of sight.
    with pytest.raises(urllib.error.HTTPError):  # a 400 (no such file): journaled all the same
        _api(url, "GET", "/v1/files?limit=3&purpose=user_data&order=desc&after=" + "f" * 60)
    console = Console(browser, url, screenshots)
    layout = Layout(console)
    browser.get_log("browser")  # only this walk's messages count
    console.open()
    console.sign_in(ALPHA_KEY)
    console.until(lambda: LONG_NAME in console.files(), "the long name is listed")

    layout.check(
        not console.js("return document.getElementById('uploads-title').offsetHeight"),
        "files: an empty 'Uploads in progress' block takes room",
    )
    tops = console.js(
        "return Array.from(document.querySelectorAll('#files tbody tr:first-child .actions"
        " button')).map(b => Math.round(b.getBoundingClientRect().top))"
    )
    layout.check(len(tops) == 2 and tops[0] == tops[1], f"files: a row's actions stack: {tops}")
    name = console.js(
        "const b = Array.from(document.querySelectorAll('#files button.link'))"
        ".find(b => b.textContent === arguments[0]);"
        " return {h: b.getBoundingClientRect().height,"
        " line: parseFloat(getComputedStyle(b).lineHeight), title: b.title};",
        LONG_NAME,
    )
    layout.check(name["h"] < 1.5 * name["line"], f"files: a long name breaks: {name}")
    layout.check(LONG_NAME in name["title"], "files: a cut name has no title with all of it")
    layout.view("files")
    left_files = console.js(
        "return document.getElementById('files-title').getBoundingClientRect().left"
    )

    # A status message is about its view: it is gone in the next one.
    console.row_button("files", LONG_NAME, f"Download {LONG_NAME}").click()
    console.until(lambda: "Downloaded" in console.by_id("status").text, "the download's message")
    browser.find_element("css selector", '#nav button[data-view="batches"]').click()
    console.until(lambda: console.visible("view-batches"), "the batches view")
    layout.check(console.by_id("status").text == "", "batches: the files view's message stays")
    reasons = console.until(
        lambda: console.js(
            "const tr = Array.from(document.querySelectorAll('#batches tbody tr'))"
            ".find(tr => tr.cells[0].textContent === arguments[0]);"
            " return tr && tr.cells[1].textContent;",
            batch_id,
        ),
        "the failed batch is listed",
    )
    layout.check("line 1" in reasons, f"batches: a failed batch shows no reason: {reasons!r}")
    layout.view("batches")
    console.shot("batches-failed")

    console.sign_in(ADMIN_TOKEN)
    console.until(lambda: console.visible("view-usage"), "the usage view")
    layout.view("usage")
    browser.find_element("css selector", '#nav button[data-view="journal"]').click()
    console.until(
        lambda: console.js("return document.querySelectorAll('#journal tbody tr').length") > 3,
        "the journal's rows",
    )
    layout.view("journal")
    left_journal = console.js(
        "return document.getElementById('journal-title').getBoundingClientRect().left"
    )
    layout.check(
        left_journal == left_files, f"the page shifts between views: {left_files}, {left_journal}"
    )
    layout.live_label("journal")
    console.shot("journal-layout")
    browser.find_element("css selector", '#nav button[data-view="faults"]').click()
    shown = console.until(
        lambda: console.js(
            "const c = document.querySelector('#faults tbody tr td:nth-child(2)');"
            " return c && c.textContent;"
        ),
        "the fault rule",
    )
    layout.check(
        shown == "method=GET route=/v1/nothing-here status=503",
        f"faults: a rule shows what was not set: {shown!r}",
    )
    layout.view("faults")

    browser.set_window_size(390, 800)
    for view in ("usage", "journal", "faults", "reset"):
        browser.find_element("css selector", f'#nav button[data-view="{view}"]').click()
        section = f"view-{view}"
        console.until(partial(console.visible, section), f"the {view} view")
        layout.view(f"{view} at 390 px", columns=False)
        if view == "journal":
            layout.live_label("journal at 390 px")
    console.sign_in(ALPHA_KEY)
    console.until(lambda: LONG_NAME in console.files(), "the files at 390 px")
    layout.view("files at 390 px", columns=False)
    console.shot("files-390px")
    browser.find_element("css selector", '#nav button[data-view="batches"]').click()
    console.until(lambda: console.visible("view-batches"), "the batches view")
    layout.view("batches at 390 px", columns=False)

    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    layout.check(errors == [], f"the browser's console logs errors: {errors}")
    assert layout.problems == [], "\n".join(layout.problems)


def test_the_admin_token_of_an_open_server_lands_on_usage(
    browser: Any, tmp_path: Path, screenshots: Path
) -> None:
    """On a server without keys the admin token also names a project: its sign-in shows the
    usage of every project, where a project named from a token says what it is."""
    config = tmp_path / "filesd.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n\n[admin]\ntoken = "{ADMIN_TOKEN}"\n'
    )
    server = ServerProcess(["--config", str(config)], cwd=tmp_path)
    try:
        _upload(server.url, "any-token-of-a-user", SMALL, "open.txt", "user_data")
        console = Console(browser, server.url, screenshots)
        console.open()
        console.sign_in(ADMIN_TOKEN)
        console.until(
            lambda: console.visible("view-usage") or console.visible("view-files"), "a view"
        )
        landed_on_usage = console.visible("view-usage")
        if not landed_on_usage:
            browser.find_element("css selector", '#nav button[data-view="usage"]').click()
        cell = console.until(
            lambda: console.js(
                "const tr = document.querySelector('#usage tbody tr');"
                " return tr && tr.cells[0].textContent;"
            ),
            "the usage rows",
        )
        says_what = cell.startswith("open-") and cell.endswith("open-mode token project")
        assert (landed_on_usage, says_what) == (True, True), cell
        console.shot("open-usage")
    finally:
        assert server.stop(signal.SIGTERM) == 0
