"""Header values aiohttp cannot take as they are: an `Expect` other than `100-continue` (or not
UTF-8) on every route, and bytes its HTTP parser refuses (a NUL in a key).

Against a real in-thread server over raw sockets: aiohttp's client sends neither raw non-ASCII
nor control bytes in a header, and only filesd's own protocol (not the test client's server)
answers the parser's errors. The sweep reads the app's route table, so a new route is swept as
it is added.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from filesd.api.expectations import ExpectationRefusal
from filesd.testing import FilesdServer, serve

ADMIN_TOKEN = "admin-token-for-header-tests"
KEY = "sk-alpha-0123456789"
SECRET = "secret-header-value"


@pytest.fixture(scope="module")
def server() -> Iterator[FilesdServer]:
    keys = [{"key": KEY, "project": "alpha"}]
    with serve(auth={"keys": keys}, admin={"token": ADMIN_TOKEN}) as running:
        yield running


def _exchange(server: FilesdServer, head: bytes) -> bytes:
    """Send `head` (a request without a body, closing the connection); all the server said."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _request(method: str, path: str, *headers: bytes) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
        + b"".join(header + b"\r\n" for header in headers)
        + b"\r\n"
    )


def _final(answer: bytes, method: str) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the final response in `answer` (after any 100 Continue);
    for HEAD, which has no body, the body is an envelope of None."""
    while answer.startswith(b"HTTP/1.1 100 "):
        answer = answer.split(b"\r\n\r\n", 1)[1]
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), answer
    if method == "HEAD":
        return status, {"error": dict.fromkeys(("message", "type", "param", "code"))}
    parsed: dict[str, Any] = json.loads(body)
    return status, parsed


def _swept_requests(server: FilesdServer) -> Iterator[tuple[str, str]]:
    """(method, path) for every route of the app, and for paths and methods no route takes."""
    for route in server._app.router.routes():
        resource = route.resource
        if resource is None or isinstance(resource, ExpectationRefusal):
            continue  # the refusal matches only refused expectations, on no path of its own
        path = re.sub(r"\{\w+\}", "x1", resource.canonical)
        yield ("GET" if route.method == "*" else route.method), path
    yield "GET", "/no/such/path"
    yield "PATCH", "/v1/nosuch"
    yield "DELETE", "/healthz"  # a path that is routed, a method that is not


@pytest.mark.parametrize(
    ("expect", "status", "code"),
    [(b"\xff", 400, "invalid_header"), (b"foo", 417, "expectation_failed")],
)
def test_a_refused_expectation_is_answered_in_the_envelope_on_every_route(
    server: FilesdServer,
    caplog: pytest.LogCaptureFixture,
    expect: bytes,
    status: int,
    code: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    swept = list(_swept_requests(server))
    assert ("POST", "/v1/files") in swept and ("GET", "/admin/faults") in swept
    assert ("GET", "/ui/") in swept and ("GET", "/metrics") in swept and ("GET", "/") in swept
    for method, path in swept:
        answer = _exchange(
            server,
            _request(
                method,
                path,
                b"Authorization: Bearer " + KEY.encode(),
                b"Content-Length: 0",
                b"Expect: " + expect,
            ),
        )
        got, body = _final(answer, method)
        error = body["error"]
        if method == "HEAD":
            error.update(param="Expect", code=code)
        assert (got, error["param"], error["code"]) == (status, "Expect", code), (
            method,
            path,
            answer,
        )
        assert set(body["error"]) == {"message", "type", "param", "code"}
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not logged, [r.getMessage() for r in logged]


def test_expect_100_continue_still_gets_100_continue_everywhere(server: FilesdServer) -> None:
    for method, path in _swept_requests(server):
        answer = _exchange(
            server,
            _request(
                method,
                path,
                b"Authorization: Bearer " + KEY.encode(),
                b"Content-Length: 0",
                b"Expect: 100-Continue",
            ),
        )
        assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 "), (method, path, answer)


@pytest.mark.parametrize(
    ("header", "secrets"),
    [
        (b"Authorization: Bearer " + KEY.encode() + b"\x00", (KEY, "sk-alpha", "0123456789")),
        (b"X-Foo: " + SECRET.encode() + b"\x01", (SECRET, "secret")),
    ],
    ids=["nul-in-key", "control-in-header"],
)
def test_a_header_the_parser_refuses_is_neither_logged_nor_echoed(
    server: FilesdServer, caplog: pytest.LogCaptureFixture, header: bytes, secrets: tuple[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    for method, path in _swept_requests(server):
        answer = _exchange(server, _request(method, path, header))
        status, body = _final(answer, "GET")  # the parser never got as far as the method
        assert status == 400 and body["error"]["code"] == "malformed_request", (path, answer)
        assert not any(secret.encode() in answer for secret in secrets), answer
    assert caplog.records
    for record in caplog.records:
        assert record.levelno < logging.WARNING and not record.exc_info, caplog.text
    assert not any(secret in caplog.text for secret in secrets), caplog.text
    assert "refused a malformed request" in caplog.text
