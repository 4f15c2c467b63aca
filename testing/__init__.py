"""``varstore.testing``: what the varstore pytest plugin's fixtures give, for testing code
that uses varstore.

Installing varstore registers the plugin (the ``pytest11`` entry point ``varstore``, the
top-level module ``pytest_varstore``, at the repository root), so these fixtures need no setup and no import:

``varstore_server``
    A real varstore server in the test process, on a free loopback port, its log in
    memory; one per test run. ``.address`` is ``host:port``; ``.store`` is the server's
    :class:`~varstore.api.store.Store`; ``.connect()`` opens a :class:`~varstore.client.Client`.
``varstore_client``
    A :class:`~varstore.client.Client` on ``varstore_server``, closed after the test.
``varstore_session``
    A fresh sync :class:`~varstore.client.SessionContext` on a new, empty session.
``varstore_replay``
    ``varstore_replay(path, to_position=None, *, session_id=None, config=None)``: a sync
    ``SessionContext`` on a new session rebuilt from a JSON Lines export (such as
    ``varstore export SESSION FILE`` writes), up to ``to_position`` if given. A relative
    path is looked up beside the test file first, then in the working directory.

Example::

    def test_the_agent_resumes_a_recorded_session(varstore_replay):
        session = varstore_replay("sessions/prod-1234.jsonl", to_position=40)
        assert session.get_variable("temperature") == 0.7

Disable it with ``-p no:varstore``. The plugin module imports nothing of varstore until
one of its fixtures is used (this module then), so a project that installs varstore but
does not use the fixtures sees no trace of it: no import, no assertion-rewrite warning.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # imported when a server starts, so a client-only user stays light
    from varstore.api.server import RunningServer
    from varstore.api.store import Store
    from varstore.client import Client, SessionContext

__all__ = ["Replay", "VarstoreServer", "new_session", "replayer", "start_varstore_server"]


@dataclass
class VarstoreServer:
    """A server running in the test process (what ``varstore_server`` gives)."""

    running: RunningServer

    @property
    def address(self) -> str:
        """``host:port`` that clients dial."""
        return self.running.address

    @property
    def store(self) -> Store:
        """The server's store (its log, state and limits), for inspecting what was written."""
        return self.running.store

    def connect(self, config: Mapping[str, Any] | None = None) -> Client:
        """A new client on this server (close it, or use it as a context manager)."""
        from varstore.client import connect

        return connect(self.address, config)

    def stop(self) -> None:
        """Stop serving and close the log."""
        self.running.stop(grace=1.0)


class Replay(Protocol):
    """The type of ``varstore_replay``."""

    def __call__(
        self,
        path: str | Path,
        to_position: int | None = None,
        *,
        session_id: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> SessionContext:
        """A context on a new session rebuilt from the export at ``path``."""
        ...


def start_varstore_server() -> VarstoreServer:
    """A varstore server in this process (memory log, free loopback port): what the
    ``varstore_server`` fixture gives."""
    from varstore.api.server import start_server
    from varstore.api.store import Store
    from varstore.eventstore.memory import MemoryRecorder

    return VarstoreServer(start_server(Store(MemoryRecorder()), "127.0.0.1:0"))


def new_session(client: Client) -> SessionContext:
    """A fresh sync SessionContext on a new, empty session: what ``varstore_session`` gives."""
    return client.create_session(f"test_{uuid.uuid4().hex[:16]}")


def replayer(client: Client, here: Path) -> Replay:
    """What ``varstore_replay`` gives: a function from an export's path (relative paths are
    looked up in ``here`` first) and optionally a position to a sync SessionContext on a
    new session rebuilt from it."""

    def replay(
        path: str | Path,
        to_position: int | None = None,
        *,
        session_id: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> SessionContext:
        found = Path(path)
        if not found.is_absolute() and (here / found).exists():
            found = here / found
        return client.import_session(
            found,
            session_id or f"replay_{uuid.uuid4().hex[:16]}",
            to_position,
            config=config,
        )

    return replay
