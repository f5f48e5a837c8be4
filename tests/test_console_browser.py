"""The web console in a real browser: Debian's chromium, headless, driven by Selenium through
chromedriver, against a real `filesd serve` on a free port (keys for alpha and beta, the admin
token, the echo model for batches).

Every view is photographed into $FILESD_SCREENSHOTS (or the test's tmp_path): outside the
checkout, for the test log (README's pictures are copies of these). Waits are conditions
polled by WebDriverWait, never sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from filesd.testing.process import ServerProcess

from .conftest import ALPHA_KEY, BETA_KEY, wait_until_sync, write_config
from .pg_service import unavailable
from .s3_service import S3Bucket

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "admin-token-0123456789"
SMALL = bytes(range(256)) * 5 + b"the end\n"  # 1288 bytes: one POST /v1/files
LARGE_SIZE = 9 * 1024 * 1024  # above app.js's PART_THRESHOLD (8 MiB): the Uploads API, 3 parts
WAIT = 60.0


def _tools() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        unavailable(
            "chromium and chromium-driver are not installed "
            "(apt-get install chromium chromium-driver)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        unavailable("selenium is not installed (the dev extra)")
    assert chromium is not None and driver is not None
    return chromium, driver


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("console")
    config = write_config(
        root / "filesd.toml",
        root / "data",
        f'[admin]\ntoken = "{ADMIN_TOKEN}"\n\n[batches]\nupstream = "echo"\n',
    )
    server = ServerProcess(["--config", str(config)], cwd=root)
    yield server
    assert server.stop(signal.SIGTERM) == 0


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("FILESD_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    path = tmp_path / "downloads"
    path.mkdir()
    return path


@pytest.fixture
def browser(downloads: Path) -> Iterator[Any]:
    chromium, driver_path = _tools()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    # The console's messages (a CSP violation among them) for driver.get_log("browser").
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    try:
        yield driver
    finally:
        driver.quit()


class Console:
    """The console as a user sees it: clicks, typing, and waits for what the page shows."""

    def __init__(self, driver: Any, url: str, screenshots: Path) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.url = url
        self.screenshots = screenshots
        self._wait = WebDriverWait(driver, WAIT, poll_frequency=0.05)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def until(self, condition: Callable[[], Any], what: str) -> Any:
        return self._wait.until(lambda _: condition(), message=what)

    def by_id(self, element_id: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def visible(self, element_id: str) -> bool:
        return bool(
            self.js(
                "const e = document.getElementById(arguments[0]);"
                " return !!e && !e.closest('[hidden]');",
                element_id,
            )
        )

    def click(self, element_id: str) -> None:
        self.until(lambda: self.visible(element_id), f"#{element_id} is shown")
        self.by_id(element_id).click()

    def type(self, element_id: str, text: str) -> None:
        field = self.by_id(element_id)
        field.clear()
        field.send_keys(text)

    def shot(self, name: str) -> None:
        """A screenshot of the view, after checking that every control shown has a name a
        screen reader can read (a <label>, aria-label or text) and can be reached by Tab."""
        assert self.unlabelled() == [], name
        self.driver.save_screenshot(str(self.screenshots / f"{name}.png"))

    def unlabelled(self) -> list[str]:
        return list(
            self.js(
                """return Array.from(document.querySelectorAll('button, input, select'))
                  .filter(e => !e.closest('[hidden]') && !e.closest('dialog:not([open])'))
                  .filter(e => !(e.getAttribute('aria-label')
                    || (e.labels && e.labels.length)
                    || (e.tagName === 'BUTTON' && e.textContent.trim()))
                    || e.tabIndex < 0)
                  .map(e => e.outerHTML.slice(0, 80));"""
            )
        )

    def open(self) -> None:
        self.driver.get(self.url + "/ui/")
        self.until(
            lambda: self.visible("view-signin") or self.visible("view-files"), "the console loads"
        )

    def sign_in(self, key: str) -> None:
        if self.visible("signout"):
            self.click("signout")
        self.until(lambda: self.visible("view-signin"), "the sign-in form")
        self.type("key", key)
        self.click("signin")

    def error(self) -> str:
        return str(
            self.js(
                "const e = document.getElementById('error'); return e.hidden ? '' : e.textContent;"
            )
        )

    def files(self) -> dict[str, dict[str, str]]:
        """The rows of the files table: filename -> its data attributes and size text."""
        rows = self.js(
            """return Array.from(document.querySelectorAll('#files tbody tr')).map(tr => ({
                 filename: tr.dataset.filename, id: tr.dataset.id, bytes: tr.dataset.bytes,
                 size: tr.cells[1].textContent, purpose: tr.cells[2].textContent,
                 status: tr.cells[5].textContent}));"""
        )
        return {row["filename"]: row for row in rows}

    def row_button(self, table: str, filename: str, label: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(
            By.CSS_SELECTOR, f'#{table} tr[data-filename="{filename}"] button[aria-label="{label}"]'
        )


def _api(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    key: str = ALPHA_KEY,
    **headers: str,
) -> Any:
    request = urllib.request.Request(
        url + path, data=body, method=method, headers={"Authorization": f"Bearer {key}", **headers}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.load(resp)


def _upload(url: str, key: str, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
    boundary = "consoletest"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
        f"--{boundary}\r\nContent-Disposition: form-data; "
        f'name="file"; filename="{filename}"\r\n\r\n'
    ).encode()
    form = head + content + f"\r\n--{boundary}--\r\n".encode()
    content_type = f"multipart/form-data; boundary={boundary}"
    return dict(_api(url, "POST", "/v1/files", form, key, **{"Content-Type": content_type}))


def _create_batch(url: str) -> str:
    line = {
        "custom_id": "one",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
    }
    file = _upload(url, ALPHA_KEY, json.dumps(line).encode() + b"\n", "requests.jsonl", "batch")
    batch = _api(
        url,
        "POST",
        "/v1/batches",
        json.dumps(
            {
                "input_file_id": file["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            }
        ).encode(),
        **{"Content-Type": "application/json"},
    )
    return str(batch["id"])


def test_a_bad_key_shows_the_envelopes_message(
    browser: Any, console_server: ServerProcess, screenshots: Path
) -> None:
    console = Console(browser, console_server.url, screenshots)
    console.open()
    console.shot("sign-in")
    console.sign_in("sk-wrong-key-000000")
    message = console.until(console.error, "an error is shown")
    assert message.startswith("Incorrect API key provided. ") and "sk-wr" not in message
    assert console.visible("view-signin") and not console.visible("nav")
    assert browser.execute_script("return sessionStorage.length") == 0
    console.shot("bad-key")
    # What could never be a header is refused before anything is sent.
    console.sign_in("cl\u00e9 with spaces")
    console.until(lambda: "printable ASCII" in console.error(), "the key's refusal")


def test_files_batches_and_admin_views(
    browser: Any, console_server: ServerProcess, screenshots: Path, downloads: Path, tmp_path: Path
) -> None:
    console = Console(browser, console_server.url, screenshots)
    batch_id = _create_batch(console_server.url)
    console.open()
    console.sign_in(ALPHA_KEY)
    console.until(lambda: console.visible("view-files"), "the files view")
    # The key is in this tab's sessionStorage only: not in the URL, not in a cookie.
    assert ALPHA_KEY not in browser.current_url
    assert browser.get_cookies() == []
    assert browser.execute_script("return sessionStorage.getItem('filesd.key')") == ALPHA_KEY
    # The page shows which key is in use, masked as the server masks keys.
    assert console.by_id("who-text").text == "Signed in with an API key, sk-te***89"

    # Upload two files at once through the picker: one small, one through the Uploads API.
    small, large = tmp_path / "notes.txt", tmp_path / "weights.bin"
    small.write_bytes(SMALL)
    large.write_bytes(os.urandom(LARGE_SIZE))
    console.by_id("upload-input").send_keys(f"{small}\n{large}")
    console.until(
        lambda: {"notes.txt", "weights.bin"} <= set(console.files()), "both uploads are listed"
    )
    console.until(
        lambda: not console.js("return document.querySelector('#uploads li')"), "the uploads finish"
    )
    files = console.files()
    assert files["notes.txt"]["bytes"] == str(len(SMALL))
    assert files["notes.txt"]["size"] == "1.3 KiB"
    assert files["weights.bin"]["bytes"] == str(LARGE_SIZE)
    assert files["weights.bin"]["size"] == "9.0 MiB"
    assert files["weights.bin"]["status"] == "processed"
    assert files["weights.bin"]["purpose"] == "user_data"
    assert console.error() == ""
    console.shot("files")

    # The purpose filter asks the server for one purpose only.
    from selenium.webdriver.support.ui import Select

    Select(console.by_id("filter-purpose")).select_by_value("batch")
    console.until(lambda: set(console.files()) == {"requests.jsonl"}, "the purpose filter")
    Select(console.by_id("filter-purpose")).select_by_value("")
    console.until(lambda: "weights.bin" in console.files(), "the filter is off again")

    # Download the small one: the same bytes land in the download directory.
    console.row_button("files", "notes.txt", "Download notes.txt").click()
    target = downloads / "notes.txt"
    console.until(lambda: target.exists() and target.read_bytes() == SMALL, "the download")

    # The detail view: every field, the id, and snippets that name it.
    browser.find_element("css selector", '#files tr[data-filename="notes.txt"] button.link').click()
    console.until(lambda: console.visible("view-detail"), "the detail view")
    fields = console.js(
        "return Array.from(document.querySelectorAll('#detail-fields dt')).map(d => d.textContent)"
    )
    assert set(fields) == {
        "id",
        "object",
        "bytes",
        "created_at",
        "filename",
        "purpose",
        "status",
        "status_details",
        "expires_at",
    }
    file_id = files["notes.txt"]["id"]
    assert console.by_id("detail-id").text == file_id
    assert f"/v1/files/{file_id}/content" in console.by_id("detail-curl").text
    assert f'client.files.retrieve("{file_id}")' in console.by_id("detail-python").text
    assert ALPHA_KEY not in console.by_id("detail-curl").text
    console.shot("file-detail")
    console.click("detail-back")
    console.until(lambda: console.visible("view-files"), "back to the files view")

    # Delete the large one, behind the confirmation dialog; the list changes.
    console.until(lambda: "weights.bin" in console.files(), "the list is back")
    console.row_button("files", "weights.bin", "Delete weights.bin").click()
    console.until(
        lambda: console.js("return document.getElementById('confirm').open"), "the dialog"
    )
    console.shot("delete-confirmation")
    console.click("confirm-ok")
    console.until(lambda: "weights.bin" not in console.files(), "the delete shows")
    assert "notes.txt" in console.files()
    listed = _api(console_server.url, "GET", "/v1/files")
    assert console.by_id("files-total").text == f"{listed['total']} files"

    # Batches: the request counts as a progress bar, and links to the batch's files.
    browser.find_element("css selector", '#nav button[data-view="batches"]').click()
    console.until(
        lambda: console.js(
            "return Array.from(document.querySelectorAll('#batches tbody tr'))"
            ".some(tr => tr.cells[0].textContent === arguments[0]"
            " && tr.cells[1].textContent === 'completed')",
            batch_id,
        ),
        "the batch completes (the view reloads while it runs)",
    )
    assert console.js("return document.querySelector('#batches tbody progress').value") == 1
    console.shot("batches")
    browser.find_element(
        "css selector", f'#batches button[aria-label="input file of {batch_id}"]'
    ).click()
    console.until(lambda: console.visible("view-detail"), "the input file's detail view")
    assert console.by_id("detail-title").text == "requests.jsonl"

    # The admin token: usage of every project, the journal, fault rules, reset. Beta holds
    # the same bytes twice: two files, one blob (a dedupe ratio of 2).
    for name in ("copy-1.txt", "copy-2.txt"):
        _upload(console_server.url, BETA_KEY, SMALL, name, "user_data")
    console.sign_in(ADMIN_TOKEN)
    console.until(lambda: console.visible("view-usage"), "the usage view")
    # The admin token is no project key on a server with keys: only the admin views.
    assert console.js("return document.querySelector('#nav button[data-view=\"files\"]').hidden")
    usage = console.until(
        lambda: console.js(
            "const tr = document.querySelector('#usage tr[data-project=\"alpha\"]');"
            " return tr && {files: tr.dataset.files, bytes: tr.dataset.bytes};"
        ),
        "alpha's usage",
    )
    assert usage["files"] == str(listed["total"])
    assert int(usage["bytes"]) == sum(f["bytes"] for f in listed["data"])
    beta = console.js(
        "return Array.from(document.querySelector('#usage tr[data-project=\"beta\"]').cells)"
        ".map(td => td.textContent)"
    )
    assert beta == ["beta", "2", "2.5 KiB", "1.3 KiB", "2.00\u00d7"]
    # The chart: a logical and a physical bar for each project, and the legend's two.
    assert console.js("return document.querySelectorAll('#usage-chart svg rect').length") == 6
    console.shot("admin-usage")

    browser.find_element("css selector", '#nav button[data-view="journal"]').click()
    console.type("j-project", "alpha\n")
    console.by_id("j-project").send_keys("\t")

    def journal() -> set[tuple[str, str]]:
        rows = console.js(
            "return Array.from(document.querySelectorAll('#journal tbody tr'))"
            ".map(tr => [tr.dataset.method, tr.dataset.path, tr.dataset.project])"
        )
        if any(project != "alpha" for _, _, project in rows):
            return set()  # the filter is not applied yet
        return {(method, path.split("?")[0]) for method, path, _ in rows}

    wanted = {
        ("POST", "/v1/files"),
        ("POST", "/v1/uploads"),
        ("DELETE", f"/v1/files/{files['weights.bin']['id']}"),
        ("GET", f"/v1/files/{file_id}/content"),
    }
    console.until(lambda: wanted <= journal(), "the journal shows the console's requests")
    console.shot("admin-journal")
    # Live: a request made elsewhere shows up with no click.
    _api(console_server.url, "GET", "/v1/files?limit=7")
    console.until(
        lambda: console.js(
            "return Array.from(document.querySelectorAll('#journal tbody tr'))"
            ".some(tr => tr.dataset.path === '/v1/files?limit=7')"
        ),
        "the journal's next poll shows a new request",
    )

    browser.find_element("css selector", '#nav button[data-view="faults"]').click()
    console.until(lambda: console.visible("view-faults"), "the faults view")
    console.type("f-method", "GET")
    console.type("f-route", "/v1/files")
    console.type("f-status", "503")
    console.type("f-count", "1")
    browser.find_element("css selector", '#fault-form button[type="submit"]').click()
    console.until(
        lambda: console.js("return document.querySelectorAll('#faults tbody tr').length") == 1,
        "the rule is listed",
    )
    console.shot("admin-faults")
    browser.find_element("css selector", "#faults tbody button").click()
    console.until(
        lambda: console.js("return document.querySelectorAll('#faults tbody tr').length") == 0,
        "the rule is removed",
    )

    browser.find_element("css selector", '#nav button[data-view="reset"]').click()
    console.type("reset-project", "beta")
    assert not console.by_id("reset-go").is_enabled()
    console.type("reset-confirm", "bet")
    assert not console.by_id("reset-go").is_enabled()
    console.type("reset-confirm", "beta")
    assert console.by_id("reset-go").is_enabled()
    console.shot("admin-reset")
    console.click("reset-go")
    console.until(
        lambda: "Reset project beta: 2 files removed." in console.by_id("status").text, "the reset"
    )
    assert console.error() == ""


def test_usable_at_360_px(browser: Any, console_server: ServerProcess, screenshots: Path) -> None:
    browser.set_window_size(360, 740)
    console = Console(browser, console_server.url, screenshots)
    console.open()
    console.sign_in(ALPHA_KEY)
    console.until(lambda: console.visible("view-files"), "the files view")
    width = browser.execute_script("return window.innerWidth")
    assert width <= 360
    # Wide tables scroll in their own box: the page itself never scrolls sideways.
    assert browser.execute_script("return document.documentElement.scrollWidth") <= width
    console.shot("files-360px")


def test_files_page_with_after(
    browser: Any, console_server: ServerProcess, screenshots: Path
) -> None:
    """21 files of one purpose: a page of 20, the next page (after its last id) holds the 21st,
    and back."""
    names = [f"page-{i:02}.txt" for i in range(21)]
    for name in names:
        _upload(console_server.url, BETA_KEY, name.encode(), name, "evals")
    from selenium.webdriver.support.ui import Select

    console = Console(browser, console_server.url, screenshots)
    console.open()
    console.sign_in(BETA_KEY)
    console.until(lambda: console.visible("view-files"), "the files view")
    Select(console.by_id("filter-purpose")).select_by_value("evals")
    newest_first = names[::-1]
    console.until(lambda: list(console.files()) == newest_first[:20], "the first page")
    assert console.by_id("files-total").text == "21 files"
    assert not console.by_id("files-prev").is_enabled()
    console.click("files-next")
    console.until(lambda: list(console.files()) == newest_first[20:], "the second page")
    assert not console.by_id("files-next").is_enabled()
    console.click("files-prev")
    console.until(lambda: list(console.files()) == newest_first[:20], "back to the first page")


@contextlib.contextmanager
def _large_upload_held_up(
    browser: Any, url: str, screenshots: Path, big: Path
) -> Iterator[Console]:
    """Alpha signed in, uploading `big` (through parts) while a fault rule holds each part
    up for 3 s; the rule is removed afterwards."""
    rule = {"method": "POST", "route": "/v1/uploads/{upload_id}/parts", "latency_ms": 3000}
    body = json.dumps(rule).encode()
    json_type = {"Content-Type": "application/json"}
    rule_id = _api(url, "POST", "/admin/faults", body, ADMIN_TOKEN, **json_type)
    try:
        console = Console(browser, url, screenshots)
        console.open()
        console.sign_in(ALPHA_KEY)
        console.until(lambda: console.visible("view-files"), "the files view")
        big.write_bytes(os.urandom(LARGE_SIZE))
        console.by_id("upload-input").send_keys(str(big))
        console.until(
            lambda: (
                "3 parts" in console.js("return document.getElementById('uploads').textContent")
            ),
            "the upload's parts are on their way",
        )
        yield console
    finally:
        _api(url, "DELETE", f"/admin/faults/{rule_id['id']}", None, ADMIN_TOKEN)


def test_a_large_upload_can_be_cancelled(
    browser: Any, console_server: ServerProcess, screenshots: Path, tmp_path: Path
) -> None:
    """Parts held up by a fault rule (latency) while the user cancels: the parts stop, the
    upload is cancelled on the server, and no file appears."""
    url = console_server.url
    with _large_upload_held_up(browser, url, screenshots, tmp_path / "cancel-me.bin") as console:
        console.shot("upload-in-progress")
        browser.find_element(
            "css selector", '#uploads button[aria-label="Cancel the upload of cancel-me.bin"]'
        ).click()
        console.until(
            lambda: (
                "Cancelled."
                in console.js("return document.querySelector('#uploads li').textContent")
            ),
            "the upload shows it was cancelled",
        )
    journal = _api(url, "GET", "/admin/requests?project=alpha&method=POST", None, ADMIN_TOKEN)
    paths = [entry["path"] for entry in journal["data"]]
    assert "/v1/uploads" in paths
    assert any(p.endswith("/cancel") for p in paths), paths

    # The parts held up by the rule are answered (400: the upload is cancelled) once it ends.
    def parts_answered() -> int:
        entries = _api(url, "GET", "/admin/requests?project=alpha", None, ADMIN_TOKEN)["data"]
        return sum(e["path"].endswith("/parts") and e["status"] == 400 for e in entries)

    wait_until_sync(lambda: parts_answered() == 3, what="the held-up parts are answered")
    assert "cancel-me.bin" not in [f["filename"] for f in _api(url, "GET", "/v1/files")["data"]]


def test_an_upload_refused_shows_the_envelopes_message(
    browser: Any, console_server: ServerProcess, screenshots: Path, tmp_path: Path
) -> None:
    console = Console(browser, console_server.url, screenshots)
    console.open()
    console.sign_in(BETA_KEY)
    console.until(lambda: console.visible("view-files"), "the files view")
    console.type("upload-purpose", "bogus")
    small = tmp_path / "refused.txt"
    small.write_bytes(SMALL)
    console.by_id("upload-input").send_keys(str(small))
    note = console.until(
        lambda: console.js(
            "const e = document.querySelector('#uploads li .error-text'); return e && e.textContent"
        ),
        "the upload's error",
    )
    assert note.startswith("'bogus' is not one of [")
    assert note.endswith("- 'purpose'")
    console.shot("upload-refused")


def test_a_download_redirected_to_the_bucket_says_what_to_do(
    browser: Any, s3_bucket: S3Bucket, tmp_path: Path, screenshots: Path
) -> None:
    """With [storage.s3] redirect_downloads the content is a 307 to the bucket, another origin
    the page may not fetch (connect-src 'self'): the console says so instead of failing mutely."""
    config = write_config(
        tmp_path / "filesd.toml",
        tmp_path / "data",
        f'[storage.s3]\nendpoint = "{s3_bucket.endpoint}"\nredirect_downloads = true\n',
    )
    text = config.read_text().replace(
        "[storage]\n", f'[storage]\nblobs = "s3://{s3_bucket.bucket}"\n', 1
    )
    config.write_text(text)
    server = ServerProcess(["--config", str(config)], cwd=tmp_path, env=s3_bucket.env())
    try:
        _upload(server.url, ALPHA_KEY, SMALL, "in-the-bucket.txt", "user_data")
        console = Console(browser, server.url, screenshots)
        console.open()
        console.sign_in(ALPHA_KEY)
        console.until(lambda: "in-the-bucket.txt" in console.files(), "the file is listed")
        console.row_button("files", "in-the-bucket.txt", "Download in-the-bucket.txt").click()
        message = console.until(console.error, "the download's error")
        assert message.startswith("in-the-bucket.txt could not be fetched.")
        assert "redirect_downloads" in message
    finally:
        assert server.stop(signal.SIGTERM) == 0


def test_sign_out_stops_uploads_with_the_key_they_started_with(
    browser: Any, console_server: ServerProcess, screenshots: Path, tmp_path: Path
) -> None:
    """A large upload held up by a fault rule when the user signs out: it stops, is cancelled
    on the server with alpha's key (never `Bearer null`), and leaves the list."""
    url = console_server.url
    with _large_upload_held_up(browser, url, screenshots, tmp_path / "signed-out.bin") as console:
        console.click("signout")
        assert console.js("return document.getElementById('uploads').children.length") == 0

    def cancels() -> list[Any]:
        entries = _api(url, "GET", "/admin/requests?method=POST", None, ADMIN_TOKEN)["data"]
        return [e for e in entries if e["path"].endswith("/cancel")]

    wait_until_sync(
        lambda: any(e["project"] == "alpha" and e["status"] == 200 for e in cancels()),
        what="the upload is cancelled with alpha's key",
    )
    # No request of the upload went out without its key (a 401, as `Bearer null` was).
    entries = _api(url, "GET", "/admin/requests?status=401", None, ADMIN_TOKEN)["data"]
    assert [e for e in entries if "/uploads" in e["path"]] == []
    assert "signed-out.bin" not in [f["filename"] for f in _api(url, "GET", "/v1/files")["data"]]
    assert console.error() == ""


