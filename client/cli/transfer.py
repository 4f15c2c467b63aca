"""Copies of logs: ``export`` (JSON Lines), ``import`` (a new session from an export) and
``fork`` (a new session from another's log), with progress bars on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from varstore.client import Client, SessionInfo, VarstoreError, transfer
from varstore.client.cli.options import SOURCE, Options, client_options, context_for, run
from varstore.client.cli.output import Output, key_lines, session_data, show_mapping, show_time
from varstore.client.cli.progress import TransferProgress, on_terminal
from varstore.client.cli.values import POSITION, meta_option
from varstore.v1 import varstore_pb2_grpc as pb_grpc

__all__ = ["COMMANDS"]

_PROGRESS = click.option(
    "--progress",
    is_flag=True,
    help="report progress on stderr also when it is not a terminal (a line every 1000 events)",
)


@click.command("export")
@click.argument("session_id", metavar="SESSION")
@click.argument("file", default="-", metavar="[FILE]")
@click.option(
    "--from", "from_position", type=POSITION, default=0, metavar="N", help="first position"
)
@click.option("--to", "to_position", type=POSITION, metavar="N", help="last position")
@_PROGRESS
@client_options()
def export(
    session_id: str, file: str, from_position: int, to_position: int | None, progress: bool
) -> None:
    """Write a session's log (deleted sessions' too) as JSON Lines, one event a line, to
    FILE (default -: stdout). --json prints the summary as JSON (the events are JSON Lines
    either way). --timeout does not bound the export."""

    def call(options: Options, client: Client) -> Output:
        to_stdout = file == "-"
        total = _export_total(client, session_id, from_position, to_position)
        try:
            with TransferProgress("exported", total, asked=progress) as shown:
                result = transfer.export_session(
                    _stub(client),
                    session_id,
                    sys.stdout if to_stdout else file,
                    from_position=from_position,
                    to_position=to_position,
                    progress=shown,
                )
        except BrokenPipeError:
            raise
        except OSError as problem:
            raise VarstoreError(f"{file}: {problem.strerror or problem}") from None
        if to_stdout:
            return Output(None, "", printed=True)
        positions = f"{result.first_position}-{result.last_position}" if result.events else "-"
        data = {
            "session_id": result.session_id,
            "events": result.events,
            "first_position": result.first_position,
            "last_position": result.last_position,
            "file": file,
        }
        text = key_lines(
            [
                ("session_id", result.session_id),
                ("events", str(result.events)),
                ("positions", positions),
                ("file", file),
            ]
        )
        return Output(data, text)

    run(call)


def _export_total(
    client: Client, session_id: str, from_position: int, to_position: int | None
) -> int | None:
    """How many events the export writes, for a bar on a terminal (else not asked)."""
    if not on_terminal():
        return None
    last = context_for(client, session_id).read_events(backwards=True, limit=1)
    end = last[0]["position"] if last else 0
    if to_position is not None:
        end = min(end, to_position)
    return max(end - max(from_position, 1) + 1, 0)


@click.command("import")
@click.argument("file", metavar="FILE")
@click.option(
    "--session",
    "session_id",
    metavar="ID",
    help="id of the new session (default: the exported session's); it must be unused",
)
@click.option("--to", "to_position", type=POSITION, metavar="N", help="import up to this position")
@_PROGRESS
@client_options()
def import_(file: str, session_id: str | None, to_position: int | None, progress: bool) -> None:
    """Rebuild a new session from a JSON Lines export (FILE, or - for stdin); every event
    is checked and nothing is written unless all pass. --timeout does not bound it."""

    def call(options: Options, client: Client) -> Output:
        total = _import_total(file, to_position)
        try:
            with TransferProgress("imported", total, asked=progress) as shown:
                result = transfer.import_session(
                    _stub(client),
                    sys.stdin if file == "-" else file,
                    session_id,
                    to_position,
                    progress=shown,
                )
        except OSError as problem:
            raise VarstoreError(f"{file}: {problem.strerror or problem}") from None
        info = result.session
        data = {**session_data(info), "events": result.events, "file": file}
        text = key_lines([*_session_pairs(info), ("events", str(result.events)), ("file", file)])
        return Output(data, text)

    run(call)


def _import_total(file: str, to_position: int | None) -> int | None:
    """How many events the import sends (its file's lines), for a bar on a terminal."""
    if not on_terminal() or file == "-":
        return None
    try:
        with Path(file).open("rb") as lines:
            count = sum(1 for line in lines if line.strip())
    except OSError:
        return None  # the import itself says what is wrong with the file
    return count if to_position is None else min(count, to_position)


@click.command("fork")
@click.argument("session_id", metavar="SESSION")
@click.option(
    "--at",
    "at_position",
    type=POSITION,
    default=0,
    metavar="N",
    help="copy up to this position (default: the last)",
)
@click.option("--new-id", "new_session_id", metavar="ID", help="id of the new session")
@meta_option("metadata of the fork event")
@client_options()
def fork(
    session_id: str,
    at_position: int,
    new_session_id: str | None,
    meta: tuple[tuple[str, str], ...],
) -> None:
    """Start a new session whose log is a copy of SESSION's up to a position, then a
    SessionForked event naming SESSION."""

    def call(options: Options, client: Client) -> Output:
        total = None
        if on_terminal():
            total = at_position or client.get_session(session_id).position
        with TransferProgress("forking", None) as shown:
            info = transfer.fork_session(
                _stub(client),
                session_id,
                at_position,
                new_session_id,
                source=SOURCE,
                metadata=dict(meta),
                timeout=options.timeout,
            )
            shown(total or info.position - 1)
        origin_position = info.position - 1  # the fork event follows the copy
        data = {
            **session_data(info),
            "origin_session_id": session_id,
            "origin_position": origin_position,
        }
        text = key_lines(
            [
                *_session_pairs(info),
                ("forked_from", f"{session_id} at position {origin_position}"),
            ]
        )
        return Output(data, text)

    run(call)


def _stub(client: Client) -> pb_grpc.VariableStoreStub:
    return pb_grpc.VariableStoreStub(client.channel)


def _session_pairs(session: SessionInfo) -> Sequence[tuple[str, str]]:
    return [
        ("id", session.id),
        ("position", str(session.position)),
        ("variables", str(session.variable_count)),
        ("ttl_seconds", str(session.ttl_seconds)),
        ("metadata", show_mapping(session.metadata)),
        ("created_at", show_time(session.created_at)),
        ("updated_at", show_time(session.updated_at)),
        *([("session_token", session.session_token)] if session.session_token else []),
    ]


#: The transfer commands, as the top-level group adds them.
COMMANDS = (export, import_, fork)
