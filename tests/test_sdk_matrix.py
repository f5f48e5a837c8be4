"""The same SDK test module under other releases of the `openai` SDK, each in its own venv.

The main run covers the current release (the `dev` extra installs it). Here the last 1.x
release runs `test_sdk.py` unchanged (on the embedded backends), so code written against
either works with filesd.
The venvs are cached under `.venv-sdk/` (ignored by git) and built on first use.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OTHER_RELEASES = ["1.109.1"]  # the last 1.x release

pytestmark = pytest.mark.slow


def _venv_with(version: str) -> Path:
    venv = ROOT / ".venv-sdk" / f"openai-{version}"
    python = venv / "bin" / "python"
    marker = venv / "ready"
    # Rebuilt when filesd's own dependencies change, not only the SDK's version.
    wanted = f"{version} {hashlib.sha256((ROOT / 'pyproject.toml').read_bytes()).hexdigest()}"
    if not marker.exists() or marker.read_text() != wanted:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-e",
                str(ROOT),
                "pytest",
                "pytest-aiohttp",
                "jsonschema",  # tests/conftest.py checks responses against OpenAPI
                f"openai=={version}",
            ],
            check=True,
            timeout=600,
        )
        marker.write_text(wanted)
    return python


@pytest.mark.parametrize("version", OTHER_RELEASES)
def test_sdk_module_passes_with_openai(version: str) -> None:
    python = _venv_with(version)
    installed = subprocess.run(
        [str(python), "-c", "import openai; print(openai.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert installed == version
    # On the embedded backends only: what differs between SDK releases is the client, and the
    # main run covers PostgreSQL + S3 (their drivers and moto stay out of this venv).
    pytest_args = ["-q", "-p", "no:cacheprovider", "tests/test_sdk.py", "-k", "embedded"]
    result = subprocess.run(
        [str(python), "-m", "pytest", *pytest_args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
