"""The options every client command takes, accepted anywhere on the line, and the one way a
command runs: connect, call, print, or fail in one line.

``varstore --server X get s n`` and ``varstore get s n --server X`` mean the same: the
options are declared on every group and command (:func:`client_options`) and each value
given is remembered in the context's ``meta`` (shared by the group and its commands); the
last one given wins. Environment variables fill in what no option gave.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import click

from varstore.client import Client, SessionContext, Unavailable, VarstoreError, connect
from varstore.client.cli.output import Output, fail, message, print_output, quiet_stdout

__all__ = [
    "DEFAULT_SERVER",
    "SOURCE",
    "Options",
    "client_options",
    "context_for",
    "positive_float",
    "run",
]

#: The server the commands talk to when neither ``--server`` nor VARSTORE_SERVER says.
DEFAULT_SERVER: Final = "127.0.0.1:50051"

#: The source recorded with every write the command line makes.
SOURCE: Final = "cli"

#: Where the options given so far are kept in ``click.Context.meta``.
_GIVEN: Final = "varstore.client.options"

F = TypeVar("F", bound=Callable[..., Any])


class _PositiveFloat(click.ParamType[float]):
    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            return value
        try:
            number = float(value)
        except ValueError:
            self.fail(f"not a number: {value!r}", param, ctx)
        if not number > 0:
            self.fail(f"must be above 0, got {value!r}", param, ctx)
        return number


#: A number of seconds above 0.
positive_float: Final = _PositiveFloat()


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Keep an option's value when it was given (a later one replaces an earlier one)."""
    if value is not None and value is not False and param.name:
        ctx.meta.setdefault(_GIVEN, {})[param.name] = value
    return value


def _option(*names: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*names, expose_value=False, callback=_remember, **kwargs)


_CONNECTION: Final = (
    _option(
        "--server",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="server address, or several servers sharing one log separated by commas "
        f"(default: env VARSTORE_SERVER, else {DEFAULT_SERVER})",
    ),
    _option("--json", is_flag=True, default=False, help="print JSON instead of text"),
    _option(
        "--ca-file",
        metavar="PEM",
        help="verify the server's TLS certificate with this CA (turns TLS on; env "
        "VARSTORE_CA_FILE)",
    ),
    _option(
        "--tls",
        is_flag=True,
        default=False,
        help="use TLS with the system's CAs (env VARSTORE_TLS=1)",
    ),
    _option(
        "--cert-file",
        metavar="PEM",
        help="client certificate for mTLS, with --key-file (env VARSTORE_CERT_FILE)",
    ),
    _option("--key-file", metavar="PEM", help="private key of --cert-file (env VARSTORE_KEY_FILE)"),
    _option(
        "--token-file",
        metavar="FILE",
        help="file holding the bearer token (env VARSTORE_TOKEN_FILE, or the token itself in "
        "VARSTORE_TOKEN)",
    ),
)

_TIMEOUT: Final = _option(
    "--timeout",
    type=positive_float,
    metavar="SECONDS",
    help="seconds each call may take (default 30)",
)


def client_options(*, timeout: bool = True) -> Callable[[F], F]:
    """Declare the client options on a group or command (``timeout=False``: the command
    has a ``--timeout`` of its own, as ``watch`` has)."""

    def declare(function: F) -> F:
        for option in reversed((*_CONNECTION, *((_TIMEOUT,) if timeout else ()))):
            function = option(function)
        return function

    return declare


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """The client options in effect: given on the line, else the environment's."""

    server: str
    json: bool
    timeout: float
    ca_file: str | None
    tls: bool
    cert_file: str | None
    key_file: str | None
    token_file: str | None

    @classmethod
    def current(cls) -> Options:
        """The options of the command being run."""
        given: dict[str, Any] = click.get_current_context().meta.get(_GIVEN, {})
        env = os.environ.get
        return cls(
            server=given.get("server") or env("VARSTORE_SERVER") or DEFAULT_SERVER,
            json=bool(given.get("json")),
            timeout=float(given.get("timeout", 30.0)),
            ca_file=given.get("ca_file") or env("VARSTORE_CA_FILE"),
            tls=bool(given.get("tls")) or env("VARSTORE_TLS", "") == "1",
            cert_file=given.get("cert_file") or env("VARSTORE_CERT_FILE"),
            key_file=given.get("key_file") or env("VARSTORE_KEY_FILE"),
            token_file=given.get("token_file") or env("VARSTORE_TOKEN_FILE"),
        )

    def connect(self) -> Client:
        """A client whose writes record source ``cli``, failing at once (no retries: run
        the command again). Raises OSError for a token file it cannot read, ValueError
        for a bad mix of options."""
        token = (
            Path(self.token_file).expanduser().read_text().strip()
            if self.token_file
            else os.environ.get("VARSTORE_TOKEN")
        )
        return connect(
            self.server,
            {"timeout": self.timeout, "retry": False, "source": SOURCE},
            root_certificates=self.ca_file,
            certificate_chain=self.cert_file,
            private_key=self.key_file,
            token=token or None,
            tls=self.tls or None,
        )


def context_for(client: Client, session_id: str) -> SessionContext:
    """A context that writes as "cli" and never creates its session behind the user's back."""
    return client.session(session_id, {"source": SOURCE, "create_session": False})


Handler = Callable[[Options, Client], Output]


def run(handler: Handler, *, interrupt_code: int = 130) -> None:
    """Run a client command: connect, call ``handler``, print what it returns; a failure
    is one line ``varstore: ...`` and exit code 1; a closed stdout ends it quietly (0);
    Ctrl-C exits with ``interrupt_code`` (``watch``: 0, quietly).

    Raises:
        click.exceptions.Exit: with the exit code, when it is not 0.
    """
    options = Options.current()
    code = 0
    try:
        with options.connect() as client:
            output = handler(options, client)
        print_output(output, options.json)
        code = output.exit_code
    except Unavailable as problem:
        fail(f"server {options.server} is unavailable: {message(problem)}")
        code = 1
    except VarstoreError as problem:
        fail(message(problem))
        code = 1
    except BrokenPipeError:  # e.g. piped into `head`: it has read what it wanted
        quiet_stdout()
    except (OSError, ValueError) as problem:  # a TLS or token file, a bad option mix
        fail(str(problem))
        code = 1
    except KeyboardInterrupt:
        if interrupt_code:
            fail("interrupted")
        code = interrupt_code
    if code:
        raise click.exceptions.Exit(code)
