"""The shared-backends benchmark runs (quick mode) on its own PostgreSQL and moto S3 servers and
reports every measure with numbers; its ratios are not checked here (no timing assertions)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .pg_service import unavailable

ROOT = Path(__file__).resolve().parent.parent

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


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_quick_shared_benchmark_reports_every_measure(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "shared.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BENCH_DIR": str(tmp_path)},
    )
    if result.returncode == 2 and "cannot run:" in result.stderr:
        unavailable(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in result.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| measure")
    }
    assert sorted(rows) == sorted(RATES + LATENCIES), sorted(rows)
    for measure in RATES + LATENCIES:
        filesd, baseline, _what, ratio, _target = rows[measure]
        assert _number(filesd) > 0 and _number(baseline) > 0, (measure, rows[measure])
        if measure in RATES:
            assert _number(ratio) > 0, (measure, rows[measure])
        else:
            assert ratio == "-", (measure, rows[measure])
    # The run cleaned up after itself: its temp dir, and the PostgreSQL cluster's (in /tmp).
    assert list(tmp_path.iterdir()) == []
    cluster = re.search(r"^PostgreSQL in (\S+),", result.stderr, re.MULTILINE)
    assert cluster is not None, result.stderr[-3000:]
    assert not Path(cluster.group(1)).exists()
