"""What each page shows, assembled from the query layer (:mod:`varstore.api.queries`).

Pure functions over the store, one per page or panel; each returns a frozen view the
templates render. Every read goes through the queries the gRPC handlers use, so a view
at a position equals a gRPC read at that position. Work per call is bounded: a fixed
number of sessions, log rows, scanned events and versions, whatever the session's size.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from typing import Any, Final

from varstore.api import queries
from varstore.api.queries import At, ReadableStore
from varstore.eventstore import RecordedEvent
from varstore.projections import Change, VariableState
from varstore.types import PyValue, SessionNotFound, VariableNotFound, VarstoreError
from varstore.types.events import EVENTS

__all__ = [
    "CHART_VERSIONS",
    "LOG_ROWS",
    "MAX_SESSIONS",
    "SCAN_EVENTS",
    "BatchView",
    "Chart",
    "IntegrityChunk",
    "LogFilter",
    "LogPage",
    "LogRow",
    "RollbackView",
    "SessionRow",
    "SessionView",
    "VariableView",
    "check_positions",
    "log_page",
    "session_rows",
    "session_view",
    "variable_view",
]

#: Most sessions the list reads (then sorted by last change); the filter narrows it.
MAX_SESSIONS: Final = 5000
#: Sessions shown on the list page.
SHOWN_SESSIONS: Final = 200
#: Log rows on one page.
LOG_ROWS: Final = 50
#: Most events one filtered log page reads before it stops and offers "older".
SCAN_EVENTS: Final = 5000
#: Events read per step of a filtered scan, and per step of the integrity check.
SCAN_STEP: Final = 500
#: Versions on one page of a variable's history table.
HISTORY_ROWS: Final = 50
#: Most versions the chart plots (the newest ones).
CHART_VERSIONS: Final = 5000
#: Positions one integrity request checks.
INTEGRITY_CHUNK: Final = 20_000


# -- sessions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRow:
    session_id: str
    created_at: datetime
    updated_at: datetime
    variables: int
    events: int


def session_rows(store: ReadableStore, contains: str = "") -> tuple[list[SessionRow], int, bool]:
    """Live sessions whose id contains ``contains`` (case-insensitive), last changed
    first: the rows shown, how many matched, and whether the read stopped at
    :data:`MAX_SESSIONS`."""
    wanted = contains.casefold()
    rows: list[SessionRow] = []
    token, read = "", 0
    while True:
        page = queries.list_sessions(store, page_size=1000, page_token=token)
        for summary in page.items:
            state = summary.state
            if wanted in state.session_id.casefold():
                rows.append(
                    SessionRow(
                        state.session_id,
                        state.created_at,
                        state.updated_at,
                        len(state.variables),
                        state.position,
                    )
                )
        read += len(page.items)
        token = page.next_token
        if not token or read >= MAX_SESSIONS:
            break
    rows.sort(key=lambda row: row.updated_at, reverse=True)
    return rows[:SHOWN_SESSIONS], len(rows), bool(token)


# -- one session --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogFilter:
    """The log's filters; empty strings filter nothing."""

    type: str = ""
    variable: str = ""
    source: str = ""

    @property
    def active(self) -> bool:
        return bool(self.type or self.variable or self.source)


@dataclass(frozen=True, slots=True)
class LogRow:
    event: RecordedEvent
    #: (variable name or id, new value) for each variable the event changed.
    changes: tuple[tuple[str, PyValue | None], ...]


@dataclass(frozen=True, slots=True)
class LogPage:
    rows: tuple[LogRow, ...]
    #: Keyset cursor of the next (older) page: show positions below it; 0: none older.
    older: int
    #: Positions read for this page (lowest, highest); equal to the rows' when unfiltered.
    scanned: tuple[int, int]
    #: The rows' positions are consecutive (checked on unfiltered pages only).
    consecutive: bool


@dataclass(frozen=True, slots=True)
class SessionView:
    session_id: str
    #: The session's last position when the page was served.
    served_at: int
    #: The position the view shows (``served_at`` unless an as-of was asked for).
    position: int
    as_of: bool
    when: datetime | None
    #: Live variables at ``position``, by name; None when the session was not live then.
    variables: tuple[VariableState, ...] | None
    log: LogPage
    filter: LogFilter
    #: Event types and sources to offer in the filter (those of the shown rows).
    types: tuple[str, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)