def test_the_next_sign_in_starts_afresh(
    browser: Any, console_server: ServerProcess, screenshots: Path
) -> None:
    """alpha pages to its second page of one purpose and signs out; beta then sees its own
    first page of every purpose, not alpha's cursor and filter."""
    from selenium.webdriver.support.ui import Select

    url = console_server.url
    names = [f"afresh-{i:02}.txt" for i in range(21)]
    for name in names:
        _upload(url, ALPHA_KEY, name.encode(), name, "vision")
    console = Console(browser, url, screenshots)
    console.open()
    console.sign_in(ALPHA_KEY)
    console.until(lambda: console.visible("view-files"), "the files view")
    # The key is not left in the (hidden) sign-in field, and no password manager keeps it.
    assert console.by_id("key").get_attribute("value") == ""
    assert console.by_id("key").get_attribute("autocomplete") == "new-password"
    Select(console.by_id("filter-purpose")).select_by_value("vision")
    console.until(lambda: list(console.files()) == names[::-1][:20], "alpha's first page")
    console.click("files-next")
    console.until(lambda: list(console.files()) == names[:1], "alpha's second page")

    console.sign_in(BETA_KEY)
    beta = _api(url, "GET", "/v1/files?limit=20", key=BETA_KEY)
    first_page = [f["filename"] for f in beta["data"]]
    console.until(
        lambda: console.visible("view-files") and list(console.files()) == first_page,
        "beta's first page",
    )
    assert console.error() == ""
    assert console.by_id("files-total").text == f"{beta['total']} files"
    assert console.by_id("filter-purpose").get_attribute("value") == ""
    assert not console.by_id("files-prev").is_enabled()


