"""The query layer: every read the server answers, each ONE function over the store.

The gRPC handlers (:mod:`varstore.api.service`) only convert a request into a call here
and the result into a response; any later front end (the web page) calls the same
functions. Nothing here knows protobuf: functions take plain values and return domain
objects (projection states, history ``Change`` objects, ``RecordedEvent`` objects) or the
small frozen dataclasses below, each carrying the session position it answers at.

Invariants:

- A read "now" sees one published state, a stable cut; a read at a position or time sees
  the fold of exactly the events up to that position.
- A page answers as the log stood when the request's FIRST page was served (the pinned
  end, carried in the page token), so a write between pages neither repeats nor drops an
  item. Session lists page by key (the last id returned) instead.
- Bad input (negative positions, foreign or garbled tokens) is ValidationError, checked
  before anything is looked up.
"""

from __future__ import annotations

import fnmatch
import re
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Generic, Protocol, TypeVar

from varstore.api import paging
from varstore.api.commands import check_range, find_variable
from varstore.api.history import History, Lived
from varstore.api.limits import Limits, exceeded
from varstore.eventstore import RecordedEvent
from varstore.projections import Change, Lifetime, SessionState, VariableState
from varstore.types import (
    PyValue,
    SessionNotFound,
    Unavailable,
    ValidationError,
    VariableNotFound,
    describe,
)

__all__ = [
    "At",
    "Page",
    "ReadableStore",
    "RollbackTarget",
    "SessionSummary",
    "VariableList",
    "VariableRead",
    "VariablesRead",
    "describe_session",
    "get_session",
    "get_variable",
    "get_variables",
    "list_sessions",
    "list_variables",
    "read_events",
    "rollback_target",
    "session_at",
    "variable_history",
    "wait_until_applied",
]

T = TypeVar("T")

#: When to read: None for now, an int for a session position, an aware datetime for a
#: moment (the last event recorded at or before it).
At = int | datetime | None


class EventLog(Protocol):
    """The part of the recorder the queries read: one session's events by position."""

    def read_session(
        self, session_id: str, from_position: int = 1, to_position: int | None = None
    ) -> Sequence[RecordedEvent]: ...


class ReadableStore(Protocol):
    """What the queries need of the store: its public reading methods, nothing else."""

    @property
    def recorder(self) -> EventLog: ...

    @property
    def limits(self) -> Limits: ...

    def session(self, session_id: str) -> SessionState: ...

    def published(self, session_id: str) -> SessionState | None: ...

    def sessions(self) -> list[SessionState]: ...

    def expires_in(self, state: SessionState) -> float | None: ...

    def history(self, session_id: str) -> History: ...

    def position_at_time(self, session_id: str, moment: datetime) -> int: ...

    def state_at(self, session_id: str, position: int) -> SessionState | None: ...

    def wait_until_applied(self, session_id: str, position: int, timeout: float) -> bool: ...


# -- answers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a longer answer."""

    items: tuple[T, ...]
    #: Pass back for the next page; "" on the last page.
    next_token: str
    #: The session position the page answers at (the end pinned by the first page);
    #: 0 for pages that span sessions.
    position: int


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """A session's state and, for a session with a TTL, when it expires if left idle."""

    state: SessionState
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class VariableRead:
    """One variable as the session stood at ``position``."""

    session_id: str
    position: int
    variable: VariableState


@dataclass(frozen=True, slots=True)
class VariablesRead:
    """Several variables read at one position: found ones keyed by the identifier as
    asked, missing identifiers in the order asked."""

    session_id: str
    position: int
    found: Mapping[str, VariableState]
    missing: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VariableList:
    """The live variables (ordered by name) as the session stood at ``position``."""

    session_id: str
    position: int
    variables: tuple[VariableState, ...]


@dataclass(frozen=True, slots=True)
class RollbackTarget:
    """The live variable a rollback changes and the value of the version it restores."""

    variable: VariableState
    value: PyValue


# -- sessions -----------------------------------------------------------------------------


