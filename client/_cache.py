"""The client's variable cache: one entry per variable, found by id or by name, with a TTL,
a size bound (the least recently used entry goes first) and the seed's statistics."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from varstore.types import PyValue

__all__ = ["CachedVariable", "VariableCache"]


@dataclass(frozen=True, slots=True)
class CachedVariable:
    """What the cache keeps of a variable."""

    id: str
    name: str
    type: str
    value: PyValue
    version: int
    #: Session position of the variable's last change.
    position: int
    #: Clock reading when the entry was stored.
    stored_at: float


class _CountingLRU(LRUCache[str, CachedVariable]):
    """An LRU cache that counts the entries it throws out to make room."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.evicted = 0

    def popitem(self) -> tuple[str, CachedVariable]:
        self.evicted += 1
        item: tuple[str, CachedVariable] = super().popitem()
        return item


class VariableCache:
    """Cached variables keyed by id, plus a name index, so that a name and an id always
    share ONE entry (writing by name can never leave a stale value under the id).

    An entry older than ``ttl`` seconds by ``clock`` is never served. Thread-safe; does
    no I/O: the session contexts decide when to consult and fill it.
    """

    def __init__(self, ttl: float, max_size: int, clock: Callable[[], float]) -> None:
        if max_size < 0:
            raise ValueError(f"max_size must be 0 or more, not {max_size}")
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries = _CountingLRU(max_size)
        self._names: dict[str, str] = {}
        self._hits = 0
        self._misses = 0
        self._expired = 0
        self._sets = 0

    @property
    def ttl(self) -> float:
        """Seconds an entry may be served after it was stored."""
        return self._ttl

    def configure(self, ttl: float | None = None, max_size: int | None = None) -> None:
        """Change the TTL (applies to entries already stored) or the size bound."""
        with self._lock:
            if ttl is not None:
                self._ttl = ttl
            if max_size is not None and max_size != self._entries.maxsize:
                if max_size < 0:
                    raise ValueError(f"max_size must be 0 or more, not {max_size}")
                old = self._entries
                in_use_order = [old.popitem() for _ in range(len(old))]  # least recent first
                self._entries = _CountingLRU(max_size)
                kept = in_use_order[-max_size:] if max_size else []
                self._entries.evicted = (
                    old.evicted - len(in_use_order) + (len(in_use_order) - len(kept))
                )
                for key, entry in kept:  # least recent first, as they were
                    self._entries[key] = entry
                self._prune_names()

    def get(self, identifier: str, *, ignore_ttl: bool = False) -> CachedVariable | None:
        """The fresh entry for an id or name (a hit), or None (a miss). ``ignore_ttl``
        (a healthy watch keeps the entries current) serves an entry however old."""
        with self._lock:
            entry = self._find(identifier)
            if (
                entry is not None
                and not ignore_ttl
                and self._clock() - entry.stored_at >= self._ttl
            ):
                self._drop(entry)
                self._expired += 1
                entry = None
            if entry is None:
                self._misses += 1
            else:
                self._hits += 1
            return entry

    def count_miss(self) -> None:
        """Record a read that skipped the cache (``bypass_cache``): it counts as a miss."""
        with self._lock:
            self._misses += 1

    def put(
        self,
        *,
        id: str,
        name: str,
        type: str,
        value: PyValue,
        version: int,
        position: int,
    ) -> None:
        """Store a variable as read or written, unless the cache holds a newer version."""
        with self._lock:
            if self._entries.maxsize <= 0:  # max_size 0: cache nothing
                return
            current = self._entries.get(id)
            if current is not None and current.version > version:
                return
            old_id = self._names.get(name)
            if old_id is not None and old_id != id:  # the name was re-registered
                self._entries.pop(old_id, None)
            self._entries[id] = CachedVariable(
                id, name, type, value, version, position, self._clock()
            )
            self._names[name] = id
            self._sets += 1

    def apply_change(
        self,
        *,
        id: str,
        name: str,
        type: str,
        value: PyValue | None,
        version: int,
        position: int,
    ) -> bool:
        """A change another process made, seen on a watch: a cached variable takes the new
        value (unless the cache holds a newer version); a deleted one (``value`` None) is
        dropped; a variable not cached is not filled in. True if the cache changed."""
        with self._lock:
            changed = False
            old_id = self._names.get(name)
            if old_id is not None and old_id != id:  # the name now means another variable
                self._entries.pop(old_id, None)
                del self._names[name]
                changed = True
            current = self._entries.get(id)
            if current is None:
                return changed
            if value is None:
                self._drop(current)
                return True
            if current.version > version:
                return changed
            self._entries[id] = CachedVariable(
                id, name, type, value, version, position, self._clock()
            )
            self._names[name] = id
            return True

    def drop_older_than(self, position: int) -> None:
        """Forget every entry whose last change is before ``position`` (the session was
        deleted there)."""
        with self._lock:
            for entry in [e for e in self._entries.values() if e.position < position]:
                self._drop(entry)

    def peek(self, identifier: str) -> CachedVariable | None:
        """The entry for an id or name, fresh or not, without touching the statistics."""
        with self._lock:
            return self._find(identifier)

    def invalidate(self, identifier: str | None = None) -> None:
        """Forget one variable (by id or name), or everything."""
        with self._lock:
            if identifier is None:
                self._entries.clear()
                self._names.clear()
                return
            entry = self._find(identifier)
            if entry is not None:
                self._drop(entry)
            self._names.pop(identifier, None)

    def stats(self) -> dict[str, Any]:
        """``hits``, ``misses``, ``evictions``, ``sets``, ``size``, ``hit_rate``, ``ttl``."""
        with self._lock:
            reads = self._hits + self._misses
            return {
                "hits": self._hits,
                "misses": self._misses,
                "evictions": self._expired + self._entries.evicted,
                "sets": self._sets,
                "size": len(self._entries),
                "hit_rate": self._hits / reads if reads else 0.0,
                "ttl": self._ttl,
                "max_size": self._entries.maxsize,
            }

    # -- under the lock ---------------------------------------------------------------------

    def _find(self, identifier: str) -> CachedVariable | None:
        entry = self._entries.get(identifier)
        if entry is None:
            variable_id = self._names.get(identifier)
            if variable_id is not None:
                entry = self._entries.get(variable_id)
                if entry is None:  # evicted for room: the name points nowhere now
                    del self._names[identifier]
        return entry

    def _drop(self, entry: CachedVariable) -> None:
        self._entries.pop(entry.id, None)
        if self._names.get(entry.name) == entry.id:
            del self._names[entry.name]

    def _prune_names(self) -> None:
        self._names = {n: i for n, i in self._names.items() if i in self._entries}
