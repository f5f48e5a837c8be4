"""The command line and the server process: start-up, errors, SIGTERM, restarts."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from filesd.cli import build_parser, main
from filesd.exit_codes import ExitCode, epilog, markdown

from .conftest import ALPHA_KEY, BETA_KEY, KEYS_TOML, ServerProcess, temp_files, wait_until_sync

pytestmark = pytest.mark.slow

StartServer = Callable[..., ServerProcess]


def api(server: ServerProcess, path: str, key: str = ALPHA_KEY, method: str = "GET") -> Any:
    req = urllib.request.Request(
        server.url + path, method=method, headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = resp.read()
    return json.loads(body) if path.endswith("/content") is False else body


def raw_upload_request(
    host: str, port: int, content: bytes, *, total: int | None = None, key: str = ALPHA_KEY
) -> bytes:
    """Headers and the start of a multipart upload whose file part holds `content`."""
    boundary = "crash-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + (len(content) if total is None else total) + len(tail)
    request = (
        f"POST /v1/files HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()
    return request + head + content + (tail if total is None else b"")


def upload(server: ServerProcess, content: bytes, key: str = ALPHA_KEY) -> dict[str, Any]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(raw_upload_request(host, int(port), content, key=key))
        response = _read_all(sock)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), response[:500]
    return dict(json.loads(body))


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# --- command line ----------------------------------------------------------------------------


def test_config_errors_exit_2_and_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "filesd.toml"
    config.write_text("[server]\nprot = 8080\n")
    assert main(["--config", str(config)]) == 2
    assert "server.prot: unknown key" in capsys.readouterr().err
    config.write_text('[limits]\nmax_file_bytes = "big"\n')
    assert main(["serve", "--config", str(config)]) == 2
    assert "limits.max_file_bytes: expected an integer" in capsys.readouterr().err
    config.write_text("[testing]\nfrozen_time = 1e19\n")  # would start, then fail every request
    assert main(["serve", "--config", str(config)]) == 2
    assert "testing.frozen_time: expected Unix seconds from 0" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--port", "http"], ["--port", "70000"], ["--bogus"]])
def test_bad_flags_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_the_exit_status_table_is_in_help_and_the_readme(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == ExitCode.OK
    assert epilog() in capsys.readouterr().out
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start = readme.index("<!-- exit codes:")
    table = readme[readme.index("\n", start) + 1 : readme.index("<!-- end of exit codes -->")]
    assert table == markdown() + "\n"


@pytest.mark.parametrize(
    ("typo", "meant"),
    [("server", "serve"), ("key", "keys"), ("fsk", "fsck"), ("backups", "backup")],
)
def test_a_mistyped_command_names_the_closest_one(
    typo: str, meant: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main([typo, "--data-dir", str(tmp_path / "data")]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert f"unknown command {typo!r}; did you mean {meant!r}?" in err
    assert "unrecognized arguments" not in err
    assert not (tmp_path / "data").exists()  # nothing ran


def test_every_command_and_argument_has_help() -> None:
    def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    missing = [
        f"{parser.prog} {action.dest}"
        for parser in parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []
    assert all(parser.description for parser in parsers(build_parser()))


def test_version_and_module_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "filesd", "--version"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert result.stdout.startswith("filesd ")


def test_starts_on_defaults_in_the_working_directory(tmp_path: Path) -> None:
    # `filesd` with no config: open mode, ./filesd-data, announced on start-up.
    server = ServerProcess([], cwd=tmp_path)
    try:
        body = api(server, "/v1/files", key="sk-anything")
        assert body["object"] == "list"
        assert (tmp_path / "filesd-data" / "filesd.db").is_file()
    finally:
        assert server.stop() == 0
    assert "running open" in server.stderr_text()


def _post_json(server: ServerProcess, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(
        server.url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {ALPHA_KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_batch_apis_advice_to_edit_filesd_toml_and_restart_works(tmp_path: Path) -> None:
    # The 400 says: set [batches] upstream in filesd.toml, then restart filesd. Done as told,
    # with `filesd` started the same way both times (no --config), it takes effect.
    env = {"FILESD_CONFIG": ""}
    batch = {"input_file_id": "file-x", "endpoint": "/v1/embeddings", "completion_window": "24h"}
    server = ServerProcess([], cwd=tmp_path, env=env)
    try:
        status, body = _post_json(server, "/v1/batches", batch)
    finally:
        assert server.stop() == 0
    assert (status, body["error"]["code"]) == (400, "batches_disabled")
    assert "filesd.toml" in body["error"]["message"]
    assert "no configuration file" in server.stderr_text()
    (tmp_path / "filesd.toml").write_text('[batches]\nupstream = "echo"\n')
    server = ServerProcess([], cwd=tmp_path, env=env)
    try:
        status, body = _post_json(server, "/v1/batches", batch)
    finally:
        assert server.stop() == 0
    assert (status, body["object"]) == (200, "batch"), body
    loaded = f"configuration from {tmp_path / 'filesd.toml'} (the working directory)"
    assert loaded in server.stderr_text()


def test_config_file_precedence_flag_then_variable_then_working_directory(
    tmp_path: Path,
) -> None:
    for name in ("flag", "variable", "cwd"):
        (tmp_path / f"{name}.toml").write_text(f'[storage]\ndata_dir = "{name}-data"\n')
    (tmp_path / "cwd.toml").rename(tmp_path / "filesd.toml")

    def run(*args: str, variable: str = "") -> tuple[str, str]:
        """The data dir `filesd keys list` made, and its line about the configuration."""
        before = set(tmp_path.iterdir())
        result = subprocess.run(
            [sys.executable, "-m", "filesd", "keys", "list", *args],
            cwd=tmp_path,
            env={**os.environ, "FILESD_CONFIG": variable},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        made = [p.name for p in set(tmp_path.iterdir()) - before]
        assert len(made) == 1, made
        shutil.rmtree(tmp_path / made[0])
        return made[0], result.stderr.strip()

    flag, variable = tmp_path / "flag.toml", tmp_path / "variable.toml"
    assert run("--config", str(flag), variable=str(variable)) == (
        "flag-data",
        f"filesd: configuration from {flag} (--config)",
    )
    assert run(variable=str(variable)) == (
        "variable-data",
        f"filesd: configuration from {variable} (FILESD_CONFIG)",
    )
    assert run() == (
        "cwd-data",
        f"filesd: configuration from {tmp_path / 'filesd.toml'} (the working directory)",
    )
    (tmp_path / "filesd.toml").unlink()
    made, said = run()
    assert made == "filesd-data"
    assert said.startswith("filesd: no configuration file")
    # A variable that names no file is a mistake to report, not a reason to fall back.
    (tmp_path / "filesd.toml").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "filesd", "gc"],
        cwd=tmp_path,
        env={**os.environ, "FILESD_CONFIG": str(tmp_path / "missing.toml")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"config file not found: {tmp_path / 'missing.toml'}" in result.stderr
    assert not (tmp_path / "filesd-data").exists()


def _filesd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "filesd", *args],
        cwd=cwd,
        env={**os.environ, "FILESD_CONFIG": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_port_in_use_is_a_configuration_error_naming_the_setting(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = _filesd("serve", "--port", str(port), "--data-dir", "data", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert (
        f"server.port (--port): port {port} on 127.0.0.1 is already in use by another process"
        in result.stderr
    )
    assert "Errno" not in result.stderr


@pytest.mark.parametrize(
    ("host", "said"),
    [
        ("192.0.2.1", "'192.0.2.1' is not an address of this machine"),  # TEST-NET-1
        ("no-such-host.invalid", "cannot resolve 'no-such-host.invalid'"),
    ],
)
def test_a_host_to_listen_on_that_cannot_be_is_a_configuration_error(
    tmp_path: Path, host: str, said: str
) -> None:
    result = _filesd("serve", "--host", host, "--port", "0", "--data-dir", "data", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"server.host (--host): {said}" in result.stderr


@pytest.mark.parametrize("command", ["serve", "gc"])
def test_an_unusable_data_dir_is_a_configuration_error_naming_the_setting(
    tmp_path: Path, command: str
) -> None:
    # Under a regular file: no directory can be made there, not even by root (whom a chmod
    # would not stop).
    (tmp_path / "a-file").write_text("")
    data_dir = tmp_path / "a-file" / "data"
    result = _filesd(command, "--data-dir", str(data_dir), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"storage.data_dir: cannot use {data_dir} as the data directory" in result.stderr
    assert "Errno" not in result.stderr and "filesd.lock" not in result.stderr


def test_the_start_line_names_the_database_and_bucket_and_no_credentials_line_is_logged(
    tmp_path: Path, postgres_dsn: str, s3_bucket: Any
) -> None:
    dsn = urlsplit(postgres_dsn)
    password = dsn.password or "never-shown-password"  # trust auth ignores one it did not need
    user = dsn.username or "postgres"
    netloc = f"{user}:{password}@{dsn.hostname}:{dsn.port}"
    endpoint = urlsplit(s3_bucket.endpoint)
    config = tmp_path / "shared.toml"
    # Credentials from the environment: the chain that logs "Found credentials in ...".
    config.write_text(
        "[storage]\n"
        f'data_dir = "{tmp_path / "spool"}"\n'
        f'database = "{dsn._replace(netloc=netloc).geturl()}"\n'
        f'blobs = "{s3_bucket.blobs_url("team")}"\n'
        f'[storage.s3]\nendpoint = "{s3_bucket.endpoint}"\n'
        f"{KEYS_TOML}"
    )
    env = {**s3_bucket.env(), "FILESD_CONFIG": str(config)}
    server = ServerProcess(["--log-level", "info"], cwd=tmp_path, env=env)
    try:
        assert api(server, "/v1/files")["object"] == "list"
    finally:
        assert server.stop() == 0
    start_line = server.stdout_text().splitlines()[0]
    assert start_line == (
        f"filesd listening on {server.url} (metadata in PostgreSQL {user}@{dsn.hostname}:"
        f"{dsn.port}, database {dsn.path.lstrip('/')!r}; blobs in s3://{s3_bucket.bucket}/team"
        f" at {endpoint.hostname}:{endpoint.port}; local data in {tmp_path / 'spool'})"
    )
    assert server.data_dir == tmp_path / "spool"
    assert password not in server.stdout_text() + server.stderr_text()
    assert "INFO" in server.stderr_text()  # the level lets INFO lines through...
    assert "Found credentials" not in server.stderr_text()  # ...but not botocore's
    listed = subprocess.run(
        [sys.executable, "-m", "filesd", "keys", "list", "--log-level", "info"],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert "Found credentials" not in listed.stderr


def test_a_second_server_on_the_same_data_dir_is_refused(start_server: StartServer) -> None:
    first = start_server()
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "filesd",
            "--port",
            "0",
            "--data-dir",
            str(first.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == ExitCode.IN_USE
    assert "in use by another filesd process" in second.stderr


def test_keys_and_tokens_never_reach_the_logs(start_server: StartServer) -> None:
    server = start_server()
    api(server, "/v1/files")
    with pytest.raises(urllib.error.HTTPError):
        api(server, "/v1/files", key="sk-wrong-secret-123456")
    server.stop()
    log = server.stderr_text()
    assert "POST" in log or "GET" in log  # the access log is there...
    for secret in (ALPHA_KEY, BETA_KEY, "sk-wrong-secret-123456"):
        assert secret not in log  # ...and no key is in it


# --- lifecycle -------------------------------------------------------------------------------


def test_files_persist_across_restarts(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server()
    content = os.urandom(300_000)
    created = upload(server, content)
    deleted = upload(server, b"to delete")
    api(server, f"/v1/files/{deleted['id']}", method="DELETE")
    assert server.stop() == 0

    server = start_server()
    listing = api(server, "/v1/files")
    assert [f["id"] for f in listing["data"]] == [created["id"]]
    assert api(server, f"/v1/files/{created['id']}") == created
    assert api(server, f"/v1/files/{created['id']}/content") == content
    assert server.stop() == 0


def test_sigterm_finishes_requests_in_flight(start_server: StartServer) -> None:
    server = start_server()
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    content = os.urandom(4 * 1024 * 1024)
    request = raw_upload_request(host, int(port), content)
    half = len(request) // 2
    response: list[bytes] = []

    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request[:half])
        data_dir = server.data_dir
        assert data_dir is not None
        # The upload is in flight once its first batch reached a temp file.
        wait_until_sync(
            lambda: any(p.stat().st_size > 0 for p in temp_files(data_dir)),
            what="the upload streaming to disk",
        )
        server.proc.send_signal(signal.SIGTERM)
        wait_until_sync(lambda: "shutting down" in server.stderr_text(), what="the server draining")
        sender = threading.Thread(target=sock.sendall, args=(request[half:],))
        sender.start()
        response.append(_read_all(sock))
        sender.join()

    head, _, body = response[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    file_id = json.loads(body)["id"]
    assert server.stop() == 0

    server = start_server()
    got = api(server, f"/v1/files/{file_id}/content")
    assert hashlib.sha256(got).digest() == hashlib.sha256(content).digest()


def test_sigkill_mid_upload_leaves_no_trace(start_server: StartServer, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_server()
    committed = [upload(server, os.urandom(100_000 + i)) for i in range(3)]
    contents = {f["id"]: api(server, f"/v1/files/{f['id']}/content") for f in committed}
    blobs_before = sorted((data_dir / "blobs").rglob("*"))

    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    partial = os.urandom(8 * 1024 * 1024)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        # Announce 64 MiB, send 8 MiB, and kill the server while it waits for the rest.
        sock.sendall(raw_upload_request(host, int(port), partial, total=64 * 1024 * 1024))
        wait_until_sync(lambda: any(p.stat().st_size > 0 for p in temp_files(data_dir)))
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)
    assert temp_files(data_dir)  # the interrupted upload did leave a temp file...

    server = start_server()
    assert temp_files(data_dir) == []  # ...which start-up removed
    assert sorted((data_dir / "blobs").rglob("*")) == blobs_before
    listing = api(server, "/v1/files")
    assert sorted(f["id"] for f in listing["data"]) == sorted(contents)
    assert listing["total"] == 3
    for file_id, content in contents.items():
        assert api(server, f"/v1/files/{file_id}/content") == content
    assert server.stop() == 0


def _peak_rss(pid: int) -> int:
    """Peak resident set size of a process, in bytes (VmHWM from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_memory_stays_flat_for_a_large_file(start_server: StartServer) -> None:
    server = start_server()
    upload(server, b"warm-up")
    baseline = _peak_rss(server.proc.pid)

    size = 256 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    request = raw_upload_request(host, int(port), b"", total=size)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(request)
        for _ in range(size // len(block)):
            sock.sendall(block)
        sock.sendall(b"\r\n--crash-test-boundary--\r\n")
        head, _, body = _read_all(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    created = json.loads(body)
    assert created["bytes"] == size

    req = urllib.request.Request(
        f"{server.url}/v1/files/{created['id']}/content",
        headers={"Authorization": f"Bearer {ALPHA_KEY}"},
    )
    received = 0
    digest = hashlib.sha256()
    with urllib.request.urlopen(req, timeout=60) as resp:
        while chunk := resp.read(1024 * 1024):
            received += len(chunk)
            digest.update(chunk)
    assert received == size
    assert digest.hexdigest() == hashlib.sha256(block * (size // len(block))).hexdigest()

    growth = _peak_rss(server.proc.pid) - baseline
    print(f"peak RSS growth for a 256 MiB upload and download: {growth / 2**20:.1f} MiB")
    assert growth < 64 * 1024 * 1024
    assert server.stop() == 0


def test_access_log_lines_carry_the_request_id(start_server: StartServer) -> None:
    server = start_server()
    req = urllib.request.Request(
        server.url + "/v1/files?limit=5", headers={"Authorization": f"Bearer {ALPHA_KEY}"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        request_id = resp.headers["x-request-id"]
    assert server.stop() == 0
    lines = [line for line in server.stderr_text().splitlines() if request_id in line]
    assert len(lines) == 1
    assert '"GET /v1/files?limit=5" 200' in lines[0]


def test_log_level_and_access_log_settings(start_server: StartServer) -> None:
    quiet = start_server(extra_config="[log]\naccess_log = false\n")
    api(quiet, "/v1/files")
    assert quiet.stop() == 0
    assert '"GET /v1/files' not in quiet.stderr_text()
    warn_only = start_server(extra_config='[log]\nlevel = "warning"\n')
    api(warn_only, "/v1/files")
    assert warn_only.stop() == 0
    log = warn_only.stderr_text()
    assert '"GET /v1/files' not in log and " INFO " not in log
