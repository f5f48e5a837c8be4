"""The decisions every metadata backend makes the same way, as pure functions.

A backend fetches the facts (rows, or in-process state) inside its transaction and writes what
these functions decide; it never decides itself. So SQLite and PostgreSQL (and any third
backend) cannot drift apart on a quota, a verdict, a claim or who counts as alive, and the
services use the same functions for their early refusals (`quota_verdicts` before a blob is
written, `over_quota` before a body is read).

No I/O here, and no clock: `now` is always given.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from ..models import FileRecord

# What became of a file offered to `FileMetadata.insert_files`.
InsertVerdict = Literal["inserted", "taken", "over_files", "over_bytes", "unclaimed", "abandoned"]
# What became of a part offered to an upload (`UploadMetadata.insert_part`).
PartVerdict = Literal["added", "not_pending", "too_many_parts", "over_declared", "over_quota"]


@dataclass(frozen=True)
class Quota:
    """A project's limits: live files and bytes held (0: no limit)."""

    files: int = 0
    bytes: int = 0

    def __bool__(self) -> bool:
        return bool(self.files or self.bytes)


NO_QUOTA = Quota()


class Usage(NamedTuple):
    """What a project holds against its quota: files not deleted (expired ones count until
    swept), and the bytes of those files and of the parts of its unfinished uploads."""

    files: int = 0
    bytes: int = 0


def over_quota(usage: Usage, quota: Quota, incoming: int) -> Literal["files", "bytes"] | None:
    """Which limit one more file of `incoming` bytes would pass, if any."""
    if quota.files and usage.files + 1 > quota.files:
        return "files"
    if quota.bytes and usage.bytes + incoming > quota.bytes:
        return "bytes"
    return None


def quota_verdicts(
    records: Sequence[FileRecord],
    held: Mapping[str, Usage],
    quota: Quota,
    verdicts: list[InsertVerdict],
    *,
    refused_keep_bytes: Collection[int] = (),
) -> None:
    """Mark, in place and in order, the records still `inserted` that would take their
    project over `quota`: each record accepted counts against the next ones of its project.

    `refused_keep_bytes` names (by index) records whose bytes stay held even when refused
    (the parts of an upload being completed: refused, its parts still count)."""
    usage = dict(held)
    for i, record in enumerate(records):
        if verdicts[i] != "inserted":
            continue
        now_held = usage.get(record.project, Usage())
        over = over_quota(now_held, quota, record.bytes)
        if over is None:
            usage[record.project] = Usage(now_held.files + 1, now_held.bytes + record.bytes)
            continue
        verdicts[i] = "over_files" if over == "files" else "over_bytes"
        if i in refused_keep_bytes:
            usage[record.project] = Usage(now_held.files, now_held.bytes + record.bytes)


def mark_taken(
    records: Sequence[FileRecord], verdicts: list[InsertVerdict], taken: set[str]
) -> None:
    """Mark, in place, the records still `inserted` whose id exists (in `taken`) or belongs to
    an earlier record of the same call (the first record with an id is the one inserted)."""
    seen = set(taken)
    for i, record in enumerate(records):
        if verdicts[i] != "inserted":
            continue
        if record.id in seen:
            verdicts[i] = "taken"
        seen.add(record.id)


def mark_unclaimed(
    records: Sequence[FileRecord], verdicts: list[InsertVerdict], claimed: Collection[str]
) -> None:
    """Mark, in place, the records whose blob the inserting instance holds no claim on (it
    was presumed dead and its claim dropped: a reclaim may be deleting that blob)."""
    for i, record in enumerate(records):
        if verdicts[i] == "inserted" and record.sha256 not in claimed:
            verdicts[i] = "unclaimed"


def mark_not_inserted(
    records: Sequence[FileRecord], verdicts: list[InsertVerdict], inserted: Sequence[str]
) -> None:
    """After the insert: the records still `inserted` whose row was not written (another
    writer took the id meanwhile) are `taken`. `inserted` names each row written, once."""
    left = collections.Counter(inserted)
    for i, record in enumerate(records):
        if verdicts[i] != "inserted":
            continue
        if left[record.id] <= 0:
            verdicts[i] = "taken"
        left[record.id] -= 1


def chosen(records: Sequence[FileRecord], verdicts: Sequence[InsertVerdict]) -> list[FileRecord]:
    """The records to insert: those still `inserted`."""
    return [r for r, v in zip(records, verdicts, strict=True) if v == "inserted"]


@dataclass(frozen=True)
class PartFacts:
    """What decides a part: the upload is pending and unexpired, the bytes it declared, the
    bytes and number of its parts so far, and (with a byte quota) what its project holds."""

    open: bool
    declared: int
    parts_bytes: int
    parts: int
    project_bytes: int


def part_verdict(
    facts: PartFacts | None, size: int, *, max_parts: int, max_project_bytes: int
) -> PartVerdict:
    """Whether a part of `size` bytes may be added (`added`), and else why not. `max_parts`
    and `max_project_bytes` of 0 mean no limit."""
    if facts is None or not facts.open:
        return "not_pending"
    if max_parts and facts.parts >= max_parts:
        return "too_many_parts"
    if facts.parts_bytes + size > facts.declared:
        return "over_declared"
    if max_project_bytes and facts.project_bytes + size > max_project_bytes:
        return "over_quota"
    return "added"


