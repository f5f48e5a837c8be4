"""filesd against the floor, side by side, over real HTTP on loopback.

    python bench/run.py            # full run: 512 MiB files, 2,000 small files, 1,000,000 listed
    python bench/run.py --quick    # small sizes, one round: proves the benchmark works (CI)

Each round runs every measure on filesd and on the floor (bench/floor.py), alternating which goes
first, each on a fresh data directory. The table shows medians over rounds and the ratio
filesd/floor (higher is better for filesd; 1.0 is parity). nginx, where installed, is measured
for the large download as the machine's limit. filesd's peak RSS comes from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp

from filesd.testing.process import ServerProcess

HERE = Path(__file__).resolve().parent
KEY = "sk-bench"
AUTH = {"Authorization": f"Bearer {KEY}"}
MiB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    large: int
    small_files: int
    small_requests: int
    list_files: int
    memory_bytes: int
    rounds: int


FULL = Sizes(512 * MiB, 2000, 4000, 1_000_000, 2048 * MiB, 3)
QUICK = Sizes(16 * MiB, 200, 2000, 5_000, 64 * MiB, 1)


class Server(ServerProcess):
    """A server process (filesd or the floor) on a free port, on its own data directory."""

    def __init__(self, kind: str, data_dir: Path) -> None:
        self.kind = kind
        command = (
            None if kind == "filesd" else [sys.executable, str(HERE / "floor.py"), "--port", "0"]
        )
        super().__init__(
            ["--data-dir", str(data_dir)], cwd=data_dir.parent, timeout=60, command=command
        )

    def cpu_seconds(self) -> float:
        """The process's own CPU time so far (user + system, all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0


# --- workloads ---------------------------------------------------------------------------------


def curl_upload(url: str, path: Path) -> tuple[float, str]:
    """Seconds to upload `path` with curl, and the new file's id."""
    start = time.perf_counter()
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail",
            *_curl_auth(),
            "-F",
            "purpose=batch",
            "-F",
            f"file=@{path}",
            f"{url}/v1/files",
        ],
        capture_output=True,
        check=True,
    ).stdout
    return time.perf_counter() - start, json.loads(out)["id"]


