"""A client's operations (sessions, and copies of their logs), written once as flows for
the sync :class:`~varstore.client.Client` and the :class:`~varstore.client.AsyncClient`.

Forks, exports and imports read and write files through :mod:`varstore.client.transfer`
on a blocking stub: each is one :class:`~varstore.client._flow.Blocking` effect, which
the asyncio driver runs in a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Generic, Protocol, TypeVar

from varstore.client import transfer
from varstore.client._core import DEFAULT_SOURCE, DEFAULT_TIMEOUT, SessionInfo, session_request
from varstore.client._effects import Blocking, Call
from varstore.client._flow import (
    Driver,
    F,
    Flavoured,
    Flow,
    Retry,
    every_page,
    new_request_id,
    operation,
    retried,
)
from varstore.client._positions import SeenPositions
from varstore.v1 import varstore_pb2 as pb

__all__ = ["ClientOps", "Contextual"]


class Contextual(Protocol):
    """What a client needs of the contexts it opens: to say the session exists, and to
    hand over the token the server issued for it."""

    session_token: str

    def _known(self) -> None: ...


#: The context class of the client's flavour.
C = TypeVar("C", bound=Contextual)


class ClientOps(Flavoured[F], Generic[F, C]):
    """A connection to one or several varstore servers sharing a log; the flavour's class
    adds how it opens its channel, the contexts it gives, and how it closes.

    ``address`` is the servers' addresses joined by ",". Every call, the client's and its
    contexts', asks for a server that has applied the session as far as any answer to
    this client showed it (one :class:`SeenPositions` for the client): the client reads
    its own writes on any server.
    """

    def __init__(self, address: str, config: Mapping[str, Any] | None, driver: Driver) -> None:
        self.address = address
        self.config = dict(config or {})
        self._run = driver.run
        self._timeout = float(self.config.get("timeout", DEFAULT_TIMEOUT))
        self._retry = Retry.from_config(self.config)
        #: Per session, the highest position any answer to this client showed.
        self._seen = SeenPositions()
        #: The source recorded with the client's own writes (``config["source"]``).
        self._source = str(self.config.get("source", DEFAULT_SOURCE))

    def _context(self, session_id: str, config: Mapping[str, Any]) -> C:
        """A context of this client's flavour on its channel."""
        raise NotImplementedError

    def session(self, session_id: str, config: Mapping[str, Any] | None = None) -> C:
        """A context on ``session_id`` (created on first use) sharing this client's channel
        and its record of the positions seen (it reads what the client's other contexts
        wrote)."""
        return self._context(session_id, {**self.config, **(config or {})})

    def _opened(self, session: SessionInfo, config: Mapping[str, Any] | None) -> C:
        """A context on a session this client just made (never re-created behind its back),
        holding the session's token when the server issued one."""
        context = self.session(session.id, config)
        context._known()
        context.session_token = session.session_token
        return context

    def _call(self, method: str, request: Any) -> Call:
        return Call(method, request, self._timeout)

    @operation
    def create_session(
        self,
        session_id: str | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
        ttl_seconds: int = 0,
        config: Mapping[str, Any] | None = None,
    ) -> Flow[C]:
        """Create a session now (an id is generated when none is given).

        Raises:
            AlreadyExists: a live session has that id.
            ValidationError: the id or TTL is not acceptable.
        """
        request = session_request(session_id, metadata, ttl_seconds, self._source)
        call = self._call("CreateSession", request)
        response = yield from retried(call, self._retry, seen=self._seen)
        return self._opened(
            SessionInfo.from_proto(response.session, response.session_token), config
        )

    @operation
    def get_session(self, session_id: str) -> Flow[SessionInfo]:
        """Describe one session. Raises SessionNotFound."""
        request = pb.GetSessionRequest(session_id=session_id)
        response = yield from retried(
            self._call("GetSession", request), self._retry, seen=self._seen
        )
        return SessionInfo.from_proto(response.session)

    @operation
    def list_sessions(self) -> Flow[list[SessionInfo]]:
        """Every live session, by id."""
        call = self._call("ListSessions", pb.ListSessionsRequest())
        sessions = yield from every_page(call, lambda page: page.sessions, retry=self._retry)
        return [SessionInfo.from_proto(session) for session in sessions]

    @operation
    def delete_session(self, session_id: str) -> Flow[None]:
        """Delete a session (recorded with the client's source). Raises SessionNotFound."""
        request = pb.DeleteSessionRequest(session_id=session_id, source=self._source)
        yield from retried(self._call("DeleteSession", request), self._retry, seen=self._seen)

    # -- copies of logs (see varstore.client.transfer) ------------------------------------

    @operation
    def fork_session(
        self,
        session_id: str,
        at_position: int = 0,
        new_session_id: str | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> Flow[C]:
        """A new session whose log is ``session_id``'s up to ``at_position`` (0: all of it),
        then a SessionForked event; its id is ``new_session_id`` or a generated one.

        Raises:
            SessionNotFound: no such session, or it was not live at that position.
            OutOfRange: the position is beyond its log.
            AlreadyExists: ``new_session_id`` was used before.
        """
        options = {
            "source": self._source,
            "metadata": metadata,
            "timeout": self._timeout,
            "request_id": new_request_id(),  # the same on every retry
            "min_position": self._seen.position(session_id),
        }
        fork = Blocking(transfer.fork_session, (session_id, at_position, new_session_id), options)
        info: SessionInfo = yield from retried(fork, self._retry, write=True)
        self._seen.saw(info.id, info.position)
        return self._opened(info, config)

    @operation
    def export_session(
        self,
        session_id: str,
        path_or_file: transfer.PathOrFile,
        *,
        from_position: int = 0,
        to_position: int | None = None,
        progress: transfer.Progress | None = None,
        timeout: float | None = None,
    ) -> Flow[transfer.ExportResult]:
        """Write a session's log (deleted sessions' too) as JSON Lines to a path or an open
        text file; ``progress`` is called with the count so far. See
        :func:`varstore.client.transfer.export_session`.

        Raises:
            SessionNotFound, ValidationError, Unavailable; OSError when writing fails.
        """
        options = {
            "from_position": from_position,
            "to_position": to_position,
            "progress": progress,
            "timeout": timeout,
            "min_position": self._seen.position(session_id),
        }
        export = Blocking(transfer.export_session, (session_id, path_or_file), options)
        retry = self._retry if _rereadable(path_or_file) else self._retry.with_enabled(False)
        result: transfer.ExportResult = yield from retried(export, retry, write=False)
        self._seen.saw(result.session_id, result.last_position)
        return result

    @operation
    def import_session(
        self,
        path_or_file: transfer.PathOrFile,
        session_id: str | None = None,
        to_position: int | None = None,
        *,
        progress: transfer.Progress | None = None,
        config: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Flow[C]:
        """A new session rebuilt from a JSON Lines export (up to ``to_position``), with
        ``session_id`` or the exported session's id. See
        :func:`varstore.client.transfer.import_session`.

        Raises:
            ValidationError: a bad line (named ``FILE:LINE``) or event (named by position);
                nothing is written.
            AlreadyExists: the id was used before.
            OutOfRange: the export ends before ``to_position``.
        """
        options = {"progress": progress, "timeout": timeout, "request_id": new_request_id()}
        imported = Blocking(
            transfer.import_session, (path_or_file, session_id, to_position), options
        )
        retry = self._retry if _rereadable(path_or_file) else self._retry.with_enabled(False)
        result: transfer.ImportResult = yield from retried(imported, retry, write=True)
        self._seen.saw(result.session.id, result.session.position)
        return self._opened(result.session, config)


def _rereadable(path_or_file: transfer.PathOrFile) -> bool:
    """Whether a transfer can start again from scratch: a path can; an open file, which
    the failed attempt consumed or wrote half of, cannot (its call is not retried)."""
    return isinstance(path_or_file, str | os.PathLike)
