"""A recorded conversation with filesd: a fixed sequence of requests over every public route,
success and error paths alike, and the answers as they were (status, the headers a client
reads, the body byte for byte).

`tests/test_transcript.py` replays it and compares: a change that alters any answer fails there,
so a refactoring cannot change what users see without saying so. After an intended change,
record anew and review the diff of `tests/golden/transcript.json`:

    python -m tests.transcript --record

Everything that varies from run to run is fixed by the configuration (seeded ids, a frozen
clock) or left out: request ids, `Date`, timings, and answers that hold them (the request
journal, /metrics), and `/openapi.json` (generated; `tests/test_openapi.py` checks it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from filesd.api.app import create_app
from filesd.config import parse_config

from .conftest import wait_until

GOLDEN = Path(__file__).parent / "golden" / "transcript.json"

ALPHA = "sk-transcript-alpha-0123"
BETA = "sk-transcript-beta-45678"
ADMIN = "transcript-admin-token-0123"
BOUNDARY = "transcriptboundary"
# The response headers a client reads; the others vary (Date, x-request-id, timings) or are
# the HTTP library's own.
KEPT_HEADERS = (
    "Accept-Ranges",
    "Allow",
    "Cache-Control",
    "Content-Disposition",
    "Content-Length",
    "Content-Range",
    "Content-Type",
    "ETag",
    "Last-Modified",
    "Location",
    "Retry-After",
    "Vary",
    "X-Content-Type-Options",
    "openai-version",
    "retry-after-ms",
)


def config_tables(data_dir: Path) -> dict[str, Any]:
    return {
        "storage": {"data_dir": str(data_dir)},
        "limits": {"max_file_bytes": 200_000, "max_part_bytes": 100_000},
        "files": {"id_format": "openai"},
        "auth": {"keys": [{"key": ALPHA, "project": "alpha"}, {"key": BETA, "project": "beta"}]},
        "admin": {"token": ADMIN},
        "testing": {"id_seed": 18, "frozen_time": 1_780_000_000},
        "batches": {"upstream": "echo"},
    }


def form(fields: list[tuple[str, str | bytes, str | None]]) -> bytes:
    """A multipart/form-data body: (name, value, filename or None) in order."""
    out = bytearray()
    for name, value, filename in fields:
        out += f"--{BOUNDARY}\r\n".encode()
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n"
        out += value.encode() if isinstance(value, str) else value
        out += b"\r\n"
    out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out)


class Recorder:
    """Sends the requests of the conversation and keeps each exchange."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client
        self.exchanges: list[dict[str, Any]] = []

    async def send(
        self,
        method: str,
        path: str,
        *,
        key: str | None = ALPHA,
        body: bytes | None = None,
        json_body: Any = None,
        multipart: list[tuple[str, str | bytes, str | None]] | None = None,
        headers: Mapping[str, str] | None = None,
        record: bool = True,
    ) -> Any:
        """Send one request; returns its JSON body (None if not JSON)."""
        sent: dict[str, str] = dict(headers or {})
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        data = body
        if json_body is not None:
            data = json.dumps(json_body).encode()
            sent["Content-Type"] = "application/json"
        if multipart is not None:
            data = form(multipart)
            sent["Content-Type"] = f"multipart/form-data; boundary={BOUNDARY}"
        response = await self.client.request(method, path, data=data, headers=sent)
        raw = await response.read()
        if record:
            kept = {
                name: response.headers[name] for name in KEPT_HEADERS if name in response.headers
            }
            self.exchanges.append(
                {
                    "request": {
                        "method": method,
                        "path": path,
                        "headers": {k: v for k, v in sent.items() if k != "Authorization"},
                        "key": {ALPHA: "alpha", BETA: "beta", ADMIN: "admin", None: None}.get(
                            key, "other"
                        ),
                        "body": _text(data),
                    },
                    "response": {"status": response.status, "headers": kept, "body": _text(raw)},
                }
            )
        if response.content_type == "application/json":
            return json.loads(raw)
        return None


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode()


