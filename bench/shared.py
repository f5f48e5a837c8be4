"""filesd on shared backends (PostgreSQL + S3) against direct S3 and against its SQLite mode.

    python bench/shared.py            # full run: 256 MiB files, 2,000 small files, 100,000 listed
    python bench/shared.py --quick    # small sizes, one round: proves the benchmark works (CI)

Starts its own backends: a throwaway PostgreSQL cluster and a moto S3 server on free loopback
ports (bench/services.py), removed afterwards. Each round uses a fresh database and bucket, and
measures, over real HTTP:

- the large upload through filesd (curl, multipart form) against a direct streaming PutObject
  of the same file to the same endpoint, and against a direct multipart upload in filesd's part
  size; the large download through filesd, and through its 307 to a presigned URL
  (`redirect_downloads`, curl following it), against a direct GET of the same object (curl);
- small uploads and metadata GETs on PostgreSQL + S3 against the same filesd on SQLite and a
  blob directory;
- metadata GETs with one instance against two `filesd serve` processes on the same backends,
  the load split between them.

Once per run it lists a project of `list_files` files (rows inserted with SQL after filesd
migrated the database), on PostgreSQL and, for comparison, on SQLite.

The table shows medians over rounds. Ratios are filesd / baseline for rates (higher is better
for filesd); latencies show no ratio. Progress goes to stderr, the table (Markdown) to stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import services  # bench/services.py: a script has its own directory on sys.path
from aiobotocore.session import get_session  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from run import (
    AUTH,
    MiB,
    Results,
    concurrently,
    curl_download,
    curl_upload,
    parse_args,
    run_small,
)

from filesd.testing.process import ServerProcess

REGION = "us-east-1"
ACCESS_KEY_ID = "bench"
SECRET_ACCESS_KEY = "bench"  # noqa: S105 (moto accepts any signature)
PART_BYTES = 16 * MiB  # filesd's S3 part size (S3Blobs.part_size)
CONCURRENCY = 16


@dataclass(frozen=True)
class Sizes:
    large: int
    small_files: int
    small_requests: int
    list_files: int
    rounds: int


FULL = Sizes(256 * MiB, 2000, 4000, 100_000, 3)
QUICK = Sizes(8 * MiB, 200, 2000, 20_000, 1)


# --- the backends ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backends:
    """The run's PostgreSQL cluster and S3 endpoint."""

    postgres: services.PostgresServer
    endpoint: str


@dataclass(frozen=True)
class Storage:
    """Where one filesd instance keeps metadata and bytes: "" = SQLite / blob directory."""

    database: str = ""
    blobs: str = ""
    endpoint: str = ""
    redirect: bool = False

    def toml(self, data_dir: Path) -> str:
        text = f'[storage]\ndata_dir = "{data_dir}"\n'
        if self.database:
            text += f'database = "{self.database}"\n'
        if self.blobs:
            text += f'blobs = "{self.blobs}"\n'
            text += (
                "[storage.s3]\n"
                f'endpoint = "{self.endpoint}"\n'
                f'region = "{REGION}"\n'
                f'access_key_id = "{ACCESS_KEY_ID}"\n'
                f'secret_access_key = "{SECRET_ACCESS_KEY}"\n'
                f"redirect_downloads = {'true' if self.redirect else 'false'}\n"
            )
        return text


class Instance(ServerProcess):
    """A `filesd serve` on a free port, with its own config and data directory under `work`
    (instances on shared backends share only the database and the bucket)."""

    def __init__(self, work: Path, storage: Storage) -> None:
        self.root = work / f"filesd-{uuid.uuid4().hex[:8]}"
        self.root.mkdir()
        config = self.root / "filesd.toml"
        config.write_text(storage.toml(self.root / "data"))
        super().__init__(["--config", str(config)], cwd=self.root, timeout=60)


@contextlib.contextmanager
def running(work: Path, storage: Storage) -> Iterator[Instance]:
    instance = Instance(work, storage)
    try:
        yield instance
    finally:
        instance.stop()


@contextlib.asynccontextmanager
async def s3(endpoint: str) -> AsyncIterator[Any]:
    """An aiobotocore S3 client of the endpoint, configured as filesd's own (path style,
    unsigned payloads, no flexible checksums): the direct transfers do the same protocol work
    as filesd's S3 traffic."""
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=64,
    )
    async with get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        config=config,
    ) as client:
        yield client