def session_view(
    store: ReadableStore,
    session_id: str,
    at: At = None,
    *,
    before: int | None = None,
    log_filter: LogFilter = LogFilter(),
) -> SessionView:
    """The session as it stands (or stood ``at`` a position or moment), with one page of
    its log newest first (positions below ``before`` when given).

    Raises:
        SessionNotFound: the session never existed.
        ValidationError, OutOfRange: a bad ``at``.
    """
    first = queries.read_events(store, session_id, backwards=True, page_size=1)
    served_at = first.position
    state = None
    position = served_at
    if at is not None:
        try:
            state = queries.session_at(store, session_id, at)
            position = state.position
        except SessionNotFound as problem:  # not live then: its error says the position
            position = int(problem.info.get("position", "0"))
    else:
        try:
            state = queries.session_at(store, session_id, served_at)
        except SessionNotFound:
            state = None
    names = _names(state.variables.values() if state is not None else ())
    top = position if before is None else min(position, before - 1)
    log = log_page(store, session_id, top, log_filter, names)
    return SessionView(
        session_id,
        served_at,
        position,
        at is not None,
        state.updated_at if state is not None and at is not None else None,
        tuple(state.by_name()) if state is not None else None,
        log,
        log_filter,
        tuple(sorted(EVENTS)),
        state.metadata if state is not None else {},
    )


def _names(variables: Iterator[VariableState] | Any) -> dict[str, str]:
    return {variable.id: variable.name for variable in variables}


def log_page(
    store: ReadableStore,
    session_id: str,
    top: int,
    log_filter: LogFilter,
    names: Mapping[str, str],
) -> LogPage:
    """Up to :data:`LOG_ROWS` events at or below position ``top`` that pass the filter,
    newest first, reading at most :data:`SCAN_EVENTS` events."""
    budget = LOG_ROWS if not log_filter.active else SCAN_EVENTS
    rows: list[LogRow] = []
    lowest = top + 1
    for event in _newest_first(store, session_id, top, budget):
        lowest = event.position
        changes = _changes(event, names)
        if _passes(event, changes, log_filter):
            rows.append(LogRow(event, changes))
            if len(rows) == LOG_ROWS:
                break
    positions = [row.event.position for row in rows]
    consecutive = all(a - 1 == b for a, b in pairwise(positions))
    return LogPage(tuple(rows), lowest if lowest > 1 else 0, (lowest, top), consecutive)


def _newest_first(
    store: ReadableStore, session_id: str, top: int, budget: int
) -> Iterator[RecordedEvent]:
    """Events at or below ``top``, newest first, at most ``budget`` of them, read in
    steps through the query layer."""
    upto = top
    while upto >= 1 and budget > 0:
        step = min(SCAN_STEP, budget)
        page = queries.read_events(
            store, session_id, to_position=upto, backwards=True, page_size=step
        )
        if not page.items:
            return
        yield from page.items
        budget -= len(page.items)
        upto = page.items[-1].position - 1


def _changes(
    event: RecordedEvent, names: Mapping[str, str]
) -> tuple[tuple[str, PyValue | None], ...]:
    spec = EVENTS.get(event.type)
    if spec is None:
        return ()
    payload = event.payload
    if event.type == "VariableRegistered":
        return ((str(payload.get("name", "")), payload.get("value")),)
    try:
        return tuple((names.get(vid, vid), value) for vid, value in spec.changes(payload))
    except (KeyError, TypeError, ValueError):
        return ()


def _passes(
    event: RecordedEvent, changes: Sequence[tuple[str, PyValue | None]], log_filter: LogFilter
) -> bool:
    if log_filter.type and event.type != log_filter.type:
        return False
    if log_filter.source and log_filter.source.casefold() not in event.source.casefold():
        return False
    if log_filter.variable:
        wanted = log_filter.variable
        ids = _variable_ids(event)
        return any(name == wanted for name, _ in changes) or wanted in ids
    return True


