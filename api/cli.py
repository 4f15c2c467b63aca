"""The ``varstore`` command line: ``varstore serve`` and the client commands.

Built on Click. ``main(argv) -> int`` is the console script: a usage error is one line
``varstore: ...`` and exit code 2, a failed command one line and exit code 1 (never a
traceback), and a closed stdout (``varstore log s | head``) a quiet exit 0. Shell
completion: ``eval "$(_VARSTORE_COMPLETE=bash_source varstore)"`` (zsh_source, fish_source).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import click

from varstore.api.limits import limit_flags, limits_from_flags
from varstore.client.cli import add_client_commands, client_options
from varstore.client.cli.output import quiet_stdout

__all__ = ["main", "varstore"]

DEFAULT_DB: Final = "./varstore.db"
DEFAULT_LISTEN: Final = "127.0.0.1:50051"
#: The --db value for an in-memory log (as varstore.api.server.MEMORY; not imported here so
#: that client commands do not load the server).
MEMORY: Final = ":memory:"
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

F = TypeVar("F", bound=Callable[..., Any])


class _Seconds(click.ParamType[float]):
    """A number of seconds from 0.01 to 3600."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            return value
        try:
            number = float(value)
        except ValueError:
            self.fail(f"must be a number of seconds, not {value!r}", param, ctx)
        if not (0.01 <= number <= 3600):
            self.fail(f"must be from 0.01 to 3600 seconds, not {value}", param, ctx)
        return number


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


@click.group(
    "varstore",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="varstore", prog_name="varstore", message="%(prog)s %(version)s")
@client_options()
def varstore() -> None:
    """Event-sourced typed session variables over gRPC.

    The client options (--server, --json, the TLS and token options, --timeout) go before
    or after the command. Shell completion: eval "$(_VARSTORE_COMPLETE=bash_source varstore)".
    """


