"""The shipped filesd.toml.example, copied as it is, runs a server exactly like no config."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import ServerProcess

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parent.parent / "filesd.toml.example"


def _get(url: str, token: str | None) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def _upload(url: str, token: str) -> str:
    boundary = "example"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
        f"\r\n{{}}\r\n--{boundary}--\r\n"
    ).encode()
    request = urllib.request.Request(
        f"{url}/v1/files",
        data=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return str(json.load(resp)["id"])


def _behaviour(server: ServerProcess) -> dict[str, object]:
    """What a user sees: who gets in, who sees what, and what the server said at start-up."""
    file_id = _upload(server.url, "sk-first-token")
    first = _get(f"{server.url}/v1/files", "sk-first-token")
    other = _get(f"{server.url}/v1/files", "sk-another-token")
    return {
        "no key": _get(f"{server.url}/v1/files", None)[0],
        "the example's old key": _get(f"{server.url}/v1/files", "sk-test-alpha")[0],
        "own files": (first[0], [f["id"] for f in first[1]["data"]] == [file_id]),  # type: ignore[attr-defined]
        "another token's files": (other[0], other[1]["total"]),
        "open mode announced": "running open" in server.stderr_text(),
        "admin API": _get(f"{server.url}/admin/projects", "x" * 20)[0],
    }


def test_the_example_as_shipped_behaves_like_no_config(tmp_path: Path) -> None:
    with_example = tmp_path / "with-example"
    with_example.mkdir()
    config = with_example / "filesd.toml"
    shutil.copyfile(EXAMPLE, config)
    without = tmp_path / "without"
    without.mkdir()

    shipped = ServerProcess(["--config", str(config)], cwd=tmp_path)
    try:
        seen_with = _behaviour(shipped)
        # data_dir = "./filesd-data" is relative to the file, as the default is to the cwd.
        assert shipped.data_dir == with_example / "filesd-data"
    finally:
        assert shipped.stop() == 0
    bare = ServerProcess([], cwd=without)
    try:
        seen_without = _behaviour(bare)
        assert bare.data_dir == without / "filesd-data"
    finally:
        assert bare.stop() == 0

    assert seen_with == seen_without
    assert seen_with["no key"] == 401
    assert seen_with["the example's old key"] == 200  # open: any token is a project
    assert seen_with["another token's files"] == (200, 0)
    assert seen_with["admin API"] == 404
