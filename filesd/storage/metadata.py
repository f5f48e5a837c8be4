"""What every metadata backend does the same way, written once over a few primitives.

dulwich's object stores are the model: the shared logic lives in a base class, and a backend
implements a handful of primitives. Here the base class, `SharedMetadata`, makes every
decision of the `MetadataStore` contract that is more than one statement (which files of a
group commit are inserted, whether a part fits its upload, who may claim or reclaim a blob,
who holds a lease, which completions are abandoned, what recorded batch results add up to),
through the pure functions of `rules.py`. A backend gives it:

- `_file_writes` / `_part_writes`: a write transaction holding whatever locks make its checks
  and its writes atomic against every other writer (SQLite: its one writer; PostgreSQL:
  advisory locks of the projects and blobs involved), offering `Writes`: facts read inside the
  transaction and the writes decided on them;
- `_coordination`: the state of instances, leases, claims and reclaims (`CoordinationState`),
  atomic for the digests and lease named (PostgreSQL: tables under advisory locks; a database
  only one process opens keeps it in memory: `InProcessCoordination`);
- `_batch_writes`, `_completing_uploads`, `_result_sizes`, `_results`, `_forget_results`,
  `_active_batches`, `_last_started`.

Everything else a backend implements is a plain statement: a read, or a write with no choice
in it. A third backend costs its primitives and its statements, nothing more.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from ..models import BatchResult, FileRecord, PartRecord, UploadRecord
from . import rules
from .base import BATCH_ACTIVE, StorageBusy, batch_lease
from .rules import NO_QUOTA, InsertVerdict, PartFacts, PartVerdict, QueuedBatch, Quota, Usage

# An instance dead for longer than this is forgotten (with its claims) by the next heartbeat.
FORGET_DEAD_AFTER = 86_400


class Writes(Protocol):
    """Inside a write transaction of `_file_writes` / `_part_writes`: facts and writes."""

    async def claimed(self, instance: str, digests: Sequence[str]) -> set[str]:
        """The digests `instance` holds a claim on."""
        ...

    async def taken(self, ids: Sequence[str]) -> set[str]:
        """The ids a file row has already (deleted files included)."""
        ...

    async def usage(
        self, projects: Sequence[str], excluding_uploads: Sequence[str]
    ) -> dict[str, Usage]:
        """What each project holds against its quota (see `Usage`), not counting the parts
        of `excluding_uploads`; projects holding nothing may be left out."""
        ...

    async def complete_upload(self, upload_id: str, file_id: str) -> bool:
        """Move the upload from `completing` with `file_id` to `completed`; False if it is
        no longer completing with that file (another instance settled it)."""
        ...

    async def insert(self, records: Sequence[FileRecord], *, skip_taken: bool) -> list[str]:
        """Insert file rows; the ids inserted. With `skip_taken`, a row whose id exists (or
        repeats an earlier one) is skipped alone; without, it fails the transaction."""
        ...

    async def part_facts(
        self, upload_id: str, now: int, *, project_bytes: bool
    ) -> PartFacts | None:
        """What decides a part of this upload (None: no such upload); `project_bytes` only
        when asked (it costs a sum over the project)."""
        ...

    async def add_part(self, part: PartRecord) -> None: ...

    async def end_claims(self, digests: Sequence[str], instance: str) -> None:
        """End one claim of `instance` per digest, as part of this transaction."""
        ...


class CoordinationState(Protocol):
    """Instances, leases, claims and reclaims, inside `_coordination` (atomic for the digests
    and the lease it was opened for)."""

    async def alive_until(self, instances: Collection[str]) -> dict[str, int]:
        """The heartbeat's promise of each instance that has one."""
        ...

    async def set_alive(self, instance: str, until: int) -> None: ...

    async def forget_dead(self, before: int, keep: str) -> None:
        """Forget instances whose heartbeat ran out before `before` (but `keep`), and their
        claims: neither counts once dead."""
        ...

    async def referenced(self, digests: Sequence[str]) -> set[str]:
        """The digests some file that is not deleted refers to."""
        ...

    async def claim_holders(self, digests: Sequence[str]) -> dict[str, set[str]]:
        """The instances holding a claim on each digest (digests without one left out)."""
        ...

    async def add_claims(self, counts: Mapping[str, int], instance: str) -> None: ...

    async def remove_claims(self, counts: Mapping[str, int], instance: str) -> None:
        """End that many of `instance`'s claims per digest (never below none)."""
        ...

    async def drop_claims(self, digests: Sequence[str]) -> None:
        """Drop every instance's claims on these digests."""
        ...

    async def reclaimers(self, digests: Sequence[str]) -> dict[str, str]:
        """The instance reclaiming each digest (digests under no reclaim left out)."""
        ...

    async def set_reclaims(self, digests: Sequence[str], instance: str, now: int) -> None: ...

    async def drop_reclaims(self, digests: Sequence[str], instance: str | None = None) -> None:
        """End the reclaims of these digests (only `instance`'s, when given)."""
        ...

    async def lease(self, name: str) -> tuple[str, int] | None:
        """(holder, until) of lease `name`, or None."""
        ...

    async def leases(self, names: Collection[str]) -> dict[str, tuple[str, int]]:
        """(holder, until) of each lease of `names` that exists."""
        ...

    async def set_lease(
        self, name: str, holder: str, until: int, *, was: tuple[str, int] | None
    ) -> bool:
        """Hold lease `name` for `holder` until `until`, only if it is still `was` (what
        `lease` answered); False if it changed meanwhile. The write checks its own fact: a
        writer that does not take this transaction's locks (an instance of an earlier
        release, during a rolling upgrade) cannot be overwritten."""
        ...

    async def drop_lease(self, name: str) -> None: ...