@contextlib.asynccontextmanager
async def fresh_bucket(client: Any) -> AsyncIterator[str]:
    """A new bucket, emptied and removed afterwards (moto holds every object in memory)."""
    bucket = f"bench-{uuid.uuid4().hex[:16]}"
    await client.create_bucket(Bucket=bucket)
    try:
        yield bucket
    finally:
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
            if keys:
                await client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        uploads = await client.list_multipart_uploads(Bucket=bucket)
        for upload in uploads.get("Uploads", ()):
            await client.abort_multipart_upload(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        await client.delete_bucket(Bucket=bucket)


# --- direct S3 transfers (the baselines) -------------------------------------------------------


async def direct_put(client: Any, bucket: str, key: str, path: Path, size: int) -> float:
    """Seconds to PUT `path` (`size` bytes) in one PutObject streaming the body from the file
    (aiohttp reads it in a worker thread)."""
    start = time.perf_counter()
    with path.open("rb") as body:
        await client.put_object(Bucket=bucket, Key=key, Body=body, ContentLength=size)
    return time.perf_counter() - start


async def direct_multipart(client: Any, bucket: str, key: str, path: Path) -> float:
    """Seconds to upload `path` as filesd does above its threshold: one part after the
    other, PART_BYTES each, read from the file in a thread."""
    start = time.perf_counter()
    upload = await client.create_multipart_upload(Bucket=bucket, Key=key)
    parts = []
    with path.open("rb") as f:
        number = 1
        while data := await asyncio.to_thread(f.read, PART_BYTES):
            sent = await client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=data
            )
            parts.append({"PartNumber": number, "ETag": sent["ETag"]})
            number += 1
    await client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    return time.perf_counter() - start


async def direct_small_puts(client: Any, bucket: str, n: int) -> float:
    """Seconds for `n` PutObjects of 4 KiB, CONCURRENCY at once: what the endpoint itself
    allows for small objects."""

    async def one(i: int) -> None:
        await client.put_object(Bucket=bucket, Key=f"direct/small-{i}", Body=os.urandom(4096))

    return await concurrently(n, CONCURRENCY, one)


def curl_follow(url: str, expected: int) -> float:
    """Seconds to download `url` with curl following redirects. curl sends the Authorization
    header to the first host only, so the presigned URL is fetched with its own auth."""
    start = time.perf_counter()
    out = subprocess.run(
        ["curl", "-sS", "--fail", "-L", *[a for h in AUTH.items() for a in ("-H", ": ".join(h))],
         "-o", "/dev/null", "-w", "%{size_download} %{num_redirects}", url],
        capture_output=True, check=True, text=True,
    ).stdout  # fmt: skip
    elapsed = time.perf_counter() - start
    size, redirects = out.split()
    assert int(size) == expected and redirects == "1", (out, expected)
    return elapsed


# --- request loads -----------------------------------------------------------------------------


async def metadata_gets(
    session: aiohttp.ClientSession, urls: list[str], ids: list[str], n: int
) -> float:
    """Seconds for `n` GET /v1/files/{id}, CONCURRENCY at once, spread over `urls` in turn."""

    async def one(i: int) -> None:
        url = urls[i % len(urls)]
        async with session.get(f"{url}/v1/files/{ids[i % len(ids)]}", headers=AUTH) as r:
            assert r.status == 200, r.status
            await r.read()

    return await concurrently(n, CONCURRENCY, one)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds(postgres: services.PostgresServer) -> float:
    """CPU seconds so far of the cluster: the postmaster, its live children (connections,
    autovacuum...) and the children it reaped (so a process ending in between still counts)."""
    try:
        postmaster = (postgres.data / "postmaster.pid").read_text().split("\n", 1)[0]
        fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[1] == postmaster:
                ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (Linux /proc)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / tick, sum(values) / tick


async def measured_cpu(
    label: str,
    instances: list[Instance],
    postgres: services.PostgresServer,
    run: Callable[[], Awaitable[float]],
) -> float:
    """Run a load and say on stderr where the machine's CPU went meanwhile, in cores."""
    before = [cpu_seconds(i.pid) for i in instances]
    client_before = time.process_time()
    pg_before = postgres_cpu_seconds(postgres)
    busy_before, total_before = machine_busy()
    seconds = await run()
    busy, total = machine_busy()
    pg = postgres_cpu_seconds(postgres) - pg_before
    used = [cpu_seconds(i.pid) - b for i, b in zip(instances, before, strict=True)]
    client = time.process_time() - client_before
    other = (busy - busy_before) - sum(used) - client - pg
    print(
        f"    cpu during {label} ({seconds:.1f} s), in cores: filesd "
        + " + ".join(f"{u / seconds:.2f}" for u in used)
        + f", PostgreSQL {pg / seconds:.2f}, client {client / seconds:.2f},"
        f" other processes {other / seconds:.2f}; machine busy"
        f" {(busy - busy_before) / (total - total_before):.0%}",
        file=sys.stderr,
        flush=True,
    )
    return seconds


