"""The recorded conversation (tests/transcript.py) replayed: every answer as it was recorded,
status, headers a client reads and body, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

from .transcript import GOLDEN, record


async def test_every_answer_is_as_recorded(tmp_path: Path) -> None:
    expected = json.loads(GOLDEN.read_text())
    actual = await record(tmp_path / "data")
    assert len(actual) == len(expected)
    for number, (got, want) in enumerate(zip(actual, expected, strict=True)):
        request = want["request"]
        where = f"exchange {number}: {request['method']} {request['path']}"
        assert got["request"] == request, where
        assert got["response"] == want["response"], where
