"""A batch of long lines holds a few lines' worth of memory, however many requests may be in
flight: measured as the peak RSS (VmHWM) of a real server process, over a batch of 24 MiB
lines (201 MB, near the 200 MB an input file may be) sent to an upstream slow enough that
every request of the batch could be in flight at once."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from openai import OpenAI

from filesd.testing.process import ServerProcess

from .batch_upstream import Behaviour, request_line, upstream_thread
from .conftest import wait_until_sync

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
LINES = 8
LINE_BYTES = 24 * MIB


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match is not None, status
    return int(match.group(1)) / 1024


def long_line(key: str, *, echoed: bool) -> bytes:
    """A request line of LINE_BYTES: `<key>|slow` after a long system message, or (`echoed`)
    as the start of a long user message, which the echo model answers whole."""
    line = request_line(key, "slow")
    messages = line["body"]["messages"]
    if echoed:
        size = len(json.dumps(line))
        messages[-1]["content"] += "p" * (LINE_BYTES - size)
    else:
        size = len(json.dumps(line)) + len(json.dumps({"role": "system", "content": ""})) + 2
        messages.insert(0, {"role": "system", "content": "p" * (LINE_BYTES - size)})
    data = json.dumps(line).encode() + b"\n"
    assert len(data) == LINE_BYTES + 1
    return data


def peak_growth(tmp_path: Path, upstream: str, *, echoed: bool = False) -> float:
    """MiB by which a server's peak RSS grows over a batch of LINES long lines."""
    config = tmp_path / "filesd.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[batches]\nupstream = "{upstream}"\nconcurrency = 8\n'
    )
    server = ServerProcess(["--config", str(config)], cwd=tmp_path)
    try:
        client = OpenAI(base_url=server.base_url, api_key=f"sk-{uuid.uuid4().hex}")
        data = b"".join(long_line(f"r{n}", echoed=echoed) for n in range(LINES))
        file_id = client.files.create(file=("in.jsonl", data), purpose="batch").id
        del data
        before = peak_rss_mib(server.pid)
        batch = client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )

        def done() -> bool:
            status = client.batches.retrieve(batch.id).status
            assert status in ("validating", "in_progress", "finalizing", "completed")
            return status == "completed"

        wait_until_sync(done, timeout=300, what="the batch completed")
        counts = client.batches.retrieve(batch.id).request_counts
        assert counts is not None and counts.completed == LINES
        return peak_rss_mib(server.pid) - before
    finally:
        assert server.stop() == 0


def test_requests_in_flight_hold_a_few_lines_not_one_set_per_slot(tmp_path: Path) -> None:
    # Before, each request in flight held its line, its parsed body and its encoding, 8 of
    # them at once (8 concurrency slots) while the upstream took its time: the peak grew by
    # 427-475 MiB. Now a line as long as the runner's in-flight budget goes alone: it grows
    # by 150-181 MiB (measured).
    behaviour = Behaviour(slow_seconds=2.0)
    with upstream_thread(behaviour) as upstream:
        growth = peak_growth(tmp_path, upstream)
    assert behaviour.calls == {f"r{n}": 1 for n in range(LINES)}
    assert growth < 12 * LINE_BYTES / MIB, f"peak RSS grew by {growth:.0f} MiB"


def test_a_batch_on_echo_holds_a_few_lines_at_once(tmp_path: Path) -> None:
    # The echo model answers each 24 MiB prompt whole: a result as long as its line. Before,
    # the peak grew by 583-634 MiB (575 with the in-flight budget alone), now by 390-416 MiB
    # (measured). The rest is SQLite's copies of each result as it is written and read, and
    # the freed memory glibc keeps in each thread's arena.
    growth = peak_growth(tmp_path, "echo", echoed=True)
    assert growth < 20 * LINE_BYTES / MIB, f"peak RSS grew by {growth:.0f} MiB"
