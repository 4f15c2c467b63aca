"""The client commands of the ``varstore`` program: sessions and variables on a server.

``varstore session create|list|delete``, ``varstore register``, ``get``, ``set``,
``list``, ``history``, ``log``, ``watch``, ``export``, ``import`` and ``fork`` talk to
``--server HOST:PORT`` (or several servers sharing one log, ``HOST:PORT,HOST:PORT``;
default: env ``VARSTORE_SERVER``, else 127.0.0.1:50051) through :mod:`varstore.client`.
People get aligned tables or ``key: value`` lines; ``--json`` prints JSON for scripts. A
failure is one line on stderr, ``varstore: <message>``, and exit code 1 (argparse's usage
errors exit with 2). ``export`` and ``import`` report progress on stderr when it is a terminal
(or with ``--progress``). ``log --json`` and ``watch --json`` print JSON Lines (one
object a line), and ``watch`` prints its lines as the updates arrive.

:func:`add_client_commands` adds the commands to the ``varstore`` parser and
:func:`run_client_command` runs the one that was parsed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from varstore.client import (
    ChangeInfo,
    Client,
    SessionContext,
    SessionInfo,
    Unavailable,
    ValidationError,
    VariableInfo,
    VarstoreError,
    WatchInitial,
    WatchProgress,
    WatchUpdate,
    connect,
    transfer,
)
from varstore.types import TYPE_NAMES, PyValue
from varstore.types.events import EventType, summarize, touched_variable_ids
from varstore.types.values import kind_of
from varstore.v1 import varstore_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_SERVER",
    "SOURCE",
    "add_client_commands",
    "parse_value",
    "run_client_command",
]

#: The server the commands talk to when neither ``--server`` nor VARSTORE_SERVER says.
DEFAULT_SERVER: Final = "127.0.0.1:50051"

#: The source recorded with every write the command line makes.
SOURCE: Final = "cli"

#: Widest value shown in a table cell (``get`` shows values whole).
_CELL_WIDTH: Final = 60


@dataclasses.dataclass(frozen=True, slots=True)
class Output:
    """What a command prints: ``data`` with ``--json``, else ``text`` (no final newline).

    ``json_lines``: ``data`` is a list printed one compact JSON object a line.
    ``printed``: the command printed as it went; nothing is left to print.
    """

    data: Any
    text: str
    json_lines: bool = False
    printed: bool = False


Handler = Callable[[argparse.Namespace, Client], Output]


# -- the parser ------------------------------------------------------------------------------


def add_client_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``session``, ``register``, ``get``, ``set``, ``list``, ``history``, ``log``,
    ``watch``, ``export``, ``import`` and ``fork`` to ``subparsers``.

    Each command parser gets ``--server`` and ``--json`` and records its handler, which
    :func:`run_client_command` calls.
    """
    base = argparse.ArgumentParser(add_help=False)
    base.add_argument(
        "--server",
        metavar="HOST:PORT[,HOST:PORT...]",
        default=None,
        help="server address, or several servers sharing one log separated by commas "
        f"(default: env VARSTORE_SERVER, else {DEFAULT_SERVER})",
    )
    base.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_security_options(base)
    common = argparse.ArgumentParser(add_help=False, parents=[base])
    common.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="seconds each call may take (default 30)",
    )
    parents = [common]

    session = subparsers.add_parser("session", help="create, list or delete sessions")
    actions = session.add_subparsers(dest="session_command", metavar="ACTION", required=True)
    create = actions.add_parser("create", parents=parents, help="create a session")
    create.add_argument("session_id", nargs="?", metavar="SESSION_ID", help="(default: generated)")
    create.add_argument(
        "--ttl",
        type=int,
        default=0,
        metavar="SECONDS",
        help="expire the session after this long untouched (default 0: never)",
    )
    _add_meta(create, "session metadata")
    create.set_defaults(client_handler=_session_create)
    listing = actions.add_parser("list", parents=parents, help="list live sessions")
    listing.set_defaults(client_handler=_session_list)
    delete = actions.add_parser("delete", parents=parents, help="delete a session")
    delete.add_argument("session_id", metavar="SESSION_ID")
    delete.set_defaults(client_handler=_session_delete)

    register = subparsers.add_parser("register", parents=parents, help="register a variable")
    register.add_argument("session_id", metavar="SESSION")
    register.add_argument("name", metavar="NAME")
    register.add_argument("type", metavar="TYPE", choices=TYPE_NAMES, help=" | ".join(TYPE_NAMES))
    register.add_argument("value", metavar="VALUE", help="initial value (booleans: true/false)")
    register.add_argument("--min", type=float, help="smallest allowed number")
    register.add_argument("--max", type=float, help="largest allowed number")
    register.add_argument("--min-length", type=int, metavar="N", help="shortest allowed string")
    register.add_argument("--max-length", type=int, metavar="N", help="longest allowed string")
    register.add_argument("--pattern", metavar="RE", help="regex a string must fully match")
    register.add_argument(
        "--choice",
        action="append",
        dest="choices",
        metavar="V",
        help="an allowed value (repeat for each)",
    )
    _add_meta(register, "metadata of the registration event")
    register.set_defaults(client_handler=_register)

    get = subparsers.add_parser("get", parents=parents, help="show a variable")
    get.add_argument("session_id", metavar="SESSION")
    get.add_argument("name", metavar="NAME", help="variable name (or id)")
    get.set_defaults(client_handler=_get)

    set_ = subparsers.add_parser("set", parents=parents, help="set a variable's value")
    set_.add_argument("session_id", metavar="SESSION")
    set_.add_argument("name", metavar="NAME", help="variable name (or id)")
    set_.add_argument("value", metavar="VALUE", help="new value, read as the variable's type")
    set_.add_argument(
        "--expected-version",
        type=int,
        metavar="N",
        help="only set if the variable is at this version",
    )
    _add_meta(set_, "metadata of the change event")
    set_.set_defaults(client_handler=_set)

    variables = subparsers.add_parser("list", parents=parents, help="list a session's variables")
    variables.add_argument("session_id", metavar="SESSION")
    variables.add_argument(
        "pattern", nargs="?", metavar="PATTERN", help="glob on names, e.g. 'llm_*'"
    )
    variables.set_defaults(client_handler=_list)
    _add_log_commands(subparsers, parents, base)
    _add_transfer_commands(subparsers, parents)


