"""The server's limits: what one request, one client and all of them may ask of it.

Every limit is one field of :class:`Limits` (its default is the documented one) and one
``varstore serve`` flag (:func:`add_limit_flags`, :func:`limits_from_flags`). A request
beyond a limit is RESOURCE_EXHAUSTED, and the message names the limit (its field name);
names and ids that are too long are INVALID_ARGUMENT, since the name itself is wrong.
``GetServerInfo`` tells clients every limit, so they check against these numbers instead
of constants of their own.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Final

from varstore.types import LimitExceeded
from varstore.types.events import EventType

if TYPE_CHECKING:  # the CLI imports this module for its flags: keep it light
    from varstore.eventstore.events import RecordedEvent
    from varstore.projections import SessionState

__all__ = [
    "DAY",
    "LimitFlag",
    "Limits",
    "LiveSessions",
    "add_limit_flags",
    "exceeded",
    "limit_flags",
    "limits_from_flags",
]

#: Seconds in a day.
DAY: Final = 86_400


def _limit(default: int, help: str, *, flag: bool = True, zero_is_off: bool = False) -> Any:
    """A limit field: its default, what it bounds (the flag's help), whether the server
    CLI has a flag for it, and whether 0 turns it off."""
    return field(default=default, metadata={"help": help, "flag": flag, "off": zero_is_off})


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's limits (see the module docstring); each must be 1 or more, except
    those that 0 turns off (``max_requests_per_second``, ``idle_connection_seconds``)."""

    #: Largest request message, in bytes (gRPC's max receive length; the transport
    #: refuses a larger one before any handler runs).
    max_message_bytes: int = _limit(4 << 20, "largest request message, in bytes")
    #: Longest variable name or session id, in characters.
    max_name_length: int = _limit(128, "longest variable name or session id", flag=False)
    #: Largest string value, in UTF-8 bytes.
    max_string_bytes: int = _limit(1 << 20, "largest string value, in UTF-8 bytes")
    #: Most updates in one SetVariables call (and identifiers in GetVariables or watched).
    max_batch_size: int = _limit(1000, "most updates (or identifiers) in one batch call")
    #: Most live variables in one session.
    max_variables_per_session: int = _limit(10_000, "most live variables in one session")
    #: Most live sessions on the server.
    max_sessions: int = _limit(100_000, "most live sessions on the server")
    #: Most metadata entries on one request.
    max_metadata_entries: int = _limit(64, "most metadata entries on one request", flag=False)
    #: Largest metadata key plus value, in UTF-8 bytes.
    max_metadata_entry_bytes: int = _limit(
        4096, "largest metadata key plus value, in bytes", flag=False
    )
    #: Longest session ttl_seconds (10 years).
    max_ttl_seconds: int = _limit(10 * 365 * DAY, "longest session ttl_seconds")
    #: Most items on one page (ListSessions, GetVariableHistory, ReadEvents); a larger
    #: page_size is served as this many (AIP-158), so no answer is unbounded.
    max_page_size: int = _limit(1000, "most items on one page of a listing")
    #: Most WatchSession streams open on the server (each a coroutine: no thread of its own).
    max_watchers: int = _limit(4096, "most open WatchSession streams on the server")
    #: Most WatchSession streams open on one session (by default as many as the server
    #: allows; lower it so that no one session can take every watch).
    max_watchers_per_session: int = _limit(4096, "most open WatchSession streams on one session")
    #: Seconds a connection may have no call in flight before the server closes it
    #: (gRPC's max_connection_idle; an open watch is a call in flight). 0: never.
    idle_connection_seconds: int = _limit(
        300, "seconds a connection may have no call in flight (0: never closed)", zero_is_off=True
    )
    #: Calls per second one client (see ``varstore.api.ratelimit.caller_identity``) may
    #: make, averaged over a second; bursts up to twice as many. 0: no limit.
    max_requests_per_second: int = _limit(
        0, "calls per second per client, bursts up to twice (0: no limit)", zero_is_off=True
    )

    def __post_init__(self) -> None:
        for limit in fields(self):
            problem = _problem(limit.metadata, getattr(self, limit.name))
            if problem:
                raise ValueError(f"limit {limit.name} {problem}")


def _problem(metadata: Any, value: object) -> str:
    """Why ``value`` cannot be a limit with this field metadata ("" when it can)."""
    lowest = 0 if metadata["off"] else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        return f"must be a whole number from {lowest} up, not {value!r}"
    return ""


class LiveSessions:
    """How many sessions are live: the count ``max_sessions`` is checked against, kept by
    a store listener (+1 per SessionCreated, -1 per SessionDeleted: a fork's or an
    import's copy of a log adds up the same way), so no check walks every session."""

    def __init__(self, states: Iterable[SessionState]) -> None:
        self.count = sum(1 for state in states if not state.deleted)

    def on_commit(self, events: Sequence[RecordedEvent]) -> None:
        """Store listener: count the sessions the events start and end."""
        for event in events:
            if event.type == EventType.SESSION_CREATED:
                self.count += 1
            elif event.type == EventType.SESSION_DELETED:
                self.count -= 1


def exceeded(limit: str, value: int, text: str, **info: str) -> LimitExceeded:
    """RESOURCE_EXHAUSTED for a request beyond the limit ``limit`` (a :class:`Limits` field
    name) of ``value``: the message ends "the limit is VALUE (NAME)", and the ErrorInfo
    carries ``limit`` (the value) and ``limit_name``."""
    return LimitExceeded(
        f"{text}; the limit is {value} ({limit})",
        info={**info, "limit": str(value), "limit_name": limit},
    )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True, slots=True)
class LimitFlag:
    """The ``varstore serve`` flag of one limit: ``--max-sessions N`` into ``limit_max_sessions``
    (read by :func:`limits_from_flags`)."""

    flag: str
    dest: str
    help: str


def limit_flags() -> list[LimitFlag]:
    """One flag per limit people tune, each saying its default."""
    return [
        LimitFlag(
            _flag(limit.name),
            f"limit_{limit.name}",
            f"{limit.metadata['help']} (default {limit.default})",
        )
        for limit in fields(Limits)
        if limit.metadata["flag"]
    ]


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--max-...`` flag per limit people tune (each defaults to the field's default)."""
    group = parser.add_argument_group("limits (a request beyond one is RESOURCE_EXHAUSTED)")
    for limit in fields(Limits):
        if limit.metadata["flag"]:
            group.add_argument(
                _flag(limit.name),
                type=int,
                default=None,
                metavar="N",
                dest=f"limit_{limit.name}",
                help=f"{limit.metadata['help']} (default {limit.default})",
            )


def limits_from_flags(args: argparse.Namespace) -> Limits:
    """The limits the flags of :func:`add_limit_flags` ask for (defaults for the rest).

    Raises:
        ValueError: a limit out of its range, naming the flag.
    """
    chosen: dict[str, int] = {}
    for limit in fields(Limits):
        value = getattr(args, f"limit_{limit.name}", None)
        if value is not None:
            problem = _problem(limit.metadata, value)
            if problem:
                raise ValueError(f"{_flag(limit.name)} {problem}")
            chosen[limit.name] = value
    return replace(Limits(), **chosen)