# --- the measures ------------------------------------------------------------------------------


async def large_transfers(
    client: Any, bucket: str, filesd: Instance, redirect: Instance,
    large: Path, digest: str, sizes: Sizes, filesd_first: bool, results: Results,
) -> None:  # fmt: skip
    """The large upload and download through filesd, its redirect, and directly."""
    mib = sizes.large / MiB
    file_id = ""
    for who in ("filesd", "direct") if filesd_first else ("direct", "filesd"):
        if who == "filesd":
            seconds, file_id = curl_upload(filesd.url, large)
            results.add("large upload (MiB/s)", "filesd", mib / seconds)
            results.add("large upload vs multipart (MiB/s)", "filesd", mib / seconds)
        else:
            seconds = await direct_put(
                client, bucket, f"direct/{uuid.uuid4().hex}", large, sizes.large
            )
            results.add("large upload (MiB/s)", "direct", mib / seconds)
            seconds = await direct_multipart(client, bucket, f"direct/{uuid.uuid4().hex}", large)
            results.add("large upload vs multipart (MiB/s)", "direct", mib / seconds)
    # The object filesd stored is the one every download below reads.
    key = f"filesd/blobs/{digest[:2]}/{digest}"
    direct_url = await client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600
    )
    content = f"/v1/files/{file_id}/content"
    for who in ("filesd", "direct") if filesd_first else ("direct", "filesd"):
        if who == "filesd":
            seconds = curl_download(f"{filesd.url}{content}", sizes.large)
            results.add("large download (MiB/s)", "filesd", mib / seconds)
            seconds = curl_follow(f"{redirect.url}{content}", sizes.large)
            results.add("large download, redirect (MiB/s)", "filesd", mib / seconds)
        else:
            seconds = curl_download(direct_url, sizes.large)
            results.add("large download (MiB/s)", "direct", mib / seconds)
            results.add("large download, redirect (MiB/s)", "direct", mib / seconds)


@dataclass(frozen=True)
class Measured:
    """An instance measured as `kind` (bench/run.py's per-request measures)."""

    instance: Instance
    kind: str

    @property
    def url(self) -> str:
        return self.instance.url

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.instance.pid)


async def small_work(instance: Instance, kind: str, sizes: Sizes, results: Results) -> list[str]:
    """bench/run.py's per-request measures on one instance (small uploads, downloads,
    metadata GETs, list pages: rates and filesd's CPU per request); returns the ids uploaded."""
    return await run_small(Measured(instance, kind), sizes, results)


async def instances_work(
    first: Instance, second: Instance, postgres: services.PostgresServer, ids: list[str],
    sizes: Sizes, two_first: bool, results: Results,
) -> None:  # fmt: skip
    """Metadata GETs on one instance, then split over two (or the other way round)."""
    n = sizes.small_requests
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        await metadata_gets(session, [second.url], ids, 200)  # the new one's first requests
        for count in (2, 1) if two_first else (1, 2):
            chosen = [first, second][:count]
            seconds = await measured_cpu(
                f"{count} instance(s)",
                chosen,
                postgres,
                lambda chosen=chosen: metadata_gets(session, [i.url for i in chosen], ids, n),
            )
            kind = "two" if count == 2 else "one"
            results.add("metadata, two instances (req/s)", kind, n / seconds)


async def run_round(
    round_: int, work: Path, backends: Backends, large: Path, digest: str, sizes: Sizes,
    results: Results,
) -> None:  # fmt: skip
    filesd_first = round_ % 2 == 0

    async def shared() -> None:
        async with s3(backends.endpoint) as client, fresh_bucket(client) as bucket:
            with backends.postgres.database() as dsn:
                storage = Storage(dsn, f"s3://{bucket}/filesd", backends.endpoint)
                redirecting = Storage(dsn, storage.blobs, backends.endpoint, redirect=True)
                with running(work, storage) as a, running(work, redirecting) as r:
                    await large_transfers(
                        client, bucket, a, r, large, digest, sizes, filesd_first, results
                    )
                with running(work, storage) as a:
                    ids = await small_work(a, "filesd", sizes, results)
                    seconds = await direct_small_puts(client, bucket, sizes.small_files)
                    results.add(
                        "small uploads vs direct PUT (files/s)",
                        "direct",
                        sizes.small_files / seconds,
                    )
                    results.add(
                        "small uploads vs direct PUT (files/s)",
                        "filesd",
                        results.values[("small uploads (files/s)", "filesd")][-1],
                    )
                    with running(work, storage) as b:
                        await instances_work(
                            a, b, backends.postgres, ids, sizes, not filesd_first, results
                        )

    async def local() -> None:
        with running(work, Storage()) as instance:
            await small_work(instance, "sqlite", sizes, results)

    for step in (shared, local) if filesd_first else (local, shared):
        await step()


