"""Events as the log stores them: immutable, positioned, with who, when and why."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, NamedTuple

# EventType is declared in the contract's event registry, beside what each type means.
from varstore.types.events import EventType

__all__ = ["EventType", "NewEvent", "RecordedEvent"]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event about to be appended; the recorder gives it its positions."""

    type: str
    #: JSON-ready body; its shape per type is in :mod:`varstore.types.events`.
    payload: Mapping[str, Any]
    #: Wall-clock time (timezone-aware, UTC) at which the change was decided.
    recorded_at: datetime
    #: Who made the change: a caller-given name or the caller's peer address.
    source: str = ""
    #: The request's metadata (a reason, for example), kept verbatim.
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: Version of the payload's schema for this type.
    schema_version: int = 1
    #: The idempotency key of the write that records the event ("" when it gave none);
    #: every event one write appends carries it.
    request_id: str = ""
    #: A digest of that write's request body, so a retry can be told from another request
    #: that reuses the id, also after a restart ("" without a request_id).
    request_digest: str = ""


#: The default of RecordedEvent.metadata: shared, so it must not be mutable.
_NO_METADATA: Mapping[str, str] = MappingProxyType({})


class RecordedEvent(NamedTuple):
    """An event in the log: ``position`` is gap-free per session starting at 1;
    ``global_position`` orders every event of every session.

    A NamedTuple rather than a frozen dataclass: it is just as immutable, and a replay
    builds one per event, which a NamedTuple does about four times faster.
    """

    session_id: str
    position: int
    global_position: int
    type: str
    payload: Mapping[str, Any]
    recorded_at: datetime
    source: str = ""
    metadata: Mapping[str, str] = _NO_METADATA
    schema_version: int = 1
    request_id: str = ""
    request_digest: str = ""

    @classmethod
    def of(
        cls, new: NewEvent, session_id: str, position: int, global_position: int
    ) -> RecordedEvent:
        """``new`` as recorded at the given positions."""
        return cls(
            session_id,
            position,
            global_position,
            new.type,
            new.payload,
            new.recorded_at,
            new.source,
            new.metadata,
            new.schema_version,
            new.request_id,
            new.request_digest,
        )
