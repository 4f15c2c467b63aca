"""The payload schema of each event type: a re-export of the models declared in the event
registry (:mod:`varstore.types.events`), kept so ``varstore.eventstore.schema`` imports work.

Payloads are stored as JSON objects made through these models, so a payload in the log
always has this shape; readers (the projection) take the stored dicts as they are.
"""

from __future__ import annotations

from varstore.types.events import (
    PAYLOAD_MODELS,
    BatchApplied,
    BatchItem,
    Payload,
    SessionCreated,
    SessionDeleted,
    SessionForked,
    VariableDeleted,
    VariableRegistered,
    VariableUpdated,
)

__all__ = [
    "PAYLOAD_MODELS",
    "BatchApplied",
    "BatchItem",
    "Payload",
    "SessionCreated",
    "SessionDeleted",
    "SessionForked",
    "VariableDeleted",
    "VariableRegistered",
    "VariableUpdated",
]
