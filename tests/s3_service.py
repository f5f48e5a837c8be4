"""A real S3-compatible server for tests: one moto server per test session, a fresh bucket per
test.

moto runs as its own process (`python -m moto.server`) on a loopback port, so the test process
and any `filesd serve` it starts reach the same server. Credentials are dummies, handed to
clients explicitly (or through `S3Bucket.env()` to a subprocess), never put in this process's
`os.environ`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench import services

REGION = "us-east-1"
ACCESS_KEY_ID = "test"
SECRET_ACCESS_KEY = "test"  # moto accepts any signature


@dataclass(frozen=True)
class S3Bucket:
    """An empty bucket on the session's S3 server, and how to reach it."""

    endpoint: str
    bucket: str
    region: str = REGION
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = SECRET_ACCESS_KEY

    def env(self) -> dict[str, str]:
        """Environment variables that point the standard AWS credential chain (and endpoint)
        at this server: for a subprocess's `env=`, merged over `os.environ`."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": self.region,
        }

    def s3_table(self) -> str:
        """A `[storage.s3]` TOML table naming this server and its credentials."""
        return (
            "[storage.s3]\n"
            f'endpoint = "{self.endpoint}"\n'
            f'region = "{self.region}"\n'
            f'access_key_id = "{self.access_key_id}"\n'
            f'secret_access_key = "{self.secret_access_key}"\n'
        )

    def blobs_url(self, prefix: str = "") -> str:
        """The `storage.blobs` value for this bucket (and `prefix`)."""
        return f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"

    def client(self) -> Any:
        """A synchronous botocore S3 client for this server (for tests that look inside)."""
        from botocore.config import Config

        return _botocore_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(s3={"addressing_style": "path"}),
        )

    def object_keys(self) -> list[str]:
        """Every key in the bucket, sorted."""
        client = self.client()
        try:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
            return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))
        finally:
            client.close()


@functools.cache
def _botocore_session() -> Any:
    """One botocore session for the test process: it keeps the JSON models it read."""
    import botocore.session

    return botocore.session.get_session()


def require_moto() -> None:
    """Skip the test when moto's server cannot run here (fail it when CI requires it)."""
    why = services.moto_missing()
    if why is not None:
        if os.environ.get("FILESD_REQUIRE_BACKENDS") == "1":
            pytest.fail(why)
        pytest.skip(why)


@contextlib.contextmanager
def moto_server(log_dir: Path) -> Iterator[str]:
    """Run one moto S3 server until the block ends; yields its endpoint URL (the server is
    bench/services.py's, which the benchmark uses too)."""
    require_moto()
    with services.moto_server(log_dir) as endpoint:
        yield endpoint


@contextlib.contextmanager
def fresh_bucket(endpoint: str) -> Iterator[S3Bucket]:
    """A new, empty bucket with a unique name; emptied and removed afterwards (moto keeps
    everything in its process's memory)."""
    bucket = S3Bucket(endpoint=endpoint, bucket=f"test-{uuid.uuid4().hex[:20]}")
    client = bucket.client()
    try:
        client.create_bucket(Bucket=bucket.bucket)
        yield bucket
        uploads = client.list_multipart_uploads(Bucket=bucket.bucket).get("Uploads", ())
        for upload in uploads:
            client.abort_multipart_upload(
                Bucket=bucket.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        for key in bucket.object_keys():
            client.delete_object(Bucket=bucket.bucket, Key=key)
        client.delete_bucket(Bucket=bucket.bucket)
    finally:
        client.close()
