"""How an instance shares what it has between projects: its concurrency slots (upstream
requests in flight) and its run slots (batches driven at once, `max_running`).

Which batch is claimed next, across instances, is the metadata store's rule
(`storage.rules.claim_order`); these are the two decisions only this process can make, over
its own state.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from ..slots import FairSlots

__all__ = ["FairSlots", "run_share", "to_yield"]


def run_share(slots: int, projects: int) -> int:
    """Run slots each project may keep while others wait: an even share of `slots` among
    `projects`, at least one (fewer slots than projects: they take turns batch by batch)."""
    return max(1, slots // max(1, projects))


def to_yield(running: Mapping[str, int], waiting: Collection[str], slots: int) -> str | None:
    """The project that should give back one of this instance's `slots` run slots, all of
    them in use: `running` is how many each project holds, `waiting` the projects with a
    batch waiting to start. One that holds more than its share gives way while a waiting
    project holds less than its share (the one holding most gives first); None if no one
    need."""
    share = run_share(slots, len(set(running) | set(waiting)))
    if not any(running.get(project, 0) < share for project in waiting):
        return None
    over = [p for p, held in running.items() if held > share]
    return max(over, key=lambda p: (running[p], p)) if over else None
