"""The I/O-free core both session contexts share: configuration, request building, value
conversion through the shared type system, and every cache decision.

The operations (:mod:`varstore.client._session`, written once as flows) ask it what to
send and what an answer means; the sync and asyncio drivers only make the calls. Whatever
can be decided without the network is decided here, once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from google.protobuf.timestamp_pb2 import Timestamp

from varstore.client._cache import VariableCache
from varstore.client._positions import SeenPositions
from varstore.types import (
    Constraints,
    OutOfRange,
    PyValue,
    RuleViolation,
    ValidationError,
    VarstoreError,
    coerce,
    from_proto,
    to_proto,
)
from varstore.types.constraints import Constraints as _Constraints
from varstore.v1 import varstore_pb2 as pb

__all__ = [
    "MISSING",
    "ChangeInfo",
    "ContextCore",
    "SessionInfo",
    "VariableInfo",
    "point_fields",
    "session_request",
]

DEFAULT_TTL: Final = 1.0
DEFAULT_MAX_SIZE: Final = 1000
DEFAULT_SOURCE: Final = "python"
DEFAULT_TIMEOUT: Final = 30.0
#: "ttl": entries expire after ``cache_ttl``; "watch": a watch on the session keeps them
#: current (TTL only while the watch is down).
CACHE_MODES: Final = ("ttl", "watch")
#: Seconds between reconnection attempts of a cache's watch: doubling from the first, at
#: most the second.
WATCH_BACKOFF: Final = (0.05, 2.0)


class _Missing:
    """The type of :data:`MISSING`."""

    def __repr__(self) -> str:
        return "MISSING"


#: "No default given": tells ``get_variable(name)`` apart from ``get_variable(name, None)``.
MISSING: Final = _Missing()


@dataclass(frozen=True, slots=True)
class VariableInfo:
    """A variable as the server described it (``list_variables`` returns these)."""

    id: str
    name: str
    type: str
    value: PyValue
    version: int
    constraints: dict[str, Any]
    metadata: dict[str, str]
    source: str
    created_at: datetime
    updated_at: datetime
    #: Session position of the variable's last change.
    position: int

    @classmethod
    def from_proto(cls, message: pb.Variable) -> VariableInfo:
        """The info a ``Variable`` message holds."""
        return cls(
            id=message.id,
            name=message.name,
            type=message.type,
            value=_value_of(message),
            version=message.version,
            constraints=_Constraints.data_from_proto(message.constraints),
            metadata=dict(message.metadata),
            source=message.source,
            created_at=message.created_at.ToDatetime(tzinfo=UTC),
            updated_at=message.updated_at.ToDatetime(tzinfo=UTC),
            position=message.position,
        )


@dataclass(frozen=True, slots=True)
class ChangeInfo:
    """One version of a variable, from its history."""

    variable_id: str
    name: str
    type: str
    version: int
    #: None for a deletion.
    value: PyValue | None
    #: None for a registration.
    previous_value: PyValue | None
    position: int
    recorded_at: datetime
    source: str
    metadata: dict[str, str]
    #: "registered", "updated", "rolled_back" or "deleted".
    kind: str
    in_batch: bool
    rollback_to_version: int | None

    @classmethod
    def from_proto(cls, message: pb.VariableChange) -> ChangeInfo:
        """The info a ``VariableChange`` message holds."""
        return cls(
            variable_id=message.variable_id,
            name=message.name,
            type=message.type,
            version=message.version,
            value=from_proto(message.value) if message.HasField("value") else None,
            previous_value=(
                from_proto(message.previous_value) if message.HasField("previous_value") else None
            ),
            position=message.position,
            recorded_at=message.recorded_at.ToDatetime(tzinfo=UTC),
            source=message.source,
            metadata=dict(message.metadata),
            kind=message.kind,
            in_batch=message.in_batch,
            rollback_to_version=(
                message.rollback_to_version if message.kind == "rolled_back" else None
            ),
        )


def point_fields(point: int | datetime) -> dict[str, Any]:
    """Request fields that pin a read to a position or a moment."""
    if isinstance(point, datetime):
        moment = Timestamp()
        moment.FromDatetime(point if point.tzinfo else point.replace(tzinfo=UTC))
        return {"as_of": moment}
    if isinstance(point, bool) or not isinstance(point, int):
        raise TypeError(f"at() takes a position (int) or a datetime, not {point!r}")
    return {"at_position": point}


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session as the server described it."""

    id: str
    metadata: dict[str, str]
    ttl_seconds: int
    created_at: datetime
    updated_at: datetime
    #: Position of the session's last event.
    position: int
    variable_count: int
    #: When the session expires if nothing touches it; None without a TTL.
    expires_at: datetime | None
    #: The bearer token granting this session only, in the answer that created (forked,
    #: imported) it on a server that requires tokens; "" otherwise. Keep it: it is sent once.
    session_token: str = ""

    @classmethod
    def from_proto(cls, message: pb.Session, session_token: str = "") -> SessionInfo:
        """The info a ``Session`` message holds (and the token its answer carried)."""
        return cls(
            id=message.id,
            metadata=dict(message.metadata),
            ttl_seconds=message.ttl_seconds,
            created_at=message.created_at.ToDatetime(tzinfo=UTC),
            updated_at=message.updated_at.ToDatetime(tzinfo=UTC),
            position=message.position,
            variable_count=message.variable_count,
            expires_at=(
                message.expires_at.ToDatetime(tzinfo=UTC)
                if message.HasField("expires_at")
                else None
            ),
            session_token=session_token,
        )


