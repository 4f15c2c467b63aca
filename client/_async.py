"""The asyncio client: :class:`AsyncSessionContext` on a ``grpc.aio.Channel``, and
:func:`aconnect`, which owns its channel. Mirrors :mod:`varstore.client._sync` line for
line, differing only by ``await``; every decision lives in :mod:`varstore.client._core`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from varstore.client import transfer
from varstore.client._core import (
    MISSING,
    ChangeInfo,
    ContextCore,
    SessionInfo,
    VariableInfo,
    point_fields,
    session_request,
)
from varstore.client._watch import AsyncWatchStream, watch_request
from varstore.types import AlreadyExists, SessionNotFound, VariableNotFound, VarstoreError
from varstore.types.status import error_from_rpc_error
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

__all__ = ["AsyncClient", "AsyncSessionContext", "AsyncSessionView", "aconnect"]

Request = TypeVar("Request")
Response = TypeVar("Response")


async def _call(
    method: Callable[..., Awaitable[Response]], request: Any, timeout: float
) -> Response:
    """Make one call; a failure becomes its VarstoreError (the client's one mapping)."""
    try:
        return await method(request, timeout=timeout)
    except grpc.RpcError as failure:
        raise error_from_rpc_error(failure) from failure


class AsyncSessionContext:
    """Variables of one session, with a cache: the seed's ``SessionContext``, for asyncio.

    Args:
        session_id: The session; created on first use if the server does not know it.
        channel: A ``grpc.aio.Channel`` (the caller keeps ownership).
        config: ``enable_caching`` (True), ``cache_ttl`` (1.0 s), ``max_size`` (1000),
            ``metadata`` (session metadata if it is created), ``source`` ("python", the
            name recorded with every write), ``timeout`` (30 s per call),
            ``create_session`` (True), ``cache_mode`` ("ttl"; "watch": one watch on the
            session, run by a task started on the first call, keeps cached entries
            current, and they expire by TTL only while it is down).
        clock: Monotonic seconds for the cache's TTL (injectable for tests).
    """

    def __init__(
        self,
        session_id: str,
        channel: grpc.aio.Channel,
        config: Mapping[str, Any] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_id = session_id
        self.channel = channel
        self._stub = pb_grpc.VariableStoreStub(channel)
        self._core = ContextCore(session_id, config or {}, clock)
        self._session_known = False
        self._owned_channel = False
        self._watch: asyncio.Task[None] | None = None

    @property
    def metadata(self) -> dict[str, str]:
        """The session metadata this context creates its session with."""
        return self._core.metadata

    @property
    def source(self) -> str:
        """The name recorded as the source of this context's writes."""
        return self._core.source

    async def _send(self, method: Callable[..., Awaitable[Response]], request: Any) -> Response:
        try:
            response = await _call(method, request, self._core.timeout)
        except SessionNotFound:
            if self._session_known or not self._core.create_session:
                raise
            await self._create_session()
            response = await _call(method, request, self._core.timeout)
        except VarstoreError:
            self._session_known = True  # any other answer means the session was there
            raise
        self._session_known = True
        if self._core.watch_due(_served_at(response)):
            self._watch = asyncio.get_running_loop().create_task(
                _run_cache_watch(self._stub, self._core),
                name=f"varstore-watch-{self.session_id}",
            )
        return response

    async def _create_session(self) -> None:
        request = self._core.create_session_request()
        with contextlib.suppress(AlreadyExists):  # someone else created it first: as good
            await _call(self._stub.CreateSession, request, self._core.timeout)
        self._session_known = True

    # -- variables --------------------------------------------------------------------------

    async def register_variable(
        self,
        name: str,
        type: str,
        initial_value: Any,
        constraints: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Register a variable; returns its id. Does not touch the cache.

        Raises:
            ValidationError: unknown type, a value or constraint that is not acceptable.
            AlreadyExists: the session has a variable of that name.
        """
        request = self._core.register_request(name, type, initial_value, constraints, metadata)
        response = await self._send(self._stub.RegisterVariable, request)
        self._core.remember_register(name, response.variable_id, response.header.position)
        return response.variable_id

    async def get_variable(
        self, name: str, default: Any = MISSING, bypass_cache: bool = False
    ) -> Any:
        """A variable's value (by name or id), from the cache when fresh.

        Returns ``default`` (even None) when the variable does not exist and one is given.

        Raises:
            VariableNotFound: no such variable and no default (also a ``KeyError``).
            SessionNotFound, Unavailable, VarstoreError: for other failures.
        """
        hit, value = self._core.cached(name, bypass_cache)
        if hit:
            return value
        try:
            response = await self._send(self._stub.GetVariable, self._core.get_request(name))
        except VariableNotFound as missing:
            return self._core.default_or_raise(missing, default)
        return self._core.remember_read(response.variable, response.header.position)

    async def set_variable(
        self,
        name: str,
        value: Any,
        metadata: Mapping[str, str] | None = None,
        expected_version: int | None = None,
    ) -> int:
        """Set a variable's value; returns its new version.

        Raises:
            ValidationError: the value is of the wrong type or breaks a constraint
                (e.g. "value 150 is above maximum 100").
            VersionConflict: ``expected_version`` is not the current version.
            VariableNotFound: no such variable.
        """
        request = self._core.set_request(name, value, metadata, expected_version)
        response = await self._send(self._stub.SetVariable, request)
        self._core.remember_write(response.variable, response.header.position)
        return response.new_version

    async def get_variables(
        self,
        names: Iterable[str],
        defaults: Mapping[str, Any] | None = None,
        bypass_cache: bool = False,
    ) -> dict[str, Any]:
        """Values of many variables, keyed as asked; cache first, then one call for the rest.

        A missing variable takes its value from ``defaults``, or is left out.

        Raises:
            SessionNotFound, LimitExceeded, Unavailable, VarstoreError.
        """
        results: dict[str, Any] = {}
        wanted: list[str] = []
        for name in names:
            hit, value = self._core.cached(name, bypass_cache)
            if hit:
                results[name] = value
            else:
                wanted.append(name)
        if wanted:
            response = await self._send(
                self._stub.GetVariables, self._core.get_many_request(wanted)
            )
            for name, variable in response.variables.items():
                results[name] = self._core.remember_read(variable, response.header.position)
            for name in response.missing_variables:
                if defaults is not None and name in defaults:
                    results[name] = defaults[name]
        return results

    async def update_variables(
        self,
        updates: Mapping[str, Any],
        metadata: Mapping[str, str] | None = None,
        atomic: bool = True,
    ) -> dict[str, bool | str]:
        """Set many variables; returns, per name, True or why the server refused it.

        Atomic (the default): all or nothing, as one event at one position.

        Raises:
            ValidationError: an atomic batch was refused; ``violations`` says why, per name.
            VersionConflict, LimitExceeded, SessionNotFound, Unavailable.
        """
        request = self._core.set_many_request(updates, metadata, atomic)
        response = await self._send(self._stub.SetVariables, request)
        return self._core.remember_batch(updates, response)

    async def list_variables(self, pattern: str | None = None) -> list[VariableInfo]:
        """The session's variables (optionally those whose names match a glob), by name.

        Raises:
            SessionNotFound, Unavailable, VarstoreError.
        """
        response = await self._send(self._stub.ListVariables, self._core.list_request(pattern))
        return [VariableInfo.from_proto(variable) for variable in response.variables]

    async def delete_variable(self, name: str) -> None:
        """Delete a variable (by name or id) and forget it in the cache.

        Raises:
            VariableNotFound, SessionNotFound, Unavailable.
        """
        response = await self._send(self._stub.DeleteVariable, self._core.delete_request(name))
        self._core.remember_delete(name, response.variable, response.header.position)

    # -- watching ---------------------------------------------------------------------------

    def watch(
        self,
        from_position: int = 0,
        variables: Iterable[str] | None = None,
        include_initial: bool = False,
        progress_interval: float | None = None,
        timeout: float | None = None,
    ) -> AsyncWatchStream:
        """Stream the session's changes after ``from_position``, then live.

        ``async for item in ctx.watch()`` yields a ``WatchInitial`` first when
        ``include_initial`` (the watched variables at ``from_position``), then one
        ``WatchUpdate`` per event in position order (a batch is one update; each change
        has its new and previous value), and a ``WatchProgress`` once caught up and after
        every ``progress_interval`` seconds (default 1) without news. ``variables``
        (names or ids) keeps only their changes. Resume a broken watch with
        ``from_position=stream.position``: nothing is missed or repeated. Close the
        stream (``close()``, or ``async with``) to cancel it; no ``timeout`` by default.

        Raises (while iterating):
            OutOfRange: ``from_position`` is beyond the end of the log.
            LimitExceeded: the watch fell too far behind and was dropped, or the server
                has too many watches open.
            SessionNotFound, Unavailable, VarstoreError.
        """
        request = watch_request(
            self.session_id, from_position, variables, include_initial, progress_interval
        )
        known = self._session_known or not self._core.create_session
        return AsyncWatchStream(
            lambda: self._stub.WatchSession(request, timeout=timeout),
            from_position,
            None if known else self._create_session,
        )

    # -- the past ---------------------------------------------------------------------------

    async def history(
        self,
        name: str,
        *,
        from_version: int = 0,
        to_version: int | None = None,
        newest_first: bool = False,
    ) -> list[ChangeInfo]:
        """Every version of a variable (by id: one lifetime; by name: every variable that
        had the name), with previous values, positions, times, sources and metadata.

        Raises:
            VariableNotFound: the session never had such a variable.
            SessionNotFound, Unavailable.
        """
        changes: list[ChangeInfo] = []
        token = ""
        while True:
            request = self._core.history_request(
                name, from_version, to_version, newest_first, token
            )
            page = await _call(self._stub.GetVariableHistory, request, self._core.timeout)
            changes.extend(ChangeInfo.from_proto(change) for change in page.changes)
            token = page.next_page_token
            if not token:
                return changes

    async def rollback_variable(
        self,
        name: str,
        to_version: int,
        metadata: Mapping[str, str] | None = None,
        expected_version: int | None = None,
    ) -> int:
        """Give a variable an earlier version's value, as a new change; returns the new
        version. Nothing is erased: the history shows the rollback.

        Raises:
            ValidationError: ``to_version`` is not an earlier version.
            VersionConflict: ``expected_version`` is not the current version.
            VariableNotFound, SessionNotFound, Unavailable.
        """
        request = self._core.rollback_request(name, to_version, metadata, expected_version)
        response = await self._send(self._stub.RollbackVariable, request)
        self._core.remember_write(response.variable, response.header.position)
        return response.new_version

    async def read_events(
        self,
        from_position: int = 1,
        to_position: int | None = None,
        *,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The session's raw log, one dict per event in the JSON Lines export format
        (``position``, ``type``, ``recorded_at``, ``source``, ``metadata``, ``payload``...).

        Raises:
            SessionNotFound, Unavailable.
        """
        events: list[dict[str, Any]] = []
        token = ""
        while limit is None or len(events) < limit:
            request = pb.ReadEventsRequest(
                session_id=self.session_id,
                from_position=from_position,
                backwards=backwards,
                page_size=1000,
                page_token=token,
            )
            if to_position is not None:
                request.to_position = to_position
            page = await _call(self._stub.ReadEvents, request, self._core.timeout)
            events.extend(transfer.event_to_json(event) for event in page.events)
            token = page.next_page_token
            if not token:
                break
        return events if limit is None else events[:limit]

    def at(self, point: int | datetime) -> AsyncSessionView:
        """A read-only view of the session as it stood at a position or a moment (reads
        through it bypass the cache)."""
        return AsyncSessionView(self, point_fields(point))

    # -- cache ------------------------------------------------------------------------------

    def set_cache_config(
        self, ttl: float | None = None, max_size: int | None = None, enabled: bool | None = None
    ) -> None:
        """Change the cache's TTL (seconds), size bound, or turn it on or off."""
        self._core.set_cache_config(ttl, max_size, enabled)

    def invalidate_cache(self, name: str | None = None) -> None:
        """Forget one variable (by name or id), or the whole cache."""
        self._core.invalidate(name)

    def get_cache_stats(self) -> dict[str, Any]:
        """``hits``, ``misses``, ``evictions``, ``sets``, ``size``, ``hit_rate``, ``ttl``
        (``{"enabled": False}`` when caching is off)."""
        return self._core.stats()

    # -- lifecycle --------------------------------------------------------------------------

    async def cleanup(self) -> None:
        """Stop the cache's watch, drop the cache (and close the channel if this context
        owns it)."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            self._core.watch_stopped()
        self._core.invalidate(None)
        if self._owned_channel:
            await self.channel.close()

    close = cleanup

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.cleanup()


def _served_at(response: object) -> int:
    """The position an answer was served at (every answer has a ``ResponseHeader``)."""
    header: pb.ResponseHeader = getattr(response, "header")  # noqa: B009
    return header.position


async def _run_cache_watch(stub: pb_grpc.VariableStoreStub, core: ContextCore) -> None:
    """A "watch"-mode cache's watch, until cancelled: open the stream, hand every message
    to the core, reconnect with backoff from the last position applied. Every decision is
    the core's."""
    failures = 0
    while True:
        try:
            call: Any = stub.WatchSession(core.watch_request())
        except (ValueError, grpc.aio.UsageError):  # the channel was closed under us
            core.watch_lost(None)
            return
        error: BaseException | None = None
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                core.apply_watch_message(message)
                failures = 0
        except grpc.RpcError as failure:
            error = error_from_rpc_error(failure)
        except (ValueError, grpc.aio.UsageError):
            core.watch_lost(None)
            return
        except Exception as failure:  # noqa: BLE001 - never let the task die
            error = failure
        finally:
            call.cancel()
        core.watch_lost(error)
        await asyncio.sleep(core.watch_backoff(failures))
        failures += 1


class AsyncClient:
    """An asyncio connection to a varstore server that owns its channel; opens, creates, lists and
    deletes sessions. Use :func:`aconnect`."""

    def __init__(self, address: str, config: Mapping[str, Any] | None = None) -> None:
        self.address = address
        self.config = dict(config or {})
        self.channel = grpc.aio.insecure_channel(address)
        self._stub = pb_grpc.VariableStoreStub(self.channel)
        self._timeout = float(self.config.get("timeout", 30.0))
        # Exports and imports read and write files: they run in a worker thread, on a sync
        # channel of their own (opened on first use), through the same code as Client's.
        self._transfer_channel: grpc.Channel | None = None

    def session(
        self, session_id: str, config: Mapping[str, Any] | None = None
    ) -> AsyncSessionContext:
        """A context on ``session_id`` (created on first use) sharing this channel."""
        return AsyncSessionContext(session_id, self.channel, {**self.config, **(config or {})})

    async def create_session(
        self,
        session_id: str | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
        ttl_seconds: int = 0,
        config: Mapping[str, Any] | None = None,
    ) -> AsyncSessionContext:
        """Create a session now (an id is generated when none is given).

        Raises:
            AlreadyExists: a live session has that id.
            ValidationError: the id or TTL is not acceptable.
        """
        request = session_request(session_id, metadata, ttl_seconds)
        response = await _call(self._stub.CreateSession, request, self._timeout)
        context = self.session(response.session.id, config)
        context._session_known = True
        return context

    async def get_session(self, session_id: str) -> SessionInfo:
        """Describe one session. Raises SessionNotFound."""
        request = pb.GetSessionRequest(session_id=session_id)
        response = await _call(self._stub.GetSession, request, self._timeout)
        return SessionInfo.from_proto(response.session)

    async def list_sessions(self) -> list[SessionInfo]:
        """Every live session, by id."""
        response = await _call(self._stub.ListSessions, pb.ListSessionsRequest(), self._timeout)
        return [SessionInfo.from_proto(session) for session in response.sessions]

    async def delete_session(self, session_id: str) -> None:
        """Delete a session. Raises SessionNotFound."""
        request = pb.DeleteSessionRequest(session_id=session_id)
        await _call(self._stub.DeleteSession, request, self._timeout)

    def _transfer_stub(self) -> pb_grpc.VariableStoreStub:
        if self._transfer_channel is None:
            self._transfer_channel = grpc.insecure_channel(self.address)
        return pb_grpc.VariableStoreStub(self._transfer_channel)

    def _opened(self, session_id: str, config: Mapping[str, Any] | None) -> AsyncSessionContext:
        context = self.session(session_id, config)
        context._session_known = True
        return context

    async def fork_session(
        self,
        session_id: str,
        at_position: int = 0,
        new_session_id: str | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> AsyncSessionContext:
        """As :meth:`varstore.client.Client.fork_session`: a new session whose log is a copy
        of ``session_id``'s up to ``at_position``.

        Raises:
            SessionNotFound, OutOfRange, AlreadyExists.
        """
        info = await asyncio.to_thread(
            transfer.fork_session,
            self._transfer_stub(),
            session_id,
            at_position,
            new_session_id,
            source=str(self.config.get("source", "python")),
            metadata=metadata,
            timeout=self._timeout,
        )
        return self._opened(info.id, config)

    async def export_session(
        self,
        session_id: str,
        path_or_file: transfer.PathOrFile,
        *,
        from_position: int = 0,
        to_position: int | None = None,
        progress: transfer.Progress | None = None,
        timeout: float | None = None,
    ) -> transfer.ExportResult:
        """As :meth:`varstore.client.Client.export_session`, in a worker thread.

        Raises:
            SessionNotFound, ValidationError, Unavailable; OSError when writing fails.
        """
        return await asyncio.to_thread(
            transfer.export_session,
            self._transfer_stub(),
            session_id,
            path_or_file,
            from_position=from_position,
            to_position=to_position,
            progress=progress,
            timeout=timeout,
        )

    async def import_session(
        self,
        path_or_file: transfer.PathOrFile,
        session_id: str | None = None,
        to_position: int | None = None,
        *,
        progress: transfer.Progress | None = None,
        config: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> AsyncSessionContext:
        """As :meth:`varstore.client.Client.import_session`, in a worker thread.

        Raises:
            ValidationError, AlreadyExists, OutOfRange.
        """
        result = await asyncio.to_thread(
            transfer.import_session,
            self._transfer_stub(),
            path_or_file,
            session_id,
            to_position,
            progress=progress,
            timeout=timeout,
        )
        return self._opened(result.session.id, config)

    async def close(self) -> None:
        """Close the channels."""
        await self.channel.close()
        if self._transfer_channel is not None:
            self._transfer_channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


def aconnect(
    address: str = "127.0.0.1:50051", config: Mapping[str, Any] | None = None
) -> AsyncClient:
    """An :class:`AsyncClient` on ``address`` that owns its channel
    (``async with aconnect(...) as client``)."""
    return AsyncClient(address, config)


class AsyncSessionView:
    """A session as it stood at one position or moment: reads only, never cached.

    Reads raise OutOfRange for a position beyond the log, and SessionNotFound for a
    moment before the session existed.
    """

    def __init__(self, context: AsyncSessionContext, fields: dict[str, Any]) -> None:
        self._context = context
        self._fields = fields

    async def get_variable(self, name: str, default: Any = MISSING) -> Any:
        """A variable's value then; ``default`` if it did not exist then (when given)."""
        core = self._context._core
        request = core.get_request(name)
        request.MergeFrom(pb.GetVariableRequest(**self._fields))
        try:
            response = await _call(self._context._stub.GetVariable, request, core.timeout)
        except VariableNotFound as missing:
            return core.default_or_raise(missing, default)
        return VariableInfo.from_proto(response.variable).value

    async def get_variables(
        self, names: Iterable[str], defaults: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Values of many variables then, keyed as asked (missing ones from defaults)."""
        core = self._context._core
        request = core.get_many_request(names)
        request.MergeFrom(pb.GetVariablesRequest(**self._fields))
        response = await _call(self._context._stub.GetVariables, request, core.timeout)
        results = {
            name: VariableInfo.from_proto(variable).value
            for name, variable in response.variables.items()
        }
        for name in response.missing_variables:
            if defaults is not None and name in defaults:
                results[name] = defaults[name]
        return results

    async def list_variables(self, pattern: str | None = None) -> list[VariableInfo]:
        """The variables then (optionally those whose names match a glob), by name."""
        core = self._context._core
        request = core.list_request(pattern)
        request.MergeFrom(pb.ListVariablesRequest(**self._fields))
        response = await _call(self._context._stub.ListVariables, request, core.timeout)
        return [VariableInfo.from_proto(variable) for variable in response.variables]
