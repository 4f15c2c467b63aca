"""The event log: immutable events and the recorders that append and read them."""

from varstore.eventstore.events import EventType, NewEvent, RecordedEvent
from varstore.eventstore.memory import MemoryRecorder
from varstore.eventstore.recorder import (
    Append,
    AppendResult,
    Conflict,
    DerivedStore,
    EventAppender,
    EventReader,
    LogNotices,
    PositionConflict,
    Recorded,
    Recorder,
    RecorderError,
)
from varstore.eventstore.sqlite import SQLiteRecorder

__all__ = [
    "Append",
    "AppendResult",
    "Conflict",
    "DerivedStore",
    "EventAppender",
    "EventReader",
    "EventType",
    "LogNotices",
    "MemoryRecorder",
    "NewEvent",
    "PositionConflict",
    "Recorded",
    "RecordedEvent",
    "Recorder",
    "RecorderError",
    "SQLiteRecorder",
]
