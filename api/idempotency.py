"""Request ids: a write's idempotency key, the digest of its body, and the index of recent ids.

A write RPC may carry a ``request_id`` (1 to 128 characters, unique per server). The store
stamps it, with a digest of the rest of the request (:func:`request_key`), on every event
the write appends, so the log itself says which request wrote what. The projector keeps a
:class:`RequestIndex` of the ids recorded in the last :data:`REQUEST_TTL`; a write whose id
is in it is a retry when its digest matches (its answer is rebuilt from the log) and
INVALID_ARGUMENT when it does not.

Invariants:

* An id names at most one append: the store decides "is this a retry" under the group
  commit's leader, so two writes with one id can never both append.
* A record is a fact of the log (session, first and last position of the append, digest);
  dropping the index loses nothing but memory of old ids: start-up rebuilds it from the
  recent events that carry an id (``Recorder.read_requests``), whatever the checkpoint.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from google.protobuf.message import Message

from varstore.eventstore import RecordedEvent
from varstore.types import ValidationError

__all__ = [
    "MAX_REQUEST_ID_LENGTH",
    "REQUEST_TTL",
    "BodyDigest",
    "RequestIndex",
    "RequestKey",
    "RequestRecord",
    "check_request_id",
    "request_key",
]

#: How long a request id is remembered after its write was recorded.
REQUEST_TTL: Final = timedelta(hours=24)
#: Longest request id, in characters.
MAX_REQUEST_ID_LENGTH: Final = 128


@dataclass(frozen=True, slots=True)
class RequestKey:
    """A write's idempotency key and the digest of its body (hex SHA-256)."""

    id: str
    digest: str


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """Where the write that carried ``request_id`` appended its events."""

    request_id: str
    session_id: str
    first_position: int
    last_position: int
    digest: str
    #: When it was recorded: the store's clock at the commit, or, for a record read back at
    #: start-up, the time of its last event. It is forgotten REQUEST_TTL after.
    at: datetime


def check_request_id(request_id: str) -> None:
    """INVALID_ARGUMENT unless ``request_id`` is usable: 1 to 128 characters, none of them
    a control character."""
    problem = ""
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        problem = f"is {len(request_id)} characters long; the limit is {MAX_REQUEST_ID_LENGTH}"
    elif any(unicodedata.category(char) == "Cc" for char in request_id):
        problem = "holds a control character"
    if problem:
        text = f"request_id {problem}"
        raise ValidationError(text, violations={"request_id": text})


def _digest(kind: str) -> hashlib._Hash:
    return hashlib.sha256(kind.encode() + b"\0")


def request_key(request: Message) -> RequestKey | None:
    """The key of a unary write request: its ``request_id`` and a digest of every other
    field (and of its type, so one id on two RPCs differs); None without a request id.

    Raises:
        ValidationError: the request id is not usable (see :func:`check_request_id`).
    """
    request_id: str = getattr(request, "request_id", "")
    if not request_id:
        return None
    check_request_id(request_id)
    body = type(request)()
    body.CopyFrom(request)
    body.ClearField("request_id")  # every write request has it
    digest = _digest(request.DESCRIPTOR.full_name)
    digest.update(body.SerializeToString(deterministic=True))
    return RequestKey(request_id, digest.hexdigest())


class BodyDigest:
    """The digest of a streamed request (ImportSession), fed part by part: the same parts
    give the same digest however the stream was chunked."""

    def __init__(self, kind: str) -> None:
        self._hash = _digest(kind)

    def update(self, part: Message) -> None:
        """Add one part (a message: the first chunk's fields, or one event)."""
        data = part.SerializeToString(deterministic=True)
        self._hash.update(len(data).to_bytes(8, "big") + data)

    def key(self, request_id: str) -> RequestKey | None:
        """The key for ``request_id`` over the parts so far; None without a request id.

        Raises:
            ValidationError: the request id is not usable.
        """
        if not request_id:
            return None
        check_request_id(request_id)
        return RequestKey(request_id, self._hash.hexdigest())


class RequestIndex:
    """The request ids recorded in the last ``ttl``, each with where its write appended.

    Adding is done by one thread at a time (the projector's applier); lookups may come
    from any thread (a dict lookup). Records are immutable and replaced whole.
    """

    def __init__(self, ttl: timedelta = REQUEST_TTL) -> None:
        self.ttl = ttl
        self._records: dict[str, RequestRecord] = {}
        # (time, id) in the order records were added or refreshed, for pruning; an entry
        # whose record has since been refreshed is skipped when it comes up.
        self._order: deque[tuple[datetime, str]] = deque()

    def __len__(self) -> int:
        return len(self._records)

    def add(self, event: RecordedEvent, at: datetime) -> None:
        """Remember that ``event``'s request wrote it (idempotent; any order). The events
        of one write extend its record; an id already recorded elsewhere keeps its first
        record."""
        request_id = event.request_id
        if not request_id:
            return
        known = self._records.get(request_id)
        position = event.position
        if known is None:
            record = RequestRecord(
                request_id, event.session_id, position, position, event.request_digest, at
            )
        else:
            same_write = (known.session_id, known.digest) == (
                event.session_id,
                event.request_digest,
            )
            news = not known.first_position <= position <= known.last_position or at > known.at
            if not (same_write and news):
                return
            record = RequestRecord(
                request_id,
                known.session_id,
                min(known.first_position, position),
                max(known.last_position, position),
                known.digest,
                max(known.at, at),
            )
        self._records[request_id] = record
        if known is None or record.at != known.at:
            self._order.append((record.at, request_id))

    def get(self, request_id: str, now: datetime) -> RequestRecord | None:
        """The record of ``request_id`` if it was recorded within ``ttl`` of ``now``."""
        record = self._records.get(request_id)
        if record is None or record.at < now - self.ttl:
            return None
        return record

    def match(self, key: RequestKey, now: datetime) -> RequestRecord | None:
        """The record of a retry of ``key``'s request, or None for a new request id.

        Raises:
            ValidationError: the id was recorded for a request with another body.
        """
        record = self.get(key.id, now)
        if record is not None and record.digest != key.digest:
            text = (
                f"request_id {key.id!r} was already used by a different request "
                f"(session {record.session_id!r}, position {record.last_position}); "
                "a retry must repeat the request exactly, a new request needs a new id"
            )
            raise ValidationError(
                text,
                violations={"request_id": text},
                info={"request_id": key.id, "session_id": record.session_id[:200]},
            )
        return record

    def prune(self, now: datetime) -> int:
        """Forget the records older than ``ttl``; returns how many were forgotten."""
        cutoff = now - self.ttl
        forgotten = 0
        while self._order and self._order[0][0] < cutoff:
            _, request_id = self._order.popleft()
            record = self._records.get(request_id)
            if record is not None and record.at < cutoff:
                del self._records[request_id]
                forgotten += 1
        return forgotten
