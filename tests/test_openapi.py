"""/openapi.json: served, and checked by schemathesis against a live server (bounded)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from .conftest import ServerProcess

pytestmark = pytest.mark.slow


def test_schemathesis_finds_no_500_and_no_schema_violation(tmp_path: Path) -> None:
    server = ServerProcess(["--data-dir", str(tmp_path / "data")], cwd=tmp_path)
    try:
        with urllib.request.urlopen(f"{server.url}/openapi.json", timeout=10) as resp:
            document = json.load(resp)
        assert document["openapi"].startswith("3.1")
        assert "/v1/files/{file_id}/content" in document["paths"]
        # The venv's own script first: the venv need not be on PATH.
        schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
        schemathesis = schemathesis or shutil.which("schemathesis")
        assert schemathesis is not None, "schemathesis is a dev dependency: pip install -e '.[dev]'"
        result = subprocess.run(
            [
                schemathesis,
                "run",
                f"{server.url}/openapi.json",
                "--url",
                server.url,
                "-H",
                "Authorization: Bearer sk-schemathesis",
                "--max-examples",
                "15",
                "--checks",
                "not_a_server_error,response_schema_conformance,status_code_conformance",
                "--request-timeout",
                "10",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,  # schemathesis writes its .schemathesis/ cache into the cwd
        )
    finally:
        assert server.stop() == 0
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout.lower().split("summary")[-1]
