"""The ``varstore`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from varstore.client.cli import add_client_commands, run_client_command

__all__ = ["main"]

DEFAULT_DB = "./varstore.db"
DEFAULT_LISTEN = "127.0.0.1:50051"
#: The --db value for an in-memory log (as varstore.api.server.MEMORY; not imported here so
#: that client commands do not load the server).
MEMORY = ":memory:"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="varstore", description="Event-sourced typed session variables over gRPC."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the gRPC server")
    serve_cmd.add_argument(
        "--db",
        default=os.environ.get("VARSTORE_DB", DEFAULT_DB),
        help=f"SQLite file of the event log, or {MEMORY} (default {DEFAULT_DB}; env VARSTORE_DB)",
    )
    serve_cmd.add_argument(
        "--listen",
        default=os.environ.get("VARSTORE_LISTEN", DEFAULT_LISTEN),
        help=f"HOST:PORT to listen on; port 0 picks a free one "
        f"(default {DEFAULT_LISTEN}; env VARSTORE_LISTEN)",
    )
    serve_cmd.add_argument(
        "--sync",
        choices=("full", "normal"),
        default=os.environ.get("VARSTORE_SYNC", "full"),
        help="full (default): every acknowledged write is fsynced; normal: faster, but a "
        "power loss may lose the last writes (a crash of the server alone does not)",
    )
    serve_cmd.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``varstore`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        logging.basicConfig(
            level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        try:
            from varstore.api.server import serve  # only the server command needs it

            return serve(args.db, args.listen, args.sync)
        except (OSError, ValueError) as problem:
            print(f"varstore: {problem}", file=sys.stderr)
            return 2
    return run_client_command(args)


if __name__ == "__main__":
    sys.exit(main())