class BatchWrites(Protocol):
    """Inside `_batch_writes`: recording results of one batch."""

    async def running(self, batch_id: str) -> bool:
        """Whether the batch is `in_progress` (and stays so until this transaction ends)."""
        ...

    async def record(self, batch_id: str, results: Sequence[BatchResult]) -> list[int]:
        """Store the results of the requests still pending; the lines stored."""
        ...

    async def add_sums(self, batch_id: str, sums: rules.BatchSums) -> None: ...


class SharedMetadata(abc.ABC):
    """The decisions of `MetadataStore`, over a backend's primitives (see the module's
    docstring). Subclasses implement the abstract methods and the plain statements."""

    # --- primitives -----------------------------------------------------------------------------

    @abc.abstractmethod
    def _file_writes(
        self, projects: Collection[str], digests: Collection[str], *, simple: bool
    ) -> contextlib.AbstractAsyncContextManager[Writes]:
        """A transaction for inserting files of `projects` whose blobs are `digests` (the
        claims checked and ended in it). `simple`: it will only insert rows skipping taken
        ids, once (a backend may then do without an explicit transaction)."""

    @abc.abstractmethod
    def _part_writes(self, upload_id: str) -> contextlib.AbstractAsyncContextManager[Writes]:
        """A transaction for adding a part to `upload_id`, atomic against the other parts and
        files of its project."""

    @abc.abstractmethod
    def _coordination(
        self, digests: Collection[str] = (), *, lease: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[CoordinationState]:
        """The coordination state, atomic for `digests` and `lease`."""

    @abc.abstractmethod
    def _batch_writes(self, batch_id: str) -> contextlib.AbstractAsyncContextManager[BatchWrites]:
        """A transaction recording results of `batch_id`, atomic against its status changes."""

    @abc.abstractmethod
    async def _completing_uploads(self) -> list[tuple[UploadRecord, str | None]]:
        """Every upload in `completing`, with the instance that took it there."""

    @abc.abstractmethod
    async def _result_sizes(
        self, batch_id: str, *, ok: bool, after_line: int, limit: int
    ) -> list[tuple[int, int | None]]:
        """(line, bytes of its result) of the recorded results after `after_line`, by line."""

    @abc.abstractmethod
    async def _results(
        self, batch_id: str, *, ok: bool, after_line: int, limit: int
    ) -> list[tuple[int, str]]:
        """(line, result) of the recorded results after `after_line`, by line."""

    @abc.abstractmethod
    async def _forget_results(self, batch_id: str) -> None:
        """Drop the result payloads of a finished batch (its rows stay)."""

    @abc.abstractmethod
    async def _active_batches(self, statuses: Sequence[str]) -> list[tuple[str, str]]:
        """(id, project) of the batches in one of `statuses`, oldest first."""

    @abc.abstractmethod
    async def _last_started(self, projects: Collection[str]) -> dict[str, int]:
        """The latest `in_progress_at` of each project's batches (projects with none left
        out); by index, whatever number of batches a project has had."""

    # --- files ----------------------------------------------------------------------------------

    async def insert_files(
        self,
        records: Sequence[FileRecord],
        *,
        instance: str | None = None,
        quota: Quota = NO_QUOTA,
        excluding_uploads: Sequence[str] = (),
        completions: Mapping[str, str] | None = None,
    ) -> list[InsertVerdict]:
        """See `FileMetadata.insert_files`. A record is, in this order: `unclaimed`, `taken`
        (only looked up before the insert when a quota or a completion depends on it; else
        the insert finds it), over a quota, `abandoned`, or inserted."""
        completions = completions or {}
        digests = sorted({r.sha256 for r in records})
        verdicts: list[InsertVerdict] = ["inserted"] * len(records)
        projects = sorted({r.project for r in records})
        claims = digests if instance is not None else []
        try:
            async with self._file_writes(
                projects, claims, simple=not quota and not completions
            ) as writes:
                if instance is not None:
                    rules.mark_unclaimed(records, verdicts, await writes.claimed(instance, digests))
                if quota or completions:
                    taken = await writes.taken([r.id for r in records])
                    rules.mark_taken(records, verdicts, taken)
                if quota:
                    held = await writes.usage(projects, excluding_uploads)
                    completing = {i for i, r in enumerate(records) if r.id in completions}
                    rules.quota_verdicts(
                        records, held, quota, verdicts, refused_keep_bytes=completing
                    )
                for i, record in enumerate(records):
                    upload_id = completions.get(record.id)
                    if (
                        verdicts[i] == "inserted"
                        and upload_id is not None
                        and not await writes.complete_upload(upload_id, record.id)
                    ):
                        verdicts[i] = "abandoned"
                picked = rules.chosen(records, verdicts)
                if picked:
                    inserted = await writes.insert(picked, skip_taken=True)
                    rules.mark_not_inserted(records, verdicts, inserted)
                if instance is not None:
                    await writes.end_claims(digests, instance)
        except BaseException:
            if instance is not None:
                await self._release_after_failure(digests, instance)
            raise
        return verdicts

    async def import_files(
        self, records: Sequence[FileRecord], *, instance: str | None = None
    ) -> list[str]:
        """See `FileMetadata.import_files`: all or none."""
        digests = sorted({r.sha256 for r in records})
        projects = sorted({r.project for r in records})
        try:
            async with self._file_writes(
                projects, digests if instance is not None else [], simple=False
            ) as writes:
                if instance is not None and len(await writes.claimed(instance, digests)) != len(
                    digests
                ):
                    raise StorageBusy("the claims on the imported blobs were lost")
                taken = await writes.taken([r.id for r in records])
                if not taken and records:
                    await writes.insert(records, skip_taken=False)
                if instance is not None:
                    await writes.end_claims(digests, instance)
        except BaseException:
            if instance is not None:
                await self._release_after_failure(digests, instance)
            raise
        return sorted(taken)

    async def _release_after_failure(self, digests: Sequence[str], instance: str) -> None:
        """End the claims a failed insert would have ended (its transaction rolled back), as
        far as the store lets us: a claim left behind would keep its blob for as long as the
        instance lives. Shielded from the caller's cancellation."""
        with contextlib.suppress(Exception):
            await asyncio.shield(self.release_claims(digests, instance))

    # --- uploads --------------------------------------------------------------------------------

    async def insert_part(
        self, part: PartRecord, *, now: int, max_project_bytes: int, max_parts: int = 0
    ) -> PartVerdict:
        """See `UploadMetadata.insert_part`: decided and inserted in one transaction."""
        async with self._part_writes(part.upload_id) as writes:
            facts = await writes.part_facts(
                part.upload_id, now, project_bytes=bool(max_project_bytes)
            )
            verdict = rules.part_verdict(
                facts, part.bytes, max_parts=max_parts, max_project_bytes=max_project_bytes
            )
            if verdict == "added":
                await writes.add_part(part)
        return verdict

    async def abandoned_completions(self, instance: str, *, now: int) -> list[UploadRecord]:
        """See `UploadMetadata.abandoned_completions`."""
        completing = await self._completing_uploads()
        if not completing:
            return []
        owners = {owner for _, owner in completing if owner is not None}
        async with self._coordination() as state:
            alive = await state.alive_until(owners)
        return [
            upload
            for upload, owner in completing
            if rules.completion_abandoned(owner, alive.get(owner or ""), instance, now)
        ]

    # --- coordination ---------------------------------------------------------------------------

    async def heartbeat(self, instance: str, *, now: int, ttl: int) -> None:
        """Record that `instance` is alive until `now + ttl`; forget instances dead for over
        FORGET_DEAD_AFTER seconds, and their claims."""
        async with self._coordination() as state:
            await state.forget_dead(now - FORGET_DEAD_AFTER, keep=instance)
            await state.set_alive(instance, now + ttl)

    async def take_lease(self, name: str, instance: str, *, now: int, ttl: int) -> bool:
        async with self._coordination(lease=name) as state:
            current = await state.lease(name)
            holder, until = current if current is not None else (None, None)
            if not rules.lease_free(holder, until, instance, now):
                return False
            return await state.set_lease(name, instance, now + ttl, was=current)

    async def claim_blobs(self, digests: Sequence[str], instance: str, *, now: int) -> set[str]:
        if not digests:
            return set()
        async with self._coordination(digests) as state:
            reclaimers = await state.reclaimers(digests)
            alive = await state.alive_until(set(reclaimers.values())) if reclaimers else {}
            refused = rules.refused_claims(reclaimers, alive, now)
            abandoned = [d for d in reclaimers if d not in refused]
            if abandoned:
                await state.drop_reclaims(abandoned)
            counts = collections.Counter(d for d in digests if d not in refused)
            if counts:
                await state.add_claims(counts, instance)
        return refused

    async def release_claims(self, digests: Sequence[str], instance: str) -> None:
        if not digests:
            return
        async with self._coordination(digests) as state:
            await state.remove_claims(collections.Counter(digests), instance)

    async def begin_reclaim(self, digests: Sequence[str], instance: str, *, now: int) -> list[str]:
        if not digests:
            return []
        async with self._coordination(digests) as state:
            referenced = await state.referenced(digests)
            holders = await state.claim_holders(digests)
            reclaimers = await state.reclaimers(digests)
            everyone = {instance, *reclaimers.values()}.union(*holders.values())
            alive = await state.alive_until(everyone)
            if not rules.is_alive(alive.get(instance), now):
                return []
            begun = rules.reclaims_to_begin(
                digests,
                instance,
                now,
                referenced=referenced,
                claim_holders=holders,
                reclaimers=reclaimers,
                alive_until=alive,
            )
            # Claims of dead instances on blobs nothing refers to go: their inserts will be
            # refused (`unclaimed`) rather than refer to a blob being deleted.
            expired = [
                d
                for d in holders
                if d not in referenced
                and not any(rules.is_alive(alive.get(i), now) for i in holders[d])
            ]
            if expired:
                await state.drop_claims(expired)
            if begun:
                await state.set_reclaims(begun, instance, now)
        return begun

    async def end_reclaim(self, digests: Sequence[str], instance: str) -> None:
        if not digests:
            return
        async with self._coordination(digests) as state:
            await state.drop_reclaims(digests, instance)

    # --- batches --------------------------------------------------------------------------------

    async def record_batch_results(self, batch_id: str, results: Sequence[BatchResult]) -> int:
        """See `BatchMetadata.record_batch_results`."""
        by_line = {result.line: result for result in results}
        if not by_line:
            return 0
        async with self._batch_writes(batch_id) as writes:
            if not await writes.running(batch_id):
                return 0
            recorded = await writes.record(batch_id, list(by_line.values()))
            if recorded:
                sums = rules.batch_sums([(by_line[n].ok, by_line[n].usage) for n in recorded])
                await writes.add_sums(batch_id, sums)
        return len(recorded)

    async def batch_results(
        self, batch_id: str, *, ok: bool, after_line: int, limit: int, max_bytes: int | None = None
    ) -> list[tuple[int, str]]:
        """See `BatchMetadata.batch_results`: with `max_bytes`, the sizes first (no result
        leaves the database), then the rows that fit."""
        if max_bytes is not None:
            sizes = await self._result_sizes(batch_id, ok=ok, after_line=after_line, limit=limit)
            limit = rules.rows_within(sizes, max_bytes)
        return await self._results(batch_id, ok=ok, after_line=after_line, limit=limit)

    async def active_batches(self, statuses: Sequence[str] = BATCH_ACTIVE) -> list[str]:
        """See `BatchMetadata.active_batches`."""
        return [batch_id for batch_id, _ in await self._active_batches(statuses)]

    async def batches_to_claim(self, statuses: Sequence[str], *, now: int) -> list[QueuedBatch]:
        """See `BatchMetadata.batches_to_claim`. The facts are read without locks: the order
        is advice, and taking the lease of the batch chosen decides who drives it."""
        rows = await self._active_batches(statuses)
        if not rows:
            return []
        async with self._coordination() as state:
            leases = await state.leases([batch_lease(batch_id) for batch_id, _ in rows])
        untils = {name: until for name, (_, until) in leases.items()}
        queue = [
            QueuedBatch(batch_id, project, rules.is_alive(untils.get(batch_lease(batch_id)), now))
            for batch_id, project in rows
        ]
        last_started = await self._last_started({project for _, project in rows})
        return rules.claim_order(queue, last_started)

    async def forget_batch(self, batch_id: str, lease: str) -> None:
        """See `BatchMetadata.forget_batch`."""
        await self._forget_results(batch_id)
        async with self._coordination(lease=lease) as state:
            await state.drop_lease(lease)


class InProcessCoordination:
    """`CoordinationState` in memory, for a database only one process can open (SQLite: the
    data dir's lock): its instances are the only ones there are, and a restart ends them. No
    write reaches the disk. `referenced` is the backend's own read, passed in.

    Atomicity comes from the backend: it holds one lock around every use (`_coordination`
    and its inserts that check claims)."""

    def __init__(self) -> None:
        self.alive: dict[str, int] = {}  # instance -> alive until
        self.leases: dict[str, tuple[str, int]] = {}  # name -> holder, until
        self.claims: dict[str, collections.Counter[str]] = {}  # digest -> instances' claims
        self.reclaims: dict[str, str] = {}  # digest -> instance reclaiming it

    def bind(self, referenced: _Referenced) -> _BoundState:
        return _BoundState(self, referenced)

    def held(self, instance: str, digests: Sequence[str]) -> set[str]:
        return {d for d in digests if self.claims.get(d, collections.Counter())[instance] > 0}

    def remove(self, counts: Mapping[str, int], instance: str) -> None:
        for digest, count in counts.items():
            claims = self.claims.get(digest)
            if claims is None:
                continue
            claims[instance] -= count
            if claims[instance] <= 0:
                del claims[instance]
            if not claims:
                del self.claims[digest]


class _Referenced(Protocol):
    async def __call__(self, digests: Sequence[str]) -> set[str]: ...


class _BoundState:
    """`CoordinationState` over `InProcessCoordination`, with the backend's `referenced`."""

    def __init__(self, memory: InProcessCoordination, referenced: _Referenced) -> None:
        self._m = memory
        self._referenced = referenced

    async def alive_until(self, instances: Collection[str]) -> dict[str, int]:
        return {i: self._m.alive[i] for i in instances if i in self._m.alive}

    async def set_alive(self, instance: str, until: int) -> None:
        self._m.alive[instance] = until

    async def forget_dead(self, before: int, keep: str) -> None:
        gone = [i for i, until in self._m.alive.items() if until < before and i != keep]
        for instance in gone:
            del self._m.alive[instance]
        if gone:
            for digest in list(self._m.claims):
                claims = self._m.claims[digest]
                for instance in gone:
                    claims.pop(instance, None)
                if not claims:
                    del self._m.claims[digest]

    async def referenced(self, digests: Sequence[str]) -> set[str]:
        return await self._referenced(digests)

    async def claim_holders(self, digests: Sequence[str]) -> dict[str, set[str]]:
        return {d: set(self._m.claims[d]) for d in digests if self._m.claims.get(d)}

    async def add_claims(self, counts: Mapping[str, int], instance: str) -> None:
        for digest, count in counts.items():
            self._m.claims.setdefault(digest, collections.Counter())[instance] += count

    async def remove_claims(self, counts: Mapping[str, int], instance: str) -> None:
        self._m.remove(counts, instance)

    async def drop_claims(self, digests: Sequence[str]) -> None:
        for digest in digests:
            self._m.claims.pop(digest, None)

    async def reclaimers(self, digests: Sequence[str]) -> dict[str, str]:
        return {d: self._m.reclaims[d] for d in digests if d in self._m.reclaims}

    async def set_reclaims(self, digests: Sequence[str], instance: str, now: int) -> None:
        for digest in digests:
            self._m.reclaims[digest] = instance

    async def drop_reclaims(self, digests: Sequence[str], instance: str | None = None) -> None:
        for digest in digests:
            if instance is None or self._m.reclaims.get(digest) == instance:
                self._m.reclaims.pop(digest, None)

    async def lease(self, name: str) -> tuple[str, int] | None:
        return self._m.leases.get(name)

    async def leases(self, names: Collection[str]) -> dict[str, tuple[str, int]]:
        return {name: self._m.leases[name] for name in names if name in self._m.leases}

    async def set_lease(
        self, name: str, holder: str, until: int, *, was: tuple[str, int] | None
    ) -> bool:
        if self._m.leases.get(name) != was:
            return False
        self._m.leases[name] = (holder, until)
        return True

    async def drop_lease(self, name: str) -> None:
        self._m.leases.pop(name, None)
