"""The Batch API's operations for the HTTP handlers: create, retrieve, list, cancel.

Creating a batch only records it (`validating`) and pokes the runner; everything after that
happens in the background (`runner.py`). A project sees only its own batches; another
project's batch is answered exactly like a missing one.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import BatchesConfig
from ..models import BatchRecord
from ..services.core import Services
from ..services.errors import (
    BatchesDisabled,
    BatchNotCancellable,
    BatchNotFound,
    FileNotFound,
    InputFileWrongPurpose,
)
from ..services.files import FileService
from ..storage.base import BatchMetadata
from . import states
from .echo import EchoUpstream
from .objects import WINDOW_SECONDS
from .runner import BatchRunner
from .upstream import HttpUpstream, Upstream, api_key_from

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPage:
    batches: list[BatchRecord]
    has_more: bool


class BatchService:
    """The batches of every project. `runner` is None when no upstream is configured: then
    creating a batch raises `BatchesDisabled` (the others still answer)."""

    def __init__(self, files: FileService, meta: BatchMetadata, runner: BatchRunner | None) -> None:
        self._files = files
        self._meta = meta
        self._runner = runner

    @property
    def enabled(self) -> bool:
        """Whether batches can be created (an upstream is configured)."""
        return self._runner is not None

    async def create(
        self,
        project: str,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: Mapping[str, str] | None,
        output_expires_after: int | None,
    ) -> BatchRecord:
        """Record a new batch (`validating`) and wake the runner. An input file the project
        does not have (none of that id, or another project's) is no refusal here: as OpenAI
        does, the batch is made and then fails its validation (`errors.data`, param
        `file_id`), so another project's file is answered exactly like a missing one. One the
        project has, of a purpose other than `batch`, is refused at once."""
        if self._runner is None:
            raise BatchesDisabled()
        with contextlib.suppress(FileNotFound):
            source = await self._files.get(project, input_file_id)
            if source.purpose != "batch":
                raise InputFileWrongPurpose(input_file_id, source.purpose)
        now = self._files.now()
        batch = BatchRecord(
            id=self._files.ids.prefixed("batch_"),
            project=project,
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=completion_window,
            status=states.INITIAL,
            created_at=now,
            expires_at=now + WINDOW_SECONDS[completion_window],
            metadata=json.dumps(dict(metadata)) if metadata else None,
            output_expires_after=output_expires_after,
        )
        await self._meta.insert_batch(batch)
        self._runner.poke(batch.id)
        return batch

    async def get(self, project: str, batch_id: str) -> BatchRecord:
        batch = await self._meta.get_batch(batch_id, project)
        if batch is None:
            raise BatchNotFound(batch_id)
        return batch

    async def list(self, project: str, *, after: str | None, limit: int) -> BatchPage:
        rows = await self._meta.list_batches(project, after=after, limit=limit + 1)
        if rows is None:
            raise BatchNotFound(after or "", param="after")
        return BatchPage(rows[:limit], len(rows) > limit)

    async def cancel(self, project: str, batch_id: str) -> BatchRecord:
        """Move a batch that is validating or running to `cancelling` (the runner then stops
        sending and finalizes what is done); a batch cancelling or cancelled already is
        answered as it is."""
        batch = await self.get(project, batch_id)
        if batch.status in states.CANCELLABLE:
            moved = await states.move(self._meta, batch_id, "cancel", now=self._files.now())
            batch = await self.get(project, batch_id)
            if moved and self._runner is not None:
                self._runner.poke(batch_id, cancel=True)
        if batch.status not in (states.MOVES["cancel"].to, states.MOVES["cancelled"].to):
            raise BatchNotCancellable(batch_id, batch.status)
        return batch


def make_upstream(config: BatchesConfig, take_fault: EchoUpstream.TakeFault) -> Upstream:
    """The upstream `config` names ("echo" or a URL; not "")."""
    if config.upstream == "echo":
        return EchoUpstream(take_fault)
    api_key = api_key_from(config.api_key, config.api_key_env)
    if config.api_key_env and not api_key:
        log.warning(
            "batches.api_key_env names %s, which is not set: requests go upstream without a key",
            config.api_key_env,
        )
    return HttpUpstream(
        config.upstream,
        api_key,
        timeout=config.request_timeout,
        connections=config.concurrency,
        read_timeout=config.read_timeout,
        max_answer_bytes=config.max_response_bytes,
    )


def open_batches(
    services: Services, config: BatchesConfig, take_fault: EchoUpstream.TakeFault
) -> tuple[BatchService, BatchRunner | None]:
    """The batch service over `services`, and its runner (started) when an upstream is set."""
    meta = services.backends.meta
    runner = None
    if config.upstream:
        upstream = make_upstream(config, take_fault)
        runner = BatchRunner(services.files, services.instance, meta, config, upstream)
        runner.start()
    return BatchService(services.files, meta, runner), runner
