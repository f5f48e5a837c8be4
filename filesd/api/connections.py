"""Connection-level limits: header timeout, idle keep-alive timeout, a cap on open connections,
and accept errors logged once per interval instead of once per attempt.

aiohttp (3.14) bounds neither how long a client may take to send a request's headers nor, by
default, how long an idle connection stays (an hour): a few hundred clients that send half a
request line each hold a file descriptor for that long, and once descriptors run out every
accept() fails and is logged with a traceback. `GuardedRequestHandler` is aiohttp's protocol
with those limits added; `protocol_factory` makes one per connection; `ConnectionGate` counts
them and, at the cap, closes an idle or stalled one to make room (or refuses the newcomer when
all are busy); `AcceptErrorLog` is the event loop's exception handler that rate-limits the
accept errors.

A slow reader cannot hold a download either: while a connection is busy, every window of
`[limits] body_timeout` seconds (`min_body_rate` and `body_timeout` apply to responses as to
request bodies) the guard looks whether bytes wait for the client (the kernel's send queue,
TIOCOUTQ, or asyncio's write buffer) and how many the client took over the window (TCP_INFO's
`tcpi_bytes_acked`, Linux). A client that took less than `min_body_rate` bytes/s, and not even
what was waiting when the window began, is cut off: with a 4 KiB receive buffer and 100 bytes
read every few seconds it would otherwise hold a connection (busy ones are never evicted), a
descriptor and a drain for as long as it liked. Where the kernel does not count acknowledged
bytes the watchdog stays out: the queue alone cannot tell a stuck client from a fast one
whose queue sendfile refills as fast as it drains (judged by the queue's decrease, an honest
client reading 256 KiB/s was cut off within 4 s).
This watches the socket, not the response, so it holds for sendfile, whole bodies and streams
alike; a handler still computing (nothing queued) or reading an upload (bodies.py paces that)
is never affected, and idle connections carry no timer (keepalive_timeout bounds them).

The header timeout covers the first head, a later head from its first byte, and the start of
a next head that arrives in the same packet right behind a complete head without a body.
Behind a head with a body, aiohttp's C parser does not tell whether it kept bytes of a next
head; such a connection lives at most keepalive_timeout, and counts as idle when the gate
needs room.

The guard relies on attributes of aiohttp's `RequestHandler`: `_waiter` (pending while it waits
for the next request's head), `_request_count` (one more per parsed head), `_messages` (parsed,
not yet handled), `_next_keepalive_close_time` and `_keepalive_timeout`.
tests/test_connections.py fails if a new aiohttp changes them. A request its parser refuses is
answered by `handle_error`, given the parser's `HttpProcessingError`, which quotes the refused
bytes: the guard answers it without them (tests/test_header_bytes.py fails if that changes).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import json
import logging
import socket
import struct
import termios
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD

from .errors import InvalidRequest, error_response

log = logging.getLogger(__name__)

# accept() failures that mean "out of descriptors or memory" (see asyncio's _accept_connection).
_RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
LOG_INTERVAL = 10.0

# Linux's struct tcp_info: the u64 tcpi_bytes_acked is at this offset (since Linux 4.1).
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_OFFSET = 120
_TCP_INFO_SIZE = 256
_TIOCOUTQ = getattr(termios, "TIOCOUTQ", None)
_INT = struct.Struct("=i")
# SO_LINGER on, 0 s: closing the socket resets it and drops what is still queued for the peer.
_LINGER_RESET = struct.pack("ii", 1, 0)


def _raw_error(status: int, reason: str, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 error response in OpenAI's envelope, for below the application."""
    body = json.dumps(
        {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


_HEADER_TIMEOUT = _raw_error(
    408, "Request Timeout", "The request headers did not arrive in time.", "timeout"
)
_TOO_MANY = _raw_error(
    503, "Service Unavailable", "Too many open connections. Retry shortly.", "too_many_connections"
)


def queued_bytes(transport: asyncio.BaseTransport) -> int:
    """Bytes written for the peer that it has not taken yet: asyncio's write buffer plus the
    kernel's send queue (sent but unacknowledged, or not sent yet)."""
    queued = transport.get_write_buffer_size() if isinstance(transport, asyncio.Transport) else 0
    sock = transport.get_extra_info("socket")
    if sock is not None and _TIOCOUTQ is not None:
        # Failing: closed meanwhile, or not a socket with a queue.
        with contextlib.suppress(OSError, ValueError):
            queued += _INT.unpack(fcntl.ioctl(sock.fileno(), _TIOCOUTQ, bytes(_INT.size)))[0]
    return queued


def bytes_acked(transport: asyncio.BaseTransport) -> int | None:
    """How many bytes the peer has acknowledged over the connection's life (Linux's
    `tcpi_bytes_acked`), or None where the kernel does not tell."""
    sock = transport.get_extra_info("socket")
    if sock is None or _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, ValueError):
        return None
    if len(info) < _BYTES_ACKED_OFFSET + _BYTES_ACKED.size:  # a kernel older than 4.1
        return None
    acked: int = _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_OFFSET)[0]
    return acked


