"""Property tests against a real server: whatever a client sends, filesd answers 200 or a
clear 4xx in the envelope, never a 500, and never keeps part of a refused upload."""

from __future__ import annotations

import http.client
import json
import unicodedata
import uuid
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filesd.api.schemas import FILENAME_MAX

from .conftest import ServerProcess

pytestmark = pytest.mark.slow

# database=None: no example database written into the checkout (.hypothesis/).
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def request(
    server: ServerProcess, method: str, path: str, key: str, body: bytes = b"", ctype: str = ""
) -> tuple[int, dict[str, Any]]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Authorization": f"Bearer {key}"}
    if ctype:
        headers["Content-Type"] = ctype
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        assert resp.getheader("Content-Type", "").startswith("application/json"), payload[:200]
        return resp.status, json.loads(payload)
    finally:
        conn.close()


def assert_error(status: int, body: dict[str, Any], params: set[str | None]) -> None:
    assert 400 <= status < 500, (status, body)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] in params, body


QUERY_KEYS = st.sampled_from(["limit", "offset", "order", "after", "purpose"])


@SETTINGS
@given(st.lists(st.tuples(QUERY_KEYS, st.text(max_size=30)), max_size=6))
def test_any_list_query_is_200_or_a_400_naming_the_field(
    server: ServerProcess, query: list[tuple[str, str]]
) -> None:
    status, body = request(server, "GET", "/v1/files?" + urlencode(query), f"sk-{uuid.uuid4()}")
    if status == 200:
        assert body["object"] == "list" and body["total"] == 0
    else:
        assert_error(status, body, {key for key, _ in query})


def _multipart(fields: list[tuple[str, bytes, bytes]]) -> bytes:
    out = b""
    for name, extra, content in fields:
        out += b'--b\r\nContent-Disposition: form-data; name="' + name.encode() + b'"' + extra
        out += b"\r\n\r\n" + content + b"\r\n"
    return out + b"--b--\r\n"


def _control(code: int) -> bool:
    """C0, DEL, C1, and the bidirectional embeddings, overrides and isolates."""
    return (
        code < 0x20 or 0x7F <= code <= 0x9F or 0x202A <= code <= 0x202E or 0x2066 <= code <= 0x2069
    )


def acceptable(filename: str) -> bool:
    """The documented rule for filenames (README; filesd.api.schemas.check_filename)."""
    return (
        0 < len(filename) <= FILENAME_MAX
        and not any(_control(ord(c)) for c in filename)
        and "/" not in filename
        and "\\" not in filename
        and filename not in (".", "..")
    )


@SETTINGS
@given(st.text(st.characters(codec="utf-8"), max_size=80))
def test_any_filename_round_trips_or_is_refused(server: ServerProcess, filename: str) -> None:
    key = f"sk-{uuid.uuid4()}"
    encoded = b"; filename*=UTF-8''" + quote(filename, safe="").encode()
    body = _multipart([("purpose", b"", b"batch"), ("file", encoded, b"content")])
    status, answer = request(
        server, "POST", "/v1/files", key, body, "multipart/form-data; boundary=b"
    )
    if acceptable(filename):
        assert status == 200, (filename, answer)
        assert answer["filename"] == filename
        got = request(server, "GET", f"/v1/files/{answer['id']}", key)[1]
        assert got["filename"] == filename
    else:
        assert_error(status, answer, {"file"})
        assert request(server, "GET", "/v1/files", key)[1]["total"] == 0


FIELD = st.sampled_from(["purpose", "file", "expires_after[anchor]", "expires_after[seconds]", "x"])
VALUE = st.sampled_from([b"batch", b"nope", b"created_at", b"3600", b"", "é".encode()])


@SETTINGS
@given(st.lists(st.tuples(FIELD, VALUE), max_size=6))
def test_any_form_is_stored_whole_or_refused_whole(
    server: ServerProcess, fields: list[tuple[str, bytes]]
) -> None:
    key = f"sk-{uuid.uuid4()}"
    parts = [
        (name, b'; filename="f.bin"' if name == "file" else b"", value) for name, value in fields
    ]
    body = _multipart(parts)
    status, answer = request(
        server, "POST", "/v1/files", key, body, "multipart/form-data; boundary=b"
    )
    names = [name for name, _ in fields]
    values = dict(fields)
    expiry = {"expires_after[anchor]", "expires_after[seconds]"} & set(names)
    valid = (
        sorted(names) == sorted(set(names))
        and names.count("file") == 1
        and values.get("purpose") == b"batch"
        and "x" not in names
        and (
            not expiry
            or (
                values.get("expires_after[anchor]") == b"created_at"
                and values.get("expires_after[seconds]") == b"3600"
            )
        )
    )
    listing = request(server, "GET", "/v1/files", key)[1]
    if valid:
        assert status == 200, (fields, answer)
        assert answer["bytes"] == len(values["file"]) and listing["total"] == 1
    else:
        # The error names a field that was sent, or one required with them that was not.
        required = {"file", "purpose", "expires_after[anchor]", "expires_after[seconds]"}
        assert_error(status, answer, set(names) | required | {None})
        assert listing["total"] == 0


def test_normalization_is_not_applied_to_names(server: ServerProcess) -> None:
    # Two spellings of "é" are different names; filesd keeps exactly what was sent.
    key = f"sk-{uuid.uuid4()}"
    for name in ("caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")):
        encoded = b"; filename*=UTF-8''" + quote(name, safe="").encode()
        body = _multipart([("purpose", b"", b"batch"), ("file", encoded, b"x")])
        status, answer = request(
            server, "POST", "/v1/files", key, body, "multipart/form-data; boundary=b"
        )
        assert status == 200 and answer["filename"] == name
