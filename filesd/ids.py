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
    seeded ids are predictable by anyone who knows the seed).

    Seeded ids come from (seed, generation): generation 0 is the seed's own sequence, and a
    store bumps the generation it keeps in its database each time it opens, so the ids of a
    restarted server go on with a sequence of their own instead of repeating the first run's
    (which collide with the files it stored), while two fresh data dirs given the same seed and
    the same calls still get the same ids.
    """

    def __init__(
        self, id_format: str = "uuid", seed: int | None = None, generation: int = 0
    ) -> None:
        if id_format not in ("uuid", "openai"):
            raise ValueError(f"unknown id format {id_format!r}")
        self._format = id_format
        self._rng: random.Random | None = None
        if seed is not None:
            self._rng = random.Random(seed if generation == 0 else f"{seed}/{generation}")

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
