"""`filesd migrate`: the files and keys of one set of backends copied into another (typically
the embedded data dir into PostgreSQL and S3), ids, names, purposes, times and bytes kept, and
the copy verified.

Each batch of files is imported whole or not at all, through the destination's own import
(claims and all, so it may run beside the destination's servers). Files whose id is there
already are skipped, so a run cut short can be run again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..models import FileRecord
from ..storage.base import BlobMissing, StagedBlob
from .core import Services
from .errors import MigrationError


@dataclass
class MigrationReport:
    copied: int = 0
    present: int = 0  # there already (an earlier run)
    keys: int = 0
    skipped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # Files in the destination by project, copied now or by an earlier run.
    projects: dict[str, int] = field(default_factory=dict)


async def migrate(source: Services, dest: Services, *, batch: int = 200) -> MigrationReport:
    """Copy every live file of `source` and its API keys into `dest`, then verify the copy.
    Files marked damaged, or whose bytes are missing from `source`, are not copied and are
    listed in the report."""
    report = MigrationReport()
    records = await source.backends.meta.live_files(None)
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        present = set(await dest.backends.meta.existing_ids([r.id for r in chunk]))
        report.present += len(present)
        todo: list[FileRecord] = []
        staged: list[StagedBlob] = []
        try:
            for record in chunk:
                if record.id in present:
                    _count(report.projects, record.project)
                    continue
                if record.status == "error":
                    report.skipped.append(f"{record.id}: marked damaged")
                    continue
                try:
                    received = await dest.files.receive(source.files.read_range(record), limit=None)
                except BlobMissing:
                    report.skipped.append(f"{record.id}: its bytes are missing")
                    continue
                staged.append(received.staged)
                todo.append(record)
                if received.sha256 != record.sha256:
                    raise MigrationError(
                        f"{record.id}: its bytes do not match their SHA-256 in the source "
                        "(run `filesd fsck` on the source first)"
                    )
        except BaseException:
            await dest.backends.blobs.discard(staged)
            raise
        if todo:
            await dest.committer.import_files(todo, staged)
        report.copied += len(todo)
        for record in todo:
            _count(report.projects, record.project)
    known = {k.id for k in await dest.keys.all()}
    for key in await source.keys.all():
        if key.id not in known:
            await dest.keys.add(key)
            report.keys += 1
    report.problems = await _verify_copy(dest, [r for r in records if r.status != "error"], report)
    return report


def _count(projects: dict[str, int], project: str) -> None:
    projects[project] = projects.get(project, 0) + 1


async def _verify_copy(
    dest: Services, records: list[FileRecord], report: MigrationReport
) -> list[str]:
    skipped = {line.split(":")[0] for line in report.skipped}
    problems = []
    expected = {r.id: r for r in records if r.id not in skipped}
    copied = {r.id: r for r in await dest.backends.meta.live_files(None) if r.id in expected}
    for file_id, record in expected.items():
        if copied.get(file_id) != record:
            problems.append(f"{file_id}: not copied as it was")
    gone = await dest.backends.blobs.missing(sorted({r.sha256 for r in expected.values()}))
    problems += [f"blob {digest}: missing from the destination" for digest in sorted(gone)]
    return problems
