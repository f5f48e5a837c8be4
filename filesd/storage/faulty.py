"""A blob backend that wraps another and injects the storage faults of `filesd.faultrules`.

Installed only when faults can be asked for (fault rules in `[testing]`, or the admin API,
which adds rules at run time); otherwise the real backend serves bare and no storage code
looks at fault rules. The rule in force travels with the request: the faults middleware sets
`faultrules.storage_fault` for the request's task, and only this module reads it.

- `full`: writing new content fails with `StorageFull` (as a full disk does);
- `slow`: each write of new content waits `slow_ms` first;
- `missing_blob`: reading a blob fails with `BlobMissing` (as if it were deleted from outside).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import BinaryIO

from ..faultrules import storage_fault
from .base import BlobMissing, BlobWriter, DelegatingBlobs, StagedBlob, StorageFull

log = logging.getLogger(__name__)


async def _write_fault() -> None:
    rule = storage_fault.get()
    if rule is None:
        return
    if rule.storage == "full":
        raise StorageFull("No space left on device (injected fault)")
    if rule.storage == "slow":
        await asyncio.sleep(rule.slow_ms / 1000)


def _read_fault(digest: str) -> None:
    rule = storage_fault.get()
    if rule is not None and rule.storage == "missing_blob":
        log.error("blob %s is missing (injected fault)", digest)
        raise BlobMissing(digest)


class FaultyBlobs(DelegatingBlobs):
    def writer(self, max_bytes: int | None = None) -> BlobWriter:
        return _FaultyWriter(self.inner.writer(max_bytes))

    async def read(self, digest: str) -> bytes:
        _read_fault(digest)
        return await self.inner.read(digest)

    async def open_range(
        self, digest: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        _read_fault(digest)
        async for chunk in self.inner.open_range(digest, start, length):
            yield chunk

    async def open_local(self, digest: str) -> BinaryIO | None:
        _read_fault(digest)
        return await self.inner.open_local(digest)


class _FaultyWriter:
    def __init__(self, inner: BlobWriter) -> None:
        self._inner = inner

    @property
    def size(self) -> int:
        return self._inner.size

    async def write(self, data: bytes) -> None:
        if data:
            await _write_fault()
        await self._inner.write(data)

    async def finish(self) -> StagedBlob:
        await _write_fault()
        return await self._inner.finish()

    async def abort(self) -> None:
        await self._inner.abort()
