"""Small blobs kept in memory, in front of any blob backend.

Blobs are immutable (named by their digest), so the cache needs no invalidation: a digest's
bytes are the same whenever they are stored. Content is remembered when it is committed
(its writer kept it, see `StagedBlob.content`) or read whole, up to a bound in all, oldest out
first; a delete forgets it. A blob removed behind filesd's back may so still be served for a
while; once out of the cache its absence raises `BlobMissing`.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import SMALL_BYTES, BlobBackend, DelegatingBlobs, StagedBlob

# Small blobs read for downloads are kept in memory up to this many bytes in all.
SMALL_CACHE_BYTES = 32 * 1024 * 1024


class CachedBlobs(DelegatingBlobs):
    def __init__(self, inner: BlobBackend, limit: int = SMALL_CACHE_BYTES) -> None:
        super().__init__(inner)
        self._small: dict[str, bytes] = {}
        self._bytes = 0
        self._limit = limit

    async def commit(self, staged: Sequence[StagedBlob]) -> list[bool | Exception]:
        results = await self.inner.commit(staged)
        for item, result in zip(staged, results, strict=True):
            if item.content is not None and not isinstance(result, Exception):
                self._remember(item.sha256, item.content)
        return results

    async def read(self, digest: str) -> bytes:
        cached = self._small.get(digest)
        if cached is not None:
            return cached
        content = await self.inner.read(digest)
        self._remember(digest, content)
        return content

    async def delete(self, digests: Sequence[str]) -> int:
        self.forget(digests)
        return await self.inner.delete(digests)

    async def quarantine(self, digests: Sequence[str]) -> None:
        self.forget(digests)
        await self.inner.quarantine(digests)

    def forget(self, digests: Sequence[str] | None = None) -> None:
        """Drop these digests from memory (None: all)."""
        for digest in list(self._small) if digests is None else digests:
            content = self._small.pop(digest, None)
            if content is not None:
                self._bytes -= len(content)

    def _remember(self, digest: str, content: bytes) -> None:
        if digest in self._small or len(content) > SMALL_BYTES:
            return
        self._small[digest] = content
        self._bytes += len(content)
        while self._bytes > self._limit:
            oldest = next(iter(self._small))
            self._bytes -= len(self._small.pop(oldest))
