"""The event log: immutable events and the recorders that append and read them."""

from varstore.eventstore.events import EventType, NewEvent, RecordedEvent
from varstore.eventstore.memory import MemoryRecorder
from varstore.eventstore.recorder import Append, PositionConflict, Recorder, RecorderError
from varstore.eventstore.sqlite import SQLiteRecorder

__all__ = [
    "Append",
    "EventType",
    "MemoryRecorder",
    "NewEvent",
    "PositionConflict",
    "RecordedEvent",
    "Recorder",
    "RecorderError",
    "SQLiteRecorder",
]
