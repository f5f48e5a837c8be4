"""Bearer-key authentication: which project a request belongs to.

Keys are held only as SHA-256 digests. A presented key is hashed and its digest compared with
every configured digest in constant time (`hmac.compare_digest`), so response timing tells an
attacker nothing about any stored key. Keys are never logged; error messages show a masked form.

With no keys configured the server is *open*: any non-empty token is accepted, and each distinct
token is its own project, named from the token's digest (never the token itself).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..config import AuthConfig
from .errors import AuthenticationFailed

PROJECT = web.RequestKey("project", str)
API_PREFIX = "/v1/"

_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


class Authenticator:
    """Resolves an `Authorization` header to a project name, or raises `AuthenticationFailed`."""

    def __init__(self, config: AuthConfig) -> None:
        self._configured = {bytes.fromhex(k.key_sha256): k.project for k in config.keys}
        self._made: dict[bytes, str] = {}
        self._any_made = False

    @property
    def open_mode(self) -> bool:
        """No keys configured and none ever made with `filesd keys create`.

        A revoked key still counts: revoking the last key must not open the server to all.
        """
        return not self._configured and not self._any_made

    @property
    def project_count(self) -> int:
        """How many projects hold an active key (configured or made in the database)."""
        return len(set(self._configured.values()) | set(self._made.values()))

    def use_made_keys(self, active: Iterable[tuple[str, str]], *, any_made: bool) -> None:
        """Replace the keys from the database: active (hex SHA-256, project) pairs, and
        whether any key (revoked ones too) was ever made there."""
        self._made = {bytes.fromhex(digest): project for digest, project in active}
        self._any_made = any_made

    def project_for(self, authorization: str | None) -> str:
        token = bearer_token(authorization)
        if token is None:
            raise AuthenticationFailed(_NO_KEY)
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        if self.open_mode:
            return "open-" + digest.hex()[:32]
        for keys in (self._configured, self._made):
            for known, project in keys.items():
                if hmac.compare_digest(known, digest):
                    return project
        # OpenAI echoes a masked key here (`sk-ab***yz`); filesd shows no part of a key in
        # any message: a log line or a proxy's error page would carry it on.
        raise AuthenticationFailed(
            "Incorrect API key provided. This server accepts the keys of its configuration "
            "([[auth.keys]]) and those made with `filesd keys create`: ask its operator for one.",
            code="invalid_api_key",
        )


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None if absent or empty."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def auth_middleware(authenticator: Authenticator) -> Middleware:
    """Sets `request[PROJECT]` for every request under /v1; other paths need no key."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(API_PREFIX) or request.path == "/v1":
            request[PROJECT] = authenticator.project_for(request.headers.get("Authorization"))
        return await handler(request)

    return middleware


def is_token(authorization: str | None, digest: bytes) -> bool:
    """Whether the bearer token of `authorization` is the secret whose SHA-256 is `digest`,
    compared in constant time (no token: False)."""
    token = bearer_token(authorization)
    if not token:
        return False
    given = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
    return hmac.compare_digest(given, digest)
