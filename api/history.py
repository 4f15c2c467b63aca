"""A session's history as readers see it: the compact index
(:class:`~varstore.projections.history.HistoryIndex`) and the log it points into.

The index holds where each variable changed and how; a :class:`Change` is made from the
events at those positions, read here (the projections stay pure) with the recorder's
``read_positions``: a page of changes costs one query, whatever the length of the
variable's history. The events read lately are kept (:class:`EventCache`, bounded): an
event never changes once recorded, and a reader going back to a variable's history (the
audit page's chart of its newest 5,000 versions) finds them there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from cachetools import LRUCache

from varstore.eventstore import RecordedEvent
from varstore.projections import Change, HistoryIndex, Lifetime
from varstore.types import PyValue

__all__ = ["EVENT_CACHE_SIZE", "EventCache", "EventLog", "History", "Lived"]

#: Events an :class:`EventCache` keeps (about 10 MB of decoded events).
EVENT_CACHE_SIZE: Final = 10_000


class EventLog(Protocol):
    """The part of the recorder the history reads: one session's events by position."""

    def read_positions(
        self, session_id: str, positions: Sequence[int]
    ) -> Sequence[RecordedEvent]: ...


class EventCache:
    """The events read lately, by session and position, the least recently used dropped
    first (a recorded event never changes, and a position is never used twice)."""

    def __init__(self, size: int = EVENT_CACHE_SIZE) -> None:
        self._events: LRUCache[tuple[str, int], RecordedEvent] = LRUCache(maxsize=size)
        self._lock = threading.Lock()

    def read(
        self, log: EventLog, session_id: str, positions: Iterable[int]
    ) -> dict[int, RecordedEvent]:
        """The session's events at ``positions``, by position: kept ones, and the others
        read from ``log`` in one ``read_positions``."""
        found: dict[int, RecordedEvent] = {}
        missing: list[int] = []
        with self._lock:
            for position in positions:
                event = self._events.get((session_id, position))
                if event is None:
                    missing.append(position)
                else:
                    found[position] = event
        if missing:
            read = log.read_positions(session_id, missing)
            with self._lock:
                for event in read:
                    self._events[session_id, event.position] = event
            found.update((event.position, event) for event in read)
        return found


@dataclass(frozen=True, slots=True)
class Lived:
    """One lifetime as a reader sees it: its entries below ``count`` (taken once, so the
    writer's appends do not move the reader)."""

    lifetime: Lifetime
    count: int


class History:
    """The history of one session: which ids a name has had, and their changes, made from
    the log on demand."""

    def __init__(
        self, index: HistoryIndex, log: EventLog, session_id: str, cache: EventCache | None = None
    ) -> None:
        self._index = index
        self._log = log
        self._session_id = session_id
        self._cache = cache if cache is not None else EventCache()

    def ids_for(self, identifier: str) -> list[str]:
        """The variable ids ``identifier`` names: itself if it is an id, else every id the
        name has had, oldest first."""
        return self._index.ids_for(identifier)

    def lifetimes(self, identifier: str) -> list[Lived]:
        """The lifetimes ``identifier`` names (see :meth:`ids_for`), oldest first."""
        found = [self._index.lifetime(variable_id) for variable_id in self.ids_for(identifier)]
        return [Lived(lifetime, len(lifetime)) for lifetime in found if lifetime is not None]

    def changes(self, variable_id: str) -> list[Change]:
        """Every change of one variable, oldest first."""
        lifetime = self._index.lifetime(variable_id)
        if lifetime is None:
            return []
        return self.made_of([(lifetime, index) for index in range(len(lifetime))])

    def value_at_version(self, variable_id: str, version: int) -> PyValue | None:
        """The value a variable had at ``version`` (None if it never had that version)."""
        lifetime = self._index.lifetime(variable_id)
        if lifetime is None or not 0 <= version < len(lifetime):
            return None
        if lifetime.version(version) != version:  # the deletion: no value
            return None
        return lifetime.value(version, self._read(lifetime.needs(version)[-1:]))

    def changes_at(
        self, variable_id: str, position: int, event: RecordedEvent | None = None
    ) -> list[Change]:
        """The changes one variable had at ``position`` (oldest first; usually one or
        none); ``event``, if given, is the event there (not read again)."""
        known = {position: event} if event is not None else {}
        return self.made_of(self._entries_at([variable_id], position), known)

    def changes_in(
        self,
        event: RecordedEvent,
        variable_ids: Iterable[str],
        known: Mapping[int, RecordedEvent] | None = None,
    ) -> list[Change]:
        """The changes ``event`` made to each of ``variable_ids``, in that order, from one
        read of the earlier events they need (``known``: the session's events at hand,
        by position, which are not read)."""
        if known is None or known.get(event.position) is not event:
            known = {event.position: event}
        return self.made_of(self._entries_at(variable_ids, event.position), known)

    def _entries_at(self, variable_ids: Iterable[str], position: int) -> list[tuple[Lifetime, int]]:
        """The (lifetime, index) of every change of ``variable_ids`` at ``position``."""
        entries: list[tuple[Lifetime, int]] = []
        for variable_id in variable_ids:
            lifetime = self._index.lifetime(variable_id)
            if lifetime is not None:
                span = lifetime.position_span(position - 1, position, len(lifetime))
                entries.extend((lifetime, index) for index in range(*span))
        return entries

    def made_of(
        self,
        entries: Sequence[tuple[Lifetime, int]],
        known: Mapping[int, RecordedEvent] | None = None,
    ) -> list[Change]:
        """The changes of ``entries`` (lifetime, index), in their order, from one read of
        the events they need (``known`` events, by position, are not read)."""
        have = known or {}
        wanted = {p for lifetime, i in entries for p in lifetime.needs(i) if p not in have}
        events: Mapping[int, RecordedEvent] = have
        if wanted:
            events = self._read(wanted)
            events.update(have)
        return [lifetime.change(index, events) for lifetime, index in entries]

    def _read(self, positions: Iterable[int]) -> dict[int, RecordedEvent]:
        """The session's events at ``positions``, by position (those not kept read in one
        ``read_positions``: only the events wanted are read and decoded)."""
        return self._cache.read(self._log, self._session_id, positions)
