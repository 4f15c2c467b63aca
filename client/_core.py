"""The I/O-free core both session contexts share: configuration, request building, value
conversion through the shared type system, and every cache decision.

The sync and asyncio contexts only add the calls (and the ``await``); whatever can be
decided without the network is decided here, once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from google.protobuf.timestamp_pb2 import Timestamp

from varstore.client._cache import VariableCache
from varstore.types import (
    Constraints,
    PyValue,
    RuleViolation,
    ValidationError,
    VarstoreError,
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

    @classmethod
    def from_proto(cls, message: pb.Session) -> SessionInfo:
        """The info a ``Session`` message holds."""
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

    def __post_init__(self) -> None:
        unknown = set(self.config) - {
            "enable_caching",
            "cache_ttl",
            "max_size",
            "metadata",
            "source",
            "timeout",
            "create_session",
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
            page_size=1000,
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
        entry = self.cache.get(identifier)
        return (True, entry.value) if entry is not None else (False, None)

    def remember_read(self, variable: pb.Variable, served_at: int) -> PyValue:
        """The value of a variable the server sent; cached unless it may predate a write
        of this client's."""
        value = _value_of(variable)
        if self.cache is not None and served_at >= self.written_position:
            self._put(variable, value)
        return value

    def remember_write(self, variable: pb.Variable, position: int) -> PyValue:
        """The value of a variable this client just wrote; always cached."""
        self.written_position = max(self.written_position, position)
        value = _value_of(variable)
        if self.cache is not None:
            self._put(variable, value)
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
        if identifier in response.variables:
            variable = response.variables[identifier]
            self.cache.invalidate(variable.name)
            self._put(variable, _value_of(variable))

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

    def _put(self, variable: pb.Variable, value: PyValue) -> None:
        assert self.cache is not None
        self.cache.put(
            id=variable.id,
            name=variable.name,
            type=variable.type,
            value=value,
            version=variable.version,
            position=variable.position,
        )

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
        return {"enabled": True, **self.cache.stats()}

    def default_or_raise(self, error: VarstoreError, default: object) -> Any:
        """``default`` for a missing variable when one was given, else the error."""
        if default is MISSING:
            raise error
        return default


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