# --- listing a large project -------------------------------------------------------------------


async def list_latencies(url: str, files: int, kind: str, results: Results) -> None:
    """p50 of the first page, a page at offset 90% and 50 pages of `after` paging."""
    async with aiohttp.ClientSession() as session:

        async def page(query: str) -> tuple[float, dict[str, Any]]:
            start = time.perf_counter()
            async with session.get(f"{url}/v1/files?{query}", headers=AUTH) as r:
                body = await r.json()
                assert r.status == 200, body
            return (time.perf_counter() - start) * 1000, body

        await page("limit=100")  # the statement's first use prepares it
        first = [(await page("limit=100"))[0] for _ in range(50)]
        deep = [(await page(f"limit=100&offset={int(files * 0.9)}"))[0] for _ in range(20)]
        cursor: list[float] = []
        after = ""
        for _ in range(50):
            ms, body = await page(f"limit=100{after}")
            assert body["total"] == files, (body["total"], files)
            cursor.append(ms)
            after = f"&after={body['last_id']}"
    results.add("list: first page p50 (ms)", kind, statistics.median(first))
    results.add("list: offset 90% p50 (ms)", kind, statistics.median(deep))
    results.add("list: after paging p50 (ms)", kind, statistics.median(cursor))


async def upload_seed(url: str) -> str:
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", b"listed", filename="seed.txt")
        async with session.post(f"{url}/v1/files", data=form, headers=AUTH) as r:
            body = await r.json()
            assert r.status == 200, body
            return str(body["id"])


async def seed_postgres(dsn: str, seed_id: str, n: int) -> None:
    """`n` copies of the seed file's row (new ids), in one statement, then VACUUM ANALYZE:
    the visibility map set and statistics fresh, as autovacuum keeps them on a live system."""
    conn = await asyncpg.connect(dsn)
    try:
        # The throwaway cluster commits asynchronously; VACUUM marks a page all-visible only
        # once the commit of its rows is flushed (hint bits), so this one commit waits for it.
        await conn.execute("SET synchronous_commit = on")
        columns = (
            "project, filename, purpose, bytes, sha256, created_at, expires_at, status, "
            "status_details"
        )
        await conn.execute(
            f"INSERT INTO files (id, {columns}) SELECT gen_random_uuid()::text, {columns} "
            "FROM files, generate_series(1, $2) WHERE id = $1",
            seed_id,
            n,
        )
        await conn.execute("VACUUM ANALYZE files")
    finally:
        await conn.close()


async def run_list(work: Path, backends: Backends, sizes: Sizes, results: Results) -> None:
    from run import _seed_rows  # SQLite's seeding, shared with the floor benchmark

    async with s3(backends.endpoint) as client, fresh_bucket(client) as bucket:
        with backends.postgres.database() as dsn:
            storage = Storage(dsn, f"s3://{bucket}/filesd", backends.endpoint)
            with running(work, storage) as instance:
                seed = await upload_seed(instance.url)  # filesd has migrated the database
                start = time.perf_counter()
                await seed_postgres(dsn, seed, sizes.list_files - 1)
                print(
                    f"  seeded {sizes.list_files:,} rows in {time.perf_counter() - start:.1f} s",
                    file=sys.stderr,
                )
                await list_latencies(instance.url, sizes.list_files, "filesd", results)
    # SQLite, for comparison: seeded while its only server is stopped.
    with running(work, Storage()) as instance:
        seed = await upload_seed(instance.url)
        root = instance.root
    _seed_rows(root / "data" / "filesd.db", seed, sizes.list_files - 1)
    config = root / "filesd.toml"
    server = ServerProcess(["--config", str(config)], cwd=root, timeout=60)
    try:
        await list_latencies(server.url, sizes.list_files, "sqlite", results)
    finally:
        server.stop()


# --- the table ---------------------------------------------------------------------------------