# --- instances: liveness, leases, claims and reclaims ------------------------------------------


def is_alive(alive_until: int | None, now: int) -> bool:
    """An instance is alive while its last heartbeat's promise holds (no heartbeat: dead);
    a lease holds while its `until` is ahead (None: no lease)."""
    return alive_until is not None and alive_until > now


def lease_free(holder: str | None, until: int | None, instance: str, now: int) -> bool:
    """`instance` may take a lease held by `holder` until `until`: it is free, expired, or its
    own already."""
    return holder is None or holder == instance or not is_alive(until, now)


def refused_claims(
    reclaimers: Mapping[str, str], alive_until: Mapping[str, int], now: int
) -> set[str]:
    """The digests a claim must wait for: a live instance is reclaiming (deleting) them. A dead
    instance's reclaim does not count (its delete was cut short by its own lease)."""
    return {d for d, who in reclaimers.items() if is_alive(alive_until.get(who), now)}


def reclaims_to_begin(
    digests: Sequence[str],
    instance: str,
    now: int,
    *,
    referenced: Collection[str],
    claim_holders: Mapping[str, Collection[str]],
    reclaimers: Mapping[str, str],
    alive_until: Mapping[str, int],
) -> list[str]:
    """The digests (in the order given, once each) whose blob `instance` may delete now: it is
    alive itself; no file that is not deleted refers to the blob; no live instance claims it
    (an upload is about to refer to it); no other live instance reclaims it already."""
    if not is_alive(alive_until.get(instance), now):
        return []
    begun: list[str] = []
    for digest in dict.fromkeys(digests):
        if digest in referenced:
            continue
        if any(is_alive(alive_until.get(i), now) for i in claim_holders.get(digest, ())):
            continue
        other = reclaimers.get(digest)
        if other is not None and other != instance and is_alive(alive_until.get(other), now):
            continue
        begun.append(digest)
    return begun


def completion_abandoned(
    owner: str | None, alive_until: int | None, instance: str, now: int
) -> bool:
    """An upload left in `completing` by `owner` is abandoned (for `instance` to settle) once
    its owner is another instance and no longer alive, or it has none."""
    return owner != instance and not is_alive(alive_until, now)


# --- batches -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSums:
    """What recorded results add to a batch: completed and failed requests, and the tokens of
    the completed ones (input, output, cached input, reasoning)."""

    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


def batch_sums(outcomes: Sequence[tuple[bool, tuple[int, int, int, int]]]) -> BatchSums:
    """The sums of results just recorded: (ok, usage) of each, counted once."""
    done = sum(1 for ok, _ in outcomes if ok)
    tokens = [sum(usage[k] for _, usage in outcomes) for k in range(4)]
    return BatchSums(done, len(outcomes) - done, *tokens)


def rows_within(sizes: Sequence[tuple[int, int | None]], max_bytes: int) -> int:
    """How many of the rows (line, bytes), in order, fit in `max_bytes` (at least one): the
    page size of `BatchMetadata.batch_results` with `max_bytes`."""
    total = 0
    for count, (_, size) in enumerate(sizes):
        total += size or 0
        if total > max_bytes:
            return max(1, count)
    return len(sizes)


@dataclass(frozen=True)
class QueuedBatch:
    """A batch someone still has to work on, as the claim order sees it: its project, and
    whether some instance drives it now (a live lease holds it)."""

    id: str
    project: str
    driven: bool = False


def claim_order(queue: Sequence[QueuedBatch], last_started: Mapping[str, int]) -> list[QueuedBatch]:
    """The batches of `queue` (oldest first) that no instance drives, in the order to claim
    them, the projects taking turns: next is always the oldest waiting batch of the project
    driving the fewest batches (those ordered before it counting as driven); among equals,
    the project whose last batch started longest ago (`last_started`, by project: the
    latest `in_progress_at` of its batches; none yet: first), then the one whose oldest
    waiting batch is oldest. So one project's backlog, however long, never keeps another
    project's batch from being next."""
    driving = collections.Counter(b.project for b in queue if b.driven)
    waiting: dict[str, collections.deque[tuple[int, QueuedBatch]]] = {}
    for index, batch in enumerate(queue):
        if not batch.driven:
            waiting.setdefault(batch.project, collections.deque()).append((index, batch))
    # A project given a turn in this order has started after every batch so far: its last
    # start becomes later than any known, later still for each next turn.
    turn = max(last_started.values(), default=0) + 1
    heap = [
        (driving[p], last_started.get(p, -1), batches[0][0], p) for p, batches in waiting.items()
    ]
    heapq.heapify(heap)
    order: list[QueuedBatch] = []
    while heap:
        count, _, _, project = heapq.heappop(heap)
        batches = waiting[project]
        order.append(batches.popleft()[1])
        if batches:
            heapq.heappush(heap, (count + 1, turn, batches[0][0], project))
            turn += 1
    return order
