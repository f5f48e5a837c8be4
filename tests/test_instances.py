"""Several real `filesd serve` processes on one PostgreSQL database and one S3 bucket (SPEC §5),
seen only through HTTP (and, to look inside, the bucket's listing and a few database rows).

What one instance acknowledges, every other serves at once; a delete through one is a 404 on
all; identical bytes are one object, removed only once no file on any instance refers to it;
`after` paging, quotas, keys and the Uploads API hold across instances; an instance killed at
any moment loses nothing acknowledged and wedges no other (its upkeep lease and its unfinished
completion move on); backends that cannot be used stop start-up with exit status 2; `filesd
migrate` moves an embedded data dir in; downloads can redirect to the bucket.

FILESD_CRASH_ROUNDS sets the kills of the crash loop (default 4), FILESD_CRASH_SEED its seed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import io
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import boto3
import pytest
from openai import OpenAI

from filesd.cli import main

from .conftest import (
    ALPHA,
    ALPHA_KEY,
    BETA,
    KEYS_TOML,
    ServerProcess,
    upload_form,
    wait_until,
    write_config,
)
from .crash_ledger import Ledger, check, kill, load, sha

pytestmark = pytest.mark.slow

LEASE = 3  # storage.lease_seconds: how long a dead instance's leases and claims hold
SWEEP = 1  # storage.sweep_interval
PREFIX = "files"  # storage.blobs = s3://<bucket>/files
# How long anything the upkeep does may take: a dead holder's lease to expire (lease + sweep),
# then a few sweeps. A bound for wait_until, not a time anything waits for.
UPKEEP_BOUND = 3 * (LEASE + SWEEP) + 5
ADMIN = "admin-token-of-the-instances-tests"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


class Deployment:
    """Instances of one deployment: each with its own config and data dir (only spool files
    there), all on the same database and bucket; plus `config`, the operator's config for the
    `filesd` commands (fsck, keys, migrate), which run as one more instance."""

    def __init__(self, tmp: Path, dsn: str, bucket: Any) -> None:
        self.tmp = tmp
        self.dsn = dsn
        self.bucket = bucket
        self.servers: list[ServerProcess] = []
        self.config = self.write_config("operator")
        self._s3 = boto3.client(
            "s3",
            endpoint_url=bucket.endpoint,
            region_name=bucket.region,
            aws_access_key_id=bucket.access_key_id,
            aws_secret_access_key=bucket.secret_access_key,
        )

    def write_config(
        self,
        name: str,
        *,
        extra: str = "",
        s3_extra: str = "",
        database: str | None = None,
        blobs: str | None = None,
    ) -> Path:
        b = self.bucket
        path = self.tmp / f"{name}.toml"
        path.write_text(
            "[storage]\n"
            f'data_dir = "{self.tmp / name}"\n'
            f'database = "{self.dsn if database is None else database}"\n'
            f'blobs = "{f"s3://{b.bucket}/{PREFIX}" if blobs is None else blobs}"\n'
            f"lease_seconds = {LEASE}\n"
            f"sweep_interval = {SWEEP}\n"
            "[storage.s3]\n"
            f'endpoint = "{b.endpoint}"\n'
            f'region = "{b.region}"\n'
            f'access_key_id = "{b.access_key_id}"\n'
            f'secret_access_key = "{b.secret_access_key}"\n'
            f"{s3_extra}\n{KEYS_TOML}\n{extra}\n"
        )
        return path

    def start(self, name: str, **config: str) -> ServerProcess:
        server = ServerProcess(["--config", str(self.write_config(name, **config))], cwd=self.tmp)
        self.servers.append(server)
        return server

    def start_many(self, *names: str, **config: str) -> list[ServerProcess]:
        """Start instances side by side (each start is mostly Python importing)."""
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            return list(pool.map(lambda name: self.start(name, **config), names))

    def filesd(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run an operator command (`filesd ARGS --config CONFIG`), as an operator would."""
        return subprocess.run(
            [sys.executable, "-m", "filesd", *args, "--config", str(config or self.config)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.tmp,
        )

    def _keys(self, under: str) -> list[str]:
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket.bucket, Prefix=f"{PREFIX}/{under}/"
        )
        return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))

    def blob_keys(self) -> list[str]:
        """The keys of the blobs in the bucket, listed from outside filesd."""
        return self._keys("blobs")

    def blob_digests(self) -> set[str]:
        return {key.rsplit("/", 1)[1] for key in self.blob_keys()}

    def part_keys(self) -> list[str]:
        return self._keys("parts")

    async def query(self, sql: str, *args: Any) -> Any:
        """One value from the shared database (to see what HTTP does not show)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    def close(self) -> None:
        for server in self.servers:
            if server.proc.poll() is None:
                server.stop(signal.SIGKILL)
        self._s3.close()


@pytest.fixture
def deployment(tmp_path: Path, postgres_dsn: str, s3_bucket: Any) -> Iterator[Deployment]:
    """A deployment on a fresh database and bucket; its instances are killed afterwards."""
    deployed = Deployment(tmp_path, postgres_dsn, s3_bucket)
    yield deployed
    deployed.close()


# --- HTTP helpers --------------------------------------------------------------------------------


def md5(content: bytes) -> str:
    return hashlib.md5(content, usedforsecurity=False).hexdigest()


def expiring(seconds: int = 3600) -> dict[str, str]:
    return {"expires_after[anchor]": "created_at", "expires_after[seconds]": str(seconds)}


async def post_file(
    session: aiohttp.ClientSession,
    server: ServerProcess,
    content: bytes,
    headers: dict[str, str] = ALPHA,
    **form: Any,
) -> tuple[int, dict[str, Any]]:
    async with session.post(
        f"{server.base_url}/files", data=upload_form(content, **form), headers=headers
    ) as r:
        return r.status, await r.json()


async def uploaded(
    session: aiohttp.ClientSession,
    server: ServerProcess,
    content: bytes,
    headers: dict[str, str] = ALPHA,
    **form: Any,
) -> dict[str, Any]:
    status, body = await post_file(session, server, content, headers, **form)
    assert status == 200, body
    return body


async def retrieve(
    session: aiohttp.ClientSession,
    server: ServerProcess,
    file_id: str,
    headers: dict[str, str] = ALPHA,
) -> tuple[int, Any]:
    async with session.get(f"{server.base_url}/files/{file_id}", headers=headers) as r:
        return r.status, await r.json()


async def download(
    session: aiohttp.ClientSession,
    server: ServerProcess,
    file_id: str,
    headers: dict[str, str] = ALPHA,
) -> tuple[int, bytes]:
    async with session.get(f"{server.base_url}/files/{file_id}/content", headers=headers) as r:
        return r.status, await r.read()


async def delete(
    session: aiohttp.ClientSession,
    server: ServerProcess,
    file_id: str,
    headers: dict[str, str] = ALPHA,
) -> int:
    async with session.delete(f"{server.base_url}/files/{file_id}", headers=headers) as r:
        await r.read()
        return r.status


async def list_all(
    session: aiohttp.ClientSession, server: ServerProcess, headers: dict[str, str] = ALPHA
) -> list[dict[str, Any]]:
    """Every live file of the project, paged through with `after`; checks `total`."""
    files: list[dict[str, Any]] = []
    query: dict[str, str] = {"limit": "1000"}
    while True:
        async with session.get(f"{server.base_url}/files", params=query, headers=headers) as r:
            page = await r.json()
            assert r.status == 200, page
        files += page["data"]
        if not page["has_more"]:
            break
        query["after"] = page["last_id"]
    assert page["total"] == len(files)
    return files


async def post_json(
    session: aiohttp.ClientSession,
    server: ServerProcess,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] = ALPHA,
) -> tuple[int, Any]:
    async with session.post(f"{server.url}{path}", json=body or {}, headers=headers) as r:
        return r.status, await r.json()


async def add_part(
    session: aiohttp.ClientSession, server: ServerProcess, upload_id: str, data: bytes
) -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("data", io.BytesIO(data), filename="part")
    async with session.post(
        f"{server.base_url}/uploads/{upload_id}/parts", data=form, headers=ALPHA
    ) as r:
        return r.status, await r.json()


async def new_upload(
    session: aiohttp.ClientSession, server: ServerProcess, size: int, filename: str = "joined.bin"
) -> str:
    status, body = await post_json(
        session,
        server,
        "/v1/uploads",
        {
            "bytes": size,
            "filename": filename,
            "purpose": "assistants",
            "mime_type": "application/octet-stream",
        },
    )
    assert status == 200, body
    return str(body["id"])


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- 1-2: what one instance stores, all see --------------------------------------------------


async def test_what_one_instance_acknowledges_every_other_serves_at_once(
    deployment: Deployment,
) -> None:
    a, b, c = deployment.start_many("a", "b", "c")
    large, small = os.urandom(300_000), b"small and kept in A's memory cache"
    async with aiohttp.ClientSession() as session:
        made = [
            await uploaded(session, a, large, filename="large.bin"),
            await uploaded(session, a, small, filename="small.txt"),
        ]
        # At once: no retry, no waiting for anything to propagate.
        for file, content in zip(made, [large, small], strict=True):
            assert await retrieve(session, b, file["id"]) == (200, file)
            assert await download(session, b, file["id"]) == (200, content)
            assert (await retrieve(session, b, file["id"], BETA))[0] == 404
        assert {f["id"] for f in await list_all(session, b)} == {f["id"] for f in made}

        for file in made:
            assert await delete(session, b, file["id"]) == 200
            for server in (a, c):  # at once, on every other instance
                assert (await retrieve(session, server, file["id"]))[0] == 404
                assert (await download(session, server, file["id"]))[0] == 404
                assert await delete(session, server, file["id"]) == 404
        for server in (a, b, c):
            assert await list_all(session, server) == []


async def test_identical_bytes_are_one_object_until_no_file_refers_to_them(
    deployment: Deployment,
) -> None:
    a, b = deployment.start_many("a", "b")
    content = os.urandom(200_000)
    digest = sha(content)
    async with aiohttp.ClientSession() as session:
        first, second = await asyncio.gather(
            uploaded(session, a, content, ALPHA), uploaded(session, b, content, BETA)
        )
        third = await uploaded(session, a, content, ALPHA, filename="again.bin")
        assert deployment.blob_keys() == [f"{PREFIX}/blobs/{digest[:2]}/{digest}"]

        # One file of the bytes is left: the object stays.
        assert await delete(session, b, first["id"], ALPHA) == 200
        assert await delete(session, a, third["id"], ALPHA) == 200
        assert deployment.blob_digests() == {digest}
        assert await download(session, a, second["id"], BETA) == (200, content)

        assert await delete(session, a, second["id"], BETA) == 200
    await wait_until(
        lambda: not deployment.blob_keys(), timeout=UPKEEP_BOUND, what="the unused object removed"
    )


# --- 3: the upload/delete race ----------------------------------------------------------------

ROUNDS_OF_RACES = 10  # distinct contents
TURNS = 8  # uploads and deletes of each content per instance


async def test_an_upload_racing_a_delete_of_the_same_bytes_on_another_instance_keeps_them(
    deployment: Deployment,
) -> None:
    a, b = deployment.start_many("a", "b")
    rng = random.Random(3)
    kept: dict[str, bytes] = {}
    acknowledged = 0

    async def churn(
        session: aiohttp.ClientSession, mine: ServerProcess, other: ServerProcess, content: bytes
    ) -> None:
        """Store the bytes, read them through the other instance, delete them; again. Each
        delete may be the last file of the bytes (and reclaim their object) while the other
        instance is storing them, at any point of its upload."""
        nonlocal acknowledged
        for turn in range(TURNS):
            made = await uploaded(session, mine, content)
            acknowledged += 1
            assert await download(session, other, made["id"]) == (200, content), made["id"]
            if turn == TURNS - 1:
                kept[made["id"]] = content
            else:
                assert await delete(session, mine, made["id"]) == 200

    async with aiohttp.ClientSession() as session:
        for _round in range(ROUNDS_OF_RACES):
            # Over 64 KiB: not served from an instance's memory, so a lost object shows.
            content = rng.randbytes(rng.choice([70_000, 300_000]))
            await asyncio.gather(churn(session, a, b, content), churn(session, b, a, content))
        for file_id, content in kept.items():
            for server in (a, b):
                assert await download(session, server, file_id) == (200, content), file_id
    print(f"{acknowledged} uploads raced deletes of the same bytes")
    # A collection as one more instance (what the upkeep does every sweep) removes nothing in
    # use, and what is stored checks out.
    gc = deployment.filesd("gc")
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert deployment.blob_digests() == {sha(c) for c in kept.values()}
    fsck = deployment.filesd("fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


# --- 4: paging while others insert ------------------------------------------------------------


async def test_after_paging_on_one_instance_while_two_others_insert_skips_and_repeats_nothing(
    deployment: Deployment,
) -> None:
    a, b, c = deployment.start_many("a", "b", "c")
    written: list[str] = []
    writing_done = asyncio.Event()

    async def writer(session: aiohttp.ClientSession, server: ServerProcess, n: int) -> None:
        slots = asyncio.Semaphore(4)

        async def one(i: int) -> None:
            async with slots:
                made = await uploaded(session, server, f"{server.url} {i}".encode())
                written.append(made["id"])

        await asyncio.gather(*(one(i) for i in range(n)))

    async def reader(session: aiohttp.ClientSession) -> tuple[list[str], int]:
        seen: list[str] = []
        pages = 0
        query = {"order": "asc", "limit": "7"}
        while True:
            # Read before the page is asked for: a page asked for after every write is final.
            finished = writing_done.is_set()
            async with session.get(f"{c.base_url}/files", params=query, headers=ALPHA) as r:
                page = await r.json()
                assert r.status == 200, page
            pages += 1
            seen += [f["id"] for f in page["data"]]
            if page["data"]:
                query["after"] = page["last_id"]
            if finished and not page["has_more"]:
                return seen, pages

    async with aiohttp.ClientSession() as session:
        reading = asyncio.create_task(reader(session))
        await asyncio.gather(writer(session, a, 100), writer(session, b, 100))
        writing_done.set()
        seen, pages = await reading
    assert len(written) == 200
    assert len(seen) == len(set(seen)), "a file was repeated"
    assert set(seen) == set(written), f"{len(set(written) - set(seen))} file(s) skipped"
    print(f"paged {len(seen)} files in {pages} pages while they were written")


# --- 5: the Uploads API across instances ------------------------------------------------------


async def test_uploads_take_parts_on_any_instance_and_finish_on_any_other(
    deployment: Deployment,
) -> None:
    a, b, c = deployment.start_many("a", "b", "c")
    parts = [os.urandom(300_000), os.urandom(200_000), b"tail"]
    content = b"".join(parts)
    async with aiohttp.ClientSession() as session:
        upload_id = await new_upload(session, a, len(content))
        part_ids = []
        for server, data in zip([a, b, a], parts, strict=True):
            status, part = await add_part(session, server, upload_id, data)
            assert status == 200, part
            part_ids.append(part["id"])
        status, done = await post_json(
            session,
            c,
            f"/v1/uploads/{upload_id}/complete",
            {"part_ids": part_ids, "md5": md5(content)},
        )
        assert status == 200, done
        assert done["status"] == "completed"
        assert await download(session, a, done["file"]["id"]) == (200, content)
        assert await retrieve(session, b, done["file"]["id"]) == (200, done["file"])

        other = await new_upload(session, b, 10)
        assert (await add_part(session, b, other, b"12345"))[0] == 200
        status, cancelled = await post_json(session, a, f"/v1/uploads/{other}/cancel")
        assert status == 200, cancelled
        assert cancelled["status"] == "cancelled"
        # Cancelled for every instance.
        status, refused = await add_part(session, b, other, b"67890")
        assert status == 400, refused
        status, refused = await post_json(
            session, c, f"/v1/uploads/{other}/complete", {"part_ids": []}
        )
        assert status == 400, refused
    await wait_until(
        lambda: deployment.part_keys() == [], timeout=UPKEEP_BOUND, what="the parts removed"
    )


# --- 6-7: quotas and keys ---------------------------------------------------------------------


QUOTA_ROUNDS = 10  # bursts of 16 uploads, split across A and B, into an empty project


async def test_a_file_quota_holds_across_instances(deployment: Deployment) -> None:
    a, b = deployment.start_many("a", "b", extra="[limits]\nmax_files_per_project = 5\n")
    rng = random.Random(6)
    async with aiohttp.ClientSession() as session:
        for round_ in range(QUOTA_ROUNDS):
            contents = [rng.randbytes(5000) for _ in range(16)]
            results = await asyncio.gather(
                *(post_file(session, (a, b)[i % 2], data) for i, data in enumerate(contents))
            )
            stored = [body for status, body in results if status == 200]
            assert len(stored) == 5, [status for status, _ in results]
            for status, body in results:
                assert status == 200 or body["error"]["code"] == "quota_exceeded", body
                assert status in (200, 400), body
            for server in (a, b):
                listed = await list_all(session, server)
                assert {f["id"] for f in listed} == {f["id"] for f in stored}
            if round_ < QUOTA_ROUNDS - 1:  # room again for the next round
                for i, file in enumerate(stored):
                    assert await delete(session, (b, a)[i % 2], file["id"]) == 200
    # The refused uploads' bytes do not stay behind.
    wanted = {sha(contents[i]) for i, (status, _) in enumerate(results) if status == 200}
    await wait_until(
        lambda: deployment.blob_digests() == wanted,
        timeout=UPKEEP_BOUND,
        what="only the stored files' objects left",
    )


async def test_a_key_made_with_filesd_keys_works_on_every_instance_until_revoked(
    deployment: Deployment,
) -> None:
    a, b = deployment.start_many("a", "b")
    made = deployment.filesd("keys", "create", "--project", "made-here")
    assert made.returncode == 0, made.stderr
    key_id, key = made.stdout.split()[0], made.stdout.splitlines()[1]
    headers = {"Authorization": f"Bearer {key}"}

    async with aiohttp.ClientSession() as session:

        async def answers(server: ServerProcess, status: int) -> bool:
            async with session.get(f"{server.base_url}/files", headers=headers) as r:
                await r.read()
                return r.status == status

        for server in (a, b):
            await wait_until(partial(answers, server, 200), timeout=10, what="the key taken")
        file = await uploaded(session, a, b"made with a made key", headers)
        assert await retrieve(session, b, file["id"], headers) == (200, file)
        assert file["id"] not in {f["id"] for f in await list_all(session, b)}  # not alpha's

        revoked = deployment.filesd("keys", "revoke", key_id)
        assert revoked.returncode == 0, revoked.stderr
        for server in (a, b):
            await wait_until(partial(answers, server, 401), timeout=10, what="the key refused")
        # The configured keys still work: alpha is let in (404, not 401), the file not its own.
        assert (await retrieve(session, b, file["id"]))[0] == 404


# --- 8: a killed instance ---------------------------------------------------------------------


async def test_a_killed_instance_loses_nothing_and_its_work_moves_to_the_survivor(
    deployment: Deployment,
) -> None:
    admin = f'[admin]\ntoken = "{ADMIN}"\n'
    # A first, alone: it holds the upkeep lease when B arrives.
    a = deployment.start("a", extra=admin)

    async def upkeep_holder() -> Any:
        return await deployment.query("SELECT holder FROM leases WHERE name = 'upkeep'")

    await wait_until(upkeep_holder, timeout=UPKEEP_BOUND, what="A holding the upkeep lease")
    held_by_a = await upkeep_holder()
    b = deployment.start("b", extra=admin)

    acknowledged: dict[str, bytes] = {}
    stop_traffic = asyncio.Event()
    traffic_errors: list[str] = []

    async def traffic(session: aiohttp.ClientSession, server: ServerProcess) -> None:
        """Uploads until told to stop (or, on the killed instance, until it is gone)."""
        rng = random.Random(server.url)
        while not stop_traffic.is_set():
            content = rng.randbytes(rng.choice([50, 100_000]))
            try:
                status, body = await post_file(session, server, content)
            except aiohttp.ClientError:
                return
            if status == 200:
                acknowledged[body["id"]] = content
            else:
                traffic_errors.append(f"{server.url}: {status} {body}")

    parts = [os.urandom(8 * 1024 * 1024) for _ in range(3)]
    content = b"".join(parts)
    async with aiohttp.ClientSession() as session:
        expires = await uploaded(session, a, b"expires in an hour", **{"extra": expiring()})
        upload_id = await new_upload(session, a, len(content))
        part_ids = []
        for data in parts:
            status, part = await add_part(session, a, upload_id, data)
            assert status == 200, part
            part_ids.append(part["id"])

        traffic_tasks = [asyncio.create_task(traffic(session, s)) for s in (a, a, b, b)]
        # A completes the upload and is killed once it has taken it (`completing`), as the
        # traffic goes on.
        completing = asyncio.create_task(
            post_json(session, a, f"/v1/uploads/{upload_id}/complete", {"part_ids": part_ids})
        )

        async def taken() -> bool:
            status = await deployment.query("SELECT status FROM uploads WHERE id = $1", upload_id)
            return bool(status != "pending")

        await wait_until(taken, timeout=30, what="A completing the upload")
        a.stop(signal.SIGKILL)
        with contextlib.suppress(aiohttp.ClientError):  # (unless A answered just before)
            await completing
        left = await deployment.query("SELECT status FROM uploads WHERE id = $1", upload_id)

        # B goes on serving while A is dead: its traffic is answered, and everything either
        # acknowledged is there.
        at_the_kill = len(acknowledged)
        await wait_until(lambda: len(acknowledged) > at_the_kill + 5, what="B serving without A")
        stop_traffic.set()
        await asyncio.gather(*traffic_tasks)
        assert traffic_errors == []
        for file_id, data in acknowledged.items():
            assert await download(session, b, file_id) == (200, data), file_id

        # The lease A held moves to B once A's expires; B's upkeep settles the completion A
        # left (a file made, or the upload pending again) ...
        await wait_until(
            lambda: upkeep_holder_is_not(deployment, held_by_a),
            timeout=UPKEEP_BOUND,
            what="the upkeep lease moved to B",
        )

        async def settled() -> bool:
            status = await deployment.query("SELECT status FROM uploads WHERE id = $1", upload_id)
            return bool(status != "completing")

        await wait_until(settled, timeout=UPKEEP_BOUND, what="A's completion settled by B")
        status, done = await post_json(
            session,
            b,
            f"/v1/uploads/{upload_id}/complete",
            {"part_ids": part_ids, "md5": md5(content)},
        )
        if left == "completing" and status == 200:
            file_id = done["file"]["id"]  # reopened: completed again, on B
        else:  # A finished it before it died: the upload is completed, its file there
            file_id = await deployment.query("SELECT file_id FROM uploads WHERE id = $1", upload_id)
        assert await download(session, b, file_id) == (200, content)

        # ... and sweeps what expires, with A dead: a day later on B's clock, the expiring
        # file's object goes.
        status, _ = await post_json(session, b, "/admin/clock", {"advance": 86400}, ADMIN_HEADERS)
        assert status == 200
        gone = f"{PREFIX}/blobs/{sha(b'expires in an hour')[:2]}/{sha(b'expires in an hour')}"
        await wait_until(
            lambda: gone not in deployment.blob_keys(),
            timeout=UPKEEP_BOUND,
            what="the expired file swept by B",
        )
        assert (await retrieve(session, b, expires["id"]))[0] == 404
    print(
        f"A was killed with the upload {left}, after {at_the_kill} uploads were acknowledged; "
        f"{len(acknowledged)} in all"
    )


async def upkeep_holder_is_not(deployment: Deployment, holder: str) -> bool:
    now = await deployment.query(
        "SELECT holder FROM leases WHERE name = 'upkeep' AND holder <> $1", holder
    )
    return now is not None


# --- 9: the crash loop on PostgreSQL and S3 with two instances --------------------------------

ROUNDS = int(os.environ.get("FILESD_CRASH_ROUNDS", "4"))
CRASH_AUTH = {"Authorization": f"Bearer {ALPHA_KEY}"}


def test_sigkill_one_of_two_instances_at_random_moments_loses_nothing(
    deployment: Deployment,
) -> None:
    seed = int(os.environ.get("FILESD_CRASH_SEED", time.time_ns()))
    print(f"FILESD_CRASH_SEED={seed}")
    rng = random.Random(seed)
    ledger = Ledger()
    servers = dict(zip("ab", deployment.start_many("a", "b"), strict=True))
    for round_ in range(ROUNDS):
        victim = rng.choice("ab")
        survivor = servers["b" if victim == "a" else "a"]
        killed = threading.Event()
        timer = threading.Timer(rng.uniform(0.05, 0.8), kill, (servers[victim].proc, killed))
        timer.start()
        asyncio.run(load([servers["a"].url, servers["b"].url], ledger, rng, killed, CRASH_AUTH))
        timer.join()
        servers[victim].proc.wait(timeout=10)
        assert ledger.errors == [], f"round {round_} (seed {seed}): {ledger.errors}"
        asyncio.run(check(survivor.url, ledger, CRASH_AUTH))
        servers[victim] = deployment.start(victim)

    for server in servers.values():
        asyncio.run(check(server.url, ledger, CRASH_AUTH))
    # Blobs the killed instances stored without a row (and claims they held) are swept by the
    # upkeep once their leases expire: then the bucket holds exactly the live files' bytes.
    live = {d for i, d in ledger.acknowledged.items() if i not in ledger.deleted}
    asyncio.run(
        wait_until(
            lambda: deployment.blob_digests() == live,
            timeout=UPKEEP_BOUND,
            what="orphaned objects swept",
        )
    )
    for server in servers.values():
        assert server.stop() == 0
    fsck = deployment.filesd("fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    print(
        f"{ROUNDS} kills: {len(ledger.acknowledged)} files stored, {len(ledger.deleted)} deleted, "
        f"{len(ledger.sent)} uploads sent"
    )
    assert len(ledger.acknowledged) > ROUNDS, "the load did too little to mean anything"


# --- 10: backends that cannot be used ---------------------------------------------------------


def test_unusable_backends_stop_start_up_naming_the_setting(deployment: Deployment) -> None:
    password = "sekrit-pw-" + uuid.uuid4().hex[:8]
    no_database = deployment.write_config(
        "no-database",
        database=f"postgresql://filesd:{password}@127.0.0.1:{closed_port()}/filesd",
    )
    no_bucket = deployment.write_config(
        "no-bucket", blobs=f"s3://no-such-bucket-{uuid.uuid4().hex[:12]}/files"
    )
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "filesd", "serve", "--port", "0", "--config", str(config)],
            cwd=deployment.tmp,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for config in (no_database, no_bucket)
    ]
    for proc, setting in zip(started, ["storage.database", "storage.blobs"], strict=True):
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 2, stdout + stderr
        assert setting in stderr, stderr
        assert "Traceback" not in stderr, stderr
        assert password not in stdout + stderr


# --- 11: filesd migrate ----------------------------------------------------------------------


def test_migrate_is_a_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`filesd migrate` reaches its command (it was parsed as `serve migrate` before)."""
    config = write_config(tmp_path / "filesd.toml", tmp_path / "data")
    assert main(["migrate", "--to", str(config), "--config", str(config)]) == 2
    assert "names the same backends as the source" in capsys.readouterr().err