def _variable_ids(event: RecordedEvent) -> set[str]:
    spec = EVENTS.get(event.type)
    if spec is None:
        return set()
    try:
        return {vid for vid, _ in spec.changes(event.payload)}
    except (KeyError, TypeError, ValueError):
        return set()


# -- integrity ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntegrityChunk:
    """What one step of the whole-log check found."""

    first: int
    last: int
    end: int
    #: The first position that is missing or out of order; None when there is none.
    gap: int | None

    @property
    def done(self) -> bool:
        return self.gap is not None or self.last >= self.end


def check_positions(store: ReadableStore, session_id: str, first: int, end: int) -> IntegrityChunk:
    """Check that positions ``first`` .. (at most :data:`INTEGRITY_CHUNK` further, and at
    most ``end``) are all in the log, each once, in order."""
    expected = first
    last = min(end, first + INTEGRITY_CHUNK - 1)
    token = ""
    while expected <= last:
        page = queries.read_events(
            store,
            session_id,
            from_position=first,
            to_position=last,
            page_size=1000,
            page_token=token,
        )
        for event in page.items:
            if event.position != expected:
                return IntegrityChunk(first, expected, end, expected)
            expected += 1
        token = page.next_token
        if not token:
            break
    gap = expected if expected <= last else None
    return IntegrityChunk(first, last, end, gap)


# -- one variable -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chart:
    """The newest (at most :data:`CHART_VERSIONS`) versions, oldest first, for the chart:
    times in seconds since the epoch, values, and each version number."""

    kind: str  # "number", "lanes" (boolean, choices) or "strip" (strings)
    times: tuple[float, ...]
    values: tuple[PyValue | None, ...]
    versions: tuple[int, ...]
    positions: tuple[int, ...]
    #: Lanes' labels (choices or false/true), in lane order.
    lanes: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class BatchView:
    position: int
    version: int
    #: (name, new value) of the other variables the batch changed.
    others: tuple[tuple[str, PyValue], ...]


@dataclass(frozen=True, slots=True)
class RollbackView:
    to_version: int
    value: PyValue | None
    next_version: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class VariableView:
    session_id: str
    name: str
    served_at: int
    #: The live variable now; None once it was deleted.
    variable: VariableState | None
    #: The page of history rows, newest first, and the token of the next (older) page.
    rows: tuple[Change, ...]
    older_token: str
    chart: Chart
    #: Every version the chart covers (for the diff and rollback pickers), newest first.
    versions: tuple[int, ...]
    diff: tuple[Change, Change] | None
    batch: BatchView | None
    rollback: RollbackView | None
    #: Why the asked-for diff is not shown ("" when it is, or none was asked for).
    diff_error: str = ""


def variable_view(
    store: ReadableStore,
    session_id: str,
    name: str,
    *,
    page_token: str = "",
    diff: tuple[int, int] | None = None,
    batch_version: int | None = None,
    rollback_to: int | None = None,
) -> VariableView:
    """A variable's history page, chart, chosen diff, batch and rollback.

    Raises:
        SessionNotFound, VariableNotFound: no such session, or no variable ever had the
            name (or id) in it.
        ValidationError: a page token this page did not make.
    """
    page = queries.variable_history(
        store, session_id, name, newest_first=True, page_size=HISTORY_ROWS, page_token=page_token
    )
    served_at = page.position
    variable: VariableState | None
    try:
        variable = queries.get_variable(store, session_id, name, served_at).variable
    except (SessionNotFound, VariableNotFound):
        variable = None
    recent = _recent_changes(store, session_id, name, CHART_VERSIONS + 1)
    chart = _chart(recent[:CHART_VERSIONS], variable, truncated=len(recent) > CHART_VERSIONS)
    by_version = {c.version: c for c in reversed(recent) if c.kind != "deleted"}
    chosen_diff = None
    diff_error = ""
    if diff is not None:
        old, new = (_version(store, session_id, name, n, by_version) for n in diff)
        if old is None or new is None:
            missing = diff[0] if old is None else diff[1]
            diff_error = f"{name!r} has no version {missing} (its versions are 0 to {max(by_version, default=0)})"
        else:
            chosen_diff = (old, new)
    elif len(by_version) >= 2:
        newest = sorted(by_version)[-2:]
        chosen_diff = (by_version[newest[0]], by_version[newest[1]])
    batch = None
    if batch_version is not None:
        change = _version(store, session_id, name, batch_version, by_version)
        if change is not None:
            batch = _batch(store, session_id, change, served_at)
    rollback = None
    if rollback_to is not None and variable is not None:
        rollback = _rollback(store, session_id, variable, rollback_to)
    return VariableView(
        session_id,
        variable.name if variable is not None else (recent[0].name if recent else name),
        served_at,
        variable,
        page.items,
        page.next_token,
        chart,
        tuple(sorted(by_version, reverse=True)),
        chosen_diff,
        batch,
        rollback,
        diff_error,
    )


