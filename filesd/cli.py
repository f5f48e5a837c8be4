"""The `filesd` command line."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .api.server import serve
from .config import (
    CONFIG_ENV,
    CONFIG_IN_CWD,
    LOG_LEVELS,
    Config,
    ConfigError,
    find_config,
    load_config,
)
from .exit_codes import ExitCode, epilog
from .services import operator
from .services.backup import BackupRefused, backup
from .services.errors import (
    DatabaseMissing,
    DataDirLocked,
    MigrationError,
    NotOnTheseBackends,
    SchemaTooNew,
    StorageUnavailable,
)
from .services.settings import StoreSettings

COMMANDS = ("serve", "fsck", "gc", "keys", "backup", "migrate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="filesd",
        description="A self-hosted server for the OpenAI-compatible Files API. "
        "With no command, runs `serve`.",
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"filesd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        help=f"TOML configuration file (default: ${CONFIG_ENV}, else ./{CONFIG_IN_CWD} if there)",
    )
    common.add_argument(
        "--data-dir", type=Path, help="where files are kept (overrides storage.data_dir)"
    )
    common.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="debug, info, warning or error (overrides log.level)",
    )

    new_database = argparse.ArgumentParser(add_help=False)
    new_database.add_argument(
        "--new-database",
        action="store_true",
        help="start even though the data directory holds blobs but no database "
        "(a new, empty database is made and the blobs are deleted as unreferenced)",
    )

    def command(
        name: str, help_text: str, *extra: argparse.ArgumentParser
    ) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help_text, description=help_text, parents=[common, *extra]
        )

    serve_parser = command("serve", "run the server (the default)", new_database)
    serve_parser.add_argument("--host", help="address to listen on (overrides server.host)")
    serve_parser.add_argument(
        "--port", type=_port, help="port to listen on, 0 for a free one (overrides server.port)"
    )
    fsck_parser = command(
        "fsck",
        f"check every blob and file; exit status {ExitCode.CHECK_FAILED:d} if anything is wrong "
        "(server stopped)",
        new_database,
    )
    fsck_parser.add_argument(
        "--repair",
        action="store_true",
        help="quarantine corrupt blobs, mark damaged files, remove orphans and stray files",
    )
    command(
        "gc", "delete expired files, purge old deleted rows, reclaim unused blobs", new_database
    )
    backup_parser = command("backup", "copy the data directory consistently, also while serving")
    backup_parser.add_argument("dest", type=Path, help="an empty or new directory")
    migrate_parser = command(
        "migrate",
        "copy the files and keys of this configuration's backends (typically the embedded data "
        "dir, server stopped) into those of another (typically PostgreSQL and S3), ids and "
        "times kept, and verify the copy; can be run again after an interruption",
    )
    migrate_parser.add_argument(
        "--to", required=True, type=Path, metavar="CONFIG", help="the destination's config file"
    )
    keys_help = "API keys kept in the database (beside [[auth.keys]])"
    keys_parser = commands.add_parser("keys", help=keys_help, description=keys_help)
    keys = keys_parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    def keys_action(name: str, help_text: str) -> argparse.ArgumentParser:
        return keys.add_parser(name, help=help_text, description=help_text, parents=[common])

    create = keys_action(
        "create",
        "make a key for a project; the key is printed once, only its SHA-256 is kept",
    )
    create.add_argument(
        "--project",
        required=True,
        type=_project,
        help="the project whose files the key reaches (a new name makes a new project)",
    )
    keys_action(
        "list",
        "list the keys: those made here (id, project, last characters, dates, state) and "
        "those of the config file's [[auth.keys]] (project and the start of their SHA-256)",
    )
    revoke = keys_action(
        "revoke", "revoke a key made with `keys create` (a running server stops taking it in ~2 s)"
    )
    revoke.add_argument("key_id", help="the key's id, as `keys create` and `keys list` print it")
    return parser


def _unknown_command(argv: Sequence[str]) -> str | None:
    """Why `argv` names no command, with the closest one; None if it names one or starts with
    an option (`filesd --port 8000` is `filesd serve --port 8000`)."""
    if not argv or argv[0].startswith("-") or argv[0] in COMMANDS:
        return None
    close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (choose from {', '.join(COMMANDS)})"
    return f"unknown command {argv[0]!r}{hint}"


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if unknown := _unknown_command(args_list):
        parser.print_usage(sys.stderr)
        print(f"filesd: error: {unknown}", file=sys.stderr)
        return ExitCode.USAGE
    if not args_list or (
        args_list[0] not in COMMANDS and args_list[0] not in ("-h", "--help", "--version")
    ):
        args_list.insert(0, "serve")
    args = parser.parse_args(args_list)
    try:
        config_path, found_by = find_config(args.config, os.environ, Path.cwd())
        config = load_config(config_path).with_overrides(
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
            data_dir=args.data_dir.resolve() if args.data_dir else None,
            log_level=args.log_level,
        )
    except ConfigError as e:
        print(f"filesd: configuration error: {e}", file=sys.stderr)
        return ExitCode.USAGE
    _configure_logging(config.log.level)
    _say_which_config(config_path, found_by)
    try:
        return _run(args, config)
    except ConfigError as e:
        print(f"filesd: configuration error: {e}", file=sys.stderr)
        return ExitCode.USAGE
    except (DatabaseMissing, StorageUnavailable, NotOnTheseBackends, BackupRefused) as e:
        print(f"filesd: {e}", file=sys.stderr)
        return ExitCode.USAGE
    except DataDirLocked as e:
        print(f"filesd: {e}", file=sys.stderr)
        return ExitCode.IN_USE
    except (SchemaTooNew, MigrationError, OSError) as e:
        print(f"filesd: {e}", file=sys.stderr)
        return ExitCode.FAILED


def _run(args: argparse.Namespace, config: Config) -> int:
    settings = StoreSettings.from_config(config)
    if args.command == "serve":
        asyncio.run(serve(config, new_database=args.new_database))
        return ExitCode.OK
    if args.command == "fsck":
        report = asyncio.run(
            operator.fsck(settings, repair=args.repair, new_database=args.new_database)
        )
        print("\n".join(report.lines()))
        if args.repair and not report.ok:
            print("repaired")
        return ExitCode.OK if report.ok else ExitCode.CHECK_FAILED
    if args.command == "gc":
        result = asyncio.run(operator.gc(settings, new_database=args.new_database))
        print(
            f"expired files deleted: {result.expired_files}, deleted rows purged: "
            f"{result.purged_rows}, unused blobs reclaimed: {result.orphaned_blobs}"
        )
        return ExitCode.OK
    if args.command == "backup":
        copied = backup(settings, args.dest)
        print(
            f"backed up {copied.files} file(s) in {copied.blobs} blob(s) to {args.dest}"
            + (
                f"; {copied.deleted_meanwhile} deleted meanwhile"
                if copied.deleted_meanwhile
                else ""
            )
        )
        return ExitCode.OK
    if args.command == "migrate":
        dest_config = load_config(args.to)
        dest = StoreSettings.from_config(dest_config)
        if (dest.database, dest.blobs, dest.data_dir) == (
            settings.database,
            settings.blobs,
            settings.data_dir,
        ):
            raise ConfigError(f"{args.to}: names the same backends as the source")
        migrated = asyncio.run(operator.migrate_between(settings, dest))
        print(
            f"copied {migrated.copied} file(s) ({migrated.present} there already) and "
            f"{migrated.keys} key(s)"
        )
        for line in migrated.skipped:
            print(f"not copied: {line}")
        for line in migrated.problems:
            print(f"verification failed: {line}")
        if not migrated.problems:
            print("verified: every file is in the destination, as it was, with its bytes")
        _print_projects(migrated.projects, dest, dest_config, args.to)
        return ExitCode.CHECK_FAILED if migrated.problems or migrated.skipped else ExitCode.OK
    if args.keys_command == "create":
        key_id, key = asyncio.run(operator.create_key(settings, args.project))
        print(f"{key_id} project={args.project}")
        print(key)
        print("(the key is shown this once; filesd keeps only its SHA-256)", file=sys.stderr)
        return ExitCode.OK
    if args.keys_command == "list":
        for made in asyncio.run(operator.list_keys(settings)):
            state = f"revoked {_when(made.revoked_at)}" if made.revoked_at else "active"
            print(
                f"{made.id}  {made.project}  ...{made.hint}  created {_when(made.created_at)}  "
                f"{state}"
            )
        for configured in config.auth.keys:
            # The digest's start tells the entries apart; no part of a secret is shown.
            print(
                f"(config)  {configured.project}  sha256:{configured.key_sha256[:8]}  "
                "from the config file ([[auth.keys]])"
            )
        return ExitCode.OK
    if not asyncio.run(operator.revoke_key(settings, args.key_id)):
        print(f"filesd: no active key {args.key_id!r}", file=sys.stderr)
        return ExitCode.USAGE
    print(f"revoked {args.key_id}")
    return ExitCode.OK


def _print_projects(
    projects: dict[str, int], dest: StoreSettings, dest_config: Config, dest_path: Path
) -> None:
    """The projects now in the destination, and for each without an active key there the
    command that makes one: open-mode projects (`open-<hash>`) are reached by no key once the
    destination's server has keys, and their old tokens then get a 401."""
    keyed = {k.project for k in dest_config.auth.keys} | {
        k.project for k in asyncio.run(operator.list_keys(dest)) if not k.revoked_at
    }
    for project, count in sorted(projects.items()):
        reach = (
            "has a key there"
            if project in keyed
            else f"make a key for it: filesd keys create --project {project} --config {dest_path}"
        )
        print(f"project {project}: {count} file(s); {reach}")