def _add_meta(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--meta",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help=f"{what} (repeat for each key)",
    )


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _positive_float(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return number


def _add_security_options(parser: argparse.ArgumentParser) -> None:
    """TLS and token options, the same as ``connect``'s (each with an environment default)."""
    parser.add_argument(
        "--ca-file",
        metavar="PEM",
        default=None,
        help="verify the server's TLS certificate with this CA (turns TLS on; env VARSTORE_CA_FILE)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=None,
        help="use TLS with the system's CAs (env VARSTORE_TLS=1)",
    )
    parser.add_argument(
        "--cert-file",
        metavar="PEM",
        default=None,
        help="client certificate for mTLS, with --key-file (env VARSTORE_CERT_FILE)",
    )
    parser.add_argument(
        "--key-file",
        metavar="PEM",
        default=None,
        help="private key of --cert-file (env VARSTORE_KEY_FILE)",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        default=None,
        help="file holding the bearer token (env VARSTORE_TOKEN_FILE, or the token itself "
        "in VARSTORE_TOKEN)",
    )


def _connect(args: argparse.Namespace, address: str) -> Client:
    """A client on ``address`` with the TLS and token options (flags first, then the
    environment). Raises OSError for a file it cannot read, ValueError for a bad mix."""
    env = os.environ.get
    token_file = getattr(args, "token_file", None) or env("VARSTORE_TOKEN_FILE")
    token = (
        Path(token_file).expanduser().read_text().strip() if token_file else env("VARSTORE_TOKEN")
    )
    tls = getattr(args, "tls", None) or env("VARSTORE_TLS", "") == "1" or None
    return connect(
        address,
        {"timeout": args.timeout, "retry": False},  # a command fails at once; run it again
        root_certificates=getattr(args, "ca_file", None) or env("VARSTORE_CA_FILE"),
        certificate_chain=getattr(args, "cert_file", None) or env("VARSTORE_CERT_FILE"),
        private_key=getattr(args, "key_file", None) or env("VARSTORE_KEY_FILE"),
        token=token or None,
        tls=tls,
    )


# -- running ---------------------------------------------------------------------------------


def run_client_command(args: argparse.Namespace) -> int:
    """Run the client command ``args`` holds; returns the exit code (0, or 1 on failure).

    Prints the result on stdout, or one line ``varstore: <message>`` on stderr.
    """
    handler: Handler | None = getattr(args, "client_handler", None)
    if handler is None:
        _fail(f"unknown command {getattr(args, 'command', None)!r}")
        return 2
    address = args.server or os.environ.get("VARSTORE_SERVER") or DEFAULT_SERVER
    try:
        with _connect(args, address) as client:
            output = handler(args, client)
        if output.printed:
            pass
        elif args.json and output.json_lines:
            for item in output.data:
                print(_json_line(item))
        elif args.json:
            print(json.dumps(output.data, indent=2, ensure_ascii=False))
        elif output.text:
            print(output.text)
        sys.stdout.flush()
    except Unavailable as problem:
        _fail(f"server {address} is unavailable: {_message(problem)}")
        return 1
    except VarstoreError as problem:
        _fail(_message(problem))
        return 1
    except BrokenPipeError:  # e.g. piped into `head`: nothing more to say
        _quiet_stdout()
        return 1
    except (OSError, ValueError) as problem:  # a TLS or token file, a bad option mix
        _fail(str(problem))
        return 1
    except KeyboardInterrupt:
        if not getattr(args, "quiet_interrupt", False):
            _fail("interrupted")
        return 130
    return 0


def _json_line(data: Any) -> str:
    """``data`` as one compact line of JSON (the JSON Lines of exports)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _fail(message: str) -> None:
    print(f"varstore: {message}", file=sys.stderr)


def _message(problem: VarstoreError) -> str:
    """The error as one line (its violations added when the message alone is vague)."""
    text = str(problem) or type(problem).__name__
    if isinstance(problem, ValidationError) and problem.violations:
        details = "; ".join(f"{field}: {why}" for field, why in problem.violations.items())
        if details not in text:
            text = f"{text} ({details})"
    return " ".join(text.split())


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - nothing better to do
        pass


def _context(client: Client, session_id: str) -> SessionContext:
    """A context that writes as "cli" and never creates its session behind the user's back."""
    return client.session(session_id, {"source": SOURCE, "create_session": False})


# -- the commands ----------------------------------------------------------------------------


def _session_create(args: argparse.Namespace, client: Client) -> Output:
    context = client.create_session(args.session_id, metadata=dict(args.meta), ttl_seconds=args.ttl)
    made = client.get_session(context.session_id)
    return _session_output(dataclasses.replace(made, session_token=context.session_token))


def _session_list(args: argparse.Namespace, client: Client) -> Output:
    sessions = client.list_sessions()
    rows = [
        [
            s.id,
            str(s.variable_count),
            str(s.ttl_seconds) if s.ttl_seconds else "-",
            _show_time(s.created_at),
            _show_time(s.updated_at),
            _show_time(s.expires_at),
            _cell(_show_mapping(s.metadata)),
        ]
        for s in sessions
    ]
    headers = ["ID", "VARIABLES", "TTL", "CREATED_AT", "UPDATED_AT", "EXPIRES_AT", "METADATA"]
    text = _table(headers, rows) if rows else "no sessions"
    return Output([_session_data(s) for s in sessions], text)


def _session_delete(args: argparse.Namespace, client: Client) -> Output:
    client.delete_session(args.session_id)
    return Output({"id": args.session_id, "deleted": True}, f"deleted session {args.session_id}")


def _register(args: argparse.Namespace, client: Client) -> Output:
    constraints: dict[str, Any] = {
        key: value
        for key, value in (
            ("min", args.min),
            ("max", args.max),
            ("min_length", args.min_length),
            ("max_length", args.max_length),
            ("pattern", args.pattern),
        )
        if value is not None
    }
    if args.choices:
        constraints["choices"] = [parse_value(args.type, choice) for choice in args.choices]
    initial = parse_value(args.type, args.value)
    with _context(client, args.session_id) as context:
        context.register_variable(
            args.name, args.type, initial, constraints or None, dict(args.meta)
        )
        return _variable_output(args.session_id, _describe(context, args.name))


def _get(args: argparse.Namespace, client: Client) -> Output:
    with _context(client, args.session_id) as context:
        return _variable_output(args.session_id, _describe(context, args.name))


def _set(args: argparse.Namespace, client: Client) -> Output:
    with _context(client, args.session_id) as context:
        current = context.get_variable(args.name, bypass_cache=True)
        type_name = kind_of(current)
        value = parse_value(type_name, args.value)
        version = context.set_variable(
            args.name, value, dict(args.meta) or None, args.expected_version
        )
    data = {
        "session_id": args.session_id,
        "name": args.name,
        "type": type_name,
        "value": value,
        "previous_value": current,
        "version": version,
    }
    text = _key_lines(
        [
            ("session_id", args.session_id),
            ("name", args.name),
            ("type", type_name),
            ("value", _show_value(value)),
            ("previous_value", _show_value(current)),
            ("version", str(version)),
        ]
    )
    return Output(data, text)


def _list(args: argparse.Namespace, client: Client) -> Output:
    with _context(client, args.session_id) as context:
        variables = context.list_variables(args.pattern)
    rows = [
        [
            v.name,
            v.type,
            _cell(_show_value(v.value)),
            str(v.version),
            v.source,
            _show_time(v.updated_at),
        ]
        for v in variables
    ]
    headers = ["NAME", "TYPE", "VALUE", "VERSION", "SOURCE", "UPDATED_AT"]
    text = _table(headers, rows) if rows else "no variables"
    return Output([_variable_data(v) for v in variables], text)


def _describe(context: SessionContext, identifier: str) -> VariableInfo:
    """The full record of a variable named (or identified by) ``identifier``.

    Raises SessionNotFound or VariableNotFound as the server words them.
    """
    for info in context.list_variables(_literal_glob(identifier)):
        if info.name == identifier:
            return info
    # Not a name: an id, or nothing (then the server's VariableNotFound says so).
    context.get_variable(identifier, bypass_cache=True)
    for info in context.list_variables():
        if info.id == identifier:
            return info
    # Deleted in between: ask once more for the server's own words.
    context.get_variable(identifier, bypass_cache=True)
    raise VarstoreError(f"variable {identifier!r} changed while it was being read; try again")


def _literal_glob(name: str) -> str:
    """A glob pattern that matches exactly ``name``."""
    return re.sub(r"([*?\[])", r"[\1]", name)


# -- values ----------------------------------------------------------------------------------


_BOOLEANS: Final = {"true": True, "false": False}


def parse_value(type_name: str, text: str) -> PyValue:
    """``text`` from the command line as a value of ``type_name``.

    Floats and integers as Python writes them, booleans as ``true``/``false`` (any case),
    strings as given.

    Raises:
        ValidationError: ``text`` is not a value of that type (or the type is unknown).
    """
    try:
        if type_name == "float":
            return float(text)
        if type_name == "integer":
            return int(text)
    except ValueError:
        article = "an" if type_name == "integer" else "a"
        raise ValidationError(f"{text!r} is not {article} {type_name}") from None
    if type_name == "boolean":
        try:
            return _BOOLEANS[text.strip().lower()]
        except KeyError:
            raise ValidationError(f"{text!r} is not a boolean; use true or false") from None
    if type_name == "string":
        return text
    raise ValidationError(f"unknown type {type_name!r}; expected one of {', '.join(TYPE_NAMES)}")


def _show_value(value: PyValue) -> str:
    """A value as people read it: true/false, 0.7, 1.0, 3, or the string itself."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float | int):
        return repr(value)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


def _show_time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _show_mapping(mapping: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(mapping.items())) or "-"


def _cell(text: str) -> str:
    return text if len(text) <= _CELL_WIDTH else text[: _CELL_WIDTH - 3] + "..."


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, headers first."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    )


def _key_lines(pairs: Sequence[tuple[str, str]]) -> str:
    width = max(len(key) for key, _ in pairs) + 1
    return "\n".join(f"{key + ':':<{width}} {value}".rstrip() for key, value in pairs)


# -- records ---------------------------------------------------------------------------------


def _json_ready(data: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value.isoformat() if isinstance(value, datetime) else value
        for key, value in data.items()
    }


def _variable_data(variable: VariableInfo) -> dict[str, Any]:
    return _json_ready(dataclasses.asdict(variable))


def _session_data(session: SessionInfo) -> dict[str, Any]:
    data = _json_ready(dataclasses.asdict(session))
    if not session.session_token:  # only the answer that made a session carries one
        del data["session_token"]
    return data


def _token_pairs(session: SessionInfo) -> list[tuple[str, str]]:
    """The session token line, when the server issued one (it is shown only once)."""
    return [("session_token", session.session_token)] if session.session_token else []


def _variable_output(session_id: str, variable: VariableInfo) -> Output:
    text = _key_lines(
        [
            ("session_id", session_id),
            ("name", variable.name),
            ("id", variable.id),
            ("type", variable.type),
            ("value", _show_value(variable.value)),
            ("version", str(variable.version)),
            ("constraints", json.dumps(variable.constraints) if variable.constraints else "-"),
            ("metadata", _show_mapping(variable.metadata)),
            ("source", variable.source),
            ("created_at", _show_time(variable.created_at)),
            ("updated_at", _show_time(variable.updated_at)),
        ]
    )
    return Output({"session_id": session_id, **_variable_data(variable)}, text)


def _session_output(session: SessionInfo) -> Output:
    text = _key_lines(
        [
            ("id", session.id),
            ("variables", str(session.variable_count)),
            ("ttl_seconds", str(session.ttl_seconds)),
            ("metadata", _show_mapping(session.metadata)),
            ("created_at", _show_time(session.created_at)),
            ("updated_at", _show_time(session.updated_at)),
            ("expires_at", _show_time(session.expires_at)),
            *_token_pairs(session),
        ]
    )
    return Output(_session_data(session), text)


# -- the past and the present: history, log, watch ------------------------------------------

#: Events per ReadEvents page (the server's most).

#: Seconds between progress messages while ``watch --timeout`` runs (so it ends on time).
_WATCH_TICK: Final = 0.2


def _add_log_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
    base: argparse.ArgumentParser,
) -> None:
    """Add ``history``, ``log`` and ``watch``."""
    history = subparsers.add_parser(
        "history",
        parents=parents,
        help="show every version of a variable",
        description="Every version of a variable (by name: every variable that had the "
        "name; by id: one lifetime), with its previous value, position, time and source.",
    )
    history.add_argument("session_id", metavar="SESSION")
    history.add_argument("name", metavar="NAME", help="variable name (or id)")
    history.add_argument(
        "--from-version", type=_position, default=0, metavar="N", help="first version (default 0)"
    )
    history.add_argument(
        "--to-version", type=_position, default=None, metavar="N", help="last version"
    )
    history.add_argument("--newest-first", action="store_true", help="newest version first")
    history.add_argument("--limit", type=_count, default=None, metavar="N", help="at most N rows")
    history.set_defaults(client_handler=_history)

    log = subparsers.add_parser(
        "log",
        parents=parents,
        help="show a session's events",
        description="A session's log (deleted sessions' too), one row per event. --json "
        f"prints JSON Lines in the export format ({transfer.FORMAT}).",
    )
    log.add_argument("session_id", metavar="SESSION")
    log.add_argument(
        "--from",
        dest="from_position",
        type=_position,
        default=0,
        metavar="N",
        help="first position (default: 1)",
    )
    log.add_argument(
        "--to",
        dest="to_position",
        type=_position,
        default=None,
        metavar="N",
        help="last position (default: the last)",
    )
    log.add_argument("--backwards", action="store_true", help="newest event first")
    log.add_argument("--limit", type=_count, default=None, metavar="N", help="at most N events")
    log.set_defaults(client_handler=_log)

    watch = subparsers.add_parser(
        "watch",
        parents=[base],
        help="print a session's changes as they happen",
        description="Print one line per update as it arrives (--json: one JSON object a "
        "line) until --count updates, --timeout seconds, or Ctrl-C (exit 130).",
    )
    watch.add_argument("session_id", metavar="SESSION")
    watch.add_argument(
        "--from",
        dest="from_position",
        type=_position,
        default=None,
        metavar="N",
        help="print the events after this position (0: the whole log; default: from now)",
    )
    watch.add_argument(
        "--var",
        dest="variables",
        action="extend",
        nargs="+",
        default=[],
        metavar="NAME",
        help="only these variables (names or ids; repeatable)",
    )
    watch.add_argument(
        "--initial", action="store_true", help="first print the variables' values at the start"
    )
    watch.add_argument(
        "--count", type=_count, default=None, metavar="N", help="stop after N updates"
    )
    watch.add_argument(
        "--timeout",
        dest="watch_timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="stop after this long (an error if --count updates did not arrive by then)",
    )
    watch.add_argument(
        "-v", "--verbose", action="store_true", help="also print progress (caught up) lines"
    )
    watch.set_defaults(client_handler=_watch, timeout=30.0, quiet_interrupt=True)


def _count(text: str) -> int:
    number = _position(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text!r}")
    return number


def _history(args: argparse.Namespace, client: Client) -> Output:
    with _context(client, args.session_id) as context:
        changes = context.history(
            args.name,
            from_version=args.from_version,
            to_version=args.to_version,
            newest_first=args.newest_first,
        )
    if args.limit is not None:
        changes = changes[: args.limit]
    rows = [
        [
            str(c.version),
            _change_kind(c),
            _cell(_show_optional(c.value, "-")),
            _cell(_show_optional(c.previous_value, "-")),
            str(c.position),
            _show_time(c.recorded_at),
            c.source or "-",
            _cell(_show_mapping(c.metadata)),
        ]
        for c in changes
    ]
    headers = [
        "VERSION", "KIND", "VALUE", "PREVIOUS", "POSITION", "RECORDED_AT", "SOURCE", "METADATA"
    ]  # fmt: skip
    text = _table(headers, rows) if rows else "no changes"
    return Output([_json_ready(dataclasses.asdict(c)) for c in changes], text)


def _change_kind(change: ChangeInfo) -> str:
    """The kind, with a rollback's target version and a batch mark: "updated (batch)"."""
    kind = change.kind
    if change.rollback_to_version is not None:
        kind += f" (to v{change.rollback_to_version})"
    if change.in_batch:
        kind += " (batch)"
    return kind


def _show_optional(value: PyValue | None, absent: str) -> str:
    return absent if value is None else _show_value(value)


def _log(args: argparse.Namespace, client: Client) -> Output:
    # The client's paging flow reads the range; the server pins its end at the first page.
    events = _context(client, args.session_id).read_events(
        args.from_position, args.to_position, backwards=args.backwards, limit=args.limit
    )
    if args.json:
        return Output(events, "", json_lines=True)
    names = _variable_names(client, args.session_id, events)
    rows = [
        [
            str(event["position"]),
            event["type"],
            _show_time(datetime.fromisoformat(event["recorded_at"])),
            event["source"] or "-",
            _cell(summarize(event["type"], event["payload"], names, _show_value)),
        ]
        for event in events
    ]
    headers = ["POSITION", "TYPE", "RECORDED_AT", "SOURCE", "SUMMARY"]
    return Output(None, _table(headers, rows) if rows else "no events")


def _variable_names(
    client: Client, session_id: str, events: Sequence[Mapping[str, Any]]
) -> dict[str, str]:
    """Variable id -> name for the variables ``events`` (export-format dicts) touch: from
    their registrations, else the live variables, else each one's history (the id stands
    in when all fail)."""
    names = {
        event["payload"]["variable_id"]: event["payload"]["name"]
        for event in events
        if event["type"] == EventType.VARIABLE_REGISTERED
    }
    unknown = {
        variable_id
        for event in events
        for variable_id in touched_variable_ids(event["type"], event["payload"])
    } - names.keys()
    if not unknown:
        return names
    with _context(client, session_id) as context:
        with contextlib.suppress(VarstoreError):  # a deleted session's log can still be read
            names.update((v.id, v.name) for v in context.list_variables() if v.id in unknown)
        for variable_id in sorted(unknown - names.keys()):
            try:
                first = context.history(variable_id, to_version=0)
            except VarstoreError:
                continue
            if first:
                names[variable_id] = first[0].name
    return names


def _watch(args: argparse.Namespace, client: Client) -> Output:
    deadline = None if args.watch_timeout is None else time.monotonic() + args.watch_timeout
    updates = 0
    with _context(client, args.session_id) as context:
        start = args.from_position
        if start is None:  # from now (and an unknown session is an error before watching)
            start = client.get_session(args.session_id).position
        stream = context.watch(
            from_position=start,
            variables=args.variables or None,
            include_initial=args.initial,
            progress_interval=_WATCH_TICK if deadline is not None else None,
            # A backstop: the loop below ends the watch on time.
            timeout=None if args.watch_timeout is None else args.watch_timeout + 10,
        )
        with stream:
            caught_up = -1  # the position of the last progress line printed
            for item in stream:
                if isinstance(item, WatchUpdate):
                    updates += 1
                    _emit(args.json, _update_data(item), _update_line(item))
                elif isinstance(item, WatchInitial):
                    _emit_initial(args.json, item)
                elif (
                    isinstance(item, WatchProgress) and args.verbose and item.position != caught_up
                ):
                    caught_up = item.position
                    data = {"kind": "progress", "position": item.position}
                    _emit(args.json, data, f"{item.position}  (caught up)")
                if args.count is not None and updates >= args.count:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
    if args.count is not None and updates < args.count:
        if deadline is not None and time.monotonic() >= deadline:
            raise VarstoreError(
                f"timed out after {args.watch_timeout:g} s with {updates} of {args.count} updates"
            )
        raise VarstoreError(f"the watch ended after {updates} of {args.count} updates")
    return Output(None, "", printed=True)


def _emit(as_json: bool, data: dict[str, Any], line: str) -> None:
    print(_json_line(data) if as_json else line, flush=True)


def _update_data(update: WatchUpdate) -> dict[str, Any]:
    return {
        "kind": "update",
        **_json_ready(dataclasses.asdict(update)),
        "changes": [_json_ready(dataclasses.asdict(c)) for c in update.changes],
    }


def _update_line(update: WatchUpdate) -> str:
    """``5  t: 0.7 -> 0.9  cli``; a batch's changes on one line, marked."""
    parts = []
    for change in update.changes:
        previous = _show_optional(change.previous_value, "-")
        value = _show_optional(change.value, "(deleted)")
        text = f"{change.name}: {previous} -> {value}"
        if change.rollback_to_version is not None:
            text += f" (rollback to v{change.rollback_to_version})"
        parts.append(text)
    what = ", ".join(parts) if parts else update.type
    if update.type == "BatchApplied":
        what += " (batch)"
    return f"{update.position}  {what}  {update.source or '-'}"


def _emit_initial(as_json: bool, initial: WatchInitial) -> None:
    """The state at the start: one JSON object, or a line per variable after a heading."""
    variables = [_variable_data(v) for v in initial.variables]
    data = {"kind": "initial", "position": initial.position, "variables": variables}
    _emit(as_json, data, f"{initial.position}  initial: {len(variables)} variables")
    if not as_json:
        for variable in initial.variables:
            print(f"{initial.position}  {variable.name} = {_show_value(variable.value)}")
        sys.stdout.flush()


# -- copies of logs: export, import, fork -------------------------------------------------------

#: Without a terminal, ``--progress`` prints a line every this many events.
PROGRESS_EVERY: Final = 1000


def _add_transfer_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    """Add ``export``, ``import`` and ``fork``."""
    progress = argparse.ArgumentParser(add_help=False)
    progress.add_argument(
        "--progress",
        action="store_true",
        help="report progress on stderr (the default when stderr is a terminal)",
    )
    export = subparsers.add_parser(
        "export",
        parents=[*parents, progress],
        help="write a session's log as JSON Lines",
        description=f"Write a session's log (deleted sessions' too) as JSON Lines, one "
        f"event a line (format {transfer.FORMAT}). --timeout does not bound the export.",
    )
    export.add_argument("session_id", metavar="SESSION")
    export.add_argument(
        "file", nargs="?", default="-", metavar="FILE", help="where to write (default -: stdout)"
    )
    export.add_argument(
        "--from",
        dest="from_position",
        type=_position,
        default=0,
        metavar="N",
        help="first position to export (default: 1)",
    )
    export.add_argument(
        "--to",
        dest="to_position",
        type=_position,
        default=None,
        metavar="N",
        help="last position to export (default: the last)",
    )
    export.set_defaults(client_handler=_export)

    import_ = subparsers.add_parser(
        "import",
        parents=[*parents, progress],
        help="rebuild a session from a JSON Lines export",
        description="Rebuild a new session from a JSON Lines export; every event is "
        "checked and nothing is written unless all pass. --timeout does not bound the import.",
    )
    import_.add_argument("file", metavar="FILE", help="the export (-: stdin)")
    import_.add_argument(
        "--session",
        dest="session_id",
        metavar="ID",
        help="id of the new session (default: the exported session's); it must be unused",
    )
    import_.add_argument(
        "--to",
        dest="to_position",
        type=_position,
        default=None,
        metavar="N",
        help="import only the events up to this position",
    )
    import_.set_defaults(client_handler=_import)

    fork = subparsers.add_parser(
        "fork",
        parents=parents,
        help="start a new session as a copy of another's log",
        description="Start a new session whose log is a copy of SESSION's up to a position, "
        "then a SessionForked event naming SESSION.",
    )
    fork.add_argument("session_id", metavar="SESSION")
    fork.add_argument(
        "--at",
        dest="at_position",
        type=_position,
        default=0,
        metavar="N",
        help="copy up to this position (default: the last)",
    )
    fork.add_argument("--new-id", dest="new_session_id", metavar="ID", help="id of the new session")
    _add_meta(fork, "metadata of the fork event")
    fork.set_defaults(client_handler=_fork)


def _position(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return number


class _Progress:
    """Counts on stderr: one line rewritten in place on a terminal, else (with
    ``--progress``) a line every PROGRESS_EVERY events and one at the end."""

    def __init__(self, verb: str, asked: bool) -> None:
        self.verb = verb
        self.tty = sys.stderr.isatty()
        self.enabled = asked or self.tty
        self.count = 0
        self._next = PROGRESS_EVERY

    def __call__(self, count: int) -> None:
        self.count = count
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write(f"\r{self.verb} {count} events")
            sys.stderr.flush()
        elif count >= self._next:
            print(f"varstore: {self.verb} {count} events", file=sys.stderr, flush=True)
            self._next = (count // PROGRESS_EVERY + 1) * PROGRESS_EVERY

    def done(self) -> None:
        """Clear the terminal line, or print the final count."""
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
        else:
            print(f"varstore: {self.verb} {self.count} events", file=sys.stderr, flush=True)


def _os_error(problem: OSError, path: str) -> VarstoreError:
    return VarstoreError(f"{path}: {problem.strerror or problem}")


def _stub(client: Client) -> pb_grpc.VariableStoreStub:
    return pb_grpc.VariableStoreStub(client.channel)


def _export(args: argparse.Namespace, client: Client) -> Output:
    to_stdout = args.file == "-"
    if to_stdout and args.json:
        raise ValidationError("--json needs a FILE: without one the events go to stdout")
    progress = _Progress("exported", args.progress)
    try:
        result = transfer.export_session(
            _stub(client),
            args.session_id,
            sys.stdout if to_stdout else args.file,
            from_position=args.from_position,
            to_position=args.to_position,
            progress=progress,
        )
    except BrokenPipeError:
        raise
    except OSError as problem:
        raise _os_error(problem, args.file) from None
    finally:
        progress.done()
    if to_stdout:
        return Output(None, "")
    positions = f"{result.first_position}-{result.last_position}" if result.events else "-"
    data = {
        "session_id": result.session_id,
        "events": result.events,
        "first_position": result.first_position,
        "last_position": result.last_position,
        "file": args.file,
    }
    text = _key_lines(
        [
            ("session_id", result.session_id),
            ("events", str(result.events)),
            ("positions", positions),
            ("file", args.file),
        ]
    )
    return Output(data, text)


def _import(args: argparse.Namespace, client: Client) -> Output:
    progress = _Progress("imported", args.progress)
    try:
        result = transfer.import_session(
            _stub(client),
            sys.stdin if args.file == "-" else args.file,
            args.session_id,
            args.to_position,
            progress=progress,
        )
    except OSError as problem:
        raise _os_error(problem, args.file) from None
    finally:
        progress.done()
    info = result.session
    data = {**_session_data(info), "events": result.events, "file": args.file}
    text = _key_lines([*_session_pairs(info), ("events", str(result.events)), ("file", args.file)])
    return Output(data, text)


def _fork(args: argparse.Namespace, client: Client) -> Output:
    info = transfer.fork_session(
        _stub(client),
        args.session_id,
        args.at_position,
        args.new_session_id,
        source=SOURCE,
        metadata=dict(args.meta),
        timeout=args.timeout,
    )
    origin_position = info.position - 1  # the fork event follows the copy
    data = {
        **_session_data(info),
        "origin_session_id": args.session_id,
        "origin_position": origin_position,
    }
    text = _key_lines(
        [
            *_session_pairs(info),
            ("forked_from", f"{args.session_id} at position {origin_position}"),
        ]
    )
    return Output(data, text)


def _session_pairs(session: SessionInfo) -> list[tuple[str, str]]:
    return [
        ("id", session.id),
        ("position", str(session.position)),
        ("variables", str(session.variable_count)),
        ("ttl_seconds", str(session.ttl_seconds)),
        ("metadata", _show_mapping(session.metadata)),
        ("created_at", _show_time(session.created_at)),
        ("updated_at", _show_time(session.updated_at)),
        *_token_pairs(session),
    ]
