"""The messages of WatchSession streams: each event encoded once and shared by every
watcher, and several events packed into one message for the watches that allow it.

* **One encoding per event.** An event's WatchEvent (the event, and the change of every
  variable it touched with its new and previous value, read from the session's history)
  is built and serialized once, then kept (by encoded size, ``ENCODED_CACHE_BYTES``) for
  the other watchers; a filtered watch's version of it is kept under its filter, so the
  watchers with the same ``variables`` share it too.
* **Several events a message.** A watch that asks for ``max_events_per_message`` N above
  1 gets the events it takes at once (it was behind, or a burst was written) in
  WatchEvents messages of up to N (at most ``MAX_EVENTS_PER_MESSAGE``); a lone event
  still goes as a one-event message. An event is never split, and events a filter leaves
  out are skipped.
* **Bytes, not messages.** Protobuf encodes a repeated message field as the
  concatenation of each element's key, length and bytes, so a WatchEvents message is
  the join of its events' cached encodings, wrapped once more as field ``events`` of the
  response: no watcher re-serializes an event. gRPC serializes what a handler writes
  with the method's response serializer, so the bytes reach the wire only where
  WatchSession is served through :func:`encoded_watches` (a server interceptor whose
  serializer passes bytes through, as ``start_server`` installs it); elsewhere the
  streams write messages, parsed from the same bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import grpc
import grpc.aio
from cachetools import LRUCache

from varstore.api.calls import Behaviour, HandlerCache, rebuild
from varstore.api.event_codec import change_to_proto, event_to_proto
from varstore.api.store import Store
from varstore.eventstore.events import RecordedEvent
from varstore.types.events import is_session_event, touched_variable_ids
from varstore.v1 import varstore_pb2 as pb

__all__ = [
    "ENCODED_CACHE_BYTES",
    "MAX_EVENTS_PER_MESSAGE",
    "WATCH_METHOD",
    "Messages",
    "Outgoing",
    "View",
    "encoded_watches",
    "encoding",
]

#: Most events one message carries (a larger ``max_events_per_message`` is served as this).
MAX_EVENTS_PER_MESSAGE: Final = 256
#: Bytes of encoded events kept for the other watchers of a session (by encoded size).
ENCODED_CACHE_BYTES: Final = 32 << 20
#: The full name of the method whose responses :func:`encoded_watches` passes through.
WATCH_METHOD: Final = "/varstore.v1.VariableStore/WatchSession"

#: What a stream yields: a WatchSessionResponse, or its encoding (bytes) on a stream served
#: through :func:`encoded_watches`. Any, so that a servicer annotated with the message type
#: may ``yield from`` either.
Outgoing: TypeAlias = Any

_RESPONSE_FIELDS = pb.WatchSessionResponse.DESCRIPTOR.fields_by_name
_EVENT_FIELD: Final = _RESPONSE_FIELDS["event"].number
_EVENTS_FIELD: Final = _RESPONSE_FIELDS["events"].number
_ITEM_FIELD: Final = pb.WatchEvents.DESCRIPTOR.fields_by_name["events"].number

#: True while a WatchSession call is served through :func:`encoded_watches` (set per call).
_ENCODING: ContextVar[bool] = ContextVar("varstore_watch_encoding", default=False)


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, body: bytes) -> bytes:
    """A length-delimited field as protobuf encodes it: key, length, then the bytes."""
    return _varint(number << 3 | 2) + _varint(len(body)) + body


@dataclass(frozen=True, slots=True)
class Encoded:
    """One event as the watchers with one filter see it, built and serialized once."""

    position: int
    event: pb.Event = field(repr=False)
    changes: tuple[pb.VariableChange, ...] = field(repr=False)
    #: The one-event response message (for streams that yield messages).
    response: pb.WatchSessionResponse = field(repr=False)
    #: ``response`` serialized: the WatchEvent as field ``event`` of a response.
    single: bytes = field(repr=False)
    #: The same WatchEvent as one element of WatchEvents' ``events``.
    item: bytes = field(repr=False)

    @classmethod
    def of(cls, position: int, event: pb.Event, changes: Sequence[pb.VariableChange]) -> Encoded:
        """The encodings of ``event`` with ``changes``."""
        watch_event = pb.WatchEvent(event=event, changes=changes)
        body = watch_event.SerializeToString()
        single = _field(_EVENT_FIELD, body)
        response = pb.WatchSessionResponse(event=watch_event)
        return cls(position, event, tuple(changes), response, single, _field(_ITEM_FIELD, body))

    @property
    def size(self) -> int:
        """Roughly the memory it holds (its bytes, and the messages as much again)."""
        return 2 * len(self.single) + len(self.item)


#: The cache's value for an event a filter leaves out.
_LEFT_OUT: Final = "left out"
#: What ``Messages.encoded(cached_only=True)`` answers for an encoding not at hand.
_MISSING: Final = "missing"


@dataclass(frozen=True, slots=True)
class View:
    """What one watch is sent: its ``variables`` filter, how many events a message may
    carry, and whether its stream carries bytes (served through :func:`encoded_watches`)."""

    wanted: frozenset[str] = frozenset()
    per_message: int = 1
    encoded: bool = False

    def wire(self, message: pb.WatchSessionResponse) -> Outgoing:
        """A message as this watch's stream carries it."""
        return message.SerializeToString() if self.encoded else message

    def message(self, group: Sequence[Encoded]) -> Outgoing:
        """One message carrying ``group`` (one event: an ``event`` message)."""
        if len(group) == 1:
            return group[0].single if self.encoded else group[0].response
        wire = _field(_EVENTS_FIELD, b"".join([encoded.item for encoded in group]))
        return wire if self.encoded else pb.WatchSessionResponse.FromString(wire)


