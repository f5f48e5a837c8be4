"""Ids and secrets: random, never derived from anything a client sent."""

from __future__ import annotations

import random
import secrets
import string
import uuid

_BASE62 = string.digits + string.ascii_letters


def secret_base62(length: int) -> str:
    """`length` characters from the CSPRNG (~5.95 bits each): for keys, never seeded."""
    return "".join(secrets.choice(_BASE62) for _ in range(length))


class IdMaker:
    """Makes file, upload and part ids: random, or reproducible from a seed (tests only:
    seeded ids are predictable by anyone who knows the seed)."""

    def __init__(self, id_format: str = "uuid", seed: int | None = None) -> None:
        if id_format not in ("uuid", "openai"):
            raise ValueError(f"unknown id format {id_format!r}")
        self._format = id_format
        self._rng: random.Random | None = None if seed is None else random.Random(seed)

    def file_id(self) -> str:
        """A UUID, or `file-` and 24 base62 characters (the shape of OpenAI's ids)."""
        if self._format == "openai":
            return self.prefixed("file-")
        if self._rng is not None:
            return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        return str(uuid.uuid4())

    def prefixed(self, prefix: str) -> str:
        """`prefix` and 24 base62 characters (~143 bits)."""
        if self._rng is None:
            return prefix + secret_base62(24)
        return prefix + "".join(self._rng.choice(_BASE62) for _ in range(24))
