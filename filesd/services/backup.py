"""`filesd backup`: a consistent copy of an embedded data directory, taken while a server may
be running (SQLite's backup API, then the blobs the copy's live files refer to)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..storage.blobdir import BlobDir, fsync_dir
from ..storage.sqlite import database_path, finish_snapshot, snapshot_database
from .errors import NotOnTheseBackends
from .settings import StoreSettings


class BackupRefused(Exception):
    """The backup cannot be taken as asked: the destination is inside the data directory or
    not empty, or the data directory holds no filesd database. Nothing was written."""


@dataclass
class BackupReport:
    files: int
    blobs: int
    deleted_meanwhile: int


def backup(settings: StoreSettings, dest: Path) -> BackupReport:
    """A consistent copy of a data directory, taken while a server may be running.

    The database is copied with SQLite's backup API (one consistent snapshot); then every blob a
    live file of that snapshot refers to. A blob reclaimed in between belonged to files deleted
    after the snapshot: they are marked deleted in the copy, so the copy is a state the server
    really passed through, minus those deletes' timing. Uploads in progress are not copied (they
    show as expired). Everything is fsynced. `filesd serve --data-dir DEST` starts from it.

    On PostgreSQL or S3, raises `NotOnTheseBackends`: their own tools make consistent copies.
    """
    if not settings.embedded:
        raise NotOnTheseBackends(
            "filesd backup copies the embedded backends (SQLite and the blob dir). With "
            "PostgreSQL, back up the database with pg_dump (or your provider's snapshots); with "
            "S3, keep the bucket versioned or replicated. Restore the database first: blobs "
            "newer than it are swept as unreferenced, never the other way round."
        )
    data_dir = settings.data_dir
    resolved_source, resolved_dest = data_dir.resolve(), dest.resolve()
    if resolved_dest == resolved_source or resolved_source in resolved_dest.parents:
        # A copy inside its own source would be swept as stray files, or copied into itself.
        raise BackupRefused(f"{dest} is inside the data directory {data_dir}: back up elsewhere")
    if dest.exists() and any(dest.iterdir()):
        raise BackupRefused(f"{dest} is not empty: back up into an empty or new directory")
    source_db = database_path(data_dir)
    if not source_db.is_file():
        raise BackupRefused(f"no filesd database in {data_dir}")
    source, target = BlobDir(data_dir), BlobDir(dest)
    target.prepare_sync()
    digests = snapshot_database(source_db, database_path(dest))
    copied, gone = 0, []
    for digest in digests:
        target.path_for(digest).parent.mkdir(exist_ok=True)
        try:
            shutil.copyfile(source.path_for(digest), target.path_for(digest))
        except FileNotFoundError:
            gone.append(digest)
            continue
        with target.path_for(digest).open("rb") as f:
            os.fsync(f.fileno())
        copied += 1
    files = finish_snapshot(database_path(dest), gone, now=int(time.time()))
    for directory in (dest, target.blob_dir, *target.blob_dir.iterdir()):
        fsync_dir(directory)
    return BackupReport(files=files, blobs=copied, deleted_meanwhile=len(gone))
