"""The ``varstore`` command line."""

from __future__ import annotations

import argparse
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


def _seconds(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not (0.01 <= number <= 3600):
        raise argparse.ArgumentTypeError(f"must be from 0.01 to 3600 seconds, not {text}")
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
    serve_cmd.add_argument(
        "--poll-interval",
        type=_seconds,
        default=os.environ.get("VARSTORE_POLL_INTERVAL", "1.0"),
        metavar="SECONDS",
        help="on a log several servers share (PostgreSQL): read it for other servers' "
        "writes at least this often when no notice of them comes (default 1.0; env "
        "VARSTORE_POLL_INTERVAL)",
    )
    serve_cmd.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    _add_security_flags(serve_cmd)
    _add_operations_flags(serve_cmd)
    add_limit_flags(serve_cmd)  # --max-sessions N, --idle-connection-seconds N, ...
    add_client_commands(commands)
    return parser


def _add_security_flags(serve_cmd: argparse.ArgumentParser) -> None:
    env = os.environ.get
    serve_cmd.add_argument(
        "--tls-cert",
        metavar="PEM",
        default=env("VARSTORE_TLS_CERT"),
        help="the server's certificate chain: serve TLS (with --tls-key; env VARSTORE_TLS_CERT)",
    )
    serve_cmd.add_argument(
        "--tls-key",
        metavar="PEM",
        default=env("VARSTORE_TLS_KEY"),
        help="the private key of --tls-cert (env VARSTORE_TLS_KEY)",
    )
    serve_cmd.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        default=env("VARSTORE_TLS_CLIENT_CA"),
        help="mTLS: require a client certificate issued by this CA (env VARSTORE_TLS_CLIENT_CA)",
    )
    serve_cmd.add_argument(
        "--admin-token-file",
        metavar="FILE",
        default=env("VARSTORE_ADMIN_TOKEN_FILE"),
        help="require bearer tokens; FILE holds the admin token (or set VARSTORE_ADMIN_TOKEN)",
    )
    serve_cmd.add_argument(
        "--token-secret-file",
        metavar="FILE",
        default=env("VARSTORE_TOKEN_SECRET_FILE"),
        help="the secret session tokens are derived under; servers sharing it accept each "
        "other's tokens (or set VARSTORE_TOKEN_SECRET; default: derived from the admin token)",
    )
    serve_cmd.add_argument(
        "--insecure",
        action="store_true",
        default=env("VARSTORE_INSECURE", "") == "1",
        help="allow listening beyond loopback without TLS (env VARSTORE_INSECURE=1)",
    )


def _add_operations_flags(serve_cmd: argparse.ArgumentParser) -> None:
    serve_cmd.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        default=os.environ.get("VARSTORE_METRICS"),
        help="serve Prometheus metrics at http://HOST:PORT/metrics (env VARSTORE_METRICS)",
    )
    serve_cmd.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("VARSTORE_LOG_FORMAT", "text"),
        help="text (default) or json: one JSON object a line, and one line per request "
        "(env VARSTORE_LOG_FORMAT)",
    )
    serve_cmd.add_argument(
        "--http",
        metavar="HOST:PORT",
        default=os.environ.get("VARSTORE_HTTP"),
        help="serve the read-only audit page at http://HOST:PORT/ (off by default; loopback "
        "only unless --insecure; port 0 picks a free one; env VARSTORE_HTTP)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``varstore`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return run_client_command(args)


def _serve(args: argparse.Namespace) -> int:
    """Run the server; a refusal to start is one line on stderr and exit code 2."""
    # Only the server command loads the server.
    from varstore.api.config import ServerConfig
    from varstore.api.logs import configure_logging
    from varstore.api.server import serve
    from varstore.eventstore import RecorderError
    from varstore.projections import ProjectionError

    try:
        config = ServerConfig.from_args(args, limits=limits_from_flags(args))
        configure_logging(config.log_format, config.log_level)
        return serve(config)
    except (OSError, ValueError, RecorderError, ProjectionError) as problem:
        print(f"varstore: cannot start: {_one_line(problem)}", file=sys.stderr)
        return 2


def _one_line(problem: BaseException) -> str:
    text = " ".join(str(problem).split())
    if isinstance(problem, OSError) and problem.filename and problem.filename not in text:
        text = f"{text}: {problem.filename}"
    return text or type(problem).__name__


if __name__ == "__main__":
    sys.exit(main())
