"""File ids: random, never derived from anything a client sent."""

from __future__ import annotations

import secrets
import string
import uuid
from collections.abc import Callable

_BASE62 = string.digits + string.ascii_letters


def uuid_id() -> str:
    return str(uuid.uuid4())


def random_base62(length: int) -> str:
    """`length` characters from a CSPRNG, about 5.95 bits each."""
    return "".join(secrets.choice(_BASE62) for _ in range(length))


def prefixed_id(prefix: str) -> str:
    """`prefix` and 24 base62 characters (~143 bits), the shape of OpenAI's ids."""
    return prefix + random_base62(24)


def openai_id() -> str:
    return prefixed_id("file-")


def id_factory(id_format: str) -> Callable[[], str]:
    """The id generator for a `[files] id_format` value ("uuid" or "openai")."""
    return {"uuid": uuid_id, "openai": openai_id}[id_format]
