"""Kill filesd at random moments under load, restart it, and check that nothing was lost.

Each round: a real `filesd serve` on the same data directory, concurrent uploads, downloads and
deletes, SIGKILL at a random moment, restart. Then: every upload that got a 200 is listed and
downloads byte-identical; every delete that got a 200 stays deleted; whatever else is visible
(an upload committed just before the kill, its 200 lost) is a whole payload that was sent; and
at the end `filesd fsck` finds nothing wrong. FILESD_CRASH_ROUNDS sets the number of rounds.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from .conftest import ServerProcess, wait_until


def _blob_digests(data_dir: Path) -> list[str]:
    return [p.name for p in (data_dir / "blobs").glob("*/*") if p.is_file()]


pytestmark = pytest.mark.slow

ROUNDS = int(os.environ.get("FILESD_CRASH_ROUNDS", "30"))
AUTH = {"Authorization": "Bearer sk-crash-loop"}


@dataclass
class Ledger:
    acknowledged: dict[str, str] = field(default_factory=dict)  # file id -> sha256
    deleted: set[str] = field(default_factory=set)  # deletes that got a 200
    maybe_deleted: set[str] = field(default_factory=set)  # deletes whose answer was lost
    sent: set[str] = field(default_factory=set)  # sha256 of every payload ever sent
    errors: list[str] = field(default_factory=list)


async def _load(url: str, ledger: Ledger, rng: random.Random, killed: threading.Event) -> None:
    async def uploader(session: aiohttp.ClientSession) -> None:
        while not killed.is_set():
            content = rng.randbytes(rng.choice([10, 4096, 70_000, 300_000, 1_500_000]))
            digest = hashlib.sha256(content).hexdigest()
            ledger.sent.add(digest)
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", io.BytesIO(content), filename="crash.bin")
            try:
                async with session.post(f"{url}/v1/files", data=form, headers=AUTH) as r:
                    if r.status == 200:
                        ledger.acknowledged[(await r.json())["id"]] = digest
                    else:
                        ledger.errors.append(f"upload answered {r.status}")
            except (TimeoutError, aiohttp.ClientError):
                return

    async def downloader(session: aiohttp.ClientSession) -> None:
        while not killed.is_set():
            live = [
                i for i in ledger.acknowledged if i not in ledger.deleted | ledger.maybe_deleted
            ]
            if not live:
                await asyncio.sleep(0.01)
                continue
            file_id = rng.choice(live)
            try:
                async with session.get(f"{url}/v1/files/{file_id}/content", headers=AUTH) as r:
                    body = await r.read()
                    if file_id in ledger.maybe_deleted | ledger.deleted:
                        continue  # deleted meanwhile
                    if (
                        r.status != 200
                        or hashlib.sha256(body).hexdigest() != ledger.acknowledged[file_id]
                    ):
                        ledger.errors.append(f"download of {file_id}: {r.status}")
            except (TimeoutError, aiohttp.ClientError):
                return

    async def deleter(session: aiohttp.ClientSession) -> None:
        while not killed.is_set():
            await asyncio.sleep(0.02)
            live = [
                i for i in ledger.acknowledged if i not in ledger.deleted | ledger.maybe_deleted
            ]
            if len(live) < 3:
                continue
            file_id = rng.choice(live)
            ledger.maybe_deleted.add(file_id)
            try:
                async with session.delete(f"{url}/v1/files/{file_id}", headers=AUTH) as r:
                    if r.status == 200:
                        ledger.deleted.add(file_id)
                        ledger.maybe_deleted.discard(file_id)
            except (TimeoutError, aiohttp.ClientError):
                return

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        workers = [uploader(session) for _ in range(4)]
        workers += [downloader(session) for _ in range(2)]
        workers.append(deleter(session))
        await asyncio.gather(*workers)


async def _check(url: str, ledger: Ledger) -> None:
    async with aiohttp.ClientSession() as session:
        listed: dict[str, int] = {}
        after = ""
        while True:
            async with session.get(f"{url}/v1/files?limit=1000{after}", headers=AUTH) as r:
                page = await r.json()
            listed.update({f["id"]: f["bytes"] for f in page["data"]})
            if not page["has_more"]:
                break
            after = f"&after={page['last_id']}"
        assert page["total"] == len(listed)
        for file_id in ledger.acknowledged:
            if file_id in ledger.deleted:
                assert file_id not in listed, f"deleted file {file_id} came back"
            elif file_id not in ledger.maybe_deleted:
                assert file_id in listed, f"acknowledged file {file_id} was lost"
        for file_id, size in listed.items():
            async with session.get(f"{url}/v1/files/{file_id}/content", headers=AUTH) as r:
                body = await r.read()
            assert r.status == 200 and len(body) == size, f"{file_id} is partial"
            digest = hashlib.sha256(body).hexdigest()
            assert digest == ledger.acknowledged.get(file_id, digest), f"{file_id} changed"
            assert digest in ledger.sent, f"{file_id} holds bytes nobody sent"
            # Unknown outcomes are settled now: what is listed is there, what is not is gone.
            ledger.acknowledged.setdefault(file_id, digest)
        for file_id in list(ledger.maybe_deleted):
            if file_id not in listed:
                ledger.deleted.add(file_id)
            ledger.maybe_deleted.discard(file_id)


def _kill(proc: subprocess.Popen[bytes], killed: threading.Event) -> None:
    proc.send_signal(signal.SIGKILL)
    killed.set()


def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rng = random.Random(int(os.environ.get("FILESD_CRASH_SEED", time.time_ns())))
    ledger = Ledger()
    for round_ in range(ROUNDS):
        server = ServerProcess(["--data-dir", str(data)], cwd=tmp_path)
        asyncio.run(_check(server.url, ledger))
        killed = threading.Event()
        timer = threading.Timer(rng.uniform(0.05, 0.8), _kill, (server.proc, killed))
        timer.start()
        asyncio.run(_load(server.url, ledger, rng, killed))
        timer.join()
        server.proc.wait(timeout=10)
        assert ledger.errors == [], f"round {round_}: {ledger.errors}"

    server = ServerProcess(["--data-dir", str(data)], cwd=tmp_path)
    asyncio.run(_check(server.url, ledger))
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
