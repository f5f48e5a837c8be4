"""API keys kept in the metadata store (`filesd keys create`, and test servers' new projects).

Keys are minted here and only here: a secret from the CSPRNG, of which only the SHA-256 is
stored, with its last four characters as a hint for operators.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from ..ids import secret_base62
from ..models import KeyRecord
from ..storage.base import KeyMetadata

KEY_PREFIX = "sk-filesd-"


def key_digest(key: str) -> str:
    """The hex SHA-256 a key is kept as."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


class KeyService:
    """The keys of one metadata store."""

    def __init__(self, meta: KeyMetadata, clock: Callable[[], float] = time.time) -> None:
        self._meta = meta
        self._clock = clock

    async def create(self, project: str) -> tuple[str, str]:
        """Make a new key for `project`; returns (key id, the key). Only its digest is kept."""
        key = KEY_PREFIX + secret_base62(40)  # ~238 bits
        key_id = "key_" + secret_base62(12)
        record = KeyRecord(key_id, key_digest(key), project, key[-4:], int(self._clock()))
        await self._meta.insert_key(record)
        return key_id, key

    async def add(self, key: KeyRecord) -> None:
        """Keep a key made elsewhere (`filesd migrate`), as it is."""
        await self._meta.insert_key(key)

    async def all(self) -> list[KeyRecord]:
        """Every key made, revoked ones too, oldest first."""
        return await self._meta.keys()

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key; False if there is no such key or it was revoked already."""
        return await self._meta.revoke_key(key_id, int(self._clock()))
