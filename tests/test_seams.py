"""The seams of issue 9: storage behind one door, the error table, validators of one's own file."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from .conftest import ALPHA, Client

BOUNDARY = "seams-boundary"


# --- a malformed Content-Disposition, with the warning filters a user has --------------------


def _form(parts: list[tuple[str, str | None, bytes]], disposition: str | None = None) -> bytes:
    out = b""
    for name, filename, content in parts:
        value = f'form-data; name="{name}"'
        if filename is not None:
            value += f'; filename="{filename}"'
        if name == "file" and disposition is not None:
            value = disposition
        out += f"--{BOUNDARY}\r\nContent-Disposition: {value}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _form_headers() -> dict[str, str]:
    return {**ALPHA, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.mark.parametrize(
    "disposition",
    [
        # aiohttp drops the bad parameter and keeps the plain filename: stored, before the fix.
        'form-data; name="file"; filename="ok.txt"; filename*=UTF-8\'\'a b:c',
        'form-data; name="file"; filename',
    ],
)
async def test_malformed_content_disposition_is_400_with_default_warning_filters(
    client: Client, tmp_path: Path, disposition: str
) -> None:
    body = _form([("purpose", None, b"batch"), ("file", None, b"abc")], disposition)
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # as in a user's Python: warnings print, nothing raises
        resp = await client.post("/v1/files", data=body, headers=_form_headers())
        error = (await resp.json())["error"]
    assert resp.status == 400, error
    assert error["message"] == "Malformed Content-Disposition header in a multipart part."
    assert (await (await client.get("/v1/files", headers=ALPHA)).json())["total"] == 0