def test_sign_out_leaves_no_admin_data_in_the_page(
    browser: Any, console_server: ServerProcess, screenshots: Path
) -> None:
    """The admin token's usage, journal and faults, and a file's detail, leave the DOM with the
    key; no timer is left to fetch more."""
    url = console_server.url
    file = _upload(url, ALPHA_KEY, SMALL, "detail-then-out.txt", "user_data")
    console = Console(browser, url, screenshots)
    console.open()
    console.sign_in(ALPHA_KEY)
    console.until(lambda: "detail-then-out.txt" in console.files(), "the file is listed")
    browser.find_element(
        "css selector", '#files tr[data-filename="detail-then-out.txt"] button.link'
    ).click()
    console.until(lambda: console.by_id("detail-id").text == file["id"], "the file's detail")
    console.click("signout")
    console.sign_in(ADMIN_TOKEN)
    console.until(
        lambda: console.js("return document.querySelectorAll('#usage tbody tr').length") > 0,
        "the usage rows",
    )
    browser.find_element("css selector", '#nav button[data-view="journal"]').click()
    console.until(
        lambda: console.js("return document.querySelectorAll('#journal tbody tr').length") > 0,
        "the journal rows",
    )
    console.click("signout")
    left = console.js(
        """return {rows: document.querySelectorAll(
                   '#usage tbody tr, #journal tbody tr, #faults tbody tr, #files tbody tr,'
                   + ' #batches tbody tr').length,
                 chart: document.getElementById('usage-chart').children.length,
                 detail: document.getElementById('detail-fields').children.length
                   + document.getElementById('detail-id').textContent.length,
                 timers: [state.journalTimer, state.batchesTimer]}"""
    )
    assert left == {"rows": 0, "chart": 0, "detail": 0, "timers": [None, None]}


