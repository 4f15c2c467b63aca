"""Size and count limits: what a request may ask of the server (RESOURCE_EXHAUSTED beyond)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's limits; names longer than ``max_name_length`` are INVALID_ARGUMENT,
    the rest are RESOURCE_EXHAUSTED."""

    #: Longest variable name or session id, in characters.
    max_name_length: int = 128
    #: Largest string value, in UTF-8 bytes.
    max_string_bytes: int = 1 << 20
    #: Most updates in one SetVariables call, and most identifiers in one GetVariables call.
    max_batch_size: int = 1000
    #: Most live variables in one session.
    max_variables_per_session: int = 10_000
    #: Most metadata entries on one request.
    max_metadata_entries: int = 64
    #: Largest metadata key plus value, in UTF-8 bytes.
    max_metadata_entry_bytes: int = 4096
