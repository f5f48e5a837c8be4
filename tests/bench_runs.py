"""Running a benchmark script of bench/ in its quick mode, and reading its Markdown table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_quick(
    script: str, tmp_path: Path, *, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`python bench/<script> --quick`, its temporary data under `tmp_path` (BENCH_DIR)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "BENCH_DIR": str(tmp_path)},
    )


def table_rows(stdout: str) -> dict[str, list[str]]:
    """measure -> the cells after it, of every row of the table printed (not its header)."""
    return {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| measure")
    }


def number(cell: str) -> float:
    return float(cell.replace(",", ""))