def _proxy_with_html_for(upstream: str, html_for: set[tuple[str, str]]) -> ThreadingHTTPServer:
    """A reverse proxy in front of `upstream` that answers the (method, path) pairs in
    `html_for` itself with a 200 HTML page, as a misconfigured proxy does."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if (self.command, self.path.split("?", 1)[0]) in html_for:
                page = b"<html><body>502 proxy error page</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                return
            keep = ("Authorization", "Content-Type", "Accept")
            headers = {k: v for k, v in self.headers.items() if k in keep}
            request = urllib.request.Request(
                upstream + self.path, data=body, method=self.command, headers=headers
            )
            try:
                resp = urllib.request.urlopen(request, timeout=30)
            except urllib.error.HTTPError as err:
                resp = err
            with resp:
                content = resp.read()
                self.send_response(resp.status)
                for name, value in resp.headers.items():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

        do_GET = do_POST = do_DELETE = _relay

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_2xx_that_is_not_json_is_said_in_words(
    browser: Any, console_server: ServerProcess, screenshots: Path, tmp_path: Path
) -> None:
    """Behind a proxy that answers with an HTML page: the upload fails with a plain message
    (it used to hang at "uploading"), and a view shows one instead of a SyntaxError."""
    proxy = _proxy_with_html_for(
        console_server.url, {("POST", "/v1/files"), ("GET", "/v1/batches")}
    )
    try:
        url = f"http://127.0.0.1:{proxy.server_address[1]}"
        console = Console(browser, url, screenshots)
        console.open()
        console.sign_in(ALPHA_KEY)
        console.until(lambda: console.visible("view-files"), "the files view")
        small = tmp_path / "behind-a-proxy.txt"
        small.write_bytes(SMALL)
        console.by_id("upload-input").send_keys(str(small))
        note = console.until(
            lambda: console.js(
                "const e = document.querySelector('#uploads li .error-text');"
                " return e && e.textContent"
            ),
            "the upload's error",
        )
        assert note == "The server answered 200 with something that is not JSON."
        browser.find_element("css selector", '#nav button[data-view="batches"]').click()
        message = console.until(console.error, "the view's error")
        assert message == "The server answered 200 with something that is not JSON."
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_filename_that_is_html_is_shown_as_text(
    browser: Any, console_server: ServerProcess, screenshots: Path, tmp_path: Path
) -> None:
    """A file named like an HTML element, uploaded through the page: its name is text in the
    list and the detail, no element is made of it, and the browser logs no CSP violation."""
    name = "<img src=x onerror=alert(1)>"
    console = Console(browser, console_server.url, screenshots)
    console.open()
    console.sign_in(ALPHA_KEY)
    console.until(lambda: console.visible("view-files"), "the files view")
    file = tmp_path / name
    file.write_bytes(SMALL)
    console.by_id("upload-input").send_keys(str(file))
    console.until(lambda: name in console.files(), "the file is listed")
    shown = console.js(
        "return Array.from(document.querySelectorAll('#files tbody button.link'))"
        ".map(b => b.textContent)"
    )
    assert name in shown
    browser.find_element("css selector", "#files tbody button.link").click()
    console.until(lambda: console.by_id("detail-title").text == name, "the file's detail")
    assert console.js("return document.querySelectorAll('main img').length") == 0
    logs = browser.get_log("browser")
    assert [e for e in logs if "Content Security Policy" in e["message"]] == [], logs
    assert console.error() == ""
