"""The exit statuses of every `filesd` command: one table, shown by `filesd --help` and in the
README (a test checks the README's copy against `markdown()`)."""

from __future__ import annotations

import textwrap
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    CHECK_FAILED = 1
    USAGE = 2
    IN_USE = 3
    FAILED = 4


MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "done; `fsck` found nothing wrong; `migrate` copied and verified every file",
    ExitCode.CHECK_FAILED: "`fsck` found damage (also after `--repair`: it says what it "
    "repaired); `migrate` left a file out or its verification failed",
    ExitCode.USAGE: "usage or configuration error: an unknown command or option, a config file "
    "or setting that cannot be used (`server.port` taken, `storage.data_dir` unwritable, a "
    "database or bucket unreachable), a command these backends do not support, a `backup` "
    "destination refused, `keys revoke` of no active key",
    ExitCode.IN_USE: "the data directory is in use by a running filesd: a second `serve`, "
    "`fsck`, `gc` and `migrate` from it refuse beside it (`backup` and `keys` do not)",
    ExitCode.FAILED: "the command could not finish: the database was written by a newer "
    "filesd, the source's data cannot be migrated as it is, or an I/O error",
}


def epilog() -> str:
    """The table as `filesd --help` shows it, one status a line."""
    lines = (
        textwrap.fill(MEANINGS[c], 79, initial_indent=f"  {int(c)}  ", subsequent_indent=" " * 5)
        for c in ExitCode
    )
    return "exit status:\n" + "\n".join(lines)


def markdown() -> str:
    """The table as the README shows it."""
    rows = [f"| {int(c)} | {MEANINGS[c]} |" for c in ExitCode]
    return "\n".join(["| exit status | means |", "|---|---|", *rows])