class Messages:
    """Builds the messages of watch streams from recorded events (see the module
    docstring); one per server, shared by every watch."""

    def __init__(self, store: Store, cache_bytes: int = ENCODED_CACHE_BYTES) -> None:
        self._store = store
        self._cache_bytes = cache_bytes
        self._cache: LRUCache[tuple[str, int, int, frozenset[str]], Encoded | str] = LRUCache(
            cache_bytes, getsizeof=lambda value: value.size if isinstance(value, Encoded) else 64
        )
        self._lock = threading.Lock()

    def pack(
        self, events: Sequence[RecordedEvent], view: View, *, cached_only: bool = False
    ) -> list[tuple[int, Outgoing | None]] | None:
        """The messages for consecutive ``events``, each with the last position it covers
        (the events a filter leaves out are covered by the next message, or by a last
        ``(position, None)``). With
        ``cached_only``, None unless every event's encoding is at hand (nothing then reads
        the store: safe on the event loop)."""
        out: list[tuple[int, Outgoing | None]] = []
        group: list[Encoded] = []
        known = _by_position(events)
        for event in events:
            encoded = self.encoded(event, view.wanted, cached_only=cached_only, known=known)
            if encoded is _MISSING:
                return None
            if encoded is None:
                continue
            assert isinstance(encoded, Encoded)
            group.append(encoded)
            if len(group) == view.per_message:
                out.append((encoded.position, view.message(group)))
                group = []
        if group:
            out.append((group[-1].position, view.message(group)))
        if events and (not out or out[-1][0] != events[-1].position):
            out.append((events[-1].position, None))
        return out

    def prepare(self, events: Sequence[RecordedEvent]) -> None:
        """Encode ``events`` for unfiltered watches (kept for every watcher)."""
        sessions: dict[str, list[RecordedEvent]] = {}
        for event in events:
            sessions.setdefault(event.session_id, []).append(event)
        for its_events in sessions.values():
            known = _by_position(its_events)
            for event in its_events:
                self.encoded(event, frozenset(), known=known)

    def encoded(
        self,
        event: RecordedEvent,
        wanted: frozenset[str],
        *,
        cached_only: bool = False,
        known: Mapping[int, RecordedEvent] | None = None,
    ) -> Encoded | str | None:
        """``event`` as watchers of ``wanted`` (empty: every variable) see it; None when
        the filter leaves it out; with ``cached_only``, ``_MISSING`` if building it would
        read the store. ``known``: events of its session at hand, by position (the
        history need not read them)."""
        key = (event.session_id, event.position, event.global_position, wanted)
        with self._lock:
            found = self._cache.get(key)
        if found is None:
            if cached_only:
                if not wanted:
                    return _MISSING
                every = self.encoded(event, frozenset(), cached_only=True)
                if every is _MISSING:
                    return _MISSING
            found = self._build(event, wanted, known)
            if not isinstance(found, Encoded) or found.size <= self._cache_bytes // 8:
                with self._lock:  # a huge one would evict all the rest
                    self._cache[key] = found
        return found if isinstance(found, Encoded) else None

    def _build(
        self,
        event: RecordedEvent,
        wanted: frozenset[str],
        known: Mapping[int, RecordedEvent] | None,
    ) -> Encoded | str:
        if wanted:
            every = self.encoded(event, frozenset(), known=known)
            assert isinstance(every, Encoded)  # an unfiltered watch leaves nothing out
            changes = [c for c in every.changes if c.variable_id in wanted or c.name in wanted]
            if not changes and not is_session_event(event.type):
                return _LEFT_OUT
            return Encoded.of(event.position, every.event, changes)
        history = self._store.history(event.session_id)
        changes = [
            change_to_proto(change)
            for change in history.changes_in(event, self._touched(event), known)
        ]
        return Encoded.of(event.position, event_to_proto(event), changes)

    def _touched(self, event: RecordedEvent) -> list[str]:
        """Ids of the variables an event changed, in the event's order (the registry says
        which; a SessionDeleted changes every variable live just before it)."""

        def live() -> list[str]:
            before = self._store.state_at(event.session_id, event.position - 1)
            return [variable.id for variable in before.by_name()] if before is not None else []

        return touched_variable_ids(event.type, event.payload, live)


def _by_position(events: Sequence[RecordedEvent]) -> dict[int, RecordedEvent]:
    """One session's ``events`` by position."""
    return {event.position: event for event in events}


# -- serving the bytes ---------------------------------------------------------------------------


def encoding() -> bool:
    """Whether the WatchSession call being served passes bytes to the transport."""
    return _ENCODING.get()


def encoded_watches() -> HandlerCache:
    """A server interceptor that serves WatchSession with a response serializer that passes
    bytes through, and tells the watch it serves so (:func:`encoding`): the streams then
    write their messages' cached encodings. Every other method is left as it is."""
    return _EncodedWatches()


def _pass_through(message: pb.WatchSessionResponse | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


# A string: grpc's classes are generic only in its type stubs.
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class _EncodedWatches(HandlerCache):
    def wrap(self, handler: _Handler, method: str) -> _Handler:
        if method != WATCH_METHOD or handler.unary_stream is None:
            return handler
        return rebuild(handler, _encoding_call, response=_pass_through)


def _encoding_call(behaviour: Behaviour) -> Behaviour:
    """``behaviour`` run with :func:`encoding` true (the call's own context: the flag never
    leaks into another call)."""

    async def encoded(request: Any, context: Any) -> Any:
        token = _ENCODING.set(True)
        try:
            return await behaviour(request, context)
        finally:
            _ENCODING.reset(token)

    return encoded