def session_request(
    session_id: str | None,
    metadata: Mapping[str, str] | None,
    ttl_seconds: int,
    source: str = DEFAULT_SOURCE,
) -> pb.CreateSessionRequest:
    """A CreateSession request (an empty id has the server generate one)."""
    return pb.CreateSessionRequest(
        session_id=session_id or "",
        metadata=dict(metadata or {}),
        ttl_seconds=ttl_seconds,
        source=source,
    )


@dataclass
class ContextCore:
    """Everything a session context decides without the network."""

    session_id: str
    config: Mapping[str, Any] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    #: The positions the client has seen, shared by its contexts (read-your-writes).
    positions: SeenPositions = field(default_factory=SeenPositions)

    def __post_init__(self) -> None:
        unknown = set(self.config) - {
            "enable_caching",
            "cache_ttl",
            "max_size",
            "metadata",
            "source",
            "timeout",
            "create_session",
            "cache_mode",
            "retry",
            "retry_deadline",
        }
        if unknown:
            raise ValueError(f"unknown config key {min(unknown)!r}")
        self.source: str = str(self.config.get("source", DEFAULT_SOURCE))
        self.metadata: dict[str, str] = dict(self.config.get("metadata", {}))
        self.timeout: float = float(self.config.get("timeout", DEFAULT_TIMEOUT))
        #: Create the session on first use when the server does not know it.
        self.create_session: bool = bool(self.config.get("create_session", True))
        self._ttl = float(self.config.get("cache_ttl", DEFAULT_TTL))
        self._max_size = int(self.config.get("max_size", DEFAULT_MAX_SIZE))
        self.cache: VariableCache | None = (
            self._new_cache() if self.config.get("enable_caching", True) else None
        )
        # Position of this client's latest acknowledged write. A read answered at an
        # earlier position may predate that write, so it is returned but never cached:
        # the cache never holds anything older than what this client itself wrote.
        self.written_position = 0
        self.cache_mode: str = str(self.config.get("cache_mode", "ttl"))
        if self.cache_mode not in CACHE_MODES:
            raise ValueError(f"cache_mode must be 'ttl' or 'watch', not {self.cache_mode!r}")
        self.watch = _WatchState()

    def _new_cache(self) -> VariableCache:
        return VariableCache(self._ttl, self._max_size, self.clock)

    # -- requests -------------------------------------------------------------------------

    def create_session_request(self) -> pb.CreateSessionRequest:
        return session_request(self.session_id, self.metadata, 0, self.source)

    def register_request(
        self,
        name: str,
        type: str,
        initial_value: object,
        constraints: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
    ) -> pb.RegisterVariableRequest:
        try:
            # Checked here for sense too, so mistakes fail before a round trip.
            rules = Constraints.for_type(type, constraints or {}) if type in _TYPES else None
        except RuleViolation as problem:
            raise ValidationError(f"variable {name!r}: {problem}") from None
        return pb.RegisterVariableRequest(
            session_id=self.session_id,
            name=name,
            type=type,
            initial_value=_to_value(name, initial_value),
            constraints=rules.to_proto() if rules is not None else None,
            metadata=dict(metadata or {}),
            source=self.source,
        )

    def get_request(self, identifier: str) -> pb.GetVariableRequest:
        return pb.GetVariableRequest(session_id=self.session_id, variable_identifier=identifier)

    def set_request(
        self,
        identifier: str,
        value: object,
        metadata: Mapping[str, str] | None,
        expected_version: int | None,
    ) -> pb.SetVariableRequest:
        request = pb.SetVariableRequest(
            session_id=self.session_id,
            variable_identifier=identifier,
            value=_to_value(identifier, value),
            metadata=dict(metadata or {}),
            source=self.source,
        )
        if expected_version is not None:
            request.expected_version = expected_version
        return request

    def get_many_request(self, identifiers: Iterable[str]) -> pb.GetVariablesRequest:
        return pb.GetVariablesRequest(
            session_id=self.session_id, variable_identifiers=list(identifiers)
        )

    def set_many_request(
        self, updates: Mapping[str, object], metadata: Mapping[str, str] | None, atomic: bool
    ) -> pb.SetVariablesRequest:
        return pb.SetVariablesRequest(
            session_id=self.session_id,
            updates={key: _to_value(key, value) for key, value in updates.items()},
            metadata=dict(metadata or {}),
            atomic=atomic,
            source=self.source,
        )

    def history_request(
        self,
        identifier: str,
        from_version: int,
        to_version: int | None,
        newest_first: bool,
        page_token: str,
    ) -> pb.GetVariableHistoryRequest:
        request = pb.GetVariableHistoryRequest(
            session_id=self.session_id,
            variable_identifier=identifier,
            from_version=from_version,
            newest_first=newest_first,
            page_token=page_token,
        )
        if to_version is not None:
            request.to_version = to_version
        return request

    def rollback_request(
        self,
        identifier: str,
        to_version: int,
        metadata: Mapping[str, str] | None,
        expected_version: int | None,
    ) -> pb.RollbackVariableRequest:
        request = pb.RollbackVariableRequest(
            session_id=self.session_id,
            variable_identifier=identifier,
            to_version=to_version,
            metadata=dict(metadata or {}),
            source=self.source,
        )
        if expected_version is not None:
            request.expected_version = expected_version
        return request

    def list_request(self, pattern: str | None) -> pb.ListVariablesRequest:
        return pb.ListVariablesRequest(session_id=self.session_id, pattern=pattern or "")

    def delete_request(self, identifier: str) -> pb.DeleteVariableRequest:
        return pb.DeleteVariableRequest(
            session_id=self.session_id, variable_identifier=identifier, source=self.source
        )

    # -- cache decisions --------------------------------------------------------------------

    def cached(self, identifier: str, bypass_cache: bool) -> tuple[bool, PyValue | None]:
        """``(True, value)`` when the cache answers, else ``(False, None)`` (a miss)."""
        if self.cache is None:
            return False, None
        if bypass_cache:
            self.cache.count_miss()
            return False, None
        entry = self.cache.get(identifier, ignore_ttl=self.watch.connected)
        return (True, entry.value) if entry is not None else (False, None)

    def remember_read(self, variable: pb.Variable, served_at: int) -> PyValue:
        """The value of a variable the server sent; cached unless it may predate a write
        of this client's."""
        value = _value_of(variable)
        if self.cache is not None and served_at >= self.written_position:
            self._put(variable, value, served_at)
        return value

    def remember_write(self, variable: pb.Variable, position: int) -> PyValue:
        """The value of a variable this client just wrote; always cached."""
        self.written_position = max(self.written_position, position)
        value = _value_of(variable)
        if self.cache is not None:
            self._put(variable, value, position)
        return value

    def remember_batch(
        self, updates: Mapping[str, object], response: pb.SetVariablesResponse
    ) -> dict[str, bool | str]:
        """Per identifier: True if written, else the server's reason. Only what the
        server accepted touches the cache."""
        self.written_position = max(self.written_position, response.header.position)
        results: dict[str, bool | str] = {}
        for identifier, value in updates.items():
            if identifier in response.errors:
                results[identifier] = response.errors[identifier]
                continue
            results[identifier] = True
            self._remember_batch_item(identifier, value, response)
        return results

    def _remember_batch_item(
        self, identifier: str, value: object, response: pb.SetVariablesResponse
    ) -> None:
        if self.cache is None:
            return
        # Whatever the identifier meant to the cache before may not be the variable the
        # server changed (another client may have re-registered the name): forget it, and
        # cache the variable the server says it changed.
        self.cache.invalidate(identifier)
        if identifier not in response.changed:
            return
        ref = response.changed[identifier]
        self.cache.invalidate(ref.name)
        try:
            stored = coerce(ref.type, value)  # exactly what the server stored
        except RuleViolation:  # pragma: no cover - the server accepted it
            return
        self._put_fields(
            ref.id,
            ref.name,
            ref.type,
            stored,
            ref.version,
            ref.position,
            response.header.position,
        )

    def remember_register(self, name: str, variable_id: str, position: int) -> None:
        """A registration fills nothing, but whatever the cache held under the new name or
        the new id (a variable deleted meanwhile, or one named like the new id) is stale."""
        self.written_position = max(self.written_position, position)
        if self.cache is not None:
            self.cache.invalidate(name)
            self.cache.invalidate(variable_id)

    def remember_delete(self, identifier: str, variable: pb.Variable, position: int) -> None:
        """Forget the deleted variable under every name the cache may know it by."""
        self.written_position = max(self.written_position, position)
        if self.cache is not None:
            for key in (identifier, variable.id, variable.name):
                if key:
                    self.cache.invalidate(key)

    def _put(self, variable: pb.Variable, value: PyValue, served_at: int) -> None:
        self._put_fields(
            variable.id,
            variable.name,
            variable.type,
            value,
            variable.version,
            variable.position,
            served_at,
        )

    def _put_fields(
        self,
        variable_id: str,
        name: str,
        type_name: str,
        value: PyValue,
        version: int,
        position: int,
        served_at: int,
    ) -> None:
        assert self.cache is not None
        with self.watch.lock:
            # The watch has applied events past the answer: one of them may have changed
            # this variable while it was not cached, so the answer may be stale already.
            if self.watch.started and served_at < self.watch.position:
                return
            self.cache.put(
                id=variable_id,
                name=name,
                type=type_name,
                value=value,
                version=version,
                position=position,
            )

    # -- the cache's watch ("watch" mode) ---------------------------------------------------

    def watch_due(self, position: int) -> bool:
        """True once, on the first answer (served at ``position``) of a context in "watch"
        mode: the context then opens its watch from there."""
        with self.watch.lock:
            if self.cache_mode != "watch" or self.watch.started:
                return False
            self.watch.started = True
            self.watch.position = position
            return True

    def watch_request(self) -> pb.WatchSessionRequest:
        """The cache's watch, from the last position applied (resuming: no gap), on a
        server that has applied at least that far and as far as the client has seen."""
        with self.watch.lock:
            request = pb.WatchSessionRequest(
                session_id=self.session_id, from_position=self.watch.position
            )
        self.positions.stamp(request, at_least=request.from_position)
        return request

    def apply_watch_message(
        self, message: pb.WatchSessionResponse, now: float | None = None
    ) -> None:
        """Apply what the cache's watch sent: changed variables it holds take their new
        value, deleted ones (and, for a deleted session, all) are dropped. Any message
        means the watch is healthy, so entries are served regardless of their TTL."""
        kind = message.WhichOneof("kind")
        with self.watch.lock:
            self.watch.connected = True
            if kind == "progress":
                self.watch.position = max(self.watch.position, message.progress.position)
                self.positions.saw(self.session_id, message.progress.position)
                return
            if kind != "event":
                return
            event = message.event.event
            if event.position <= self.watch.position:
                return  # seen already
            if self.cache is not None:
                if event.type == "SessionDeleted":
                    self.cache.drop_older_than(event.position)
                for change in message.event.changes:
                    self.cache.apply_change(
                        id=change.variable_id,
                        name=change.name,
                        type=change.type,
                        value=(
                            from_proto(change.value)
                            if change.HasField("value") and change.kind != "deleted"
                            else None
                        ),
                        version=change.version,
                        position=change.position,
                    )
            self.watch.position = event.position
            self.positions.saw(self.session_id, event.position)
            recorded = event.recorded_at.ToDatetime(tzinfo=UTC).timestamp()
            self.watch.record_lag(max(0.0, (time.time() if now is None else now) - recorded))

    def watch_lost(self, error: BaseException | None) -> None:
        """The watch ended (``error`` None: the server closed it): entries fall back to
        their TTL until it is back. A position the log does not reach (another server)
        cannot be resumed: forget everything and start over."""
        with self.watch.lock:
            self.watch.connected = False
            self.watch.reconnects += 1
            if isinstance(error, OutOfRange):
                self.watch.position = 0
                if self.cache is not None:
                    self.cache.invalidate(None)

    def watch_stopped(self) -> None:
        """The context closed its watch; the next answer opens a new one."""
        with self.watch.lock:
            self.watch.started = False
            self.watch.connected = False

    @staticmethod
    def watch_backoff(failures: int) -> float:
        """Seconds to wait before reconnecting after ``failures`` failures in a row."""
        first, most = WATCH_BACKOFF
        return float(min(most, first * 2 ** min(failures, 16)))

    # -- cache configuration ------------------------------------------------------------------

    def set_cache_config(
        self, ttl: float | None, max_size: int | None, enabled: bool | None
    ) -> None:
        if ttl is not None:
            self._ttl = ttl
        if max_size is not None:
            self._max_size = max_size
        if enabled is False:
            self.cache = None
        elif enabled and self.cache is None:
            self.cache = self._new_cache()
        elif self.cache is not None:
            self.cache.configure(ttl=ttl, max_size=max_size)

    def invalidate(self, identifier: str | None) -> None:
        if self.cache is not None:
            self.cache.invalidate(identifier)

    def stats(self) -> dict[str, Any]:
        if self.cache is None:
            return {"enabled": False}
        return {
            "enabled": True,
            **self.cache.stats(),
            "mode": self.cache_mode,
            **self.watch.stats(),
        }

    def default_or_raise(self, error: VarstoreError, default: object) -> Any:
        """``default`` for a missing variable when one was given, else the error."""
        if default is MISSING:
            raise error
        return default


