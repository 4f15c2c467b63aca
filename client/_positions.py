"""Read-your-writes on any server: the session positions a client has seen.

Every answer's header says the session position it was served at (a write's: its own
event's). A :class:`SeenPositions` keeps, per session, the highest one any answer of the
client brought (writes and reads alike, so reads never go back in time either), and
stamps it as ``min_position`` on every request that has the field: a server sharing the
log that has not applied the session that far waits for its tail, or answers UNAVAILABLE
(which the client retries, on whichever server gRPC picks next).

One record is shared by every context of a client and by its flows, sync and asyncio
alike; it does no I/O. A deleted session's id keeps counting positions upward when it is
created again, so a session's record only ever grows.
"""

from __future__ import annotations

import threading
from typing import Any, Final

from cachetools import LRUCache
from google.protobuf.message import Message

__all__ = ["MAX_SESSIONS", "SeenPositions"]

#: Sessions a record remembers; past that, the least recently used one is forgotten (its
#: reads then wait for nothing, as a new client's would).
MAX_SESSIONS: Final = 100_000


class SeenPositions:
    """Per session, the highest position any answer showed; thread-safe."""

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self._lock = threading.Lock()
        self._seen: LRUCache[str, int] = LRUCache(max_sessions)

    def __repr__(self) -> str:
        with self._lock:
            return f"SeenPositions({len(self._seen)} sessions)"

    def position(self, session_id: str) -> int:
        """The highest position seen of ``session_id``; 0 if none."""
        with self._lock:
            return self._seen.get(session_id, 0)

    def saw(self, session_id: str, position: int) -> None:
        """Record that an answer showed ``session_id`` at ``position``."""
        if not session_id or position <= 0:
            return
        with self._lock:
            if position > self._seen.get(session_id, 0):
                self._seen[session_id] = position

    def saw_answer(self, response: Any) -> None:
        """Record the position in ``response``'s header, if it has one for a session."""
        header = getattr(response, "header", None)
        if header is not None:
            self.saw(header.session_id, header.position)

    def stamp(self, request: Message, at_least: int = 0) -> None:
        """Set ``request.min_position`` (when the request has one) to the highest position
        seen of its session, or to ``at_least`` if that is higher; 0 leaves it unset."""
        if "min_position" not in request.DESCRIPTOR.fields_by_name:
            return
        wanted = max(at_least, self.position(getattr(request, "session_id", "")))
        if wanted > getattr(request, "min_position"):  # noqa: B009 - any request
            setattr(request, "min_position", wanted)  # noqa: B010 - any request
