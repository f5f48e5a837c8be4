"""The Batch API on the echo model: throughput and memory of a large batch, end to end.

    python bench/batches.py                    # 50,000 requests (OpenAI's most per batch)
    python bench/batches.py --quick            # 2,000 requests: proves the benchmark works (CI)
    python bench/batches.py --concurrency 32   # [batches] concurrency (default: filesd's, 8)

A real `filesd serve` on a fresh data directory, `[batches] upstream = "echo"`; the input is
uploaded, a batch created with the official SDK and polled until it completes. Reported:
validation time, requests per second while in progress and end to end, the output's size, and
the server's peak RSS growth over the run (VmHWM from /proc, minus VmRSS before the upload):
memory must stay flat whatever the batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from openai import OpenAI

from filesd.config import BatchesConfig
from filesd.testing.process import ServerProcess

MiB = 1024 * 1024


def write_input(path: Path, requests: int) -> int:
    """A chat-completions batch of `requests` lines (~250 bytes each); returns its size."""
    with path.open("w") as f:
        for n in range(requests):
            line = {
                "custom_id": f"request-{n}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [
                        {"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": f"Summarise document number {n} briefly."},
                    ],
                    "max_tokens": 100,
                },
            }
            f.write(json.dumps(line) + "\n")
    return path.stat().st_size


def memory(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def run(requests: int, concurrency: int, work: Path) -> list[tuple[str, str]]:
    config = work / "filesd.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{work / "data"}"\n\n'
        f'[batches]\nupstream = "echo"\nconcurrency = {concurrency}\n'
        "\n[log]\naccess_log = false\n"
    )
    source = work / "input.jsonl"
    size = write_input(source, requests)
    server = ServerProcess(["--config", str(config)], cwd=work, timeout=60)
    try:
        client = OpenAI(base_url=server.base_url, api_key="sk-bench", max_retries=2)
        baseline = memory(server.pid, "VmRSS")
        started = time.monotonic()
        with source.open("rb") as f:
            file_id = client.files.create(file=("input.jsonl", f), purpose="batch").id
        uploaded = time.monotonic()
        batch = client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        in_progress = finalizing = None
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.05)
            batch = client.batches.retrieve(batch.id)
            now = time.monotonic()
            if batch.status == "in_progress" and in_progress is None:
                in_progress = now
            if batch.status in ("finalizing", "completed") and finalizing is None:
                finalizing = now
        ended = time.monotonic()
        if batch.status != "completed":
            raise SystemExit(f"the batch ended {batch.status}: {batch.errors}")
        assert batch.output_file_id is not None and batch.request_counts is not None
        assert batch.request_counts.completed == requests
        output = client.files.retrieve(batch.output_file_id).bytes
        peak = memory(server.pid, "VmHWM")
    finally:
        server.stop()
    in_progress = in_progress or uploaded
    finalizing = finalizing or ended
    running = max(finalizing - in_progress, 1e-9)
    return [
        ("requests", f"{requests:,}"),
        ("input (MiB)", f"{size / MiB:.1f}"),
        ("concurrency", str(concurrency)),
        ("upload (s)", f"{uploaded - started:.2f}"),
        ("validation (s)", f"{in_progress - uploaded:.2f}"),
        ("in progress (requests/s)", f"{requests / running:,.0f}"),
        ("finalizing (s)", f"{ended - finalizing:.2f}"),
        ("end to end (requests/s)", f"{requests / (ended - uploaded):,.0f}"),
        ("output (MiB)", f"{output / MiB:.1f}"),
        ("memory: peak RSS growth (MiB)", f"{(peak - baseline) / MiB:.1f}"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 requests (CI)")
    parser.add_argument("--requests", type=int, help="requests in the batch (default 50,000)")
    parser.add_argument("--concurrency", type=int, default=BatchesConfig.concurrency)
    args = parser.parse_args()
    requests = args.requests or (2_000 if args.quick else 50_000)
    with tempfile.TemporaryDirectory(
        prefix="filesd-bench-batches-", dir=os.environ.get("BENCH_DIR")
    ) as tmp:
        rows = run(requests, args.concurrency, Path(tmp))
    print("| measure | filesd (echo) |")
    print("|---|---|")
    for measure, value in rows:
        print(f"| {measure} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