def curl_download(url: str, expected: int) -> float:
    start = time.perf_counter()
    out = subprocess.run(
        ["curl", "-sS", "--fail", *_curl_auth(), "-o", "/dev/null", "-w", "%{size_download}", url],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    elapsed = time.perf_counter() - start
    assert int(out) == expected, (out, expected)
    return elapsed


def _curl_auth() -> list[str]:
    return ["-H", f"Authorization: Bearer {KEY}"]


async def concurrently(n: int, concurrency: int, job: Callable[[int], Awaitable[None]]) -> float:
    """Seconds to run `job(0..n-1)` with at most `concurrency` at once."""
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            await job(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


async def small_uploads(
    session: aiohttp.ClientSession, url: str, n: int
) -> tuple[float, list[str]]:
    ids: list[str] = []

    async def one(i: int) -> None:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", os.urandom(4096), filename=f"small-{i}.bin")
        async with session.post(f"{url}/v1/files", data=form, headers=AUTH) as resp:
            assert resp.status == 200, await resp.text()
            ids.append((await resp.json())["id"])

    return await concurrently(n, 16, one), ids


async def small_gets(session: aiohttp.ClientSession, url: str, paths: list[str], n: int) -> float:
    """Seconds to GET `n` of `paths` (round robin), 16 at once."""

    async def one(i: int) -> None:
        async with session.get(f"{url}{paths[i % len(paths)]}", headers=AUTH) as r:
            assert r.status == 200, r.status
            await r.read()

    return await concurrently(n, 16, one)


# --- the measures ------------------------------------------------------------------------------


@dataclass
class Results:
    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, measure: str, kind: str, value: float) -> None:
        self.values.setdefault((measure, kind), []).append(value)
        print(f"  {kind:6} {measure}: {value:,.1f}", file=sys.stderr, flush=True)

    def median(self, measure: str, kind: str) -> float | None:
        got = self.values.get((measure, kind))
        return statistics.median(got) if got else None


async def run_round(
    kind: str, work: Path, sizes: Sizes, large: Path | None, results: Results
) -> None:
    data_dir = work / f"{kind}-{uuid.uuid4().hex[:6]}"
    data_dir.mkdir()
    server = Server(kind, data_dir)
    try:
        if large is not None:
            seconds, file_id = curl_upload(server.url, large)
            results.add("large upload (MiB/s)", kind, sizes.large / MiB / seconds)
            seconds = curl_download(f"{server.url}/v1/files/{file_id}/content", sizes.large)
            results.add("large download (MiB/s)", kind, sizes.large / MiB / seconds)
        await run_small(server, sizes, results)
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


class Measured(Protocol):
    kind: str
    url: str

    def cpu_seconds(self) -> float: ...


async def run_small(server: Measured, sizes: Sizes, results: Results) -> list[str]:
    """The per-request measures: throughput, and the server's own CPU time per request.
    Returns the ids of the small files uploaded."""
    kind = server.kind

    def cpu(measure: str, since: float, n: int) -> None:
        results.add(f"CPU: {measure} (µs)", kind, (server.cpu_seconds() - since) / n * 1e6)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:
        await small_uploads(session, server.url, 16)  # warm up connections and code paths
        before = server.cpu_seconds()
        seconds, ids = await small_uploads(session, server.url, sizes.small_files)
        results.add("small uploads (files/s)", kind, sizes.small_files / seconds)
        cpu("4 KiB upload", before, sizes.small_files)
        n = sizes.small_requests
        before = server.cpu_seconds()
        seconds = await small_gets(session, server.url, [f"/v1/files/{i}/content" for i in ids], n)
        results.add("small downloads (req/s)", kind, n / seconds)
        cpu("4 KiB download", before, n)
        before = server.cpu_seconds()
        seconds = await small_gets(session, server.url, [f"/v1/files/{i}" for i in ids], n)
        results.add("metadata (req/s)", kind, n / seconds)
        cpu("metadata GET", before, n)
        before = server.cpu_seconds()
        await small_gets(session, server.url, ["/v1/files?limit=20"], n)
        cpu("list page of 20", before, n)
    return ids


def run_memory(work: Path, sizes: Sizes, large: Path, results: Results) -> None:
    """filesd's peak RSS growth while uploading and downloading `memory_bytes` in all."""
    data_dir = work / "memory"
    data_dir.mkdir()
    server = Server("filesd", data_dir)
    try:
        _, file_id = curl_upload(server.url, large)  # warm up, then measure from here
        baseline = server.peak_rss()
        moved = 0
        while moved < sizes.memory_bytes:
            _, file_id = curl_upload(server.url, large)
            curl_download(f"{server.url}/v1/files/{file_id}/content", sizes.large)
            moved += 2 * sizes.large
        results.add("memory: peak RSS growth (MiB)", "filesd", (server.peak_rss() - baseline) / MiB)
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def run_nginx(work: Path, sizes: Sizes, large: Path, results: Results) -> None:
    nginx = shutil.which("nginx")
    if nginx is None:
        return
    root = work / "nginx"
    (root / "logs").mkdir(parents=True)
    (root / "www").mkdir()
    os.link(large, root / "www" / "large.bin")
    port = _free_port()
    # As root, nginx's workers would switch to an unprivileged user that may not reach `root`.
    user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""
    (root / "nginx.conf").write_text(
        f"{user}daemon off; pid {root}/nginx.pid; error_log {root}/logs/error.log;\n"
        "events {}\n"
        f"http {{ access_log off; sendfile on; server {{ listen 127.0.0.1:{port};"
        f" root {root}/www; }} }}\n"
    )
    proc = subprocess.Popen([nginx, "-p", str(root), "-c", str(root / "nginx.conf")])
    try:
        for _ in range(100):
            try:
                curl_download(f"http://127.0.0.1:{port}/large.bin", sizes.large)
                break
            except subprocess.CalledProcessError:
                time.sleep(0.05)
        for _ in range(sizes.rounds):
            seconds = curl_download(f"http://127.0.0.1:{port}/large.bin", sizes.large)
            results.add("large download (MiB/s)", "nginx", sizes.large / MiB / seconds)
    finally:
        proc.terminate()
        proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_list(work: Path, sizes: Sizes, results: Results) -> None:
    """Latency of listing a project of `list_files` files: first page, deep offset, cursor."""
    data_dir = work / "list"
    data_dir.mkdir()
    server = Server("filesd", data_dir)
    try:
        async with aiohttp.ClientSession() as session:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", b"listed", filename="seed.txt")
            async with session.post(f"{server.url}/v1/files", data=form, headers=AUTH) as r:
                seed = await r.json()
    finally:
        server.stop()
    _seed_rows(data_dir / "filesd.db", seed["id"], sizes.list_files - 1)
    server = Server("filesd", data_dir)
    try:
        async with aiohttp.ClientSession() as session:

            async def page(query: str) -> tuple[float, dict[str, Any]]:
                start = time.perf_counter()
                async with session.get(f"{server.url}/v1/files?{query}", headers=AUTH) as r:
                    body = await r.json()
                    assert r.status == 200, body
                return (time.perf_counter() - start) * 1000, body

            first = [(await page("limit=100"))[0] for _ in range(50)]
            deep = [
                (await page(f"limit=100&offset={int(sizes.list_files * 0.9)}"))[0]
                for _ in range(20)
            ]
            cursor: list[float] = []
            after = ""
            for _ in range(50):
                ms, body = await page(f"limit=100{after}")
                assert body["total"] == sizes.list_files, body["total"]
                cursor.append(ms)
                after = f"&after={body['last_id']}"
        results.add("list: first page p50 (ms)", "filesd", statistics.median(first))
        results.add("list: offset 90% p50 (ms)", "filesd", statistics.median(deep))
        results.add("list: after paging p50 (ms)", "filesd", statistics.median(cursor))
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _seed_rows(db_path: Path, seed_id: str, n: int) -> None:
    """Copy the seed file's row `n` times, straight into SQLite (the server is stopped)."""
    with sqlite3.connect(db_path) as conn:
        row = conn.execute("SELECT * FROM files WHERE id = ?", (seed_id,)).fetchone()
        names = [d[0] for d in conn.execute("SELECT * FROM files LIMIT 0").description]
        columns = [c for c in names if c != "seq"]
        template = dict(zip(names, row, strict=True))
        # Column names come from the table itself; values are bound.
        insert = f"INSERT INTO files ({','.join(columns)}) VALUES ({','.join('?' * len(columns))})"
        batch: list[tuple[Any, ...]] = []
        for _ in range(n):
            template["id"] = str(uuid.uuid4())
            batch.append(tuple(template[c] for c in columns))
            if len(batch) == 50_000:
                conn.executemany(insert, batch)
                batch.clear()
        if batch:
            conn.executemany(insert, batch)


TARGETS = {
    "large upload (MiB/s)": ">= 0.85",
    "large download (MiB/s)": ">= 0.90",
    "small uploads (files/s)": ">= 0.80",
    "small downloads (req/s)": ">= 1.0",
    "metadata (req/s)": ">= 0.70",
    "list: first page p50 (ms)": "< 5 ms",
    "list: offset 90% p50 (ms)": "(reported)",
    "list: after paging p50 (ms)": "< 5 ms",
    "memory: peak RSS growth (MiB)": "< 64 MiB",
    "CPU: metadata GET (µs)": "<= 100 µs",
    "CPU: list page of 20 (µs)": "<= 200 µs",
    "CPU: 4 KiB download (µs)": "<= 150 µs",
    "CPU: 4 KiB upload (µs)": "<= 1,200 µs",
}


def report(results: Results, sizes: Sizes) -> str:
    lines = [
        f"filesd benchmark, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, rounds: {sizes.rounds}",
        "",
        "| measure | filesd | floor | nginx | filesd/floor | target |",
        "|---|---|---|---|---|---|",
    ]
    for measure, target in TARGETS.items():
        filesd = results.median(measure, "filesd")
        floor = results.median(measure, "floor")
        nginx = results.median(measure, "nginx")
        # CPU per request: the ratio is floor/filesd, so that here too 1.0 is parity and
        # higher is better.
        if measure.startswith("CPU"):
            filesd, floor = floor, filesd
        ratio = f"{filesd / floor:.2f}" if filesd is not None and floor else "-"
        if measure.startswith("CPU"):
            filesd, floor = floor, filesd
        lines.append(
            f"| {measure} | {_fmt(filesd)} | {_fmt(floor)} | {_fmt(nginx)} | {ratio} | {target} |"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


_S = TypeVar("_S")


def parse_args(
    doc: str, full: _S, quick: _S, *, small: bool = False
) -> tuple[argparse.Namespace, _S]:
    """A benchmark's command line (--quick, --rounds, and --small where it has one) and the
    sizes it asks for (`full` or `quick`, with --rounds put in)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    if small:
        parser.add_argument(
            "--small", action="store_true", help="only the per-request measures (no large files)"
        )
    args = parser.parse_args()
    sizes = quick if args.quick else full
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds)  # type: ignore[type-var]
    return args, sizes


def main() -> int:
    args, sizes = parse_args(__doc__ or "", FULL, QUICK, small=True)
    results = Results()
    with tempfile.TemporaryDirectory(
        prefix="filesd-bench-", dir=os.environ.get("BENCH_DIR")
    ) as tmp:
        work = Path(tmp)
        large = work / "large.bin"
        if not args.small:
            with large.open("wb") as f:
                for _ in range(sizes.large // MiB):
                    f.write(os.urandom(MiB))
        for round_ in range(sizes.rounds):
            order = ["filesd", "floor"] if round_ % 2 == 0 else ["floor", "filesd"]
            for kind in order:
                asyncio.run(run_round(kind, work, sizes, None if args.small else large, results))
        if not args.small:
            run_nginx(work, sizes, large, results)
            run_memory(work, sizes, large, results)
            asyncio.run(run_list(work, sizes, results))
    print(report(results, sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
