"""The official `openai` SDK, unchanged, against a real filesd on a free port.

The module runs twice: on the embedded backends, and on PostgreSQL + S3 (one database and
bucket for the module, as its one server is for the module); see `Storage`.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from .conftest import ALPHA_KEY, BETA_KEY, KEYS_TOML, ServerProcess, wait_until_sync
from .pg_service import PostgresServer
from .s3_service import S3Bucket, fresh_bucket

pytestmark = pytest.mark.slow


class Storage:
    """The backends of the module's servers: the embedded pair (`bucket` None), or a
    PostgreSQL database and an S3 bucket (blobs under the `files` prefix)."""

    PREFIX = "files"

    def __init__(self, dsn: str = "", bucket: S3Bucket | None = None) -> None:
        self.dsn = dsn
        self.bucket = bucket

    def write_config(self, path: Path, data_dir: Path, *, keys: bool, s3_in_file: bool) -> Path:
        """A config file on these backends, open unless `keys` (alpha and beta). The S3
        credentials are in the file if `s3_in_file`, else they must come from `env()`."""
        lines = ["[storage]", f'data_dir = "{data_dir}"']
        if self.bucket is not None:
            lines += [f'database = "{self.dsn}"', f'blobs = "{self.bucket.blobs_url(self.PREFIX)}"']
            if s3_in_file:
                lines.append(self.bucket.s3_table())
        path.write_text("\n".join(lines) + "\n" + (KEYS_TOML if keys else ""))
        return path

    def env(self) -> dict[str, str]:
        return self.bucket.env() if self.bucket is not None else {}

    def remove_blob(self, server: ServerProcess, digest: str) -> None:
        """Remove a stored blob behind the servers' back."""
        if self.bucket is None:
            assert server.data_dir is not None
            (server.data_dir / "blobs" / digest[:2] / digest).unlink()
            return
        s3 = self.bucket.client()
        try:
            key = f"{self.PREFIX}/blobs/{digest[:2]}/{digest}"
            s3.head_object(Bucket=self.bucket.bucket, Key=key)  # raises unless it is there
            s3.delete_object(Bucket=self.bucket.bucket, Key=key)
        finally:
            s3.close()


@pytest.fixture(scope="module", params=["embedded", "postgres-s3"])
def storage(request: pytest.FixtureRequest) -> Iterator[Storage]:
    if request.param == "embedded":
        yield Storage()
        return
    postgres: PostgresServer = request.getfixturevalue("postgres_server")
    endpoint: str = request.getfixturevalue("s3_server")
    with postgres.database() as dsn, fresh_bucket(endpoint) as bucket:
        yield Storage(dsn, bucket)


