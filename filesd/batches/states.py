"""A batch's states and the moves between them, as one table.

Every change of a batch's status is one of the moves of `MOVES`: from the statuses it may
start in, to the status it ends in, with the timestamps it sets (at the moment of the move).
`move` makes it in the metadata store only if the batch is still in one of those statuses
(checked in the same statement), so two instances, or a runner and a cancel, never both move
a batch. What the runner does in each status is its own table (`BatchRunner._STEPS`).

    validating --validated--> in_progress --sent--> finalizing --completed--> completed
        |  \\--invalid--> failed        |   \\--input_deleted--^    \\--failed--> failed
        |                               |                          \\--expired--> expired
        +-----expire (window over)------+--> finalizing
        +-----cancel--------------------+--> cancelling --cancelled--> cancelled
    finalizing, cancelling --output_refused (over quota)--> failed
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ..models import BatchRecord
from ..objects import BatchStatus
from ..storage.base import BatchMetadata

Move = Literal[
    "validated",
    "invalid",
    "cancel",
    "expire",
    "sent",
    "input_deleted",
    "completed",
    "failed",
    "expired",
    "cancelled",
    "output_refused",
]


@dataclass(frozen=True)
class Transition:
    sources: tuple[BatchStatus, ...]
    to: BatchStatus
    stamps: tuple[str, ...] = ()


MOVES: dict[Move, Transition] = {
    "validated": Transition(("validating",), "in_progress", ("in_progress_at",)),
    "invalid": Transition(("validating",), "failed", ("failed_at",)),
    "cancel": Transition(("validating", "in_progress"), "cancelling", ("cancelling_at",)),
    "expire": Transition(
        ("validating", "in_progress"), "finalizing", ("expired_at", "finalizing_at")
    ),
    "sent": Transition(("in_progress",), "finalizing", ("finalizing_at",)),
    "input_deleted": Transition(("in_progress",), "finalizing", ("finalizing_at",)),
    "completed": Transition(("finalizing",), "completed", ("completed_at",)),
    "failed": Transition(("finalizing",), "failed", ("failed_at",)),
    "expired": Transition(("finalizing",), "expired"),
    "cancelled": Transition(("cancelling",), "cancelled", ("cancelled_at",)),
    "output_refused": Transition(("finalizing", "cancelling"), "failed", ("failed_at",)),
}

# Statuses no move leaves: the batch's output files are final (and shown).
FINAL: tuple[BatchStatus, ...] = tuple(
    sorted({t.to for t in MOVES.values()} - {s for t in MOVES.values() for s in t.sources})
)
# Statuses someone still has to work on (the runner picks these up): all others.
ACTIVE: tuple[BatchStatus, ...] = tuple(dict.fromkeys(s for t in MOVES.values() for s in t.sources))
# Where every batch starts: its input is read and checked.
INITIAL: BatchStatus = "validating"
CANCELLABLE = MOVES["cancel"].sources
# Statuses in which the batch is still taking requests (its completion window applies).
OPEN = MOVES["expire"].sources
# Statuses that end by writing the output files.
ENDING = MOVES["output_refused"].sources


def final_move(batch: BatchRecord) -> Move:
    """How an ending batch ends once its output files are written."""
    if batch.status in MOVES["cancelled"].sources:
        return "cancelled"
    if batch.expired_at is not None:
        return "expired"
    if batch.errors is not None:
        return "failed"
    return "completed"


async def move(
    meta: BatchMetadata,
    batch_id: str,
    name: Move,
    *,
    now: int,
    changes: Mapping[str, object] | None = None,
) -> bool:
    """Make the move `name` (and the other `changes` with it) if the batch is in one of its
    sources; False if it was not (nothing changed)."""
    transition = MOVES[name]
    stamped: dict[str, object] = {"status": transition.to}
    stamped.update(dict.fromkeys(transition.stamps, now))
    stamped.update(changes or {})
    return await meta.update_batch(batch_id, stamped, statuses=transition.sources)
