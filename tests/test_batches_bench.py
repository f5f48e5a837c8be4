"""bench/batches.py runs (quick mode) and reports every measure; its speed is not judged,
its memory is: the server's peak RSS growth over the batch stays bounded (streaming)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

MEASURES = [
    "requests",
    "validation (s)",
    "in progress (requests/s)",
    "end to end (requests/s)",
    "memory: peak RSS growth (MiB)",
]


def test_quick_batch_benchmark_reports_every_measure(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "batches.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "BENCH_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): line.split("|")[2].strip()
        for line in result.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| measure")
    }
    for measure in MEASURES:
        assert float(rows[measure].replace(",", "")) >= 0, (measure, rows)
    assert rows["requests"] == "2,000"
    # Streamed, the server's memory does not grow with the batch (measured ~10-20 MiB).
    growth = float(rows["memory: peak RSS growth (MiB)"].replace(",", ""))
    assert growth < 64, rows
    assert float(rows["in progress (requests/s)"].replace(",", "")) > 0
    assert list(tmp_path.iterdir()) == []  # the run cleaned up after itself
