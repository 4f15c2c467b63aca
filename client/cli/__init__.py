"""The client commands of the ``varstore`` program: sessions and variables on a server.

Each group of commands is a module: :mod:`.variables` (register, get, set, batch, delete,
rollback, list), :mod:`.sessions` (session create, list, show, delete), :mod:`.history`
(history, log, watch), :mod:`.transfer` (export, import, fork) and :mod:`.health`. They
talk to ``--server HOST:PORT`` (or several servers sharing one log, ``HOST:PORT,HOST:PORT``;
default: env ``VARSTORE_SERVER``, else 127.0.0.1:50051) through :mod:`varstore.client`,
and take the client options (:mod:`.options`) anywhere on the line. People get aligned
tables or ``key: value`` lines; ``--json`` prints JSON (:mod:`.output`: one timestamp
format, RFC 3339 with ``Z``). A failure is one line on stderr, ``varstore: <message>``,
and exit code 1. Every write records source ``cli``.

:func:`add_client_commands` adds the commands to the ``varstore`` group.
"""

from __future__ import annotations

import click

from varstore.client.cli import health, history, sessions, transfer, variables
from varstore.client.cli.options import DEFAULT_SERVER, SOURCE, client_options
from varstore.client.cli.values import parse_value

__all__ = ["DEFAULT_SERVER", "SOURCE", "add_client_commands", "client_options", "parse_value"]


def add_client_commands(group: click.Group) -> None:
    """Add every client command (and the ``session`` group) to ``group``."""
    group.add_command(sessions.session)
    for command in (
        *variables.COMMANDS,
        *history.COMMANDS,
        *transfer.COMMANDS,
        *health.COMMANDS,
    ):
        group.add_command(command)
