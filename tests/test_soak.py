"""The soak script runs (short form): no errors, no leak of memory or descriptors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_short_soak_has_no_errors_and_no_leaks() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--clients", "8", "--seconds", "8"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "errors: 0" in result.stdout
    requests = int(result.stdout.split(" requests ")[0].rsplit(" ", 1)[1])
    assert requests > 100, result.stdout
