"""bench/batches.py runs (quick mode) and reports every measure; its speed is not judged,
its memory is: the server's peak RSS growth over the batch stays bounded (streaming)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .bench_runs import run_quick, table_rows

pytestmark = pytest.mark.slow

MEASURES = [
    "requests",
    "validation (s)",
    "in progress (requests/s)",
    "end to end (requests/s)",
    "memory: peak RSS growth (MiB)",
]


def test_quick_batch_benchmark_reports_every_measure(tmp_path: Path) -> None:
    result = run_quick("batches.py", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {measure: cells[0] for measure, cells in table_rows(result.stdout).items()}
    for measure in MEASURES:
        assert float(rows[measure].replace(",", "")) >= 0, (measure, rows)
    assert rows["requests"] == "2,000"
    # Streamed, the server's memory does not grow with the batch (measured ~10-20 MiB).
    growth = float(rows["memory: peak RSS growth (MiB)"].replace(",", ""))
    assert growth < 64, rows
    assert float(rows["in progress (requests/s)"].replace(",", "")) > 0
    assert list(tmp_path.iterdir()) == []  # the run cleaned up after itself