# measure -> (filesd's kind, the baseline's kind, what the baseline is, target)
ROWS: dict[str, tuple[str, str, str, str]] = {
    "large upload (MiB/s)": ("filesd", "direct", "direct PutObject", ">= 0.80"),
    "large upload vs multipart (MiB/s)": (
        "filesd", "direct", "direct multipart, 16 MiB parts", "(reported)",
    ),
    "large download (MiB/s)": ("filesd", "direct", "direct GET", ">= 0.90"),
    "large download, redirect (MiB/s)": ("filesd", "direct", "direct GET", "(reported)"),
    "small uploads (files/s)": ("filesd", "sqlite", "SQLite + blob dir", "(reported)"),
    "small uploads vs direct PUT (files/s)": (
        "filesd", "direct", "direct PutObject, 16 concurrent", "(reported)",
    ),
    "small downloads (req/s)": ("filesd", "sqlite", "SQLite + blob dir", "(reported)"),
    "metadata (req/s)": ("filesd", "sqlite", "SQLite + blob dir", ">= 0.80"),
    "CPU: metadata GET (µs)": ("filesd", "sqlite", "SQLite + blob dir", "<= 100 µs"),
    "CPU: list page of 20 (µs)": ("filesd", "sqlite", "SQLite + blob dir", "<= 200 µs"),
    "CPU: 4 KiB download (µs)": ("filesd", "sqlite", "SQLite + blob dir", "<= 150 µs"),
    "CPU: 4 KiB upload (µs)": ("filesd", "sqlite", "SQLite + blob dir", "<= 1,200 µs"),
    "list: first page p50 (ms)": ("filesd", "sqlite", "SQLite", "< 5 ms"),
    "list: after paging p50 (ms)": ("filesd", "sqlite", "SQLite", "< 5 ms"),
    "list: offset 90% p50 (ms)": ("filesd", "sqlite", "SQLite", "(reported)"),
    "metadata, two instances (req/s)": ("two", "one", "one instance", "(reported)"),
}  # fmt: skip


def report(results: Results, sizes: Sizes, versions: str) -> str:
    lines = [
        f"filesd on shared backends, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {versions}, "
        f"rounds: {sizes.rounds}, large file {sizes.large // MiB} MiB, "
        f"{sizes.list_files:,} files listed",
        "",
        "| measure | filesd (PostgreSQL + S3) | baseline | baseline is | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for measure, (mine, theirs, what, target) in ROWS.items():
        value = results.median(measure, mine)
        base = results.median(measure, theirs)
        rate = not measure.endswith("(ms)")
        if measure.startswith("CPU") and value and base:  # higher is better here too
            value_, base_ = base, value
        else:
            value_, base_ = value, base
        ratio = f"{value_ / base_:.2f}" if rate and value_ is not None and base_ else "-"
        lines.append(f"| {measure} | {_fmt(value)} | {_fmt(base)} | {what} | {ratio} | {target} |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def versions(postgres: services.PostgresServer) -> str:
    from importlib.metadata import version

    out = subprocess.run(
        [str(postgres.bin_dir / "postgres"), "--version"], capture_output=True, text=True
    ).stdout
    pg = re.search(r"\d+(\.\d+)+", out)
    return f"PostgreSQL {pg.group(0) if pg else '?'}, moto {version('moto')}"


def make_large(path: Path, size: int) -> str:
    """Write `size` random bytes to `path`; returns their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(size // MiB):
            chunk = os.urandom(MiB)
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def main() -> int:
    _, sizes = parse_args(__doc__ or "", FULL, QUICK)
    results = Results()
    with tempfile.TemporaryDirectory(
        prefix="filesd-bench-shared-", dir=os.environ.get("BENCH_DIR")
    ) as tmp:
        work = Path(tmp)
        try:
            postgres = services.start_postgres()
        except services.ServiceUnavailable as error:
            print(f"cannot run: {error}", file=sys.stderr)
            return 2
        try:
            with services.moto_server(work) as endpoint:
                print(f"PostgreSQL in {postgres.root}, S3 at {endpoint}", file=sys.stderr)
                backends = Backends(postgres, endpoint)
                large = work / "large.bin"
                digest = make_large(large, sizes.large)
                for round_ in range(sizes.rounds):
                    print(f"round {round_ + 1}", file=sys.stderr, flush=True)
                    asyncio.run(run_round(round_, work, backends, large, digest, sizes, results))
                asyncio.run(run_list(work, backends, sizes, results))
                about = versions(postgres)
        except services.ServiceUnavailable as error:
            print(f"cannot run: {error}", file=sys.stderr)
            return 2
        finally:
            postgres.stop()
    print(report(results, sizes, about))
    return 0


if __name__ == "__main__":
    sys.exit(main())