class RateLimitedLog:
    """Logs a recurring message at most once per `interval` seconds, with how often it recurred."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> bool:
        """Log unless `key` was logged less than `interval` ago; True if it was logged."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            log.debug("again (logged at most once every %g s): " + message, self.interval, *args)
            return False
        self._last[key] = now
        repeated = self._suppressed.pop(key, 0)
        if repeated:
            message += f" (and {repeated} more time(s) since)"
        log.warning(message, *args)
        return True


class ConnectionGate:
    """The open connections, at most `limit` of them. At the cap a new connection makes room
    rather than being refused: the one idle longest (kept alive, no byte of a next request yet)
    is closed; failing that, the oldest one still waiting for its request head; only when every
    connection has a request in progress is the new one refused (503). Otherwise connections
    that just sit there would lock everyone out, /healthz included, for keepalive_timeout or
    header_timeout, and an honest client sends its head within microseconds of connecting.
    Evictions and refusals are logged at most once per `LOG_INTERVAL` each."""

    def __init__(self, limit: int, *, log_interval: float = LOG_INTERVAL) -> None:
        self.limit = limit
        self.log = RateLimitedLog(log_interval)
        # Insertion-ordered: the oldest connection first.
        self._open: dict[GuardedRequestHandler, None] = {}

    @property
    def open(self) -> int:
        return len(self._open)

    def admit(self, handler: GuardedRequestHandler) -> bool:
        """Count `handler` in, closing another connection if needed; False: refuse it."""
        if len(self._open) >= self.limit:
            victim = self._victim()
            if victim is None:
                self.log.warning(
                    "refused",
                    "connection limit reached ([server] max_connections = %d), every "
                    "connection busy with a request: refusing new ones",
                    self.limit,
                )
                return False
            state = victim.state()[0]
            del self._open[victim]
            victim.evict()
            self.log.warning(
                "evicted-" + state,
                "connection limit reached ([server] max_connections = %d): closing %s "
                "connections to make room for new ones",
                self.limit,
                _EVICTED[state],
            )
        self._open[handler] = None
        return True

    def census(self) -> collections.Counter[str]:
        """How many open connections are in each state (IDLE, SILENT, HEAD, BUSY).

        Readable from another thread (a test's): the keys are copied in one step (list() of a
        dict runs under the GIL without yielding) before the states are read.
        """
        return collections.Counter(handler.state()[0] for handler in list(self._open))

    def leave(self, handler: GuardedRequestHandler) -> None:
        self._open.pop(handler, None)  # an evicted connection has left already

    def _victim(self) -> GuardedRequestHandler | None:
        """The connection idle longest; else the oldest waiting for its head; else None."""
        best: tuple[int, float] | None = None
        victim = None
        for handler in self._open:
            state, since = handler.state()
            if state == BUSY:
                continue
            rank = (0 if state == IDLE else 1, since)  # SILENT and HEAD: the oldest first
            if best is None or rank < best:
                best, victim = rank, handler
        return victim