#: The latest time a Timestamp (and a datetime) can hold; a later expiry is shown as this.
LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def describe_session(store: ReadableStore, state: SessionState) -> SessionSummary:
    """``state`` with its expiry time (now plus the idle time it has left, at most
    :data:`LATEST`: a log written by an older server may hold a TTL of any size)."""
    left = store.expires_in(state)
    if left is None:
        return SessionSummary(state, None)
    now = datetime.now(UTC)
    return SessionSummary(state, now + timedelta(seconds=min(left, (LATEST - now).total_seconds())))


def get_session(store: ReadableStore, session_id: str) -> SessionSummary:
    """A live session now (a read that counts as a touch for its TTL).

    Raises:
        SessionNotFound: the session does not exist, was deleted or expired.
    """
    return describe_session(store, store.session(session_id))


def list_sessions(
    store: ReadableStore, *, page_size: int = 0, page_token: str = ""
) -> Page[SessionSummary]:
    """One page of the live sessions, ordered by id (keyset paging: a page starts after
    the last id of the one before, so a session created or deleted between pages never
    makes another one repeat or go missing).

    Raises:
        ValidationError: a negative page size, or a token this request did not make.
    """
    size = paging.page_size(page_size, store.limits.max_page_size)
    request = paging.fingerprint("sessions")
    after = paging.decode_key_token(request, page_token)
    states = store.sessions()
    start = 0 if after is None else bisect_right(states, after, key=_session_id)
    chosen = states[start : start + size + 1]
    page = chosen[:size]
    more = len(chosen) > size
    return Page(
        tuple(describe_session(store, state) for state in page),
        paging.encode_key_token(request, page[-1].session_id) if more else "",
        0,
    )


def _session_id(state: SessionState) -> str:
    return state.session_id


# -- variables ----------------------------------------------------------------------------


def session_at(store: ReadableStore, session_id: str, at: At = None) -> SessionState:
    """The live session now, or as it stood at a position or moment.

    Raises:
        ValidationError: a negative position, or a datetime without a time zone.
        SessionNotFound: the session does not exist now, or did not exist then.
        OutOfRange: the position is beyond the end of the session's log.
    """
    if at is None:
        return store.session(session_id)
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise ValidationError("as_of must carry a time zone", violations={"as_of": "naive"})
        position = store.position_at_time(session_id, at)
        when = f"at {at.astimezone(UTC).isoformat()}"
    else:
        if at < 0:
            raise ValidationError(
                f"at_position must be 0 or more, not {at}",
                violations={"at_position": "must be 0 or more"},
            )
        position, when = at, f"at position {at}"
    state = store.state_at(session_id, position)
    if state is None or state.deleted:
        raise SessionNotFound(
            f"session {describe(session_id)} did not exist {when}",
            info={"session_id": session_id[:200], "position": str(position)},
        )
    return state


def get_variable(
    store: ReadableStore, session_id: str, identifier: str, at: At = None
) -> VariableRead:
    """One live variable (by id, else by name) now or at a position or moment.

    Raises:
        VariableNotFound: no live variable has that id or name then.
        and everything :func:`session_at` raises.
    """
    state = session_at(store, session_id, at)
    return VariableRead(state.session_id, state.position, find_variable(state, identifier))


def get_variables(
    store: ReadableStore, session_id: str, identifiers: Sequence[str], at: At = None
) -> VariablesRead:
    """Several variables read at one position; unknown identifiers are listed as missing.

    Raises:
        LimitExceeded: more identifiers than ``limits.max_batch_size``.
        and everything :func:`session_at` raises.
    """
    limit = store.limits.max_batch_size
    if len(identifiers) > limit:
        raise exceeded("max_batch_size", limit, f"{len(identifiers)} identifiers asked for")
    state = session_at(store, session_id, at)
    found: dict[str, VariableState] = {}
    missing: list[str] = []
    for identifier in identifiers:
        variable = state.find(identifier)
        if variable is None:
            missing.append(identifier)
        else:
            found[identifier] = variable
    return VariablesRead(state.session_id, state.position, MappingProxyType(found), tuple(missing))