@pytest.fixture(scope="module")
def server(storage: Storage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server for the module on `storage`, run open: each test uses its own token,
    so its own project. (Overrides conftest's `server`, adding the backends.)"""
    root = tmp_path_factory.mktemp("server")
    config = storage.write_config(root / "filesd.toml", root / "data", keys=False, s3_in_file=True)
    proc = ServerProcess(["--config", str(config)], cwd=root)
    yield proc
    assert proc.stop(signal.SIGTERM) == 0


@pytest.fixture
def keyed_server(storage: Storage, tmp_path: Path) -> Iterator[ServerProcess]:
    """A second server on the module's backends, with the alpha/beta keys; on S3 it takes
    its credentials from the environment."""
    config = storage.write_config(
        tmp_path / "keyed.toml", tmp_path / "data", keys=True, s3_in_file=False
    )
    proc = ServerProcess(["--config", str(config)], cwd=tmp_path, env=storage.env())
    yield proc
    assert proc.stop(signal.SIGTERM) == 0


@pytest.fixture
def client(server: ServerProcess) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.base_url, api_key=f"sk-{uuid.uuid4().hex}", max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(server: ServerProcess) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.base_url, api_key=f"sk-{uuid.uuid4().hex}", max_retries=0)


def test_create_from_bytes_path_file_object_and_tuple(client: OpenAI, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n')
    from_bytes = client.files.create(file=b"raw bytes", purpose="assistants")
    from_path = client.files.create(file=path, purpose="fine-tune")
    with path.open("rb") as f:
        from_object = client.files.create(file=f, purpose="batch")
    from_tuple = client.files.create(
        file=("données.csv", io.BytesIO(b"a,b\n"), "text/csv"), purpose="user_data"
    )

    assert from_bytes.filename == "upload"  # what the SDK sends for raw bytes
    assert from_bytes.bytes == len(b"raw bytes")
    assert from_bytes.status == "processed"
    assert from_path.filename == "train.jsonl" and from_path.purpose == "fine-tune"
    assert from_object.filename == "train.jsonl" and from_object.purpose == "batch"
    assert from_tuple.filename == "données.csv"
    assert client.files.content(from_tuple.id).text == "a,b\n"
    assert client.files.content(from_path.id).read() == path.read_bytes()


def test_list_auto_paginates_in_both_orders(client: OpenAI) -> None:
    ids = [client.files.create(file=f"f{i}".encode(), purpose="batch").id for i in range(7)]
    client.files.create(file=b"other", purpose="vision")

    newest_first = [f.id for f in client.files.list(limit=3, purpose="batch")]
    assert newest_first == list(reversed(ids))
    oldest_first = [f.id for f in client.files.list(limit=2, order="asc", purpose="batch")]
    assert oldest_first == ids

    page = client.files.list(limit=3, purpose="batch")
    assert len(page.data) == 3 and page.has_next_page()
    assert len(list(client.files.list())) == 8


def test_retrieve_content_delete_and_wait(client: OpenAI) -> None:
    created = client.files.create(file=("notes.txt", b"some notes"), purpose="assistants")
    assert client.files.retrieve(created.id) == created
    done = client.files.wait_for_processing(created.id, poll_interval=0.05)
    assert done.status == "processed"
    assert client.files.content(created.id).content == b"some notes"

    deleted = client.files.delete(created.id)
    assert deleted.deleted is True and deleted.id == created.id
    with pytest.raises(openai.NotFoundError) as info:
        client.files.retrieve(created.id)
    assert info.value.status_code == 404
    assert info.value.body == {
        "message": f"No such File object: {created.id}",
        "type": "invalid_request_error",
        "param": "id",
        "code": None,
    }
    with pytest.raises(openai.NotFoundError):
        client.files.delete(created.id)


def test_errors_are_the_sdks_exceptions(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=b"x", purpose="nonsense")  # type: ignore[arg-type]
    assert bad.value.param == "purpose"
    assert bad.value.request_id is not None and bad.value.request_id.startswith("req_")
    with pytest.raises(openai.BadRequestError):
        client.files.list(limit=0).data  # noqa: B018


def test_keys_through_the_sdk(keyed_server: ServerProcess) -> None:
    server = keyed_server
    wrong = OpenAI(base_url=server.base_url, api_key="sk-not-a-configured-key", max_retries=0)
    with wrong, pytest.raises(openai.AuthenticationError) as info:
        wrong.files.list()
    assert info.value.code == "invalid_api_key"
    with OpenAI(base_url=server.base_url, api_key=ALPHA_KEY, max_retries=0) as alpha:
        created = alpha.files.create(file=b"alpha", purpose="assistants")
    beta = OpenAI(base_url=server.base_url, api_key=BETA_KEY, max_retries=0)
    with beta, pytest.raises(openai.NotFoundError):
        beta.files.retrieve(created.id)


def test_projects_are_isolated_through_the_sdk(client: OpenAI, server: ServerProcess) -> None:
    mine = client.files.create(file=b"mine", purpose="assistants")
    with OpenAI(base_url=server.base_url, api_key="sk-someone-else", max_retries=0) as other:
        with pytest.raises(openai.NotFoundError):
            other.files.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            other.files.content(mine.id)
        with pytest.raises(openai.NotFoundError):
            other.files.delete(mine.id)
        assert mine.id not in [f.id for f in other.files.list()]
    assert client.files.retrieve(mine.id).id == mine.id


async def test_async_client(aclient: AsyncOpenAI) -> None:
    async with aclient:
        ids = [
            (await aclient.files.create(file=(f"a{i}.txt", b"x" * i), purpose="batch")).id
            for i in range(5)
        ]
        listed = [f.id async for f in aclient.files.list(limit=2)]
        assert listed == list(reversed(ids))
        got = await aclient.files.retrieve(ids[3])
        assert got.bytes == 3 and got.filename == "a3.txt"
        content = await aclient.files.content(ids[4])
        assert content.content == b"xxxx"
        done = await aclient.files.wait_for_processing(ids[0], poll_interval=0.05)
        assert done.status == "processed"
        assert (await aclient.files.delete(ids[0])).deleted
        with pytest.raises(openai.NotFoundError):
            await aclient.files.retrieve(ids[0])


# --- the Uploads API -------------------------------------------------------------------------


# openai 1.x's upload_file_chunked closes the file it opens only on error (`except`, not
# `finally`), so a successful upload from a path leaks that handle: ignore just that warning.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in.*paper\\.pdf:pytest.PytestUnraisableExceptionWarning"
)
def test_upload_file_chunked_from_bytes_and_path(client: OpenAI, tmp_path: Path) -> None:
    content = os.urandom(700_000)
    upload = client.uploads.upload_file_chunked(
        file=content,
        filename="chunked.jsonl",
        bytes=len(content),
        mime_type="text/jsonl",
        purpose="batch",
        part_size=256 * 1024,  # three parts
    )
    assert upload.status == "completed"
    assert upload.file is not None and upload.file.bytes == len(content)
    assert upload.file.filename == "chunked.jsonl"
    assert client.files.content(upload.file.id).content == content

    path = tmp_path / "paper.pdf"
    path.write_bytes(content[:300_000])
    md5 = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
    upload = client.uploads.upload_file_chunked(
        file=path, mime_type="application/pdf", purpose="assistants", part_size=100_000, md5=md5
    )
    assert upload.status == "completed" and upload.filename == "paper.pdf"
    assert upload.file is not None
    assert client.files.retrieve(upload.file.id).bytes == 300_000


def test_upload_calls_and_their_errors(client: OpenAI) -> None:
    upload = client.uploads.create(
        bytes=6, filename="parts.txt", mime_type="text/plain", purpose="user_data"
    )
    assert upload.status == "pending" and upload.expires_at == upload.created_at + 3600
    first = client.uploads.parts.create(upload_id=upload.id, data=b"abc")
    second = client.uploads.parts.create(upload_id=upload.id, data=b"def")
    assert first.object == "upload.part" and first.upload_id == upload.id
    with pytest.raises(openai.BadRequestError):
        client.uploads.complete(upload_id=upload.id, part_ids=[first.id])  # 3 of 6 bytes
    done = client.uploads.complete(upload_id=upload.id, part_ids=[second.id, first.id])
    assert done.file is not None
    assert client.files.content(done.file.id).content == b"defabc"
    with pytest.raises(openai.BadRequestError):
        client.uploads.parts.create(upload_id=upload.id, data=b"late")

    other = client.uploads.create(bytes=1, filename="x", mime_type="text/plain", purpose="batch")
    cancelled = client.uploads.cancel(other.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.uploads.complete(upload_id=other.id, part_ids=[])
    with pytest.raises(openai.NotFoundError):
        client.uploads.cancel("upload_does_not_exist")


async def test_async_chunked_upload(aclient: AsyncOpenAI) -> None:
    async with aclient:
        upload = await aclient.uploads.upload_file_chunked(
            file=b"x" * 1000,
            filename="a.txt",
            bytes=1000,
            mime_type="text/plain",
            purpose="assistants",
            part_size=300,
        )
        assert upload.status == "completed" and upload.file is not None
        assert (await aclient.files.content(upload.file.id)).content == b"x" * 1000


# --- retries ---------------------------------------------------------------------------------


def test_the_sdk_retries_a_500_then_raises(server: ServerProcess, storage: Storage) -> None:
    # A file whose bytes vanished from storage answers 500: the SDK retries it (max_retries=2).
    # (Larger than 64 KiB: smaller files may still be served from filesd's memory.)
    key = f"sk-{uuid.uuid4().hex}"
    content = os.urandom(100_000)
    with OpenAI(base_url=server.base_url, api_key=key, max_retries=2) as client:
        created = client.files.create(file=content, purpose="assistants")
        storage.remove_blob(server, hashlib.sha256(content).hexdigest())
        with pytest.raises(openai.InternalServerError) as info:
            client.files.content(created.id)
    assert info.value.status_code == 500
    assert info.value.code == "blob_missing"

    def attempts() -> list[str]:
        lines = server.stderr_text().splitlines()
        return [line for line in lines if f"{created.id}/content" in line]

    # The access log line of the last attempt may be written after the client has its answer.
    wait_until_sync(lambda: len(attempts()) >= 3, what="three attempts in the access log")
    assert len(attempts()) == 3