# Connection states, for making room at the cap (see ConnectionGate).
IDLE = "idle"  # kept alive between requests, no byte of the next one yet
SILENT = "silent"  # new, not a byte yet (within header_timeout)
HEAD = "head"  # part of a request head came, not all of it yet (within header_timeout)
BUSY = "busy"  # a request in progress (its body, its handler, its response)
_EVICTED = {
    IDLE: "idle keep-alive",
    SILENT: "silent (not a byte sent)",
    HEAD: "stalled (request head incomplete)",
}


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's HTTP/1 protocol, plus a header timeout and a place in a `ConnectionGate`.

    A connection must deliver a complete request head within `header_timeout` seconds of its
    start, and later ones within `header_timeout` seconds of their first byte (the wait before
    that first byte is aiohttp's `keepalive_timeout`). Otherwise a 408 (or nothing, if not a
    byte came) is sent and the connection closed.

    While it is busy, a send watchdog ticks every `send_window` seconds: when bytes wait for
    the client and over the last window it took fewer than `min_send_rate` bytes/s, and fewer
    than were waiting when the window began, the connection is aborted (see the module
    docstring). Either value 0: no watchdog.
    """

    def __init__(
        self,
        manager: Any,
        *,
        gate: ConnectionGate,
        header_timeout: float,
        send_window: float = 0.0,
        min_send_rate: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._gate = gate
        self._header_timeout = header_timeout
        self._send_window = send_window
        self._min_send_rate = min_send_rate
        # The watchdog: its timer (only while busy), and at the last tick the loop time, the
        # bytes queued and the bytes acknowledged.
        self._send_timer: asyncio.TimerHandle | None = None
        self._send_mark: tuple[float, int, int] | None = None
        self._cut_off = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_since = 0.0
        self._head_started = False
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._gate.admit(self):
            self._refused = True
            assert isinstance(transport, asyncio.Transport)
            transport.write(_TOO_MANY)
            transport.close()
            return
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self._gate.leave(self)
        self._cancel_header_timer()
        self._stop_send_watch()
        super().connection_lost(exc)

    def state(self) -> tuple[str, float]:
        """IDLE, SILENT, HEAD or BUSY, and since when (loop time) for the first three."""
        waiting = self._request_count == 0 or (self._waiter is not None and not self._waiter.done())
        if not waiting or self._messages:
            return BUSY, 0.0
        if self._header_timer is not None:
            return (HEAD if self._head_started else SILENT), self._header_since
        # aiohttp sets the keep-alive deadline when the last response is done.
        return IDLE, self._next_keepalive_close_time - self._keepalive_timeout

    def evict(self) -> None:
        """Close this (idle or head-waiting) connection to make room for a new one."""
        if self._head_started and self.transport is not None:
            self.transport.write(_TOO_MANY)
        self._cancel_header_timer()
        self.force_close()

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:
            self._cancel_header_timer()  # a head is complete
            self._start_send_watch()
            if self._holds_a_partial_head(data):
                # Pipelined: the start of the next head came right behind this one.
                self._head_started = True
                self._arm_header_timer()
        if self._header_timer is not None:
            self._head_started = True  # a head still incomplete: its timer runs
        elif self._waiter is not None and not self._waiter.done():
            # Part of the next request's head arrived; the rest must follow in time.
            self._head_started = True
            self._arm_header_timer()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp's HTTP parser refused (an `HttpProcessingError`: a control byte
        in a header, a line too long, no HTTP at all) is logged as one line naming the kind of
        error and answered with a 400 in OpenAI's envelope that says no more. aiohttp's own
        answer quotes the bytes it refused, in its ERROR log (with a traceback) and back to
        the client, and those bytes may be a key (`Authorization: Bearer sk-...` ending in a
        NUL). Other errors are aiohttp's (a handler's exception: a 500 and its traceback)."""
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        kind = type(exc).__name__
        log.info("refused a malformed request from %s (%s)", request.remote, kind)
        if request.writer.output_size > 0:  # as aiohttp: too late for an answer
            raise ConnectionError("a response was sent already; cannot answer the error")
        response = error_response(
            InvalidRequest(f"The request is not valid HTTP ({kind}).", code="malformed_request")
        )
        response.force_close()
        return response

    def _holds_a_partial_head(self, data: bytes) -> bool:
        """Whether the parser kept bytes of a next head from `data`, which completed a head.

        aiohttp's C parser does not tell, so this is decided only where it is certain: the
        last head completed has no body (its bytes end with the blank line that ends the
        head), so anything after that blank line in `data` is the start of the next head.
        (After a head with a body the question stays open; such a connection is bounded by
        keepalive_timeout, and counts as idle when room must be made.)
        """
        if not self._messages or self._messages[-1][1] is not EMPTY_PAYLOAD:
            return False
        return not data.endswith((b"\r\n\r\n", b"\n\n", b"\n\r\n", b"\r\n\n"))

    def _arm_header_timer(self) -> None:
        self._header_since = self._loop.time()
        self._header_timer = self._loop.call_later(
            self._header_timeout, self._header_timed_out, self._request_count
        )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._head_started = False

    def _header_timed_out(self, count: int) -> None:
        self._header_timer = None
        if self._request_count != count or self.transport is None:
            return  # a head arrived meanwhile: the timer is stale
        if self.state()[0] == BUSY:
            # A pipelined head waits behind a request in progress: its time starts over
            # (it is read once that request is done).
            self._arm_header_timer()
            return
        if self._head_started:
            self.transport.write(_HEADER_TIMEOUT)
        self.force_close()

    def _start_send_watch(self) -> None:
        """Watch the sending of the request just begun (the timer runs on if it already did)."""
        if self._send_timer is None and self._send_window > 0 and self._min_send_rate > 0:
            self._send_mark = None  # the first tick only takes a mark
            self._send_timer = self._loop.call_later(self._send_window, self._send_tick)

    def _stop_send_watch(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._send_mark = None

    def _send_tick(self) -> None:
        self._send_timer = None
        transport = self.transport
        if self._cut_off:
            if transport is not None:  # the shutdown did not end it (see `_cut`)
                transport.abort()
            return
        if transport is None or self.state()[0] != BUSY:
            # Idle again (or gone): no timer until the next request's head is complete.
            self._send_mark = None
            return
        acked = bytes_acked(transport)
        if acked is None:  # no progress counter here: no judgement (see the module docstring)
            self._send_mark = None
            return
        now = self._loop.time()
        queued = queued_bytes(transport)
        mark, self._send_mark = self._send_mark, (now, queued, acked)
        if mark is not None and queued > 0:
            since, was_queued, was_acked = mark
            taken = acked - was_acked
            # What was waiting when the window began, or the rate, whichever is less: a
            # client that took everything offered is not slow, however little that was.
            needed = min(was_queued, self._min_send_rate * (now - since))
            if taken < needed:
                self._gate.log.warning(
                    "slow-reader",
                    "closing a connection whose client reads too slowly (%d B in %.1f s; "
                    "[limits] min_body_rate = %d B/s)",
                    taken,
                    now - since,
                    self._min_send_rate,
                )
                self._cut(transport)
        self._send_timer = self._loop.call_later(self._send_window, self._send_tick)

    def _cut(self, transport: asyncio.Transport) -> None:
        """End the connection of a client too slow to read: a reset, its queued bytes dropped.

        The socket is shut down rather than the transport closed: every send fails from now
        on, so whatever is sending (asyncio's buffer, a sendfile in flight) ends through its
        own error path and aiohttp closes the connection as after a client's disconnect.
        Closing the transport under a running `loop.sendfile` would leave its writer
        registered on a closed descriptor (and Python 3.11 logs an InvalidStateError). The
        next tick aborts the transport if it is still there.
        """
        self._cut_off = True
        sock = transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError, ValueError):  # no socket, or closed meanwhile
            transport.abort()