async def test_migrate_moves_an_embedded_data_dir_onto_postgres_and_s3(
    deployment: Deployment,
) -> None:
    tmp = deployment.tmp
    embedded = write_config(tmp / "embedded.toml", tmp / "embedded-data")
    server = ServerProcess(["--config", str(embedded)], cwd=tmp)
    contents = {"alpha.txt": b"alpha's bytes", "big.bin": os.urandom(300_000)}
    async with aiohttp.ClientSession() as session:
        stored = {
            (await uploaded(session, server, data, filename=name))["id"]: data
            for name, data in contents.items()
        }
        kept = await uploaded(session, server, b"expiring", BETA, **{"extra": expiring()})
        stored[kept["id"]] = b"expiring"
        before = [await list_all(session, server), await list_all(session, server, BETA)]
    made = deployment.filesd("keys", "create", "--project", "migrated", config=embedded)
    assert made.returncode == 0, made.stderr
    key = made.stdout.splitlines()[1]
    assert server.stop() == 0

    migrated = deployment.filesd("migrate", "--to", str(deployment.config), config=embedded)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "copied 3 file(s) (0 there already) and 1 key(s)" in migrated.stdout

    c = deployment.start("c")
    async with aiohttp.ClientSession() as session:
        # The same ids, names, purposes, sizes, times and expiry.
        assert [await list_all(session, c), await list_all(session, c, BETA)] == before
        for file_id, data in stored.items():
            owner = BETA if file_id == kept["id"] else ALPHA
            assert await download(session, c, file_id, owner) == (200, data)
        async with session.get(
            f"{c.base_url}/files", headers={"Authorization": f"Bearer {key}"}
        ) as r:
            assert r.status == 200, await r.text()

    again = deployment.filesd("migrate", "--to", str(deployment.config), config=embedded)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "copied 0 file(s) (3 there already)" in again.stdout


# --- 12: downloads redirected to the bucket ---------------------------------------------------


async def test_downloads_redirect_to_the_bucket_and_the_sdk_follows(
    deployment: Deployment,
) -> None:
    a = deployment.start("a", s3_extra="redirect_downloads = true")
    content = os.urandom(100_000)
    async with aiohttp.ClientSession() as session:
        file = await uploaded(session, a, content, filename="report.csv")
        async with session.get(
            f"{a.base_url}/files/{file['id']}/content", headers=ALPHA, allow_redirects=False
        ) as r:
            assert r.status == 307, await r.text()
            location = r.headers["Location"]
        assert location.startswith(deployment.bucket.endpoint + "/"), location
        async with session.get(location) as r:  # no credentials: the URL is presigned
            assert r.status == 200, await r.text()
            assert await r.read() == content
            assert "report.csv" in r.headers["Content-Disposition"]

    def through_the_sdk() -> bytes:
        with OpenAI(api_key=ALPHA_KEY, base_url=a.base_url, max_retries=0) as client:
            return client.files.content(file["id"]).read()

    assert await asyncio.to_thread(through_the_sdk) == content
