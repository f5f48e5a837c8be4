"""Operator commands: fsck, gc, backup and keys, on real data directories."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from filesd.api.appkeys import SERVICES
from filesd.cli import main
from filesd.exit_codes import ExitCode
from filesd.models import KeyRecord
from filesd.services.keys import key_digest
from filesd.testing import serve

from .conftest import (
    ALPHA_KEY,
    BETA_KEY,
    KEYS_TOML,
    ServerProcess,
    blob_files,
    wait_until_sync,
    write_config,
)
from .test_cli import api, upload

pytestmark = pytest.mark.slow

StartServer = Callable[..., ServerProcess]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """The exit status and the output, less the line saying which configuration file was read
    (every command's first, checked in test_cli.py)."""
    code = main(list(argv))
    out = capsys.readouterr()
    first, _, rest = out.err.partition("\n")
    loaded = first.startswith(("filesd: configuration from ", "filesd: no configuration file"))
    return code, out.out + (rest if loaded else out.err)


def _status(url: str, key: str) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_fsck_reports_everything_changes_nothing_and_repairs(
    start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    server = start_server()
    good = upload(server, os.urandom(100_000))
    corrupt = upload(server, os.urandom(100_000))
    missing = upload(server, os.urandom(100_000))
    assert server.stop() == 0
    config = str(tmp_path / "filesd-0.toml")
    assert run(capsys, "fsck", "--config", config) == (0, run_ok := _ok_output(3))

    blobs = {p.name: p for p in blob_files(data)}
    digest = {f["id"]: _sha_of(data, f["id"]) for f in (good, corrupt, missing)}
    blobs[digest[corrupt["id"]]].write_bytes(b"bit rot")
    blobs[digest[missing["id"]]].unlink()
    orphan = "f" * 64
    (data / "blobs" / "ff").mkdir(exist_ok=True)
    (data / "blobs" / "ff" / orphan).write_bytes(b"nobody's")
    (data / "tmp" / "leftover.part").write_bytes(b"half an upload")
    (data / "parts" / ("a" * 32)).write_bytes(b"a part without a row")

    def files_on_disk() -> list[Path]:  # SQLite's -wal/-shm files come and go: leave them out
        return sorted(p.relative_to(data) for p in data.rglob("*") if "filesd.db" not in p.name)

    before = files_on_disk()

    code, out = run(capsys, "fsck", "--config", config)
    assert code == 1
    assert f"corrupt blob: {digest[corrupt['id']]}" in out
    assert f"missing blob: {digest[missing['id']]}" in out
    assert f"orphaned blob: {orphan}" in out
    assert "stray temp file: leftover.part" in out
    assert f"stray part file: {'a' * 32}" in out
    assert files_on_disk() == before  # changed nothing

    code, out = run(capsys, "fsck", "--repair", "--config", config)
    assert code == 1 and "repaired" in out
    assert (data / "quarantine" / digest[corrupt["id"]]).read_bytes() == b"bit rot"
    assert not (data / "blobs" / "ff" / orphan).exists()
    assert os.listdir(data / "tmp") == [] and os.listdir(data / "parts") == []
    assert run(capsys, "fsck", "--config", config) == (0, _ok_output(1))

    server = start_server()
    for damaged in (corrupt, missing):
        assert api(server, f"/v1/files/{damaged['id']}")["status"] == "error"
        req = urllib.request.Request(
            f"{server.url}/v1/files/{damaged['id']}/content",
            headers={"Authorization": f"Bearer {ALPHA_KEY}"},
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=10)
        body = json.loads(info.value.read())
        assert info.value.code == 500 and body["error"]["code"] == "file_damaged"
    assert len(api(server, f"/v1/files/{good['id']}/content")) == 100_000
    assert run_ok


def _ok_output(checked: int) -> str:
    return f"checked {checked} blob(s)\nok\n"


def _sha_of(data: Path, file_id: str) -> str:
    with sqlite3.connect(data / "filesd.db") as conn:
        return str(conn.execute("SELECT sha256 FROM files WHERE id = ?", (file_id,)).fetchone()[0])


def test_fsck_and_gc_refuse_beside_a_running_server(
    start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start_server()
    config = str(tmp_path / "filesd-0.toml")
    for command in ("fsck", "gc"):
        code, out = run(capsys, command, "--config", config)
        assert code == ExitCode.IN_USE and "in use by another filesd process" in out


def test_gc_purges_old_deleted_rows_and_reclaims(
    start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    server = start_server()
    kept = upload(server, b"kept")
    gone = upload(server, b"gone")
    api(server, f"/v1/files/{gone['id']}", method="DELETE")
    assert server.stop() == 0
    (tmp_path / "gc.toml").write_text(
        f'[storage]\ndata_dir = "{data}"\ndeleted_retention = 0\n{KEYS_TOML}'
    )
    # deleted_at is in whole seconds: purging with no retention needs the next second.
    deleted_second = int(time.time())
    wait_until_sync(lambda: time.time() >= deleted_second + 1, what="the next second")
    code, out = run(capsys, "gc", "--config", str(tmp_path / "gc.toml"))
    assert code == 0 and "deleted rows purged: 1" in out
    with sqlite3.connect(data / "filesd.db") as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM files")]
    assert ids == [kept["id"]]


def test_keys_made_in_the_database_work_and_revoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    code, out = run(capsys, "keys", "create", "--project", "team", "--data-dir", str(data))
    assert code == 0
    key_id, key = out.split()[0], out.splitlines()[1]
    assert key.startswith("sk-filesd-") and len(key) == len("sk-filesd-") + 40
    with sqlite3.connect(data / "filesd.db") as conn:
        stored = conn.execute("SELECT * FROM api_keys").fetchall()
    assert key not in repr(stored)  # only the digest is kept

    server = ServerProcess(["--data-dir", str(data)], cwd=tmp_path)
    try:
        files = f"{server.url}/v1/files"
        assert _status(files, key) == 200
        assert _status(files, "sk-anything-else-12345") == 401  # not open: a key exists
        code, out = run(capsys, "keys", "list", "--data-dir", str(data))
        assert key_id in out and "team" in out and f"...{key[-4:]}" in out and "active" in out
        assert run(capsys, "keys", "revoke", key_id, "--data-dir", str(data))[0] == 0
        wait_until_sync(lambda: _status(files, key) == 401, what="the revocation in effect")
        assert "revoked" in run(capsys, "keys", "list", "--data-dir", str(data))[1]
        assert run(capsys, "keys", "revoke", key_id, "--data-dir", str(data))[0] == ExitCode.USAGE
    finally:
        assert server.stop() == 0
    assert key not in server.stderr_text()


@pytest.mark.parametrize(
    ("setting", "revoked"), [("admin", False), ("admin", True), ("metrics", False)]
)
def test_a_token_that_is_a_key_made_in_the_database_stops_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str, revoked: bool
) -> None:
    """The token would make the key's holder an admin of every project (or a reader of every
    project's totals); a revoked key counts, its holder still knows it. Only the key's id is
    named, never the token."""
    data = tmp_path / "data"
    _, out = run(capsys, "keys", "create", "--project", "team", "--data-dir", str(data))
    key_id, key = out.split()[0], out.splitlines()[1]
    if revoked:
        assert run(capsys, "keys", "revoke", key_id, "--data-dir", str(data))[0] == 0
    config = tmp_path / "filesd.toml"
    config.write_text(f'[storage]\ndata_dir = "{data}"\n[{setting}]\ntoken = "{key}"\n')
    started = subprocess.run(
        [sys.executable, "-m", "filesd", "serve", "--port", "0", "--config", str(config)],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 2, started.stdout + started.stderr
    assert f"{setting}.token: is also an API key (key {key_id} of `filesd keys list`)" in (
        started.stderr
    )
    assert "Traceback" not in started.stderr
    assert key not in started.stdout + started.stderr
    # Nothing was left behind that keeps the next start from the data dir.
    config.write_text(f'[storage]\ndata_dir = "{data}"\n')
    server = ServerProcess(["--config", str(config)], cwd=tmp_path)
    try:
        assert _status(f"{server.url}/v1/files", key) == (401 if revoked else 200)
    finally:
        assert server.stop() == 0


def test_toml_and_database_keys_together(
    start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    _, out = run(capsys, "keys", "create", "--project", "alpha", "--data-dir", str(data))
    key = out.splitlines()[1]
    server = start_server()  # also has ALPHA_KEY for project alpha in its TOML
    created = upload(server, b"shared project")
    assert _status(f"{server.url}/v1/files/{created['id']}", key) == 200


def test_backup_while_serving_restores_exactly(
    start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server()
    contents = {upload(server, os.urandom(5000 + i))["id"]: None for i in range(5)}
    for file_id in contents:
        contents[file_id] = api(server, f"/v1/files/{file_id}/content")
    deleted = upload(server, b"deleted before the backup")
    api(server, f"/v1/files/{deleted['id']}", method="DELETE")
    listing = api(server, "/v1/files")
    dest = tmp_path / "backup"
    code, out = run(capsys, "backup", str(dest), "--config", str(tmp_path / "filesd-0.toml"))
    assert code == 0 and "backed up 5 file(s)" in out
    assert server.stop() == 0

    assert run(capsys, "fsck", "--data-dir", str(dest)) == (0, _ok_output(5))
    restored = start_server(data_dir=dest)
    assert api(restored, "/v1/files") == listing
    for file_id, content in contents.items():
        assert api(restored, f"/v1/files/{file_id}/content") == content
    code, out = run(capsys, "backup", str(dest), "--data-dir", str(tmp_path / "data"))
    assert code == ExitCode.USAGE and f"{dest} is not empty" in out
    assert restored.stop() == 0


@pytest.mark.parametrize("where", [".", "backups/today"])
def test_backup_into_the_data_dir_itself_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    data = tmp_path / "data"
    assert run(capsys, "keys", "create", "--project", "p", "--data-dir", str(data))[0] == 0
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    code, out = run(capsys, "backup", str(data / where), "--data-dir", str(data))
    assert code == ExitCode.USAGE and "inside the data directory" in out
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_a_key_clashing_with_the_admin_token_at_run_time_is_left_out_not_the_reload(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A key whose secret is the admin token (only `filesd migrate` could copy one in while
    the server runs) used to make every reload fail: revocations and new keys stopped taking
    effect, with a traceback every 2 s. It is left out, and said once."""
    token = "admin-token-for-this-test-0123456789"
    file_keys = {"keys": [{"key": ALPHA_KEY, "project": "alpha"}]}
    with serve(admin={"token": token}, auth=file_keys) as server:
        kept, revoked = server.new_project(), server.new_project()
        services = server._app[SERVICES]
        clash = KeyRecord(
            id="key_clash",
            key_sha256=key_digest(token),
            project="copied",
            hint="adm...89",
            created_at=int(time.time()),
        )
        asyncio.run_coroutine_threadsafe(services.keys.add(clash), server._loop).result(30)
        keys = asyncio.run_coroutine_threadsafe(services.keys.all(), server._loop).result(30)
        revoked_id = next(k.id for k in keys if k.key_sha256 == key_digest(revoked.api_key))
        asyncio.run_coroutine_threadsafe(services.keys.revoke(revoked_id), server._loop).result(30)
        wait_until_sync(
            lambda: _status(f"{server.base_url}/files", revoked.api_key) == 401,
            what="the revocation taken into use by the reload",
        )
        assert _status(f"{server.base_url}/files", kept.api_key) == 200
        # The admin token is no project's key.
        assert _status(f"{server.base_url}/files", token) == 401
    said = [r for r in caplog.records if "key_clash" in r.getMessage()]
    assert len(said) == 1 and token not in said[0].getMessage()
    assert not [r for r in caplog.records if "reloading API keys failed" in r.getMessage()]


def test_backup_of_a_data_dir_without_a_database_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    code, out = run(capsys, "backup", str(tmp_path / "dest"), "--data-dir", str(tmp_path / "empty"))
    assert code == ExitCode.USAGE and "no filesd database in" in out
    assert not (tmp_path / "dest").exists()


def test_a_database_of_a_newer_filesd_fails_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert run(capsys, "keys", "create", "--project", "p", "--data-dir", str(data))[0] == 0
    with contextlib.closing(sqlite3.connect(data / "filesd.db")) as conn:
        conn.execute("PRAGMA user_version = 9999")
    for command in ("fsck", "gc"):
        code, out = run(capsys, command, "--data-dir", str(data))
        assert code == ExitCode.FAILED and "newer than this filesd supports" in out


def test_keys_list_shows_the_config_files_keys_without_their_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "filesd.toml", tmp_path / "data")
    code, out = run(capsys, "keys", "create", "--project", "made", "--config", str(config))
    key = out.splitlines()[1]
    code, out = run(capsys, "keys", "list", "--config", str(config))
    assert code == ExitCode.OK
    lines = out.splitlines()
    assert len(lines) == 3 and "made" in lines[0] and f"...{key[-4:]}" in lines[0]
    for line, project, secret in zip(
        lines[1:], ["alpha", "beta"], [ALPHA_KEY, BETA_KEY], strict=True
    ):
        assert line == (
            f"(config)  {project}  sha256:{key_digest(secret)[:8]}  "
            "from the config file ([[auth.keys]])"
        )
        assert secret not in out and secret[-4:] not in out


def test_migrate_from_open_mode_says_how_to_reach_each_project_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Open mode's projects are named from the tokens' digests; once the destination has keys
    those tokens get a 401, so migrate names each project and the command that makes it a key."""
    source = tmp_path / "open.toml"
    source.write_text(f'[storage]\ndata_dir = "{tmp_path / "open-data"}"\n')
    server = ServerProcess(["--config", str(source)], cwd=tmp_path)
    try:
        first = upload(server, b"first token's file", key="token-one-0123456789")
        upload(server, b"second token's file", key="token-two-0123456789")
        upload(server, b"second token's other file", key="token-two-0123456789")
    finally:
        assert server.stop() == 0
    dest = write_config(tmp_path / "shared.toml", tmp_path / "shared-data")  # alpha and beta
    code, out = run(capsys, "migrate", "--to", str(dest), "--config", str(source))
    assert code == ExitCode.OK, out
    one, two = (
        "open-" + key_digest(token)[:32]
        for token in ("token-one-0123456789", "token-two-0123456789")
    )
    make_one = f"filesd keys create --project {one} --config {dest}"
    assert f"project {one}: 1 file(s); make a key for it: {make_one}" in out, out
    assert f"project {two}: 2 file(s); make a key for it: filesd keys create --project {two}" in out

    code, made = run(capsys, *make_one.split()[1:])
    assert code == ExitCode.OK
    key = made.splitlines()[1]
    # Run again, the project now has a key; the files are there already.
    code, out = run(capsys, "migrate", "--to", str(dest), "--config", str(source))
    assert code == ExitCode.OK and f"project {one}: 1 file(s); has a key there" in out
    server = ServerProcess(["--config", str(dest)], cwd=tmp_path)
    try:
        assert _status(f"{server.url}/v1/files/{first['id']}", key) == 200
        assert _status(f"{server.url}/v1/files/{first['id']}", "token-one-0123456789") == 401
    finally:
        assert server.stop() == 0
