"""The ``varstore`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from varstore.api.limits import add_limit_flags, limits_from_flags
from varstore.client.cli import add_client_commands, run_client_command

__all__ = ["main"]

DEFAULT_DB = "./varstore.db"
DEFAULT_LISTEN = "127.0.0.1:50051"
#: The --db value for an in-memory log (as varstore.api.server.MEMORY; not imported here so
#: that client commands do not load the server).
MEMORY = ":memory:"


def _positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {number}")
    return number


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
    serve_cmd.add_argument(
        "--snapshot-every",
        type=_positive,
        default=1000,
        metavar="N",
        help="keep a snapshot of a session every N events, so a read of the past folds at "
        "most N events (default 1000)",
    )
    serve_cmd.add_argument(
        "--checkpoint-every",
        type=_positive,
        default=10_000,
        metavar="N",
        help="checkpoint every session's state every N events, so start-up folds only what "
        "came after (default 10000)",
    )
    serve_cmd.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    add_limit_flags(serve_cmd)  # --max-sessions N, --idle-connection-seconds N, ...
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

            return serve(
                args.db,
                args.listen,
                args.sync,
                snapshot_every=args.snapshot_every,
                checkpoint_every=args.checkpoint_every,
                limits=limits_from_flags(args),
            )
        except (OSError, ValueError) as problem:
            print(f"varstore: {problem}", file=sys.stderr)
            return 2
    return run_client_command(args)


if __name__ == "__main__":
    sys.exit(main())
