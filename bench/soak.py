"""Soak: N clients doing mixed operations against a real filesd for M minutes, on loopback.

    python bench/soak.py --clients 16 --minutes 10      # a real soak
    python bench/soak.py --clients 8 --seconds 10       # the short form the tests run

Every client loops over upload (1 B to 1 MiB), list, retrieve, download (checked byte for byte)
and delete, until the time is up or --max-requests is reached. It reports the requests made, the
errors (anything unexpected: must be 0), and filesd's RSS and open file descriptors after warm-up
and at the end (they must not grow without bound). Exit status 1 on any error or a leak beyond
the allowed growth.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp

from filesd.testing.process import ServerProcess

AUTH = {"Authorization": "Bearer sk-soak"}


def _sample(pid: int, every: float, samples: list[int]) -> None:
    """RSS every `every` seconds, to tell a plateau (caches filling) from a leak."""
    while True:
        time.sleep(every)
        try:
            samples.append(rss_and_fds(pid)[0])
        except (FileNotFoundError, ProcessLookupError):
            return
        if len(samples) >= 10:
            return


def rss_and_fds(pid: int) -> tuple[int, int]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def client(
    url: str, rng: random.Random, deadline: float, budget: list[int], stats: Counter[str]
) -> None:
    mine: dict[str, str] = {}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            op = rng.choices(["upload", "list", "get", "download", "delete"], [4, 2, 2, 3, 2])[0]
            if op in ("get", "download", "delete") and not mine:
                op = "upload"
            try:
                await one(session, url, op, rng, mine, stats)
            except (TimeoutError, aiohttp.ClientError, AssertionError) as error:
                stats[f"error: {op}: {error!r}"[:200]] += 1


async def one(
    session: aiohttp.ClientSession,
    url: str,
    op: str,
    rng: random.Random,
    mine: dict[str, str],
    stats: Counter[str],
) -> None:
    stats[op] += 1
    if op == "upload":
        content = rng.randbytes(rng.choice([1, 1000, 64 * 1024, 300_000, 1024 * 1024]))
        form = aiohttp.FormData()
        form.add_field("purpose", rng.choice(["batch", "assistants", "fine-tune"]))
        form.add_field("file", io.BytesIO(content), filename=f"soak-{len(mine)}.bin")
        async with session.post(f"{url}/v1/files", data=form, headers=AUTH) as r:
            assert r.status == 200, f"upload {r.status}"
            mine[(await r.json())["id"]] = hashlib.sha256(content).hexdigest()
    elif op == "list":
        async with session.get(f"{url}/v1/files?limit=20", headers=AUTH) as r:
            assert r.status == 200, f"list {r.status}"
            await r.json()
    else:
        file_id = rng.choice(list(mine))
        path = f"/v1/files/{file_id}" + ("/content" if op == "download" else "")
        method = "DELETE" if op == "delete" else "GET"
        async with session.request(method, f"{url}{path}", headers=AUTH) as r:
            body = await r.read()
            assert r.status == 200, f"{op} {r.status}"
            if op == "download":
                assert hashlib.sha256(body).hexdigest() == mine[file_id], "content changed"
        if op == "delete":
            del mine[file_id]


async def soak(
    url: str, clients: int, seconds: float, max_requests: int, seed: int
) -> Counter[str]:
    stats: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    budget = [max_requests]
    await asyncio.gather(
        *(client(url, random.Random(seed + i), deadline, budget, stats) for i in range(clients))
    )
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=0)
    parser.add_argument("--seconds", type=float, default=0)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--max-rss-growth-mib", type=float, default=64)
    parser.add_argument("--max-fd-growth", type=int, default=16)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    seconds = args.minutes * 60 + args.seconds or 60
    with tempfile.TemporaryDirectory(prefix="filesd-soak-") as tmp:
        server = ServerProcess(["--data-dir", f"{tmp}/data"], cwd=Path(tmp), timeout=60)
        try:
            url = server.url
            # Warm up (caches, thread pools, connections) before taking the baseline.
            asyncio.run(soak(url, args.clients, min(2.0, seconds / 5), 10_000, args.seed))
            rss0, fds0 = rss_and_fds(server.pid)
            samples: list[int] = []
            sampler = threading.Thread(
                target=_sample, args=(server.pid, seconds / 10, samples), daemon=True
            )
            started = time.monotonic()
            sampler.start()
            stats = asyncio.run(
                soak(url, args.clients, seconds, args.max_requests, args.seed + 1000)
            )
            elapsed = time.monotonic() - started
            rss1, fds1 = rss_and_fds(server.pid)
        finally:
            status = server.stop(timeout=60)
    errors = {k: v for k, v in stats.items() if k.startswith("error")}
    requests = sum(v for k, v in stats.items() if not k.startswith("error"))
    print(
        f"soak: {args.clients} clients, {elapsed:.0f} s, {requests} requests "
        f"({requests / elapsed:.0f}/s): "
        + ", ".join(f"{k} {v}" for k, v in sorted(stats.items()) if not k.startswith("error"))
    )
    print(f"errors: {sum(errors.values())}")
    for kind, count in errors.items():
        print(f"  {count} x {kind}")
    print(
        f"RSS: {rss0 / 2**20:.1f} MiB -> {rss1 / 2**20:.1f} MiB; "
        f"open fds: {fds0} -> {fds1}; filesd exit status {status}"
    )
    print("RSS over the run (MiB): " + " ".join(f"{r / 2**20:.0f}" for r in samples))
    leak = (rss1 - rss0) / 2**20 > args.max_rss_growth_mib or fds1 - fds0 > args.max_fd_growth
    return 1 if errors or leak or status != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