def protocol_factory(
    server: Any,
    *,
    gate: ConnectionGate,
    header_timeout: float,
    send_window: float = 0.0,
    min_send_rate: int = 0,
    **handler_kwargs: Any,
) -> Callable[[], GuardedRequestHandler]:
    """A protocol factory for `loop.create_server`: aiohttp's handling of `server` (an
    `AppRunner`'s low-level server) with the limits above."""
    loop = asyncio.get_running_loop()

    def make() -> GuardedRequestHandler:
        return GuardedRequestHandler(
            server,
            loop=loop,
            gate=gate,
            header_timeout=header_timeout,
            send_window=send_window,
            min_send_rate=min_send_rate,
            **handler_kwargs,
        )

    return make


class AcceptErrorLog:
    """An event loop exception handler: accept() running out of descriptors or memory is
    logged once per interval (asyncio logs it, with a traceback, on every attempt; a flood of
    connections made that 5 MB/s of log). Everything else goes to the previous handler."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = LOG_INTERVAL) -> None:
        self._previous = loop.get_exception_handler()
        self._log = RateLimitedLog(interval)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if (
            isinstance(exc, OSError)
            and exc.errno in _RESOURCE_ERRNOS
            and "accept" in str(context.get("message", ""))
        ):
            self._log.warning(
                "accept",
                "cannot accept connections: %s (raise the descriptor limit or lower "
                "[server] max_connections)",
                exc.strerror or exc,
            )
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)


# Descriptors besides connections: the database, uploads being written, files being sent
# (one per download in flight, so up to one per connection), the thread pool's work.
_RESERVED_DESCRIPTORS = 256


def fit_descriptor_limit(max_connections: int) -> None:
    """Raise the soft limit on open files to fit `max_connections` (within the hard limit, as
    Go programs do by default); warn if even the hard limit is too low."""
    try:
        import resource
    except ImportError:  # not a Unix
        return
    needed = 2 * max_connections + _RESERVED_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the open-file limit (%d) is low for [server] max_connections = %d (about %d "
            "needed): lower max_connections or raise the limit (ulimit -n)",
            soft,
            max_connections,
            needed,
        )
