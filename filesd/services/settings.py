"""What the services are configured with: `StoreSettings`, read from a `Config` in one place
(`from_config`), and the part of it that picks the backends (`backends`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, S3Config
from ..storage.cached import SMALL_CACHE_BYTES
from ..storage.opening import BackendSettings
from ..storage.rules import Quota


@dataclass(frozen=True)
class StoreSettings:
    """Everything the services are configured with."""

    data_dir: Path
    id_format: str = "uuid"
    max_file_bytes: int = 512 * 1024 * 1024
    max_part_bytes: int = 64 * 1024 * 1024
    max_upload_parts: int = 10_000
    default_expires_after: Mapping[str, int] = field(default_factory=dict)
    small_cache_bytes: int = SMALL_CACHE_BYTES
    max_files_per_project: int = 0
    max_bytes_per_project: int = 0
    id_seed: int | None = None
    # The shared backends (SPEC §5): "" means SQLite / the blob dir in data_dir.
    database: str = field(default="", repr=False)  # may hold the password
    blobs: str = ""
    s3: S3Config = field(default_factory=S3Config)
    lease_seconds: int = 30
    sweep_interval: int = 60
    deleted_retention: int = 30 * 24 * 3600

    @property
    def quota(self) -> Quota:
        return Quota(self.max_files_per_project, self.max_bytes_per_project)

    @property
    def backends(self) -> BackendSettings:
        return BackendSettings(
            self.data_dir, self.database, self.blobs, self.s3, self.small_cache_bytes
        )

    @property
    def embedded(self) -> bool:
        """SQLite and the blob dir, both in the data dir (no other service)."""
        return self.backends.embedded

    @classmethod
    def from_config(cls, config: Config) -> StoreSettings:
        return cls(
            database=config.storage.database,
            blobs=config.storage.blobs,
            s3=config.storage.s3,
            lease_seconds=config.storage.lease_seconds,
            sweep_interval=config.storage.sweep_interval,
            deleted_retention=config.storage.deleted_retention,
            data_dir=config.storage.data_dir,
            id_format=config.files.id_format,
            max_file_bytes=config.limits.max_file_bytes,
            max_part_bytes=config.limits.max_part_bytes,
            max_upload_parts=config.limits.max_upload_parts,
            default_expires_after=dict(config.files.default_expires_after),
            max_files_per_project=config.limits.max_files_per_project,
            max_bytes_per_project=config.limits.max_bytes_per_project,
            id_seed=config.testing.id_seed,
        )
