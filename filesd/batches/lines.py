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
    # A line spread over chunks is gathered as its pieces and joined once: a bytearray grown
    # chunk by chunk, then copied out, took two buffers of the line's size and every size on
    # the way (a 24 MiB line left the allocator holding several times that).
    number = 0
    pieces: list[bytes] = []
    held = 0
    async for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            number += 1
            if held + end - start > max_line_bytes:
                raise LineTooLong(number, max_line_bytes)
            pieces.append(chunk[start:end])
            yield number, _take(pieces)
            held = 0
            start = end + 1
        if start < len(chunk):
            pieces.append(chunk[start:])
            held += len(chunk) - start
            if held > max_line_bytes:
                raise LineTooLong(number + 1, max_line_bytes)
    if held:
        yield number + 1, _take(pieces)


def _take(pieces: list[bytes]) -> bytes:
    """The line of `pieces` (the last may be empty), without the \\r of a \\r\\n end of line
    (dropped from its piece, so that the line is not copied again to lose it); `pieces` is
    emptied (nothing here holds the line or its pieces while the reader has it)."""
    while len(pieces) > 1 and not pieces[-1]:
        pieces.pop()
    if pieces[-1].endswith(b"\r"):
        pieces[-1] = pieces[-1][:-1]
    line = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    pieces.clear()
    return line