@dataclass
class _WatchState:
    """Where the cache's watch stands; ``lock`` orders its updates with the cache's fills."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    started: bool = False
    #: True from the watch's first message until it fails.
    connected: bool = False
    #: Last position applied (or reported by a progress message).
    position: int = 0
    reconnects: int = 0
    lag_last: float | None = None
    lag_max: float = 0.0
    lag_total: float = 0.0
    applied: int = 0

    def record_lag(self, lag: float) -> None:
        self.lag_last = lag
        self.lag_max = max(self.lag_max, lag)
        self.lag_total += lag
        self.applied += 1

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "watch_connected": self.connected,
                "watch_position": self.position,
                "watch_lag": self.lag_last,
                "watch_lag_max": self.lag_max if self.applied else None,
                "watch_lag_avg": self.lag_total / self.applied if self.applied else None,
                "watch_updates": self.applied,
                "watch_reconnects": self.reconnects,
            }


_TYPES: Final = ("float", "integer", "string", "boolean")


def _to_value(identifier: str, value: object) -> pb.Value:
    try:
        return to_proto(value)
    except RuleViolation as problem:
        raise ValidationError(f"variable {identifier!r}: {problem}") from None


def _value_of(variable: pb.Variable) -> PyValue:
    value = from_proto(variable.value)
    if value is None:  # pragma: no cover - the server always sets a value
        raise VarstoreError(f"variable {variable.name!r} came without a value")
    return value
