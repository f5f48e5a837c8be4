"""The README's snippets, run as a reader would run them, and its claims checked against the code.

Every ```python block is run against a real filesd (`filesd.testing.serve`), reaching it the way
the README tells the reader to: through OPENAI_BASE_URL and OPENAI_API_KEY, set by its `export`
line. Every ```sh block is run or checked here, or is marked, just above it,
`<!-- readme-test: not run: <reason> -->`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from filesd.testing import serve

from .pg_service import PostgresServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
NOT_RUN = re.compile(r"<!-- readme-test: not run: (?P<reason>[^>]*\w[^>]*) -->\n*$")
BLOCK = re.compile(r"^```(?P<lang>\w*)\n(?P<code>.*?)^```", re.M | re.S)


def blocks(*langs: str) -> list[tuple[str, str | None]]:
    """The README's blocks in these languages: (code, the reason it is not run, if marked)."""
    found = []
    for match in BLOCK.finditer(README):
        if match.group("lang") in langs:
            marked = NOT_RUN.search(README[: match.start()])
            found.append((match.group("code"), marked.group("reason") if marked else None))
    return found


def block_starting(first: str) -> str:
    [code] = [code for code, _ in blocks("sh") if code.startswith(first)]
    return code


def sdk_env(base_url: str) -> dict[str, str]:
    """The environment the README's `export` line sets, pointed at this server."""
    [line] = [
        line for line in block_starting("export OPENAI_BASE_URL").splitlines() if line.strip()
    ]
    names = dict(word.split("=", 1) for word in shlex.split(line)[1:])
    assert set(names) == {"OPENAI_BASE_URL", "OPENAI_API_KEY"}
    return {**os.environ, **names, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "sk-test-readme"}


def run_python(code: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{code}\n--- stderr:\n{done.stderr}"
    return done.stdout


def test_every_python_snippet_runs(tmp_path: Path) -> None:
    python = blocks("python")
    assert python and all(reason is None for _, reason in python)
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (tmp_path / "big.jsonl").write_bytes(b'{"a": 1}\n' * 200_000)  # two parts of 1 MiB+
    with serve(batches={"upstream": "echo"}) as server:
        env = sdk_env(server.base_url)
        outputs = []
        for code, _ in python:
            if "def test_" in code:  # a test for the pytest plugin: run by pytest
                (tmp_path / "test_snippet.py").write_text(code)
                done = subprocess.run(
                    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                     "test_snippet.py"],
                    cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                    check=False,
                )  # fmt: skip
                assert done.returncode == 0, done.stdout + done.stderr
                outputs.append(done.stdout)
            else:
                outputs.append(run_python(code, tmp_path, env))
    assert re.search(r"^completed \S+$", "".join(outputs), re.M)  # the chunked upload's print
    assert "What is 2+2?" in "".join(outputs)  # the echo model's answers, printed


def test_the_batch_snippet_survives_a_batch_whose_every_request_failed(tmp_path: Path) -> None:
    [code] = [code for code, _ in blocks("python") if "client.batches.create" in code]
    always_400 = {"route": "/v1/chat/completions", "status": 400}
    with serve(batches={"upstream": "echo"}, testing={"faults": [always_400]}) as server:
        out = run_python(code, tmp_path, sdk_env(server.base_url))
    assert "completed" in out and "What is 2+2?" in out  # the error lines, by custom_id
    assert '"status_code": 400' in out


def test_every_sh_snippet_is_checked_or_marked() -> None:
    checked = ("pip install . ", "pip install '.[postgres,s3]'", "export OPENAI_BASE_URL",
               "KEY=", "createuser")  # fmt: skip
    for code, reason in blocks("sh", "bash"):
        assert reason or code.startswith(checked), f"neither checked nor marked:\n{code}"


