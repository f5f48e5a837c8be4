"""The batch runner: works through every batch someone still has to work on, on any instance.

One task per app looks for batches in `validating`, `in_progress`, `finalizing` or
`cancelling` (every POLL_SECONDS, and at once when poked), takes the lease `batch:<id>` for
each it can, and drives it: validate the input, send its pending requests, finalize. The lease
is renewed while the batch is driven; an instance that dies stops renewing it, and after
`lease_seconds` another instance takes the batch over from the state in the database.

Durability: a request's result is recorded in the database (group-committed, see `_Recorder`)
before its concurrency slot is given back, and a request is sent only while its row is
`pending`; so after a crash at most the requests in flight then (at most `concurrency`) are
sent again, besides those waiting to be retried (they had only a 429, a 5xx or no answer),
and each request has exactly one line in the output.

Fairness between projects (`fairness.py`): a request waiting out a 429 (or a backoff) gives
its concurrency slot back while it waits, and slots go to the waiting project holding the
fewest; the batches to start are claimed in `rules.claim_order` (projects take turns), and a
project holding more than its share of this instance's run slots while another project's
batch waits gives one back (`_make_room`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import BatchesConfig
from ..ids import secret_base62
from ..models import BatchRecord, BatchResult, FileRecord
from ..retry import Backoff, Retry
from ..services.errors import FileIdTaken, FileNotFound, QuotaExceeded
from ..services.files import FileService
from ..services.instance import Instance, wall
from ..storage.base import BatchMetadata, StorageBusy, batch_lease
from ..storage.rules import QueuedBatch
from ..values import shortened
from . import states
from .budget import ByteBudget
from .fairness import FairSlots, to_yield
from .lines import numbered_lines
from .objects import OUTPUT_EXPIRES_AFTER, errors_json, usage_of
from .upstream import Answer, BadAnswer, Unreachable, Upstream
from .validate import MAX_LINE_BYTES, batch_error, validate_input

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
# Pending requests read from the database at once.
PAGE = 500
# Results group-committed at once, at most, and their bytes at most (one result may be as
# large as [batches] max_response_bytes: a group of 256 of those would be gigabytes).
RECORD_BATCH = 256
RECORD_BYTES = 16 * 1024 * 1024
# Bytes of results read for the output at once, at most (besides PAGE rows).
PAGE_BYTES = 16 * 1024 * 1024
# Longest wait between two attempts, whatever the backoff or the upstream asks for.
MAX_RETRY_WAIT = 300.0
# A batch whose drive failed is taken up again after 1, 2, 4... seconds, not every poll.
DRIVING = Backoff(first=1.0, cap=MAX_RETRY_WAIT)
# Results meeting a busy database: 5 attempts in about a second.
RECORDING = Retry(Backoff(first=0.05, cap=0.8), attempts=5)
# Bytes gathered before a write into an output file.
WRITE_CHUNK = 256 * 1024
# Bytes of request lines in flight at once over all batches here (a longer line goes alone):
# as much as one line may be. Each request in flight holds its body parsed, encoded and
# answered, a few times its line; concurrency alone would let that be `concurrency` times.
IN_FLIGHT_BYTES = MAX_LINE_BYTES


class _Halted(Exception):
    """A request stops waiting to be tried again: its drive was told to stop."""


@dataclass
class _SlotHold:
    """A request's concurrency slot, taken by the caller before the request's task starts:
    given back at most once, when the task is done however it ends (even cancelled before it
    ran at all, when no `finally` of its own would), or earlier while it waits."""

    slots: FairSlots
    project: str
    held: bool = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.slots.release(self.project)

    def done(self, task: asyncio.Task[None]) -> None:
        self.release()


@dataclass
class _Drive:
    """A batch this instance drives: its project (None: taken up ending, it sends nothing),
    why to stop sending (None: go on), and an event set when a reason is given (a drive
    waiting for a concurrency slot stops at once); `sending` while it sends requests."""

    batch_id: str
    project: str | None = None
    # "cancel", "expire", "lost", "gone" (deleted by a reset) or "yield" (its run slot is
    # another project's turn: the requests being sent finish, and the batch waits its turn)
    stop: str | None = None
    halted: asyncio.Event = field(default_factory=asyncio.Event)
    sending: bool = False

    def halt(self, reason: str | None) -> None:
        self.stop = reason
        if reason is None:
            self.halted.clear()
        else:
            self.halted.set()


class BatchRunner:
    """Drives batches in the background. `start()` once the services are open, `close()`
    before they close."""

    def __init__(
        self,
        files: FileService,
        instance: Instance,
        meta: BatchMetadata,
        config: BatchesConfig,
        upstream: Upstream,
    ) -> None:
        self._files = files
        self._instance = instance
        self._meta = meta
        self._config = config
        self._upstream = upstream
        self._slots = FairSlots(config.concurrency)
        self._in_flight = ByteBudget(IN_FLIGHT_BYTES)
        # Each request: at most 1 + max_retries attempts; exponential waits with jitter (so
        # that many requests do not retry in step), or what the upstream asks for.
        self._sending = Retry(
            Backoff(first=config.retry_backoff, cap=60.0, jitter=0.5),
            attempts=config.max_retries + 1,
            longest=MAX_RETRY_WAIT,
        )
        self._lease_seconds = instance.lease_seconds
        self._drives: dict[str, tuple[_Drive, asyncio.Task[None]]] = {}
        # Batches whose drive failed: (failures in a row, not again before this loop time).
        self._backoff: dict[str, tuple[int, float]] = {}
        # Sends already made of requests a yielding drive left pending while they waited to be
        # tried again, by (batch id, line): a request is sent at most 1 + max_retries times
        # here, however often its batch yields.
        self._sent_before: dict[tuple[str, int], int] = {}
        # Commits of results under way: waited for on close, before the store closes.
        self._commits: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._main: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._main = asyncio.create_task(self._run(), name="batch-runner")

    async def close(self) -> None:
        tasks = [task for _, task in self._drives.values()]
        if self._main is not None:
            tasks.append(self._main)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._commits, return_exceptions=True)
        await self._upstream.close()

    def poke(self, batch_id: str | None = None, *, cancel: bool = False) -> None:
        """Look for work now; with `cancel`, stop sending `batch_id`'s requests if it is
        driven here (another instance notices the status within its next poll)."""
        if cancel and batch_id is not None and batch_id in self._drives:
            self._drives[batch_id][0].halt("cancel")
        self._wake.set()

    # --- scheduling -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            # Cleared before looking, so a poke made while looking is not lost.
            self._wake.clear()
            try:
                await self._schedule()
            except Exception:
                log.exception("looking for batches to run failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self._wake.wait()

    async def _schedule(self) -> None:
        """Take up batches to drive: those ending (finalizing, cancelling: no input to read,
        quick) whenever they come; those to validate or run only while fewer than
        `max_running` drives are under way here (each reads its input file), in the claim
        order (`rules.claim_order`: projects take turns). The others wait, holding nothing;
        a project over its share of the run slots while another's batch waits gives one
        back (`_make_room`)."""
        now = asyncio.get_running_loop().time()
        ending = await self._meta.active_batches(states.ENDING)
        queue = await self._meta.batches_to_claim(states.OPEN, now=wall())
        # Backoff entries of batches no longer waiting go (the dict must not grow forever).
        # (Batches driven here are active too: their lease keeps them out of the queue.)
        active = set(ending) | {b.id for b in queue} | set(self._drives)
        for batch_id in [b for b in self._backoff if b not in active]:
            del self._backoff[batch_id]
        for key in [k for k in self._sent_before if k[0] not in active]:
            del self._sent_before[key]
        waiting = [
            b
            for b in queue
            if b.id not in self._drives and self._backoff.get(b.id, (0, 0.0))[1] <= now
        ]
        for batch_id in ending:
            if batch_id not in self._drives and self._backoff.get(batch_id, (0, 0.0))[1] <= now:
                await self._claim(_Drive(batch_id))
        claimed = set()
        for batch in waiting:
            if len(self._drives) >= self._config.max_running:
                break
            if await self._claim(_Drive(batch.id, batch.project)):
                claimed.add(batch.id)
        self._make_room([b for b in waiting if b.id not in claimed])

    async def _claim(self, drive: _Drive) -> bool:
        """Drive the batch here if its lease can be taken."""
        if not await self._instance.take_lease(batch_lease(drive.batch_id), self._lease_seconds):
            return False
        task = asyncio.create_task(self._drive(drive), name=f"batch {drive.batch_id}")
        self._drives[drive.batch_id] = (drive, task)
        return True

    def _make_room(self, waiting: list[QueuedBatch]) -> None:
        """With every run slot in use and batches waiting: tell the newest drive of a project
        over its share to yield (one at a time), so that a waiting project gets its turn
        before that project's long batches are done (the yielding batch waits its turn)."""
        drives = [drive for drive, _ in self._drives.values()]
        if len(drives) < self._config.max_running or not waiting:
            return
        if any(drive.stop == "yield" for drive in drives):
            return
        running = collections.Counter(d.project for d in drives if d.project is not None)
        project = to_yield(running, {b.project for b in waiting}, self._config.max_running)
        candidates = [d for d in drives if d.project == project and d.sending and not d.stop]
        if candidates:
            drive = candidates[-1]
            log.info("batch %s yields its run slot: other projects' batches wait", drive.batch_id)
            drive.halt("yield")

    async def _drive(self, drive: _Drive) -> None:
        keeper = asyncio.create_task(self._keep_lease(drive, asyncio.current_task()))
        finished = False
        try:
            finished = await self._work(drive)
            self._backoff.pop(drive.batch_id, None)
        except asyncio.CancelledError:
            if drive.stop != "lost":
                raise
        except Exception:
            # Left for later (or another instance): nothing recorded is lost (see DRIVING).
            failures = self._backoff.get(drive.batch_id, (0, 0.0))[0] + 1
            wait = DRIVING.delay(failures - 1)
            self._backoff[drive.batch_id] = (failures, asyncio.get_running_loop().time() + wait)
            log.exception(
                "batch %s: driving it failed (%d in a row); retried in %g s",
                drive.batch_id,
                failures,
                wait,
            )
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            self._drives.pop(drive.batch_id, None)
            if finished:
                with contextlib.suppress(Exception):
                    # Final: its result payloads (in the output files now) and its lease go.
                    await self._meta.forget_batch(drive.batch_id, batch_lease(drive.batch_id))
            elif drive.stop != "lost":
                with contextlib.suppress(Exception):
                    # Free the lease (it ends now) so any instance can go on at once.
                    await self._instance.take_lease(batch_lease(drive.batch_id), 0)
            # A run slot is free: a queued batch may start now (once the lease is free, so
            # that the claim order counts this batch as waiting, not driven).
            self._wake.set()

    async def _keep_lease(self, drive: _Drive, driver: asyncio.Task[Any] | None) -> None:
        """Renew the lease every third of it; notice a cancel made on another instance and
        the end of the completion window. Losing the lease stops the drive at once."""
        interval = min(POLL_SECONDS, self._lease_seconds / 3)
        renewed = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(interval)
            try:
                now = asyncio.get_running_loop().time()
                if now - renewed >= self._lease_seconds / 3:
                    if not await self._instance.take_lease(
                        batch_lease(drive.batch_id), self._lease_seconds
                    ):
                        log.warning("batch %s: lease lost to another instance", drive.batch_id)
                        drive.halt("lost")
                        if driver is not None:
                            driver.cancel()
                        return
                    renewed = now
                batch = await self._meta.get_batch(drive.batch_id)
                if batch is None:
                    # Removed (POST /admin/reset): nothing more is sent. Not cancelled: a
                    # finalize under way ends by finding it gone and deleting its files.
                    log.info("batch %s: gone, its run stops", drive.batch_id)
                    drive.halt("gone")
                    return
                if drive.stop is None:
                    if batch.status in states.MOVES["cancelled"].sources:
                        drive.halt("cancel")
                    elif self._files.now() >= batch.expires_at and batch.status in states.OPEN:
                        drive.halt("expire")
            except Exception:
                log.exception("batch %s: renewing its lease failed", drive.batch_id)

    # --- the states -----------------------------------------------------------------------------

    async def _move(self, batch: BatchRecord, name: states.Move, **changes: object) -> bool:
        """Make a move of the state table (`states.MOVES`) now; False if the batch had
        moved on meanwhile."""
        return await states.move(self._meta, batch.id, name, now=self._files.now(), changes=changes)

    async def _work(self, drive: _Drive) -> bool:
        """Drive the batch as far as it goes here, a step of its status at a time; True once
        it is in a final status or gone (removed by a reset): nothing is left to do for it,
        anywhere."""
        steps = {
            "validating": self._validate,
            "in_progress": self._execute,
            "finalizing": self._end,
            "cancelling": self._end,
        }
        while True:
            batch = await self._meta.get_batch(drive.batch_id)
            if batch is None:
                return True
            if drive.stop == "yield":
                return False  # its turn is over: it waits, holding nothing
            if drive.stop == "cancel" and batch.status not in states.MOVES["cancelled"].sources:
                drive.halt(None)  # a poke for a batch that was not cancelled after all
            still_open = batch.status in states.OPEN
            if still_open and drive.stop is None and self._files.now() >= batch.expires_at:
                drive.halt("expire")
            if drive.stop == "expire" and still_open:
                await self._move(batch, "expire")
                continue
            step = steps.get(batch.status)
            if step is None:
                return batch.status in states.FINAL
            await step(drive, batch)

    async def _end(self, drive: _Drive, batch: BatchRecord) -> None:
        if batch.in_progress_at is None:
            # Stopped while validating: the rows so far are no requests of a batch.
            await self._meta.clear_batch_requests(batch.id)
        await self._finalize(batch)

    async def _validate(self, drive: _Drive, batch: BatchRecord) -> None:
        try:
            record = await self._files.get(batch.project, batch.input_file_id)
        except FileNotFound:
            # Never there, another project's, or deleted or expired since the batch was made:
            # the same failure (OpenAI's code and param; its words, with a project for its
            # organization), so that nothing tells another project's file from none.
            problem = batch_error(
                "invalid_request",
                f"Cannot find file {shortened(batch.input_file_id)}, or the project does not have "
                "access to it.",
                line=None,
                param="file_id",
            )
            await self._fail(batch, [problem])
            return
        if record.bytes > self._config.max_input_bytes:
            mib = self._config.max_input_bytes / 2**20
            await self._fail(
                batch,
                [
                    batch_error(
                        "file_too_large",
                        f"The input file is {record.bytes} bytes; a batch's input may be at "
                        f"most {mib:g} MB.",
                        line=None,
                        param="input_file_id",
                    )
                ],
            )
            return

        async def save(rows: Any) -> None:
            await self._meta.add_batch_requests(batch.id, rows)

        result = await validate_input(
            self._input(record),
            endpoint=batch.endpoint,
            max_requests=self._config.max_requests,
            save=save,
            knows_model=self._knows_model,
            stopped=lambda: drive.stop is not None,
        )
        if drive.stop is not None:
            return
        if result.errors:
            await self._meta.clear_batch_requests(batch.id)
            await self._fail(batch, result.errors)
            return
        await self._move(batch, "validated", total=result.total, model=result.model)

    async def _knows_model(self, model: str) -> bool:
        """Whether a batch may use `model`: one `[batches.models]` names, when it names any;
        else one the upstream serves (or any, when it cannot say)."""
        if self._config.models:
            return model in self._config.models
        return await self._upstream.knows_model(model)

    async def _fail(self, batch: BatchRecord, errors: list[dict[str, Any]]) -> None:
        log.info("batch %s failed validation: %s", batch.id, errors[0]["message"])
        await self._move(batch, "invalid", errors=errors_json(errors))

    async def _execute(self, drive: _Drive, batch: BatchRecord) -> None:
        """Send every pending request (in input order, `concurrency` at a time over all
        batches, at most `concurrency` of this batch under way, waiting to be retried
        included, and no more than IN_FLIGHT_BYTES of their lines), then move on to
        `finalizing`; return early when told to stop."""
        try:
            record = await self._files.get(batch.project, batch.input_file_id)
        except FileNotFound:
            # Deleted (or expired) under the batch: it ends `failed`, with what was done.
            error = batch_error(
                "input_file_deleted",
                f"The input file {batch.input_file_id} was deleted while the batch ran; the "
                "requests done are in the output and error files.",
                line=None,
                param="input_file_id",
            )
            await self._move(batch, "input_deleted", errors=errors_json([error]))
            return
        recorder = _Recorder(self._meta, batch.id, self._commits)
        inflight: set[asyncio.Task[None]] = set()
        failures: list[BaseException] = []
        sent = 0
        drive.sending = True
        try:
            async with contextlib.aclosing(self._pending_lines(batch, record)) as pending:
                async for line, raw in pending:
                    if not await self._room(drive, inflight):
                        break
                    size = len(raw)
                    if not await self._in_flight.take(size, drive.halted):
                        break
                    if not await self._take_slot(drive, batch.project):
                        self._in_flight.give(size)
                        break
                    hold = _SlotHold(self._slots, batch.project)
                    task = asyncio.create_task(
                        self._request(drive, batch, line, raw, recorder, hold)
                    )
                    task.add_done_callback(hold.done)
                    self._in_flight.give_when_done(task, size)
                    sent += 1
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                    task.add_done_callback(lambda t: _note_failure(t, failures))
                    if failures:
                        break
            # Wait for the requests in flight, unless told to stop: then they are dropped
            # (not recorded, so never in the output as done). A drive that yields lets
            # those being sent finish (the upstream is doing the work); those waiting to be
            # tried again stop by themselves (`_Halted`).
            while inflight and drive.stop in (None, "yield"):
                await asyncio.wait(set(inflight), timeout=0.2)
        finally:
            drive.sending = False
            for task in inflight:
                task.cancel()
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)
            # A cancelled request's result may still be on its way into the database: the
            # batch moves on (and its output is read) only once every commit has landed.
            await recorder.drain()
        if failures:
            raise failures[0]
        if drive.stop is not None:
            return
        left = await self._meta.pending_batch_requests(batch.id, after_line=0, limit=1)
        if left and not sent:
            # Never expected (the rows come from this file): fail loudly rather than loop.
            raise RuntimeError(f"pending request on line {left[0][0]} not found in the input")
        if not left:
            await self._move(batch, "sent")

    async def _room(self, drive: _Drive, inflight: set[asyncio.Task[None]]) -> bool:
        """Wait until fewer than `concurrency` of the batch's requests are under way (those
        waiting out a 429 hold no slot, but their bodies are in memory); False once the
        drive is told to stop."""
        while len(inflight) >= self._config.concurrency and drive.stop is None:
            halting = asyncio.ensure_future(drive.halted.wait())
            try:
                await asyncio.wait({*inflight, halting}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                halting.cancel()
        return drive.stop is None

    async def _take_slot(self, drive: _Drive, project: str) -> bool:
        """Wait for a concurrency slot for `project`; False (and no slot) once the drive is
        told to stop."""
        if drive.stop is not None:
            return False
        taking = asyncio.ensure_future(self._slots.acquire(project))
        halting = asyncio.ensure_future(drive.halted.wait())
        try:
            await asyncio.wait({taking, halting}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            # Cancelled while waiting: a slot taken meanwhile goes back.
            halting.cancel()
            if not taking.cancel() and not taking.cancelled():
                self._slots.release(project)
            raise
        halting.cancel()
        taking.cancel()  # no-op if the slot was taken already
        with contextlib.suppress(asyncio.CancelledError):
            await taking
        got = not taking.cancelled()
        if got and drive.stop is not None:
            self._slots.release(project)
            return False
        return got

    async def _pending_lines(
        self, batch: BatchRecord, record: FileRecord
    ) -> AsyncGenerator[tuple[tuple[int, str], bytes]]:
        """((line, custom_id), the line's bytes) of each pending request, reading the input
        file once from the start and the pending rows a page at a time."""
        page: list[tuple[int, str]] = []
        index = 0
        after = 0
        exhausted = False
        lines = numbered_lines(self._input(record), max_line_bytes=MAX_LINE_BYTES)
        async with contextlib.aclosing(lines):
            async for number, raw in lines:
                if index >= len(page):
                    if exhausted:
                        return
                    page = await self._meta.pending_batch_requests(
                        batch.id, after_line=after, limit=PAGE
                    )
                    index = 0
                    if not page:
                        return
                    exhausted = len(page) < PAGE
                    after = page[-1][0]
                while index < len(page) - 1 and page[index][0] < number:
                    index += 1
                if number != page[index][0]:
                    continue
                yield page[index], raw
                index += 1

    def _input(self, record: FileRecord) -> AsyncIterator[bytes]:
        """The input file's bytes: closing this closes the file at once (a pass that stops
        early must not leave it to the garbage collector)."""
        return self._files.open_stream(record)

    def _body(self, raw: bytes) -> dict[str, Any]:
        """The body to send of a (validated) request line, its model mapped."""
        body: dict[str, Any] = json.loads(raw)["body"]
        model = body.get("model")
        mapped = self._config.models.get(model) if isinstance(model, str) else None
        return {**body, "model": mapped} if mapped else body

    async def _request(
        self,
        drive: _Drive,
        batch: BatchRecord,
        request: tuple[int, str],
        raw: bytes,
        recorder: _Recorder,
        hold: _SlotHold,
    ) -> None:
        """Send the request of line `raw` (retrying), record its result; the slot (`hold`,
        taken by the caller, given back once this is done) is held until the result is
        durable, but not while the request waits to be tried again (a project waiting out its
        rate limit must not keep the others from the upstream). A request whose drive stops
        while it waits is left pending. Whatever
        fails in reading, sending it or writing its answer is its error line: only recording
        it may fail the drive (which, taken up again, sends the requests not recorded anew)."""
        line, custom_id = request
        sends = [self._sent_before.pop((batch.id, line), 0)]

        async def pause(seconds: float) -> None:
            hold.release()
            halting = asyncio.ensure_future(drive.halted.wait())
            try:
                await asyncio.wait({halting}, timeout=seconds)
            finally:
                halting.cancel()
            if not await self._take_slot(drive, batch.project):
                raise _Halted()
            hold.held = True

        try:
            try:
                body = self._body(raw)
                del raw  # not held while the request is in flight: its body is
                result = _result(line, custom_id, await self._send(batch, body, pause, sends))
            except _Halted:
                raise
            except Exception as error:
                log.exception("batch %s: handling the request of line %d failed", batch.id, line)
                message = (
                    f"Handling this request failed ({type(error).__name__}); it was not retried."
                )
                result = BatchResult(line, False, _error_line(custom_id, _BAD_ANSWER, message))
            await recorder.record(result)
        except _Halted:
            self._sent_before[(batch.id, line)] = sends[0]

    async def _send(
        self,
        batch: BatchRecord,
        body: dict[str, Any],
        pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
        sends: list[int] | None = None,
    ) -> Answer | Unreachable | BadAnswer:
        """The final answer for a request: the first that is not to be retried (429s and
        5xx are, unless the upstream says `x-should-retry: false`), or the last one (or the
        network error) once `max_retries` retries are spent, counting the `sends[0]` made
        before (each send counts there). An unusable answer (`BadAnswer`: too large, a
        redirect, a 2xx without a JSON object) is final at once."""
        sends = [0] if sends is None else sends
        sending = self._sending
        if sends[0] and sending.attempts is not None:
            sending = dataclasses.replace(sending, attempts=max(1, sending.attempts - sends[0]))

        async def attempt() -> Answer | Unreachable | BadAnswer:
            sends[0] += 1
            try:
                return await self._upstream.send(batch.endpoint, body, batch.project)
            except BadAnswer as error:
                log.warning("batch %s: unusable upstream answer: %s", batch.id, error)
                return error
            except Unreachable as error:
                log.warning("batch %s: upstream unreachable: %s", batch.id, error.detail)
                return error

        return await sending.run(attempt, again=_retryable, hint=_retry_after, sleep=pause)

    # --- finalizing -----------------------------------------------------------------------------

    async def _finalize(self, batch: BatchRecord) -> None:
        """Write the output and error files (ids reserved first, so a finalize repeated after
        a crash finds its files instead of making new ones), then the final status."""
        if batch.output_file_id is None or batch.error_file_id is None:
            reserved = {
                "output_file_id": self._files.new_file_id(),
                "error_file_id": self._files.new_file_id(),
            }
            await self._meta.update_batch(batch.id, reserved, statuses=[batch.status])
            fresh = await self._meta.get_batch(batch.id)
            if fresh is None or fresh.status != batch.status:
                return  # changed meanwhile: the next round sees it as it is now
            batch = fresh
        assert batch.output_file_id is not None and batch.error_file_id is not None
        ending = states.final_move(batch)
        unrun = _UNRUN_CODE.get(ending)
        try:
            output = await self._write_file(batch, batch.output_file_id, ok=True)
            errors = await self._write_file(batch, batch.error_file_id, ok=False, unrun=unrun)
        except QuotaExceeded as error:
            # Neither file is kept: one made before the refusal would be an orphan that
            # counts against the very quota that refused the other.
            await self._drop_files(batch, [batch.output_file_id, batch.error_file_id])
            problem = batch_error(
                "quota_exceeded",
                f"The batch's output cannot be stored: {error} Free some space (delete "
                "files) and run the batch again.",
                line=None,
            )
            log.warning("batch %s failed: its output is over the project's quota", batch.id)
            await self._move(
                batch,
                "output_refused",
                errors=errors_json([problem]),
                output_file_id=None,
                error_file_id=None,
            )
            return
        moved = await self._move(
            batch,
            ending,
            output_file_id=batch.output_file_id if output else None,
            error_file_id=batch.error_file_id if errors else None,
        )
        if not moved:
            if await self._meta.get_batch(batch.id) is None:
                # Removed meanwhile (a reset): its files must not outlive it.
                await self._drop_files(batch, [batch.output_file_id, batch.error_file_id])
            return
        log.info("batch %s %s", batch.id, states.MOVES[ending].to)

    async def _drop_files(self, batch: BatchRecord, file_ids: list[str | None]) -> None:
        """Delete the files made for a batch that will not name them (gone, or failed)."""
        for file_id in file_ids:
            if file_id is not None:
                with contextlib.suppress(FileNotFound):
                    await self._files.delete(batch.project, file_id)

    async def _write_file(
        self, batch: BatchRecord, file_id: str, *, ok: bool, unrun: str | None = None
    ) -> bool:
        """Stream the results (and with `unrun`, a line for each request never sent) into a
        new `batch_output` file with id `file_id`; False if there was nothing to write."""
        lines = self._output_lines(batch, ok=ok, unrun=unrun)
        first = await anext(lines, None)
        if first is None:
            return False
        writes = _in_writes(first, lines)
        del first  # held by `writes` until it is written, not here until the file is made
        # Made by the server, not uploaded: `max_file_bytes` does not apply (the project's
        # quotas do, when the file is created).
        content = await self._files.receive(writes, limit=None)
        kind = "output" if ok else "error"
        # Taken: made by an earlier attempt that died before the batch's final status.
        with contextlib.suppress(FileIdTaken):
            await self._files.create(
                batch.project,
                content,
                filename=f"{batch.id}_{kind}.jsonl",
                purpose="batch_output",
                expires_after=batch.output_expires_after or OUTPUT_EXPIRES_AFTER,
                file_id=file_id,
            )
        return True

    async def _output_lines(
        self, batch: BatchRecord, *, ok: bool, unrun: str | None
    ) -> AsyncIterator[bytes]:
        """The lines of an output or error file, without their ends of line."""
        after = 0
        while True:
            rows = await self._meta.batch_results(
                batch.id, ok=ok, after_line=after, limit=PAGE, max_bytes=PAGE_BYTES
            )
            for _, result in rows:
                yield result.encode()
            if not rows:
                break
            after = rows[-1][0]
        if unrun is None:
            return
        message = _UNRUN[unrun]
        after = 0
        while True:
            pending = await self._meta.pending_batch_requests(
                batch.id, after_line=after, limit=PAGE
            )
            for _, custom_id in pending:
                yield _error_line(custom_id, unrun, message).encode()
            if len(pending) < PAGE:
                break
            after = pending[-1][0]


# Why a request was never sent, in the error file of a batch that ended before it: by how the
# batch ends, and the message of that code.
_UNRUN_CODE: dict[states.Move, str] = {
    "cancelled": "batch_cancelled",
    "expired": "batch_expired",
    "failed": "batch_failed",
}
_UNRUN = {
    "batch_cancelled": "This request was not executed because the batch was cancelled.",
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_failed": "This request was not executed because the batch failed.",
}


async def _in_writes(line: bytes | None, lines: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Output lines, `line` then `lines` (each without its end of line), as writes of about
    WRITE_CHUNK bytes; a line that long goes as it is (copied into the buffer, it would be in
    memory twice, and the buffer would grow to its size and beyond)."""
    buffer = bytearray()
    while line is not None:
        if len(line) >= WRITE_CHUNK:
            if buffer:
                yield bytes(buffer)
                buffer.clear()
            yield line
        else:
            buffer += line
        line = None  # not held while the next one is read
        buffer += b"\n"
        if len(buffer) >= WRITE_CHUNK:
            yield bytes(buffer)
            buffer.clear()
        line = await anext(lines, None)
    if buffer:
        yield bytes(buffer)


class _Recorder:
    """Group commit of one batch's results: each `record` waits until its result is in the
    database, and the results that arrive while a commit runs go together in the next one."""

    def __init__(
        self, meta: BatchMetadata, batch_id: str, commits: set[asyncio.Task[None]]
    ) -> None:
        self._meta = meta
        self._batch_id = batch_id
        self._commits = commits
        self._queue: list[tuple[BatchResult, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def record(self, result: BatchResult) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((result, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
            self._commits.add(self._flusher)
            self._flusher.add_done_callback(self._commits.discard)
        await asyncio.shield(done)

    async def drain(self) -> None:
        """Wait until every result handed to `record` is committed (or refused)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        while self._queue:
            take, size = 0, 0
            while take < min(RECORD_BATCH, len(self._queue)) and (
                take == 0 or size + len(self._queue[take][0].result) <= RECORD_BYTES
            ):
                size += len(self._queue[take][0].result)
                take += 1
            group, self._queue = self._queue[:take], self._queue[take:]
            results = [r for r, _ in group]
            error: BaseException | None = None
            try:
                await RECORDING.run(
                    functools.partial(self._meta.record_batch_results, self._batch_id, results),
                    again_after=StorageBusy,
                )
            except Exception as failure:
                error = failure
            for _, done in group:
                if done.done():
                    continue
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)


def _retryable(outcome: Answer | Unreachable | BadAnswer) -> bool:
    """429s, 5xx (unless the upstream says `x-should-retry: false`) and network errors are
    tried again; an unusable answer (`BadAnswer`) never is."""
    return isinstance(outcome, Unreachable) or (isinstance(outcome, Answer) and outcome.retryable)


def _retry_after(outcome: Answer | Unreachable | BadAnswer) -> float | None:
    return outcome.retry_after if isinstance(outcome, Answer) else None


def _result(line: int, custom_id: str, outcome: Answer | Unreachable | BadAnswer) -> BatchResult:
    """The output line of a request, as OpenAI writes it: strict JSON (RFC 8259), always.
    Only a 2xx with a JSON object counts as completed."""
    if isinstance(outcome, (Unreachable, BadAnswer)):
        code = "upstream_unreachable" if isinstance(outcome, Unreachable) else _BAD_ANSWER
        return BatchResult(line, False, _error_line(custom_id, code, str(outcome)))
    output = {
        "id": _request_id(),
        "custom_id": custom_id,
        "response": {
            "status_code": outcome.status,
            "request_id": outcome.request_id or f"req_{secret_base62(24)}",
            "body": outcome.body,
        },
        "error": None,
    }
    try:
        text = json.dumps(output, allow_nan=False)
    except ValueError:
        # An answer holding NaN or Infinity is refused as it is read: what is left is a
        # number beyond a double, which Python reads as infinity (1e400).
        message = (
            f"The upstream answered {outcome.status}, but its body holds a number beyond a "
            "double's range, which JSON cannot carry."
        )
        return BatchResult(line, False, _error_line(custom_id, _BAD_ANSWER, message))
    ok = 200 <= outcome.status < 300 and isinstance(outcome.body, dict)
    return BatchResult(line, ok, text, usage_of(outcome.body) if ok else (0, 0, 0, 0))


_BAD_ANSWER = "upstream_bad_response"


def _error_line(custom_id: str, code: str, message: str) -> str:
    """The output line of a request that got no answer to record."""
    error = {"code": code, "message": message}
    output = {"id": _request_id(), "custom_id": custom_id, "response": None, "error": error}
    return json.dumps(output)


def _request_id() -> str:
    return f"batch_req_{secret_base62(24)}"


def _note_failure(task: asyncio.Task[None], failures: list[BaseException]) -> None:
    if not task.cancelled() and task.exception() is not None:
        failures.append(task.exception())  # type: ignore[arg-type]