def list_variables(
    store: ReadableStore, session_id: str, pattern: str = "", at: At = None
) -> VariableList:
    """The live variables whose name matches the glob ``pattern`` (all for ""), by name.

    Raises:
        everything :func:`session_at` raises.
    """
    # Bounded, and compiled for this call only: fnmatch's own cache keeps 32768 patterns.
    longest = 4 * store.limits.max_name_length
    if len(pattern) > longest:
        text = f"pattern is {len(pattern)} characters long; at most {longest} are accepted"
        raise ValidationError(text, violations={"pattern": text})
    state = session_at(store, session_id, at)
    matches = re.compile(fnmatch.translate(pattern)).match if pattern else None
    variables = tuple(v for v in state.by_name() if matches is None or matches(v.name))
    return VariableList(state.session_id, state.position, variables)


def rollback_target(
    store: ReadableStore, session_id: str, identifier: str, to_version: int, at: At = None
) -> RollbackTarget:
    """The live variable ``identifier`` names (now, or at ``at``: a retry resolves it as
    the first call did) and the value it had at ``to_version``.

    Raises:
        ValidationError: the variable never had that version.
        SessionNotFound, VariableNotFound.
    """
    variable = find_variable(session_at(store, session_id, at), identifier)
    value = store.history(session_id).value_at_version(variable.id, to_version)
    if value is None:
        raise ValidationError(
            f"variable {variable.name!r} has no version {to_version} "
            f"(its versions are 0 to {variable.version})"
        )
    return RollbackTarget(variable, value)


# -- the log ------------------------------------------------------------------------------


def variable_history(
    store: ReadableStore,
    session_id: str,
    identifier: str,
    *,
    from_version: int = 0,
    to_version: int | None = None,
    newest_first: bool = False,
    page_size: int = 0,
    page_token: str = "",
) -> Page[Change]:
    """One page of a variable's changes with ``from_version <= version <= to_version``.

    By id: one lifetime. By name: every variable that ever had the name, oldest lifetime
    first (versions restart at 0 in each). A name's changes have strictly increasing
    positions across its lifetimes, so the token's cursor is the last position returned.

    Raises:
        ValidationError: a negative page size, or a token this request did not make.
        SessionNotFound: the session never existed.
        VariableNotFound: no variable ever had that id or name in the session.
    """
    check_range(from_version, "from_version")
    if to_version is not None:
        check_range(to_version, "to_version")
    size = paging.page_size(page_size, store.limits.max_page_size)
    request = paging.fingerprint(
        "history", session_id, identifier, from_version, to_version, newest_first
    )
    cursor = paging.decode_position_token(request, page_token)
    end = _pinned_end(store, session_id, cursor)
    # Read after the published position: the store applies an event to the history
    # before it publishes a state that includes it, so nothing up to `end` is missing.
    history = store.history(session_id)
    lifetimes = history.lifetimes(identifier)
    if not lifetimes:
        raise VariableNotFound(
            f"variable {describe(identifier)} never existed in session {describe(session_id)}",
            info={"session_id": session_id[:200], "variable": identifier[:200]},
        )
    versions = (from_version, to_version)
    if newest_first:
        upto = end if cursor is None else min(end, cursor.last - 1)
        chosen = _descending(lifetimes, upto, versions, size + 1)
    else:
        after = 0 if cursor is None else cursor.last
        chosen = _ascending(lifetimes, after, end, versions, size + 1)
    page = history.made_of(chosen[:size])
    more = len(chosen) > size
    token = (
        paging.encode_position_token(request, paging.PositionCursor(page[-1].position, end))
        if more
        else ""
    )
    return Page(tuple(page), token, end)