def _serve_options(function: F) -> F:
    """``serve``'s flags, each with its environment variable and default as before."""
    options = [
        click.option(
            "--db",
            default=lambda: _env("VARSTORE_DB", DEFAULT_DB),
            metavar="PATH|URL",
            help=f"SQLite file of the event log, a postgresql:// URL, or {MEMORY} "
            f"(default {DEFAULT_DB}; env VARSTORE_DB)",
        ),
        click.option(
            "--listen",
            default=lambda: _env("VARSTORE_LISTEN", DEFAULT_LISTEN),
            metavar="HOST:PORT",
            help="address to listen on; port 0 picks a free one "
            f"(default {DEFAULT_LISTEN}; env VARSTORE_LISTEN)",
        ),
        click.option(
            "--sync",
            type=click.Choice(["full", "normal"]),
            default=lambda: _env("VARSTORE_SYNC", "full"),
            help="full (default): every acknowledged write is fsynced; normal: faster, but "
            "a power loss may lose the last writes (a crash of the server alone does not) "
            "(env VARSTORE_SYNC)",
        ),
        click.option(
            "--snapshot-every",
            type=click.IntRange(min=1),
            default=1000,
            show_default=True,
            metavar="N",
            help="keep a snapshot of a session every N events, so a read of the past folds "
            "at most N events",
        ),
        click.option(
            "--checkpoint-every",
            type=click.IntRange(min=1),
            default=10_000,
            show_default=True,
            metavar="N",
            help="checkpoint every session's state every N events, so start-up folds only "
            "what came after",
        ),
        click.option(
            "--poll-interval",
            type=_Seconds(),
            default=lambda: _env("VARSTORE_POLL_INTERVAL", "1.0"),
            metavar="SECONDS",
            help="on a log several servers share (PostgreSQL): read it for other servers' "
            "writes at least this often when no notice of them comes "
            "(default 1.0; env VARSTORE_POLL_INTERVAL)",
        ),
        click.option(
            "--log-level",
            type=click.Choice(LOG_LEVELS, case_sensitive=False),
            default="INFO",
            metavar="LEVEL",
            help="logging level: DEBUG, INFO (default), WARNING, ERROR or CRITICAL, any case",
        ),
        click.option(
            "--log-format",
            type=click.Choice(["text", "json"]),
            default=lambda: _env("VARSTORE_LOG_FORMAT", "text"),
            help="text (default) or json: one JSON object a line, and one line per request "
            "(env VARSTORE_LOG_FORMAT)",
        ),
        click.option(
            "--tls-cert",
            metavar="PEM",
            default=lambda: _env("VARSTORE_TLS_CERT"),
            help="the server's certificate chain: serve TLS (with --tls-key; env "
            "VARSTORE_TLS_CERT)",
        ),
        click.option(
            "--tls-key",
            metavar="PEM",
            default=lambda: _env("VARSTORE_TLS_KEY"),
            help="the private key of --tls-cert (env VARSTORE_TLS_KEY)",
        ),
        click.option(
            "--tls-client-ca",
            metavar="PEM",
            default=lambda: _env("VARSTORE_TLS_CLIENT_CA"),
            help="mTLS: require a client certificate issued by this CA (env "
            "VARSTORE_TLS_CLIENT_CA)",
        ),
        click.option(
            "--admin-token-file",
            metavar="FILE",
            default=lambda: _env("VARSTORE_ADMIN_TOKEN_FILE"),
            help="require bearer tokens; FILE holds the admin token (or set VARSTORE_ADMIN_TOKEN)",
        ),
        click.option(
            "--token-secret-file",
            metavar="FILE",
            default=lambda: _env("VARSTORE_TOKEN_SECRET_FILE"),
            help="the secret session tokens are derived under; servers sharing it accept "
            "each other's tokens (or set VARSTORE_TOKEN_SECRET; default: derived from the "
            "admin token)",
        ),
        click.option(
            "--insecure",
            is_flag=True,
            default=lambda: _env("VARSTORE_INSECURE", "") == "1",
            help="allow listening beyond loopback without TLS (env VARSTORE_INSECURE=1)",
        ),
        click.option(
            "--metrics",
            metavar="HOST:PORT",
            default=lambda: _env("VARSTORE_METRICS"),
            help="serve Prometheus metrics at http://HOST:PORT/metrics (env VARSTORE_METRICS)",
        ),
        click.option(
            "--http",
            metavar="HOST:PORT",
            default=lambda: _env("VARSTORE_HTTP"),
            help="serve the read-only audit page at http://HOST:PORT/ (default: off; env "
            "VARSTORE_HTTP)",
        ),
        *(
            click.option(
                limit.flag, limit.dest, type=int, default=None, metavar="N", help=limit.help
            )
            for limit in limit_flags()
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@varstore.command("serve")
@_serve_options
def serve_command(**params: Any) -> int:
    """Run the gRPC server. A request beyond a --max-... limit is RESOURCE_EXHAUSTED."""
    return _serve(argparse.Namespace(**params))


add_client_commands(varstore)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``varstore`` console script; returns the exit code."""
    try:
        result = varstore.main(
            args=list(sys.argv[1:] if argv is None else argv),
            prog_name="varstore",
            standalone_mode=False,
        )
    except click.exceptions.NoArgsIsHelpError as shown:
        print(shown.format_message(), file=sys.stderr)
        return 2
    except click.UsageError as problem:
        text = problem.format_message().rstrip(".")
        _fail(f"{text} (see '{problem.ctx.command_path} --help')" if problem.ctx else text)
        return 2
    except click.ClickException as problem:
        _fail(problem.format_message())
        return problem.exit_code
    except click.Abort:
        _fail("interrupted")
        return 130
    except BrokenPipeError:
        quiet_stdout()
        return 0
    return result if isinstance(result, int) else 0


def _fail(text: str) -> None:
    print(f"varstore: {' '.join(text.split())}", file=sys.stderr)


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
