"""The `filesd` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import ConfigError, load_config
from .db import SchemaTooNew
from .server import serve
from .store import DataDirLocked

COMMANDS = ("serve",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="filesd",
        description="A self-hosted server for the OpenAI-compatible Files API. "
        "With no command, runs `serve`.",
    )
    parser.add_argument("--version", action="version", version=f"filesd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve_parser = commands.add_parser("serve", help="run the server (the default)")
    serve_parser.add_argument("--config", type=Path, help="TOML configuration file")
    serve_parser.add_argument("--host", help="address to listen on (overrides server.host)")
    serve_parser.add_argument(
        "--port", type=_port, help="port to listen on, 0 for a free one (overrides server.port)"
    )
    serve_parser.add_argument(
        "--data-dir", type=Path, help="where files are kept (overrides storage.data_dir)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (
        args_list[0] not in COMMANDS and args_list[0] not in ("-h", "--help", "--version")
    ):
        args_list.insert(0, "serve")
    args = build_parser().parse_args(args_list)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config).with_overrides(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir.resolve() if args.data_dir else None,
        )
    except ConfigError as e:
        print(f"filesd: configuration error: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config))
    except (DataDirLocked, SchemaTooNew) as e:
        print(f"filesd: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"filesd: cannot serve: {e}", file=sys.stderr)
        return 1
    return 0


def entrypoint() -> None:
    sys.exit(main())


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {port}")
    return port