def _version(
    store: ReadableStore, session_id: str, name: str, version: int, known: Mapping[int, Change]
) -> Change | None:
    """The (last lifetime's) change that made ``version``, None if there was none."""
    if version in known:
        return known[version]
    page = queries.variable_history(
        store, session_id, name, from_version=version, to_version=version, newest_first=True
    )
    return next((c for c in page.items if c.kind != "deleted"), None)


def _recent_changes(store: ReadableStore, session_id: str, name: str, count: int) -> list[Change]:
    """The newest ``count`` changes of ``name``, newest first."""
    changes: list[Change] = []
    token = ""
    while len(changes) < count:
        page = queries.variable_history(
            store,
            session_id,
            name,
            newest_first=True,
            page_size=min(1000, count - len(changes)),
            page_token=token,
        )
        changes.extend(page.items)
        token = page.next_token
        if not token:
            break
    return changes


def _chart(newest_first: list[Change], variable: VariableState | None, *, truncated: bool) -> Chart:
    changes = [c for c in reversed(newest_first) if c.kind != "deleted"]
    kind_of = changes[-1].type if changes else (variable.type if variable else "string")
    constraints = variable.constraints if variable is not None else None
    choices = tuple(constraints.choices) if constraints is not None else ()
    lanes: tuple[str, ...]
    if kind_of in ("float", "integer") and not choices:
        kind, lanes = "number", ()
    elif kind_of == "boolean":
        kind, lanes = "lanes", ("false", "true")
    elif choices:
        kind, lanes = "lanes", tuple(_text(choice) for choice in choices)
    else:
        kind, lanes = "strip", ()
    return Chart(
        kind,
        tuple(c.recorded_at.timestamp() for c in changes),
        tuple(c.value for c in changes),
        tuple(c.version for c in changes),
        tuple(c.position for c in changes),
        lanes,
        constraints.min if constraints is not None and kind == "number" else None,
        constraints.max if constraints is not None and kind == "number" else None,
        truncated,
    )


def _text(value: PyValue | None) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _batch(store: ReadableStore, session_id: str, change: Change, served_at: int) -> BatchView:
    """The other variables the event that made ``change`` changed."""
    events = queries.read_events(
        store, session_id, from_position=change.position, to_position=change.position
    ).items
    names: dict[str, str] = {}
    try:
        state = queries.session_at(store, session_id, served_at)
        names = _names(state.variables.values())
    except VarstoreError:
        pass
    others = []
    for event in events:
        for vid, value in _event_changes(event):
            if vid != change.variable_id:
                others.append((names.get(vid, vid), value))
    return BatchView(change.position, change.version, tuple(others))


def _event_changes(event: RecordedEvent) -> list[tuple[str, PyValue]]:
    spec = EVENTS.get(event.type)
    if spec is None:
        return []
    try:
        return list(spec.changes(event.payload))
    except (KeyError, TypeError, ValueError):
        return []


def _rollback(
    store: ReadableStore, session_id: str, variable: VariableState, to_version: int
) -> RollbackView:
    try:
        target = queries.rollback_target(store, session_id, variable.id, to_version)
    except VarstoreError as problem:
        return RollbackView(to_version, None, variable.version + 1, str(problem))
    return RollbackView(to_version, target.value, target.variable.version + 1)
