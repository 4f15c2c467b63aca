"""A session context's operations and a view's reads, each written once as a flow for both
the sync and the asyncio context (see :mod:`varstore.client._flow`).

Every call a context makes asks for a server that has applied the session as far as the
client has seen it (``min_position``, from the client's
:class:`~varstore.client._positions.SeenPositions`, which every answer updates): it reads
its own writes, and never goes back in time, whichever server answers.

Creating the session on first use lives in :meth:`SessionOps._send` alone: a call the
server answers with SessionNotFound creates the session and is made once more, unless
the session was known to exist (then it was deleted, and that is the answer) or
``create_session`` is off. Every call goes through :func:`~varstore.client._flow.retried`
with the context's :class:`~varstore.client._flow.Retry` (config ``retry``,
``retry_deadline``): a write carries one request id across its retries.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar

from varstore.client import transfer
from varstore.client._core import MISSING, ChangeInfo, ContextCore, VariableInfo, point_fields
from varstore.client._effects import Background, Call, Stop
from varstore.client._flow import (
    Driver,
    F,
    Flavoured,
    Flow,
    Ready,
    Retry,
    every_page,
    operation,
    ready,
    retried,
)
from varstore.client._positions import SeenPositions
from varstore.client._watch import WatchPosition, cache_watch, watch_flow, watch_request
from varstore.types import (
    AlreadyExists,
    LimitExceeded,
    SessionNotFound,
    Unavailable,
    VariableNotFound,
    VarstoreError,
)
from varstore.v1 import varstore_pb2 as pb

__all__ = ["SessionOps", "ViewOps"]

#: The channel a context is on, the watch stream it opens, the view it gives.
Ch = TypeVar("Ch")
W = TypeVar("W")
V = TypeVar("V")

Runs = Callable[[Flow[Any]], Any]

#: The limits each channel's server told (GetServerInfo), asked once per channel, so once
#: per client (its contexts share its channel), and only when first needed.
_SERVER_LIMITS: weakref.WeakKeyDictionary[Any, pb.ServerLimits] = weakref.WeakKeyDictionary()
#: Items per page asked for when the server does not tell its largest page.
_PAGE_SIZE = 1000


class SessionOps(Flavoured[F], Generic[F, Ch, W, V]):
    """Variables of one session, with a cache; the flavour's class adds its driver (how
    flows run on ``channel``), its watch stream, its view and the cached read path."""

    def __init__(
        self,
        session_id: str,
        channel: Ch,
        config: Mapping[str, Any] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        positions: SeenPositions | None = None,
    ) -> None:
        self.session_id = session_id
        self.channel = channel
        seen = positions if positions is not None else SeenPositions()
        self._core = ContextCore(session_id, config or {}, clock, seen)
        self._seen = self._core.positions
        self._retry = Retry.from_config(self._core.config)
        #: True once any answer showed the session exists: it is never re-created.
        self._session_known = False
        #: The session's bearer token, when this context's client created (forked,
        #: imported) the session on a server that requires tokens; "" otherwise.
        self.session_token = ""
        #: The cache's watch (what Background answered), while it runs.
        self._watch: object | None = None
        self._driver = self._driver_for(channel)
        self._run = self._driver.run

    def _driver_for(self, channel: Ch) -> Driver:
        """What performs this context's flows on ``channel``."""
        raise NotImplementedError

    def _stream(self, flow: Flow[None], seen: WatchPosition) -> W:
        """A watch stream running ``flow``."""
        raise NotImplementedError

    def _view(self, fields: dict[str, Any]) -> V:
        """A view of the session at ``fields`` (a position or a moment)."""
        raise NotImplementedError

    def _known(self) -> None:
        """The caller just made the session: never create it behind the caller's back."""
        self._session_known = True

    @property
    def metadata(self) -> dict[str, str]:
        """The session metadata this context creates its session with."""
        return self._core.metadata

    @property
    def source(self) -> str:
        """The name recorded as the source of this context's writes."""
        return self._core.source

    def _send(self, method: str, request: Any) -> Flow[Any]:
        """The answer to one call, creating the session first when needed (see above); the
        first answer of a "watch"-mode context starts the cache's watch."""
        call = Call(method, request, self._core.timeout)
        try:
            response = yield from retried(call, self._retry, seen=self._seen)
        except SessionNotFound:
            if self._session_known or not self._core.create_session:
                raise
            yield from self._create_session()
            response = yield from retried(call, self._retry, seen=self._seen)  # same request id
        except VarstoreError:
            self._session_known = True  # any other answer means the session was there
            raise
        self._session_known = True
        if self._core.watch_due(response.header.position):
            watch = Background(cache_watch(self._core), f"varstore-watch-{self.session_id}")
            self._watch = yield watch
        return response

    def _limits(self) -> Flow[pb.ServerLimits]:
        """The server's limits (0: not told); an older server without GetServerInfo, or
        one that cannot answer now, tells none (and is asked again next time)."""
        known = _SERVER_LIMITS.get(self.channel)
        if known is None:
            request = pb.GetServerInfoRequest()
            try:
                known = (yield Call("GetServerInfo", request, self._core.timeout)).limits
            except Unavailable:
                return pb.ServerLimits()
            except VarstoreError:  # UNIMPLEMENTED: a server from before GetServerInfo
                known = pb.ServerLimits()
            _SERVER_LIMITS[self.channel] = known
        return known

    def _create_session(self) -> Flow[None]:
        request = self._core.create_session_request()
        with contextlib.suppress(AlreadyExists):  # someone else created it first: as good
            call = Call("CreateSession", request, self._core.timeout)
            yield from retried(call, self._retry, seen=self._seen)
        self._session_known = True

    def _write(self, method: str, request: Any) -> Flow[int]:
        """A write of one variable: its new version, and its new value cached."""
        response = yield from self._send(method, request)
        self._core.remember_write(response.variable, response.header.position)
        return int(response.new_version)

    def _fetch(self, name: str, default: Any) -> Flow[Any]:
        """A cache miss of ``get_variable``: ask the server, and cache what it says."""
        try:
            response = yield from self._send("GetVariable", self._core.get_request(name))
        except VariableNotFound as missing:
            return self._core.default_or_raise(missing, default)
        return self._core.remember_read(response.variable, response.header.position)

    # -- variables --------------------------------------------------------------------------

    @operation
    def register_variable(
        self,
        name: str,
        type: str,
        initial_value: Any,
        constraints: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Flow[str]:
        """Register a variable; returns its id. Does not touch the cache.

        Raises:
            ValidationError: unknown type, a value or constraint that is not acceptable.
            AlreadyExists: the session has a variable of that name.
        """
        request = self._core.register_request(name, type, initial_value, constraints, metadata)
        response = yield from self._send("RegisterVariable", request)
        self._core.remember_register(name, response.variable_id, response.header.position)
        return str(response.variable_id)

    @operation
    def set_variable(
        self,
        name: str,
        value: Any,
        metadata: Mapping[str, str] | None = None,
        expected_version: int | None = None,
    ) -> Flow[int]:
        """Set a variable's value; returns its new version.

        Raises:
            ValidationError: the value is of the wrong type or breaks a constraint
                (e.g. "value 150 is above maximum 100").
            VersionConflict: ``expected_version`` is not the current version.
            VariableNotFound: no such variable.
        """
        request = self._core.set_request(name, value, metadata, expected_version)
        return (yield from self._write("SetVariable", request))

    @operation
    def get_variables(
        self,
        names: Iterable[str],
        defaults: Mapping[str, Any] | None = None,
        bypass_cache: bool = False,
    ) -> Ready[dict[str, Any]] | Flow[dict[str, Any]]:
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
        return self._fetch_many(results, wanted, defaults) if wanted else ready(results)

    def _fetch_many(
        self, results: dict[str, Any], wanted: list[str], defaults: Mapping[str, Any] | None
    ) -> Flow[dict[str, Any]]:
        """The cache misses of ``get_variables``, in one call, added to ``results``."""
        response = yield from self._send("GetVariables", self._core.get_many_request(wanted))
        for name, variable in response.variables.items():
            results[name] = self._core.remember_read(variable, response.header.position)
        for name in response.missing_variables:
            if defaults is not None and name in defaults:
                results[name] = defaults[name]
        return results

    @operation
    def update_variables(
        self,
        updates: Mapping[str, Any],
        metadata: Mapping[str, str] | None = None,
        atomic: bool = True,
    ) -> Flow[dict[str, bool | str]]:
        """Set many variables; returns, per name, True or why the server refused it.

        Atomic (the default): all or nothing, as one event at one position.

        Raises:
            ValidationError: an atomic batch was refused; ``violations`` says why, per name.
            VersionConflict, LimitExceeded, SessionNotFound, Unavailable.
        """
        limit = (yield from self._limits()).max_batch_size
        if limit and len(updates) > limit:  # the server's own refusal, without the trip
            raise LimitExceeded(
                f"batch has {len(updates)} updates; the limit is {limit} (max_batch_size)",
                info={"limit": str(limit), "limit_name": "max_batch_size"},
            )
        request = self._core.set_many_request(updates, metadata, atomic)
        response = yield from self._send("SetVariables", request)
        return self._core.remember_batch(updates, response)

    @operation
    def list_variables(self, pattern: str | None = None) -> Flow[list[VariableInfo]]:
        """The session's variables (optionally those whose names match a glob), by name.

        Raises:
            SessionNotFound, Unavailable, VarstoreError.
        """
        response = yield from self._send("ListVariables", self._core.list_request(pattern))
        return [VariableInfo.from_proto(variable) for variable in response.variables]

    @operation
    def delete_variable(self, name: str) -> Flow[None]:
        """Delete a variable (by name or id) and forget it in the cache.

        Raises:
            VariableNotFound, SessionNotFound, Unavailable.
        """
        response = yield from self._send("DeleteVariable", self._core.delete_request(name))
        self._core.remember_delete(name, response.variable, response.header.position)

    # -- watching ---------------------------------------------------------------------------

    def watch(
        self,
        from_position: int = 0,
        variables: Iterable[str] | None = None,
        include_initial: bool = False,
        progress_interval: float | None = None,
        timeout: float | None = None,
    ) -> W:
        """Stream the session's changes after ``from_position``, then live.

        ``for item in ctx.watch()`` (``async for`` on the asyncio context) yields a
        ``WatchInitial`` first when ``include_initial`` (the watched variables at
        ``from_position``), then one ``WatchUpdate`` per event in position order (a batch
        is one update; each change has its new and previous value), and a
        ``WatchProgress`` once caught up and after every ``progress_interval`` seconds
        (default 1) without news. ``variables`` (names or ids) keeps only their changes.
        When its server goes away (UNAVAILABLE) the watch opens again by itself from
        ``stream.position`` on another server (with retries on, the default, and until
        ``retry_deadline`` passes without news): nothing is missed or repeated. After
        another failure, resume with ``from_position=stream.position``. Close the stream
        (``close()``, or ``with``) to cancel it; no ``timeout`` by default.

        Raises (while iterating):
            OutOfRange: ``from_position`` is beyond the end of the log.
            LimitExceeded: the watch fell too far behind and was dropped, or the server
                has too many watches open.
            Unavailable: no server answered within ``retry_deadline``.
            SessionNotFound, VarstoreError.
        """
        request = watch_request(
            self.session_id, from_position, variables, include_initial, progress_interval
        )
        known = self._session_known or not self._core.create_session
        seen = WatchPosition(from_position)
        create = None if known else self._create_session
        flow = watch_flow(request, timeout, seen, create, self._retry, self._seen)
        return self._stream(flow, seen)

    # -- the past ---------------------------------------------------------------------------

    @operation
    def history(
        self,
        name: str,
        *,
        from_version: int = 0,
        to_version: int | None = None,
        newest_first: bool = False,
    ) -> Flow[list[ChangeInfo]]:
        """Every version of a variable (by id: one lifetime; by name: every variable that
        had the name), with previous values, positions, times, sources and metadata.

        Raises:
            VariableNotFound: the session never had such a variable.
            SessionNotFound, Unavailable.
        """
        request = self._core.history_request(name, from_version, to_version, newest_first, "")
        request.page_size = (yield from self._limits()).max_page_size or _PAGE_SIZE
        call = Call("GetVariableHistory", request, self._core.timeout)
        changes = yield from every_page(
            call, lambda page: page.changes, retry=self._retry, seen=self._seen
        )
        return [ChangeInfo.from_proto(change) for change in changes]

    @operation
    def rollback_variable(
        self,
        name: str,
        to_version: int,
        metadata: Mapping[str, str] | None = None,
        expected_version: int | None = None,
    ) -> Flow[int]:
        """Give a variable an earlier version's value, as a new change; returns the new
        version. Nothing is erased: the history shows the rollback.

        Raises:
            ValidationError: ``to_version`` is not an earlier version.
            VersionConflict: ``expected_version`` is not the current version.
            VariableNotFound, SessionNotFound, Unavailable.
        """
        request = self._core.rollback_request(name, to_version, metadata, expected_version)
        return (yield from self._write("RollbackVariable", request))

    @operation
    def read_events(
        self,
        from_position: int = 1,
        to_position: int | None = None,
        *,
        backwards: bool = False,
        limit: int | None = None,
    ) -> Flow[list[dict[str, Any]]]:
        """The session's raw log, one dict per event in the JSON Lines export format
        (``position``, ``type``, ``recorded_at``, ``source``, ``metadata``, ``payload``...).

        Raises:
            SessionNotFound, Unavailable.
        """
        request = pb.ReadEventsRequest(
            session_id=self.session_id,
            from_position=from_position,
            backwards=backwards,
            page_size=(yield from self._limits()).max_page_size or _PAGE_SIZE,
        )
        if to_position is not None:
            request.to_position = to_position
        call = Call("ReadEvents", request, self._core.timeout)
        events = yield from every_page(
            call, lambda page: page.events, limit, self._retry, self._seen
        )
        return [transfer.event_to_json(event) for event in events]

    def at(self, point: int | datetime) -> V:
        """A read-only view of the session as it stood at a position or a moment (reads
        through it bypass the cache)."""
        return self._view(point_fields(point))

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

    @operation
    def cleanup(self) -> Flow[None]:
        """Stop the cache's watch and drop the cache (the channel stays open: it is the
        caller's)."""
        watch, self._watch = self._watch, None
        if watch is not None:
            yield Stop(watch)
            self._core.watch_stopped()
        self._core.invalidate(None)

    close = cleanup


class ViewOps(Flavoured[F]):
    """A session as it stood at one position or moment: reads only, never cached.

    Reads raise OutOfRange for a position beyond the log, and SessionNotFound for a
    moment before the session existed. A view is given what it needs by its context: the
    driver's ``run`` and the core that builds requests.
    """

    def __init__(self, run: Runs, core: ContextCore, fields: dict[str, Any]) -> None:
        self._retry = Retry.from_config(core.config)
        self._run = run
        self._core = core
        self._fields = fields

    def _call(self, method: str, request: Any) -> Flow[Any]:
        """The answer to a read at the view's point in time (its fields merged into
        ``request``), retried as the context's reads are."""
        request.MergeFrom(type(request)(**self._fields))
        call = Call(method, request, self._core.timeout)
        return (yield from retried(call, self._retry, seen=self._core.positions))

    @operation
    def get_variable(self, name: str, default: Any = MISSING) -> Flow[Any]:
        """A variable's value then; ``default`` if it did not exist then (when given)."""
        try:
            response = yield from self._call("GetVariable", self._core.get_request(name))
        except VariableNotFound as missing:
            return self._core.default_or_raise(missing, default)
        return VariableInfo.from_proto(response.variable).value

    @operation
    def get_variables(
        self, names: Iterable[str], defaults: Mapping[str, Any] | None = None
    ) -> Flow[dict[str, Any]]:
        """Values of many variables then, keyed as asked (missing ones from defaults)."""
        response = yield from self._call("GetVariables", self._core.get_many_request(names))
        results = {
            name: VariableInfo.from_proto(variable).value
            for name, variable in response.variables.items()
        }
        for name in response.missing_variables:
            if defaults is not None and name in defaults:
                results[name] = defaults[name]
        return results

    @operation
    def list_variables(self, pattern: str | None = None) -> Flow[list[VariableInfo]]:
        """The variables then (optionally those whose names match a glob), by name."""
        response = yield from self._call("ListVariables", self._core.list_request(pattern))
        return [VariableInfo.from_proto(variable) for variable in response.variables]
