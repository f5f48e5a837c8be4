"""This process among the instances sharing the metadata: its name, its heartbeat, the leases
it takes, and its claims and reclaims of blobs.

An instance is alive while its heartbeat's promise holds (`lease_seconds` after the last one,
sent every third of that). The rules of claims and reclaims are the metadata store's
(`storage.base.Coordination`); what is this process's to get right is timing: a blob delete
cannot be fenced in a bucket, so a reclaim's delete must be over before this instance could
look dead to the others (see `reclaim`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence

from ..retry import Backoff, Retry
from ..storage.base import BlobBackend, Coordination, StorageBusy

log = logging.getLogger(__name__)

# Waiting for another instance's reclaim of a blob (one delete: short) before claiming it.
CLAIM_BACKOFF = Backoff(first=0.01, cap=0.5)


def wall() -> int:
    """Real time, for what instances agree on between them (heartbeats, leases, claims): a
    test clock moved on one instance must not make the others look dead."""
    return int(time.time())


class Instance:
    """This instance. `start()` it (a first heartbeat, then one every third of
    `lease_seconds`), `close()` it after its users."""

    def __init__(
        self, coordination: Coordination, blobs: BlobBackend, *, lease_seconds: int, shared: bool
    ) -> None:
        self._coordination = coordination
        self._blobs = blobs
        self.lease_seconds = lease_seconds
        # Whether other processes share the metadata (PostgreSQL).
        self.shared = shared
        # This process's name among the instances (new at every start).
        self.id = uuid.uuid4().hex
        self._alive_until = 0.0  # (monotonic) what the last heartbeat told the others
        self._beating: asyncio.Task[None] | None = None
        self._unended: set[str] = set()  # reclaims whose end failed, retried by heartbeats
        self._claiming = Retry(CLAIM_BACKOFF, within=lease_seconds)

    async def start(self) -> None:
        await self.heartbeat()
        self._beating = asyncio.create_task(self._heartbeats())

    async def close(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            await asyncio.gather(self._beating, return_exceptions=True)

    async def heartbeat(self) -> None:
        """Tell the other instances this one is alive (for `lease_seconds`)."""
        sent = time.monotonic()
        await self._coordination.heartbeat(self.id, now=wall(), ttl=self.lease_seconds)
        self._alive_until = sent + self.lease_seconds

    async def _heartbeats(self) -> None:
        """While open: a heartbeat every third of `lease_seconds` (the services, not only a
        server, must stay alive in the others' eyes: `filesd migrate` and `gc` run long)."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.heartbeat()
                if self._unended:
                    unended = sorted(self._unended)
                    await self._coordination.end_reclaim(unended, self.id)
                    self._unended.difference_update(unended)
            except Exception:
                log.exception("heartbeat failed")

    async def take_lease(self, name: str, ttl: int) -> bool:
        """Hold lease `name` for `ttl` seconds unless another live instance holds it (a `ttl`
        of 0 gives it up)."""
        return await self._coordination.take_lease(name, self.id, now=wall(), ttl=ttl)

    async def claim(self, digests: Sequence[str]) -> None:
        """Claim `digests` for this instance, waiting while another instance reclaims one of
        them (a reclaim is one delete: short). Raises `StorageBusy` if it takes longer than
        a lease. Each claim is ended by the insert that refers to its blob, or `release`."""
        waiting = list(digests)
        claimed: list[str] = []

        async def attempt() -> set[str]:
            nonlocal waiting
            # A reclaimer counts as alive one lease longer than its heartbeat says: its
            # delete, capped to its own lease (see `reclaim`), has surely landed by then.
            refused = await self._coordination.claim_blobs(
                waiting, self.id, now=wall() - self.lease_seconds
            )
            claimed.extend(d for d in waiting if d not in refused)
            waiting = sorted(refused)
            return refused

        try:
            if await self._claiming.run(attempt, again=bool):
                raise StorageBusy("a blob stayed under reclaim too long; try again")
        except BaseException:
            await self._coordination.release_claims(claimed, self.id)
            raise

    async def release(self, digests: Sequence[str]) -> None:
        """End claims that no insert will end (nothing is inserted after all)."""
        await self._coordination.release_claims(digests, self.id)

    async def reclaim(self, digests: Sequence[str]) -> int:
        """Remove the blobs of `digests` that nothing refers to any more (decided in the
        metadata store, against every instance's claims); returns how many were removed."""
        if not digests:
            return 0
        begun = await self._coordination.begin_reclaim(digests, self.id, now=wall())
        if not begun:
            return 0
        try:
            # A delete cannot be fenced in the bucket. Others take a reclaim over only one
            # lease after this instance's heartbeat ran out (see `claim`), so the delete must
            # be over before the heartbeat runs out: not sent once it is near, and cut short
            # when it would outlast it (what a cut-short delete did is swept later).
            left = self._alive_until - time.monotonic() - 1
            if left <= 0:
                log.warning("reclaim of %d blob(s) given up: heartbeat too old", len(begun))
                return 0
            try:
                async with asyncio.timeout(left):
                    return await self._blobs.delete(begun)
            except TimeoutError:
                log.warning(
                    "reclaim of %d blob(s) cut short: it outlasted the heartbeat", len(begun)
                )
                return 0
        finally:
            try:
                await self._coordination.end_reclaim(begun, self.id)
            except Exception:
                # Left, the reclaim would keep every claim of these digests off while this
                # instance lives: the heartbeat loop ends it later.
                log.exception("ending a reclaim failed; retried with the next heartbeat")
                self._unended.update(begun)
