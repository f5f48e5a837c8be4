"""The floor: the least any server of this API must do, on the same routes as filesd.

Uploads stream the multipart file part into a temp file while hashing it with SHA-256 (1 MiB
batches, hashing and writing in a worker thread), fsync it, and rename it to its digest. Metadata
lives in a dict; downloads are `web.FileResponse`. No auth, no database, no dedupe bookkeeping:
whatever filesd spends beyond this is its own overhead.

    python bench/floor.py --port 0 --data-dir DIR     # prints "floor listening on URL"
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import os
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

BATCH = 1024 * 1024


def _write(fd: int, chunks: list[bytes], digest: Any) -> None:
    for chunk in chunks:
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


def _finish(fd: int, temp: Path, target: Path) -> None:
    os.fsync(fd)
    os.close(fd)
    os.replace(temp, target)


class Floor:
    def __init__(self, data_dir: Path) -> None:
        self.tmp = data_dir / "tmp"
        self.blobs = data_dir / "blobs"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, dict[str, Any]] = {}

    async def upload(self, request: web.Request) -> web.Response:
        reader = await request.multipart()
        purpose, meta = "", None
        loop = asyncio.get_running_loop()
        while (part := await reader.next()) is not None:
            assert not isinstance(part, type(reader))
            if part.name == "purpose":
                purpose = (await part.read()).decode()
                continue
            temp = self.tmp / uuid.uuid4().hex
            fd = await loop.run_in_executor(None, os.open, temp, os.O_WRONLY | os.O_CREAT, 0o644)
            digest = hashlib.sha256()
            batch: list[bytes] = []
            size = pending_size = 0
            pending: asyncio.Future[None] | None = None
            while chunk := await part.read_chunk(BATCH):
                batch.append(chunk)
                size += len(chunk)
                pending_size += len(chunk)
                if pending_size >= BATCH:
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(None, _write, fd, batch, digest)
                    batch, pending_size = [], 0
            if pending is not None:
                await pending
            await loop.run_in_executor(None, _write, fd, batch, digest)
            target = self.blobs / digest.hexdigest()
            await loop.run_in_executor(None, _finish, fd, temp, target)
            meta = {
                "id": str(uuid.uuid4()),
                "object": "file",
                "bytes": size,
                "created_at": int(time.time()),
                "filename": part.filename,
                "status": "processed",
                "status_details": None,
                "expires_at": None,
                "path": target,
            }
        assert meta is not None
        meta["purpose"] = purpose
        self.files[meta["id"]] = meta
        return web.json_response(_public(meta))

    async def retrieve(self, request: web.Request) -> web.Response:
        meta = self.files.get(request.match_info["file_id"])
        if meta is None:
            raise web.HTTPNotFound()
        return web.json_response(_public(meta))

    async def listing(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "20"))
        newest = itertools.islice(reversed(self.files.values()), limit)
        data = [_public(meta) for meta in newest]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": len(self.files) > limit,
            }
        )

    async def content(self, request: web.Request) -> web.FileResponse:
        meta = self.files.get(request.match_info["file_id"])
        if meta is None:
            raise web.HTTPNotFound()
        return web.FileResponse(meta["path"], headers={"Content-Type": "application/octet-stream"})


def _public(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k != "path"}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    floor = Floor(args.data_dir)
    app = web.Application()
    app.router.add_post("/v1/files", floor.upload)
    app.router.add_get("/v1/files", floor.listing)
    app.router.add_get("/v1/files/{file_id}", floor.retrieve)
    app.router.add_get("/v1/files/{file_id}/content", floor.content)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"floor listening on http://{host}:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
