"""JSONL from a stream of chunks, one line at a time (never the whole file in memory)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator


class LineTooLong(Exception):
    def __init__(self, line: int, limit: int) -> None:
        super().__init__(f"line {line} is longer than {limit} bytes")
        self.line = line
        self.limit = limit


async def numbered_lines(
    chunks: AsyncIterator[bytes], *, max_line_bytes: int
) -> AsyncGenerator[tuple[int, bytes]]:
    """(line number from 1, line without its end of line) for every line, blank ones too; a
    last line without a newline counts. Raises `LineTooLong` for a line over the limit.
    Closing it closes `chunks` (a file being read) too."""
    try:
        async for item in _lines(chunks, max_line_bytes):
            yield item
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


async def _lines(
    chunks: AsyncIterator[bytes], max_line_bytes: int
) -> AsyncGenerator[tuple[int, bytes]]:
    number = 0
    pending = bytearray()
    async for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            number += 1
            if len(pending) + end - start > max_line_bytes:
                raise LineTooLong(number, max_line_bytes)
            if pending:
                pending += chunk[start:end]
                line = bytes(pending)
                pending.clear()
            else:
                line = chunk[start:end]
            yield number, line.removesuffix(b"\r")
            start = end + 1
        pending += chunk[start:]
        if len(pending) > max_line_bytes:
            raise LineTooLong(number + 1, max_line_bytes)
    if pending:
        yield number + 1, bytes(pending).removesuffix(b"\r")
