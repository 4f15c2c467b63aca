"""Wake the page's server-sent event streams when a session they follow commits.

ONE listener on the store (called on the committing thread, so it only looks up a dict
and, when someone follows the session, schedules a wake-up on the web server's loop);
each stream waits on its own :class:`asyncio.Event` and then reads the session's
published position through the query layer, so it never sees a state the gRPC API has
not published.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from varstore.eventstore import RecordedEvent

__all__ = ["ANY", "LiveFeed", "Subscribe"]

#: Follow every session (``follow(ANY)``): woken by any commit.
ANY = "*"

#: The store's ``subscribe``: takes a listener of commits, returns its unsubscriber.
Subscribe = Callable[[Callable[[Sequence[RecordedEvent]], None]], Callable[[], None]]


class LiveFeed:
    """Per-session wake-ups for the streams of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # Touched on the loop only; the store's thread reads it (a dict lookup under the
        # GIL), at worst missing a follower registered that instant, who then reads the
        # position right after registering anyway.
        self._followers: dict[str, set[asyncio.Event]] = {}
        self.closed = False
        #: Events committed since the feed started (the sessions page counts from it).
        self.events_seen = 0
        self._unsubscribe: Callable[[], None] | None = None

    def attach(self, subscribe: Subscribe) -> None:
        """Subscribe to the store's commits (``store.subscribe``)."""
        self._unsubscribe = subscribe(self._on_commit)

    def _on_commit(self, events: Sequence[RecordedEvent]) -> None:
        # One writer calls this (the store's committing thread): a plain int suffices.
        self.events_seen += len(events)
        followed = self._followers
        sessions = {event.session_id for event in events if event.session_id in followed}
        if ANY in followed:
            sessions.add(ANY)
        if sessions and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake, sessions)

    def _wake(self, sessions: set[str]) -> None:
        for session_id in sessions:
            for event in self._followers.get(session_id, ()):
                event.set()

    @contextmanager
    def follow(self, session_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever ``session_id`` (any session for :data:`ANY`) commits, or
        the feed closes."""
        event = asyncio.Event()
        self._followers.setdefault(session_id, set()).add(event)
        try:
            yield event
        finally:
            followers = self._followers.get(session_id)
            if followers is not None:
                followers.discard(event)
                if not followers:
                    del self._followers[session_id]

    def close(self) -> None:
        """Stop listening and wake every stream so it ends (call on the loop)."""
        self.closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        for followers in list(self._followers.values()):
            for event in followers:
                event.set()
