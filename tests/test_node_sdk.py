"""The official `openai` npm SDK, on the machine's Node.js, against a real filesd."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from .conftest import ServerProcess

NODE_DIR = Path(__file__).resolve().parent / "node"

pytestmark = pytest.mark.slow


def test_node_sdk(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js is needed for this test: install it (see README)"
    assert (NODE_DIR / "node_modules" / "openai").is_dir(), (
        "the npm SDK is not installed: run `npm ci --prefix tests/node` (see README)"
    )
    # Open mode: a fresh token is a fresh, empty project.
    server = ServerProcess(["--data-dir", str(tmp_path / "data")], cwd=tmp_path)
    try:
        result = subprocess.run(
            [node, "sdk_check.mjs"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=120,
            env={
                **os.environ,
                "FILESD_BASE_URL": server.base_url,
                "FILESD_API_KEY": f"sk-{uuid.uuid4().hex}",
            },
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 passed, 0 failed" in result.stdout, result.stdout