def read_events(
    store: ReadableStore,
    session_id: str,
    *,
    from_position: int = 0,
    to_position: int | None = None,
    backwards: bool = False,
    page_size: int = 0,
    page_token: str = "",
) -> Page[RecordedEvent]:
    """One page of a session's log with ``from_position <= position <= to_position``,
    oldest first or (``backwards``) newest first. Deleted sessions' logs stay readable.

    Raises:
        ValidationError: a negative from_position or page size, or a token this request
            did not make.
        SessionNotFound: the session never existed.
    """
    if from_position < 0:
        raise ValidationError(
            f"from_position must be 0 or more, not {from_position}",
            violations={"from_position": "must be 0 or more"},
        )
    if to_position is not None:
        check_range(to_position, "to_position")
    size = paging.page_size(page_size, store.limits.max_page_size)
    request = paging.fingerprint("events", session_id, from_position, to_position, backwards)
    cursor = paging.decode_position_token(request, page_token)
    end = _pinned_end(store, session_id, cursor)
    low = max(1, from_position)
    high = end if to_position is None else min(end, to_position)
    if backwards:
        last = high if cursor is None else min(high, cursor.last - 1)
        first = max(low, last - size + 1)
        more = first > low
        next_cursor = first
    else:
        first = low if cursor is None else max(low, cursor.last + 1)
        last = min(high, first + size - 1)
        more = last < high
        next_cursor = last
    events = list(store.recorder.read_session(session_id, first, last)) if first <= last else []
    if backwards:
        events.reverse()
    token = (
        paging.encode_position_token(request, paging.PositionCursor(next_cursor, end))
        if more and events
        else ""
    )
    return Page(tuple(events), token, end)


def _pinned_end(store: ReadableStore, session_id: str, cursor: paging.PositionCursor | None) -> int:
    """The position a paged read answers at: the session's published position for a
    first page, the token's pin for the next ones."""
    published = store.published(session_id)
    if published is None:
        raise SessionNotFound(
            f"session {describe(session_id)} not found", info={"session_id": session_id[:200]}
        )
    if cursor is None:
        return published.position
    if cursor.end > published.position:  # positions never shrink: not one of ours
        raise ValidationError(
            f"page_token is pinned to position {cursor.end}, beyond the end of session "
            f"{describe(session_id)}'s log (position {published.position})",
            violations={"page_token": "pinned beyond the end of the log"},
        )
    return cursor.end


#: (from_version, to_version): the versions a history read wants (no upper bound: None).
Versions = tuple[int, int | None]


def _ascending(
    lifetimes: list[Lived], after: int, upto: int, versions: Versions, count: int
) -> list[tuple[Lifetime, int]]:
    """Up to ``count`` entries with ``after < position <= upto`` and a wanted version,
    oldest first (bisections: the cost does not grow with the history's length)."""
    chosen: list[tuple[Lifetime, int]] = []
    for lived in lifetimes:
        start, stop = _span(lived, after, upto, versions)
        stop = min(stop, start + count - len(chosen))
        chosen.extend((lived.lifetime, index) for index in range(start, stop))
        if len(chosen) == count:
            break
    return chosen


def _descending(
    lifetimes: list[Lived], upto: int, versions: Versions, count: int
) -> list[tuple[Lifetime, int]]:
    """Up to ``count`` entries with ``position <= upto`` and a wanted version, newest
    first."""
    chosen: list[tuple[Lifetime, int]] = []
    for lived in reversed(lifetimes):
        start, stop = _span(lived, 0, upto, versions)
        start = max(start, stop - (count - len(chosen)))
        chosen.extend((lived.lifetime, index) for index in range(stop - 1, start - 1, -1))
        if len(chosen) == count:
            break
    return chosen


def _span(lived: Lived, after: int, upto: int, versions: Versions) -> tuple[int, int]:
    """The entries of ``lived`` with ``after < position <= upto`` and a wanted version."""
    first, last = lived.lifetime.position_span(after, upto, lived.count)
    low, high = lived.lifetime.version_span(*versions, lived.count)
    return max(first, low), max(max(first, low), min(last, high))


# -- consistency --------------------------------------------------------------------------


def wait_until_applied(
    store: ReadableStore, session_id: str, position: int, timeout: float
) -> None:
    """Return once the served state of ``session_id`` includes ``position`` (a reader's
    ``min_position``: read-your-writes across servers sharing one log).

    Raises:
        Unavailable: still behind after ``timeout`` seconds; the message and ErrorInfo say
            how far (nothing was written, so the read is safe to retry).
    """
    if store.wait_until_applied(session_id, position, timeout):
        return
    published = store.published(session_id)
    applied = published.position if published is not None else 0
    raise Unavailable(
        f"session {describe(session_id)} is served up to position {applied}, "
        f"{position - applied} behind the position {position} asked for; retry shortly",
        info={
            "session_id": session_id[:200],
            "position": str(position),
            "applied_position": str(applied),
            "behind": str(position - applied),
        },
    )
