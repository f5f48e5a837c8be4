"""The shared-backends benchmark runs (quick mode) on its own PostgreSQL and moto S3 servers and
reports every measure with numbers; its ratios are not checked here (no timing assertions)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .bench_runs import number, run_quick, table_rows
from .pg_service import unavailable

pytestmark = pytest.mark.slow

RATES = [
    "large upload (MiB/s)",
    "large upload vs multipart (MiB/s)",
    "large download (MiB/s)",
    "large download, redirect (MiB/s)",
    "small uploads (files/s)",
    "small uploads vs direct PUT (files/s)",
    "small downloads (req/s)",
    "metadata (req/s)",
    "CPU: metadata GET (µs)",
    "CPU: list page of 20 (µs)",
    "CPU: 4 KiB download (µs)",
    "CPU: 4 KiB upload (µs)",
    "metadata, two instances (req/s)",
]
LATENCIES = [
    "list: first page p50 (ms)",
    "list: after paging p50 (ms)",
    "list: offset 90% p50 (ms)",
]


def test_quick_shared_benchmark_reports_every_measure(tmp_path: Path) -> None:
    result = run_quick("shared.py", tmp_path, timeout=300)
    if result.returncode == 2 and "cannot run:" in result.stderr:
        unavailable(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table_rows(result.stdout)
    assert sorted(rows) == sorted(RATES + LATENCIES), sorted(rows)
    for measure in RATES + LATENCIES:
        filesd, baseline, _what, ratio, _target = rows[measure]
        assert number(filesd) > 0 and number(baseline) > 0, (measure, rows[measure])
        if measure in RATES:
            assert number(ratio) > 0, (measure, rows[measure])
        else:
            assert ratio == "-", (measure, rows[measure])
    # The run cleaned up after itself: its temp dir, and the PostgreSQL cluster's (in /tmp).
    assert list(tmp_path.iterdir()) == []
    cluster = re.search(r"^PostgreSQL in (\S+),", result.stderr, re.MULTILINE)
    assert cluster is not None, result.stderr[-3000:]
    assert not Path(cluster.group(1)).exists()
