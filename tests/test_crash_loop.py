"""Kill filesd at random moments under load, restart it, and check that nothing was lost.

Each round: a real `filesd serve` on the same data directory, concurrent uploads, downloads and
deletes, SIGKILL at a random moment, restart. Then: every upload that got a 200 is listed and
downloads byte-identical; every delete that got a 200 stays deleted; whatever else is visible
(an upload committed just before the kill, its 200 lost) is a whole payload that was sent; and
at the end `filesd fsck` finds nothing wrong. FILESD_CRASH_ROUNDS sets the number of rounds.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import ServerProcess, wait_until
from .crash_ledger import Ledger, check, kill, load


def _blob_digests(data_dir: Path) -> list[str]:
    return [p.name for p in (data_dir / "blobs").glob("*/*") if p.is_file()]


pytestmark = pytest.mark.slow

ROUNDS = int(os.environ.get("FILESD_CRASH_ROUNDS", "30"))
AUTH = {"Authorization": "Bearer sk-crash-loop"}


def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rng = random.Random(int(os.environ.get("FILESD_CRASH_SEED", time.time_ns())))
    ledger = Ledger()
    for round_ in range(ROUNDS):
        server = ServerProcess(["--data-dir", str(data)], cwd=tmp_path)
        asyncio.run(check(server.url, ledger, AUTH))
        killed = threading.Event()
        timer = threading.Timer(rng.uniform(0.05, 0.8), kill, (server.proc, killed))
        timer.start()
        asyncio.run(load([server.url], ledger, rng, killed, AUTH))
        timer.join()
        server.proc.wait(timeout=10)
        assert ledger.errors == [], f"round {round_}: {ledger.errors}"

    server = ServerProcess(["--data-dir", str(data)], cwd=tmp_path)
    asyncio.run(check(server.url, ledger, AUTH))
    # The start-up clean-up of orphaned blobs runs in the background: wait until the blobs on
    # disk are exactly those of the files still live.
    live = {d for i, d in ledger.acknowledged.items() if i not in ledger.deleted}
    asyncio.run(wait_until(lambda: set(_blob_digests(data)) == live, what="orphaned blobs swept"))
    assert server.stop() == 0
    fsck = subprocess.run(
        [sys.executable, "-m", "filesd", "fsck", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    print(
        f"{ROUNDS} kills: {len(ledger.acknowledged)} files stored, {len(ledger.deleted)} deleted, "
        f"{len(ledger.sent)} uploads sent"
    )
    assert len(ledger.acknowledged) > ROUNDS, "the load did too little to mean anything"