async def conversation(r: Recorder) -> None:
    """The requests, in order. Ids are seeded, so the same every run."""
    # Outside the API, and authentication.
    await r.send("GET", "/healthz", key=None)
    await r.send("GET", "/readyz", key=None)
    await r.send("GET", "/", key=None, headers={"Accept": "application/json"})
    await r.send("GET", "/v1/files", key=None)
    await r.send("GET", "/v1/files", key="sk-wrong-key-0000000000")
    await r.send("GET", "/v1/nowhere")
    await r.send("PUT", "/v1/files")

    # Files: uploads and their refusals.
    hello = b"hello, transcript\n"
    first = await r.send(
        "POST",
        "/v1/files",
        multipart=[("purpose", "assistants", None), ("file", hello, "hello.txt")],
    )
    second = await r.send(
        "POST",
        "/v1/files",
        multipart=[
            ("file", b'{"a": 1}\n' * 2000, "data.jsonl"),
            ("purpose", "batch", None),
            ("expires_after[anchor]", "created_at", None),
            ("expires_after[seconds]", "3600", None),
        ],
    )
    third = await r.send(
        "POST",
        "/v1/files",
        multipart=[("purpose", "fine-tune", None), ("file", hello, "naïve ünïcode.txt")],
    )
    await r.send(
        "POST",
        "/v1/files",
        key=BETA,
        multipart=[("purpose", "vision", None), ("file", hello, "b.txt")],
    )
    await r.send(
        "POST", "/v1/files", multipart=[("purpose", "nope", None), ("file", hello, "x.txt")]
    )
    await r.send("POST", "/v1/files", multipart=[("purpose", "batch", None)])
    await r.send("POST", "/v1/files", multipart=[("file", hello, "x.txt")])
    await r.send("POST", "/v1/files", multipart=[("purpose", "batch", None), ("file", hello, "")])
    await r.send(
        "POST", "/v1/files", multipart=[("purpose", "batch", None), ("file", hello, "a/b")]
    )
    await r.send(
        "POST",
        "/v1/files",
        multipart=[("purpose", "batch", None), ("purpose", "batch", None), ("file", hello, "x")],
    )
    await r.send(
        "POST",
        "/v1/files",
        multipart=[("purpose", "batch", None), ("colour", "red", None), ("file", hello, "x")],
    )
    await r.send(
        "POST",
        "/v1/files",
        multipart=[
            ("purpose", "batch", None),
            ("expires_after[anchor]", "last_active_at", None),
            ("expires_after[seconds]", "3600", None),
            ("file", hello, "x"),
        ],
    )
    await r.send(
        "POST",
        "/v1/files",
        multipart=[
            ("purpose", "batch", None),
            ("expires_after[anchor]", "created_at", None),
            ("expires_after[seconds]", "60", None),
            ("file", hello, "x"),
        ],
    )
    await r.send(
        "POST",
        "/v1/files",
        multipart=[
            ("purpose", "batch", None),
            ("expires_after[seconds]", "ten", None),
            ("expires_after[anchor]", "created_at", None),
            ("file", hello, "x"),
        ],
    )
    await r.send(
        "POST", "/v1/files", multipart=[("purpose", "batch", None), ("file", b"x" * 200_001, "big")]
    )
    await r.send("POST", "/v1/files", json_body={"purpose": "batch"})
    await r.send(
        "POST", "/v1/files", body=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}
    )

    # Files: reading, listing, paging.
    file_id, batch_file = first["id"], second["id"]
    await r.send("GET", f"/v1/files/{file_id}")
    await r.send("GET", f"/v1/files/{file_id}", key=BETA)
    await r.send("GET", "/v1/files/file-doesnotexist")
    await r.send("GET", "/v1/files")
    await r.send("GET", "/v1/files", key=BETA)
    await r.send("GET", "/v1/files?limit=1")
    await r.send("GET", f"/v1/files?limit=1&after={batch_file}")
    await r.send("GET", "/v1/files?order=asc&limit=2")
    await r.send("GET", "/v1/files?purpose=batch")
    await r.send("GET", "/v1/files?offset=1&limit=1")
    await r.send("GET", "/v1/files?purpose=")
    for query in (
        "limit=0",
        "limit=1001",
        "limit=ten",
        "offset=-1",
        "order=up",
        "limit=1&limit=2",
        "after=file-none",
        "limit=99999999999999999999",
    ):
        await r.send("GET", f"/v1/files?{query}")

    # Files: content, ranges and conditions.
    content = f"/v1/files/{file_id}/content"
    await r.send("GET", content)
    await r.send("HEAD", content)
    await r.send("GET", f"/v1/files/{batch_file}/content", headers={"Range": "bytes=0-9"})
    await r.send("GET", content, headers={"Range": "bytes=-5"})
    await r.send("GET", content, headers={"Range": "bytes=100-"})
    await r.send("GET", content, headers={"Range": "bytes=1-2,4-5"})
    await r.send("GET", content, headers={"Range": "pages=1"})
    etag = '"' + hashlib.sha256(hello).hexdigest() + '"'
    await r.send("GET", content, headers={"If-None-Match": etag})
    await r.send("GET", content, headers={"If-Match": '"other"'})
    await r.send("GET", content, headers={"If-Modified-Since": "Sun, 01 Jan 2090 00:00:00 GMT"})
    await r.send("GET", content, headers={"If-Range": '"other"', "Range": "bytes=0-1"})
    await r.send("GET", f"/v1/files/{batch_file}/content")
    await r.send("GET", content, key=BETA)

    # Files: deleting.
    await r.send("DELETE", f"/v1/files/{file_id}", key=BETA)
    await r.send("DELETE", f"/v1/files/{file_id}")
    await r.send("DELETE", f"/v1/files/{file_id}")
    await r.send("GET", content)
    await r.send("GET", f"/v1/files?after={file_id}")

    # Uploads.
    upload = await r.send(
        "POST",
        "/v1/uploads",
        json_body={
            "bytes": 9,
            "filename": "parts.txt",
            "mime_type": "text/plain",
            "purpose": "batch",
        },
    )
    bad: object
    for bad in (
        {"filename": "a", "mime_type": "text/plain", "purpose": "batch"},
        {"bytes": "9", "filename": "a", "mime_type": "text/plain", "purpose": "batch"},
        {"bytes": True, "filename": "a", "mime_type": "text/plain", "purpose": "batch"},
        {"bytes": -1, "filename": "a", "mime_type": "text/plain", "purpose": "batch"},
        {"bytes": 9, "filename": "", "mime_type": "text/plain", "purpose": "batch"},
        {"bytes": 9, "filename": "a", "mime_type": "", "purpose": "batch"},
        {"bytes": 9, "filename": "a", "mime_type": "text/plain", "purpose": "other"},
        {"bytes": 9, "filename": "a", "mime_type": "text/plain", "purpose": "batch", "x": 1},
        {"bytes": 9, "filename": "a", "mime_type": "text/plain", "purpose": 7},
        {
            "bytes": 9,
            "filename": "a",
            "mime_type": "text/plain",
            "purpose": "batch",
            "expires_after": {"anchor": "created_at"},
        },
        {
            "bytes": 9,
            "filename": "a",
            "mime_type": "text/plain",
            "purpose": "batch",
            "expires_after": {"anchor": "created_at", "seconds": 3600, "extra": 1},
        },
        {
            "bytes": 9,
            "filename": "a",
            "mime_type": "text/plain",
            "purpose": "batch",
            "expires_after": [],
        },
        [],
    ):
        await r.send("POST", "/v1/uploads", json_body=bad)
    await r.send(
        "POST", "/v1/uploads", body=b"{not json", headers={"Content-Type": "application/json"}
    )
    await r.send(
        "POST", "/v1/uploads", body=b'{"bytes": NaN}', headers={"Content-Type": "application/json"}
    )
    parts = f"/v1/uploads/{upload['id']}/parts"
    part_one = await r.send("POST", parts, multipart=[("data", b"abcd", "blob")])
    part_two = await r.send("POST", parts, multipart=[("data", b"efghi", "blob")])
    await r.send("POST", parts, multipart=[("data", b"", "blob")])
    await r.send("POST", parts, multipart=[("data", b"toolong", "blob")])
    await r.send("POST", parts, multipart=[("other", b"x", "blob")])
    await r.send("POST", "/v1/uploads/upload_nope/parts", multipart=[("data", b"x", "blob")])
    await r.send("POST", parts, key=BETA, multipart=[("data", b"x", "blob")])
    complete = f"/v1/uploads/{upload['id']}/complete"
    ids = [part_one["id"], part_two["id"]]
    for bad in (
        {"part_ids": ["part_nope"]},
        {"part_ids": [ids[0], ids[0]]},
        {"part_ids": [ids[0]]},
        {"part_ids": "x"},
        {"part_ids": [1]},
        {"part_ids": ids, "md5": "zz"},
        {"part_ids": ids, "md5": "0" * 32},
        {"part_ids": ids, "other": 1},
        {},
    ):
        await r.send("POST", complete, json_body=bad)
    await r.send(
        "POST",
        complete,
        json_body={"part_ids": ids, "md5": hashlib.md5(b"abcdefghi").hexdigest()},  # noqa: S324
    )
    await r.send("POST", complete, json_body={"part_ids": ids})
    await r.send("POST", f"/v1/uploads/{upload['id']}/cancel", body=b"")
    other = await r.send(
        "POST",
        "/v1/uploads",
        json_body={
            "bytes": 3,
            "filename": "c.txt",
            "mime_type": "text/plain",
            "purpose": "user_data",
            "expires_after": {"anchor": "created_at", "seconds": 7200},
        },
    )
    await r.send("POST", f"/v1/uploads/{other['id']}/cancel", json_body={"x": 1})
    await r.send("POST", f"/v1/uploads/{other['id']}/cancel", key=BETA)
    await r.send("POST", f"/v1/uploads/{other['id']}/cancel")
    await r.send("POST", f"/v1/uploads/{other['id']}/cancel")
    await r.send("POST", f"/v1/uploads/{other['id']}/parts", multipart=[("data", b"x", "blob")])

    # Batches.
    lines = b"".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "echo-1", "messages": [{"role": "user", "content": f"hi {i}"}]},
            }
        ).encode()
        + b"\n"
        for i in range(3)
    )
    batch_input = await r.send(
        "POST", "/v1/files", multipart=[("purpose", "batch", None), ("file", lines, "input.jsonl")]
    )
    create = {
        "input_file_id": batch_input["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"run": "transcript"},
    }
    batch = await r.send("POST", "/v1/batches", json_body=create)

    final = batch

    async def ended() -> bool:
        nonlocal final
        final = await r.send("GET", f"/v1/batches/{batch['id']}", record=False)
        return final["status"] in ("completed", "failed", "expired", "cancelled")

    await wait_until(ended, timeout=60, what="the batch ends")
    await r.send("GET", f"/v1/batches/{batch['id']}")
    await r.send("GET", f"/v1/batches/{batch['id']}", key=BETA)
    await r.send("GET", "/v1/batches")
    await r.send("GET", "/v1/batches?limit=0")
    await r.send("GET", "/v1/batches?after=batch_nope")
    await r.send("POST", f"/v1/batches/{batch['id']}/cancel")
    await r.send("POST", "/v1/batches/batch_nope/cancel")
    for bad in (
        {**create, "endpoint": "/v1/nope"},
        {**create, "completion_window": "1h"},
        {**create, "input_file_id": "file-nope"},
        {**create, "input_file_id": file_id},
        {**create, "input_file_id": third["id"]},
        {**create, "metadata": {"k": 1}},
        {**create, "metadata": {str(i): "v" for i in range(17)}},
        {**create, "metadata": []},
        {**create, "output_expires_after": {"anchor": "created_at", "seconds": 1}},
        {**create, "surprise": True},
        {"endpoint": "/v1/chat/completions", "completion_window": "24h"},
    ):
        await r.send("POST", "/v1/batches", json_body=bad)
    await r.send("GET", f"/v1/files/{final['output_file_id']}")

    # The admin API (but the journal, whose entries hold timings).
    await r.send("GET", "/admin/projects", key=None)
    await r.send("GET", "/admin/projects", key=ALPHA)
    await r.send("GET", "/admin/projects", key=ADMIN)
    rule = await r.send(
        "POST",
        "/admin/faults",
        key=ADMIN,
        json_body={"route": "/v1/files/{file_id}", "status": 503, "retry_after": 2, "count": 1},
    )
    await r.send("GET", "/admin/faults", key=ADMIN)
    await r.send("GET", f"/v1/files/{batch_file}")
    await r.send("GET", f"/v1/files/{batch_file}")
    await r.send("POST", "/admin/faults", key=ADMIN, json_body={"status": 700})
    await r.send("POST", "/admin/faults", key=ADMIN, json_body={"bogus": 1})
    await r.send("DELETE", f"/admin/faults/{rule['id']}", key=ADMIN)
    await r.send("DELETE", "/admin/faults", key=ADMIN)
    await r.send("GET", "/admin/clock", key=ADMIN)
    await r.send("POST", "/admin/clock", key=ADMIN, json_body={"advance": 7200})
    await r.send("GET", f"/v1/files/{batch_file}")
    await r.send("POST", "/admin/clock", key=ADMIN, json_body={"advance": "x"})
    await r.send("POST", "/admin/reset", key=ADMIN, json_body={"project": 5})
    await r.send("POST", "/admin/reset", key=ADMIN, json_body={"project": "beta"})
    await r.send("GET", "/v1/files", key=BETA)
    await r.send("POST", "/admin/reset", key=ADMIN, body=b"")
    await r.send("GET", "/v1/files")


async def record(data_dir: Path) -> list[dict[str, Any]]:
    """Run the conversation against a fresh server on `data_dir`; the exchanges."""
    config = parse_config(config_tables(data_dir), base_dir=data_dir)
    async with TestClient(TestServer(create_app(config))) as client:
        recorder = Recorder(client)
        await conversation(recorder)
    return recorder.exchanges


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", action="store_true", help=f"write {GOLDEN}")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="filesd-transcript-") as tmp:
        exchanges = asyncio.run(record(Path(tmp) / "data"))
    text = json.dumps(exchanges, indent=1, ensure_ascii=False) + "\n"
    if args.record:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
        print(f"recorded {len(exchanges)} exchanges in {GOLDEN}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
