"""The benchmark runs (quick mode) and reports every measure; its ratios are not checked here."""

from __future__ import annotations

from pathlib import Path

import pytest

from .bench_runs import run_quick, table_rows

pytestmark = pytest.mark.slow

MEASURES = [
    "large upload (MiB/s)",
    "large download (MiB/s)",
    "small uploads (files/s)",
    "small downloads (req/s)",
    "metadata (req/s)",
    "list: first page p50 (ms)",
    "list: offset 90% p50 (ms)",
    "list: after paging p50 (ms)",
    "memory: peak RSS growth (MiB)",
    "CPU: metadata GET (µs)",
    "CPU: list page of 20 (µs)",
    "CPU: 4 KiB download (µs)",
    "CPU: 4 KiB upload (µs)",
]
# Measured on the floor too, with a ratio.
COMPARED = [*MEASURES[:5], *MEASURES[9:]]


def test_quick_benchmark_reports_every_measure(tmp_path: Path) -> None:
    result = run_quick("run.py", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table_rows(result.stdout)
    for measure in MEASURES:
        filesd = rows[measure][0]
        assert float(filesd.replace(",", "")) >= 0, (measure, rows[measure])
    for measure in COMPARED:  # the floor is measured beside filesd, and a ratio printed
        assert rows[measure][1] != "-" and float(rows[measure][3]) > 0, rows[measure]
    assert list(tmp_path.iterdir()) == []  # the run cleaned up after itself
