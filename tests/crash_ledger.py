"""The load and the check of the crash-loop tests (one instance, and two on shared backends).

A `Ledger` records what the servers acknowledged while `load` ran uploads, downloads and
deletes until an instance was killed; `check` then asserts through one instance that nothing
acknowledged was lost, nothing deleted came back and nothing visible holds bytes never sent,
and settles the outcomes whose answers the kill cut off.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import signal
import subprocess
import threading
from dataclasses import dataclass, field

import aiohttp


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@dataclass
class Ledger:
    acknowledged: dict[str, str] = field(default_factory=dict)  # file id -> sha256
    deleted: set[str] = field(default_factory=set)  # deletes that got a 200
    maybe_deleted: set[str] = field(default_factory=set)  # deletes whose answer was lost
    sent: set[str] = field(default_factory=set)  # sha256 of every payload ever sent
    pool: list[bytes] = field(default_factory=list)  # payloads sent again (identical bytes)
    errors: list[str] = field(default_factory=list)

    def live(self) -> list[str]:
        gone = self.deleted | self.maybe_deleted
        return [i for i in self.acknowledged if i not in gone]


def kill(proc: subprocess.Popen[bytes], killed: threading.Event) -> None:
    proc.send_signal(signal.SIGKILL)
    killed.set()


async def load(
    urls: list[str],
    ledger: Ledger,
    rng: random.Random,
    killed: threading.Event,
    auth: dict[str, str],
) -> None:
    """Uploads and deletes on every instance, downloads through the next one, until the kill
    (the first request that fails ends each worker)."""

    def payload() -> bytes:
        if ledger.pool and rng.random() < 0.3:
            return rng.choice(ledger.pool)
        content = rng.randbytes(rng.choice([10, 4096, 70_000, 300_000, 1_048_576 + 17]))
        if len(ledger.pool) < 8:
            ledger.pool.append(content)
        return content

    async def uploader(session: aiohttp.ClientSession, url: str) -> None:
        while not killed.is_set():
            content = payload()
            digest = sha(content)
            ledger.sent.add(digest)
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", io.BytesIO(content), filename="crash.bin")
            try:
                async with session.post(f"{url}/v1/files", data=form, headers=auth) as r:
                    if r.status == 200:
                        ledger.acknowledged[(await r.json())["id"]] = digest
                    else:
                        ledger.errors.append(f"upload to {url} answered {r.status}")
            except (TimeoutError, aiohttp.ClientError):
                return

    async def downloader(session: aiohttp.ClientSession, url: str) -> None:
        while not killed.is_set():
            live = ledger.live()
            if not live:
                await asyncio.sleep(0.01)  # not a wait for a condition: nothing to read yet
                continue
            file_id = rng.choice(live)
            try:
                async with session.get(f"{url}/v1/files/{file_id}/content", headers=auth) as r:
                    body = await r.read()
                    if file_id in ledger.maybe_deleted | ledger.deleted:
                        continue  # deleted meanwhile
                    if r.status != 200 or sha(body) != ledger.acknowledged[file_id]:
                        ledger.errors.append(f"download of {file_id} from {url}: {r.status}")
            except (TimeoutError, aiohttp.ClientError):
                return

    async def deleter(session: aiohttp.ClientSession, url: str) -> None:
        while not killed.is_set():
            live = ledger.live()
            if len(live) < 3:
                await asyncio.sleep(0.02)  # not a wait for a condition: too few files yet
                continue
            file_id = rng.choice(live)
            ledger.maybe_deleted.add(file_id)
            try:
                async with session.delete(f"{url}/v1/files/{file_id}", headers=auth) as r:
                    if r.status == 200:
                        ledger.deleted.add(file_id)
                        ledger.maybe_deleted.discard(file_id)
                    else:
                        ledger.errors.append(f"delete of {file_id} on {url}: {r.status}")
            except (TimeoutError, aiohttp.ClientError):
                return
            await asyncio.sleep(0.05)  # pacing, so that most files live a while

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        workers = []
        for i, url in enumerate(urls):
            following = urls[(i + 1) % len(urls)]
            workers += [uploader(session, url) for _ in range(8 // (2 * len(urls)) + 2)]
            workers += [downloader(session, following), deleter(session, url)]
        await asyncio.gather(*workers)


async def check(url: str, ledger: Ledger, auth: dict[str, str]) -> None:
    """Through `url`: every acknowledged, not deleted file is listed and whole; whatever is
    listed is bytes that were sent; deleted files stay deleted. Outcomes the kill left
    unknown are settled: what is listed is there, what is not is gone."""
    async with aiohttp.ClientSession() as session:
        listed: dict[str, int] = {}
        query = {"limit": "1000"}
        while True:
            async with session.get(f"{url}/v1/files", params=query, headers=auth) as r:
                page = await r.json()
            listed.update({f["id"]: f["bytes"] for f in page["data"]})
            if not page["has_more"]:
                break
            query["after"] = page["last_id"]
        assert page["total"] == len(listed)
        for file_id in ledger.acknowledged:
            if file_id in ledger.deleted:
                assert file_id not in listed, f"deleted file {file_id} came back"
            elif file_id not in ledger.maybe_deleted:
                assert file_id in listed, f"acknowledged file {file_id} was lost"
        for file_id, size in listed.items():
            async with session.get(f"{url}/v1/files/{file_id}/content", headers=auth) as r:
                body = await r.read()
            assert r.status == 200 and len(body) == size, f"{file_id} is partial"
            digest = sha(body)
            assert digest == ledger.acknowledged.get(file_id, digest), f"{file_id} changed"
            assert digest in ledger.sent, f"{file_id} holds bytes nobody sent"
            ledger.acknowledged.setdefault(file_id, digest)
        for file_id in list(ledger.maybe_deleted):
            if file_id not in listed:
                ledger.deleted.add(file_id)
            ledger.maybe_deleted.discard(file_id)