def _say_which_config(path: Path | None, found_by: str) -> None:
    """One line on stderr (stdout is each command's output): the file read, or none."""
    if path is None:
        print(
            f"filesd: no configuration file (no --config, {CONFIG_ENV} or ./{CONFIG_IN_CWD}): "
            "defaults",
            file=sys.stderr,
        )
    else:
        print(f"filesd: configuration from {path.resolve()} ({found_by})", file=sys.stderr)


def _when(timestamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp)) + "Z"


class _LogFormatter(logging.Formatter):
    """`%(asctime)s` as logging's default, its seconds formatted once per second."""

    _second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if self._second[0] != second:
            self._second = (second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second)))
        return f"{self._second[1]},{int(record.msecs):03d}"


def _configure_logging(level: str) -> None:
    """Log lines to stderr: `time LEVEL logger: message`."""
    handler = logging.StreamHandler()
    handler.setFormatter(_LogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # "Found credentials in ..." at INFO on every command that opens S3: noise, not news.
    for noisy in ("botocore.credentials", "aiobotocore.credentials"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _lean_log_records() -> None:
    """The logging HOWTO's optimisations, for the filesd process only (they are
    process-wide, so not in `main`, which tests and embedders call in their own process): the
    log format uses no caller, thread or process fields, and finding them (a walk up the stack
    for the caller) was ~3 µs of each access-log line, a line per request."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def entrypoint() -> None:
    _lean_log_records()
    sys.exit(main())


def _project(value: str) -> str:
    # The message of the config file's check of [[auth.keys]] project.
    if not value:
        raise argparse.ArgumentTypeError("required, a non-empty string")
    return value


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {port}")
    return port