def test_the_install_commands_name_what_the_checkout_offers() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    first = block_starting("pip install . ")
    assert first.split() == ["pip", "install", ".", "&&", "filesd"]
    assert project["scripts"] == {"filesd": "filesd.cli:entrypoint"}
    extras = shlex.split(block_starting("pip install '.[postgres,s3]'").split("#")[0])
    assert extras == ["pip", "install", ".[postgres,s3]"]
    assert {"postgres", "s3"} <= set(project["optional-dependencies"])
    done = subprocess.run(
        [sys.executable, "-m", "filesd", "--help"], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0 and "serve" in done.stdout


def test_the_runtime_dependencies_the_readme_lists_are_pyprojects() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    sentence = re.search(r"runtime dependencies: (?P<deps>[^;]*);(?P<extras>[^)]*)\)", README)
    assert sentence, "the README's runtime-dependency sentence is gone"
    listed = re.findall(r"`([^`]+)`", sentence.group("deps"))
    declared = [re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0] for dep in project["dependencies"]]
    assert sorted(listed) == sorted(declared)
    extras = dict(re.findall(r"`filesd\[(\w+)\]` adds? `([^`]+)`", sentence.group("extras")))
    optional = project["optional-dependencies"]
    assert extras == {
        name: re.split(r"[<>=!~\[; ]", optional[name][0], maxsplit=1)[0] for name in extras
    }
    assert set(extras) == {"postgres", "s3"} and all(len(optional[n]) == 1 for n in extras)


def test_the_curl_snippet_runs(tmp_path: Path) -> None:
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4 a report")
    code = block_starting("KEY=")
    with serve() as server:
        created = server.new_project()
        with created.openai() as client:
            file_id = client.files.create(file=("kept.txt", b"kept"), purpose="batch").id
        script = code.replace("http://127.0.0.1:8080", server.url).replace(
            "KEY=sk-test-alpha", f"KEY={created.api_key}"
        )
        done = subprocess.run(
            ["bash", "-e", "-c", script], cwd=tmp_path, env={**os.environ, "ID": file_id},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert '"filename":"report.pdf"' in done.stdout.replace(" ", "")
        assert (tmp_path / "kept.txt").read_bytes() == b"kept"  # -OJ: the file's own name
        assert '"deleted":true' in done.stdout.replace(" ", "")


def test_the_postgres_set_up_gives_filesd_a_database_it_can_build_in(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """On PostgreSQL 15+ only a database's owner may create tables in it: the README's two
    commands, run as the postgres user, must leave the `filesd` role able to."""
    setup = [
        line.split("#")[0].strip()
        for line in block_starting("createuser").splitlines()
        if line.startswith(("createuser", "createdb"))
    ]
    assert len(setup) == 2
    env = {
        **os.environ, "PGHOST": postgres_server.host, "PGPORT": str(postgres_server.port),
        "PGUSER": "postgres",
    }  # fmt: skip

    def run(command: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(postgres_server.bin_dir / command[0]), *command[1:]],
            env=env, input=stdin, capture_output=True, text=True, timeout=60,
            check=False, start_new_session=True,  # no terminal: the password prompt reads stdin
        )  # fmt: skip

    try:
        for command in setup:
            done = run(shlex.split(command), "secret-1\nsecret-1\n")
            assert done.returncode == 0, done.stderr
        dsn = f"postgresql://filesd@{postgres_server.host}:{postgres_server.port}/filesd"
        with serve(storage={"database": dsn}) as server, server.new_project().openai() as client:
            created = client.files.create(file=b"in postgres", purpose="batch")
            assert client.files.content(created.id).read() == b"in postgres"
    finally:
        # The session's cluster is shared: other tests count on there being no `filesd` role.
        run(["dropdb", "--if-exists", "filesd"])
        run(["dropuser", "--if-exists", "filesd"])


def test_the_several_instances_block_says_where_its_tools_come_from() -> None:
    lines = [line.split("#")[0].strip() for line in block_starting("createuser").splitlines()]
    [install] = [i for i, line in enumerate(lines) if line.startswith("pip install")]
    assert {"moto[server]", "awscli"} <= set(shlex.split(lines[install])[2:])
    used = [i for i, line in enumerate(lines) if "moto.server" in line or line.startswith("aws ")]
    assert used and install < min(used)
    done = subprocess.run(
        [sys.executable, "-m", "moto.server", "--help"], capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and "--port" in done.stdout
