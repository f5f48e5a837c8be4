"""GET /metrics: Prometheus text format, from a registry of this app's own.

Requests by route template and status, latency to the first byte of the response, bytes in and
out, uploads streaming; and at scrape time, live files, their bytes (logical) and the bytes of
the distinct blobs holding them (physical), whose ratio is what deduplication saves. Those
totals come from counters kept with the rows (one row read per scrape, whatever the files).

The totals span every project (blob counts tell who stored the same bytes), so once API keys
exist (in the file or made in the database) a scrape needs `[metrics] token` or the admin
token, compared in constant time; in open mode it stays keyless.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .appkeys import AUTHENTICATOR, MAINTENANCE, UPLOAD_SLOTS
from .auth import bearer_token
from .errors import STARTED, AuthenticationFailed


class Metrics:
    """The registry, and the tokens a scrape may carry (`tokens`: empty ones are ignored)."""

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self._token_digests = [_digest(t) for t in tokens if t]
        # Each series' child, found once: `labels()` takes a lock and builds a key each call.
        self._counted: dict[tuple[str, str, int], Counter] = {}
        self._timed: dict[str, Histogram] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "filesd_requests", "Requests answered", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "filesd_request_duration_seconds",
            "Time to the first byte of the response",
            ["route"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.bytes_in = Counter("filesd_received_bytes", "Request body bytes", registry=r)
        self.bytes_out = Counter("filesd_sent_bytes", "Response body bytes", registry=r)
        self.uploads = Gauge("filesd_uploads_in_flight", "Upload bodies streaming", registry=r)
        self.files = Gauge("filesd_files", "Live files", registry=r)
        self.blobs = Gauge("filesd_blobs", "Distinct blobs holding live files", registry=r)
        self.logical = Gauge("filesd_logical_bytes", "Bytes of all live files", registry=r)
        self.physical = Gauge("filesd_physical_bytes", "Bytes of their distinct blobs", registry=r)
        self.dedupe = Gauge(
            "filesd_dedupe_ratio", "Logical bytes per physical byte (1 = no savings)", registry=r
        )

    async def on_response_prepare(
        self, request: web.BaseRequest, response: web.StreamResponse
    ) -> None:
        """Count the response as its headers go out (its length is known by then)."""
        resource = request.match_info.route.resource if isinstance(request, web.Request) else None
        route = resource.canonical if resource is not None else "unmatched"
        key = (request.method, route, response.status)
        counted = self._counted.get(key)
        if counted is None:
            counted = self._counted[key] = self.requests.labels(key[0], route, str(key[2]))
        counted.inc()
        started = request.get(STARTED)
        if started is not None:
            timed = self._timed.get(route)
            if timed is None:
                timed = self._timed[route] = self.latency.labels(route)
            timed.observe(time.monotonic() - started)
        self.bytes_in.inc(request.content_length or 0)
        self.bytes_out.inc(response.content_length or 0)

    @property
    def has_token(self) -> bool:
        return bool(self._token_digests)

    def accepts(self, token: str | None) -> bool:
        """Whether `token` is one of the scrape tokens; every digest is compared, each in
        constant time, so timing tells nothing about which (or how much of one) matched."""
        if token is None:
            return False
        given = _digest(token)
        matched = False
        for known in self._token_digests:
            matched |= hmac.compare_digest(known, given)
        return matched


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


METRICS = web.AppKey("metrics", Metrics)

_SCRAPE_REFUSED = (
    "GET /metrics needs a token now that API keys are configured: "
    "Authorization: Bearer <[metrics] token or [admin] token>."
)


async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    if not request.app[AUTHENTICATOR].open_mode and not m.accepts(
        bearer_token(request.headers.get("Authorization"))
    ):
        raise AuthenticationFailed(_SCRAPE_REFUSED)
    totals = await request.app[MAINTENANCE].storage_totals()
    m.files.set(totals.files)
    m.logical.set(totals.logical_bytes)
    m.blobs.set(totals.blobs)
    m.physical.set(totals.physical_bytes)
    m.dedupe.set(totals.logical_bytes / totals.physical_bytes if totals.physical_bytes else 1.0)
    m.uploads.set(request.app[UPLOAD_SLOTS].in_use)
    return web.Response(
        body=generate_latest(m.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
