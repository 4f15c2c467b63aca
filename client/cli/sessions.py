"""``varstore session create|list|show|delete``."""

from __future__ import annotations

import dataclasses

import click

from varstore.client import Client, SessionInfo
from varstore.client.cli.options import Options, client_options, run
from varstore.client.cli.output import (
    Output,
    cell,
    key_lines,
    session_data,
    show_mapping,
    show_time,
    table,
)
from varstore.client.cli.values import meta_option

__all__ = ["session", "session_output"]


@click.group("session", no_args_is_help=True)
@client_options()
def session() -> None:
    """Create, list, show or delete sessions."""


@session.command("create")
@click.argument("session_id", metavar="[SESSION_ID]", required=False)
@click.option(
    "--ttl",
    type=click.IntRange(min=0),
    default=0,
    metavar="SECONDS",
    help="expire the session after this long untouched (default 0: never)",
)
@meta_option("session metadata")
@client_options()
def create(session_id: str | None, ttl: int, meta: tuple[tuple[str, str], ...]) -> None:
    """Create a session (its id is generated when none is given)."""

    def call(options: Options, client: Client) -> Output:
        context = client.create_session(session_id, metadata=dict(meta), ttl_seconds=ttl)
        made = client.get_session(context.session_id)
        return session_output(dataclasses.replace(made, session_token=context.session_token))

    run(call)


@session.command("list")
@client_options()
def list_() -> None:
    """List the live sessions."""

    def call(options: Options, client: Client) -> Output:
        sessions = client.list_sessions()
        rows = [
            [
                s.id,
                str(s.variable_count),
                str(s.ttl_seconds) if s.ttl_seconds else "-",
                show_time(s.created_at),
                show_time(s.updated_at),
                show_time(s.expires_at),
                cell(show_mapping(s.metadata)),
            ]
            for s in sessions
        ]
        headers = ["ID", "VARIABLES", "TTL", "CREATED_AT", "UPDATED_AT", "EXPIRES_AT", "METADATA"]
        text = table(headers, rows) if rows else "no sessions"
        return Output([session_data(s) for s in sessions], text)

    run(call)


@session.command("show")
@click.argument("session_id", metavar="SESSION_ID")
@client_options()
def show(session_id: str) -> None:
    """Describe one session: its position, variables, TTL and times."""
    run(lambda options, client: session_output(client.get_session(session_id)))


@session.command("delete")
@click.argument("session_id", metavar="SESSION_ID")
@client_options()
def delete(session_id: str) -> None:
    """Delete a session (its log stays readable: log, export, history)."""

    def call(options: Options, client: Client) -> Output:
        client.delete_session(session_id)
        return Output({"id": session_id, "deleted": True}, f"deleted session {session_id}")

    run(call)


def session_output(session: SessionInfo) -> Output:
    """A session as ``key: value`` lines, or its JSON object."""
    text = key_lines(
        [
            ("id", session.id),
            ("position", str(session.position)),
            ("variables", str(session.variable_count)),
            ("ttl_seconds", str(session.ttl_seconds)),
            ("metadata", show_mapping(session.metadata)),
            ("created_at", show_time(session.created_at)),
            ("updated_at", show_time(session.updated_at)),
            ("expires_at", show_time(session.expires_at)),
            *([("session_token", session.session_token)] if session.session_token else []),
        ]
    )
    return Output(session_data(session), text)
