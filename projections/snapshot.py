"""Checkpoints: every session's state as JSON, sealed with a checksum and the mark of the
log position it folds, so that start-up can trust it or ignore it, never misread it.

Layout (one header line, then the body)::

    varstore-checkpoint sha256=<hex digest of the body>\\n
    {"format": 4, "mark": {...} | null, "sessions": [...], "snapshots": "<base64>",
     "indexes": {"<session id>": {"position": ..., "segments": [...]}, ...}}

``snapshots`` is a JSON object compressed with zlib (base64 in the body): snapshots are
most of a big session's checkpoint, and the whole row is written while writers wait for
the database (3 MB took 80 to 390 ms on the development machine; compressed, a tenth).

``snapshots`` holds, per session, the states a read of its past starts from (one every N
events), each as the change from the one before: the session's own fields, the variables
whose last change is newer than the previous snapshot, and the ids gone since. So a
restarted server reads the past as fast as before, without folding a session's log, and
the snapshots cost about what the events they summarise changed. A snapshot never
changes once taken, so :class:`SnapshotEncodings` keeps each one's encoding from one
checkpoint to the next: a checkpoint encodes only the snapshots taken since the last.

``indexes`` holds the sessions' history indexes (see :mod:`.index_codec`), in segments
reused from one checkpoint to the next the same way. Format 3 (no indexes) still loads:
its sessions then have no index until one is built from the log.

The mark names the last event folded in: its global position, session, position and
recording time. A checkpoint is used only if the checksum matches its body (a changed
digit, a cut-short row: rejected) and the log still holds that very event at that global
position (a checkpoint of another log, or of a log since cut short: rejected). The
encoding is private to this server version: another format is rejected, not misread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from immutables import Map

from varstore.eventstore import RecordedEvent
from varstore.projections.index import IndexCut, SessionIndex
from varstore.projections.index_codec import IndexEncodings, decode_index
from varstore.projections.state import SessionState, VariableState
from varstore.types import Constraints

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointRejected",
    "LogMark",
    "SnapshotChain",
    "SnapshotEncodings",
    "open_checkpoint",
    "seal_checkpoint",
]

#: Bumped whenever the encoding changes; other formats are rejected, not misread.
CHECKPOINT_FORMAT = 4
#: Formats read: 3 is 4 without indexes, 2 is 3 without snapshots.
_READABLE = (2, 3, 4)
_HEADER = b"varstore-checkpoint sha256="


class CheckpointRejected(ValueError):
    """A checkpoint that cannot be trusted; the message says why."""


@dataclass(frozen=True, slots=True)
class LogMark:
    """The last event a checkpoint folds: what identifies the log at that position."""

    global_position: int
    session_id: str
    position: int
    recorded_at: datetime

    @classmethod
    def of(cls, event: RecordedEvent) -> LogMark:
        """The mark of ``event``."""
        return cls(event.global_position, event.session_id, event.position, event.recorded_at)

    def _to_json(self) -> dict[str, Any]:
        return {
            "global_position": self.global_position,
            "session_id": self.session_id,
            "position": self.position,
            "recorded_at": self.recorded_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class SnapshotChain:
    """One session's snapshots as a checkpoint holds them, decoded when :meth:`states` is
    called (a million-event session's chain takes about a second), not at start-up."""

    #: The position of the last snapshot (0: none).
    last_position: int
    raw: list[dict[str, Any]]

    def states(self) -> list[SessionState]:
        """The snapshots, oldest first.

        Raises:
            ValueError, KeyError, ...: a chain this module did not write.
        """
        return _snapshots_from(self.raw)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Every session's state (deleted ones included) as of ``mark`` (None: the empty log),
    the sessions' snapshots (oldest first) up to it, and their history indexes (each up
    to its session's state at least)."""

    mark: LogMark | None
    sessions: dict[str, SessionState]
    snapshots: dict[str, SnapshotChain] = field(default_factory=dict)
    indexes: dict[str, SessionIndex] = field(default_factory=dict)
    #: The encodings of those indexes, for the next checkpoint to reuse.
    index_encodings: IndexEncodings = field(default_factory=IndexEncodings)

    @property
    def global_position(self) -> int:
        """The global position the checkpoint folds up to (0 for the empty log)."""
        return self.mark.global_position if self.mark is not None else 0


class SnapshotEncodings:
    """The encodings of the snapshots the last checkpoint held, reused by the next one
    (a snapshot never changes; its encoding depends only on it and the one before)."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int, int], bytes] = {}
        self._used: dict[tuple[str, int, int, int], bytes] = {}

    def chain(self, session_id: str, states: Sequence[SessionState]) -> bytes:
        """The JSON array of ``states`` (one session's snapshots, oldest first)."""
        pieces: list[bytes] = []
        previous: SessionState | None = None
        for state in states:
            key = (
                session_id,
                previous.position if previous is not None else 0,
                state.position,
                state.created_position,
            )
            encoded = self._known.get(key)
            if encoded is None:
                encoded = _dumps(_snapshot_delta(previous, state))
            self._used[key] = encoded
            pieces.append(encoded)
            previous = state
        return b"[" + b",".join(pieces) + b"]"

    def sealed(self) -> None:
        """Forget the encodings the checkpoint just sealed did not use."""
        self._known, self._used = self._used, {}


def seal_checkpoint(
    mark: LogMark | None,
    sessions: Mapping[str, SessionState],
    snapshots: Mapping[str, Sequence[SessionState]] | None = None,
    encodings: SnapshotEncodings | None = None,
    indexes: Mapping[str, IndexCut] | None = None,
    index_encodings: IndexEncodings | None = None,
) -> bytes:
    """The sealed bytes of a checkpoint of ``sessions`` folded up to ``mark``, with each
    session's ``snapshots`` (oldest first) and history index (``indexes``).

    The JSON is written piece by piece (a session, a snapshot at a time) rather than by one
    ``json.dumps`` of the whole: the C encoder holds the GIL for a whole call, and this
    runs on a background thread beside the writers. ``encodings`` (kept from one
    checkpoint to the next) saves encoding the same snapshots again, and
    ``index_encodings`` the same index segments."""
    encodings = encodings or SnapshotEncodings()
    index_encodings = index_encodings or IndexEncodings()
    mark_json = _dumps(mark._to_json() if mark is not None else None)
    chains = (snapshots or {}).items()
    pieces = [
        b'{"format":%d,"mark":%s,"sessions":[' % (CHECKPOINT_FORMAT, mark_json),
        b",".join(_dumps(_session(state)) for state in sessions.values()),
        b'],"snapshots":"',
        base64.b64encode(
            zlib.compress(  # zlib lets go of the GIL while it works
                b"{"
                + b",".join(
                    _dumps(sid) + b":" + encodings.chain(sid, chain)
                    for sid, chain in chains
                    if chain
                )
                + b"}",
                1,
            )
        ),
        b'","indexes":{',
        b",".join(
            _dumps(sid) + b":" + index_encodings.session(sid, cut)
            for sid, cut in (indexes or {}).items()
        ),
        b"}}",
    ]
    encodings.sealed()
    index_encodings.sealed()
    body = b"".join(pieces)
    return _HEADER + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def open_checkpoint(data: bytes) -> Checkpoint:
    """The checkpoint ``data`` holds, once its checksum and format are checked.

    Raises:
        CheckpointRejected: not a sealed checkpoint, a checksum that does not match, another
            format, or a body that does not decode.
    """
    header, newline, body = bytes(data).partition(b"\n")
    if not newline or not header.startswith(_HEADER):
        raise CheckpointRejected("it is not a sealed checkpoint")
    expected = header[len(_HEADER) :]
    if not hmac.compare_digest(expected, hashlib.sha256(body).hexdigest().encode()):
        raise CheckpointRejected("its checksum does not match its content")
    try:
        document = json.loads(body)
        if document.get("format") not in _READABLE:
            raise CheckpointRejected(f"it has format {document.get('format')!r}")
        raw_mark = document["mark"]
        mark = (
            LogMark(
                int(raw_mark["global_position"]),
                str(raw_mark["session_id"]),
                int(raw_mark["position"]),
                datetime.fromisoformat(raw_mark["recorded_at"]),
            )
            if raw_mark is not None
            else None
        )
        sessions = {raw["session_id"]: _state(raw) for raw in document["sessions"]}
        packed = document.get("snapshots", "")
        chains = json.loads(zlib.decompress(base64.b64decode(packed))) if packed else {}
        snapshots = {
            str(sid): SnapshotChain(int(chain[-1]["position"]) if chain else 0, chain)
            for sid, chain in chains.items()
        }
        raw_indexes = document.get("indexes", {})
        indexes = {str(sid): decode_index(raw) for sid, raw in raw_indexes.items()}
        sizes = {int(raw["segment"]) for raw in raw_indexes.values()}
        index_encodings = IndexEncodings(*sizes) if len(sizes) == 1 else IndexEncodings()
        for sid, raw in raw_indexes.items():
            index_encodings.keep(str(sid), raw)
    except CheckpointRejected:
        raise
    except Exception as problem:  # derived data: any shape the checksum let through
        raise CheckpointRejected(
            f"it does not decode ({type(problem).__name__}: {problem})"
        ) from problem
    return Checkpoint(mark, sessions, snapshots, indexes, index_encodings)


def _snapshot_delta(previous: SessionState | None, state: SessionState) -> dict[str, Any]:
    """``state`` as the change from ``previous`` (the snapshot before it, if any)."""
    raw = _session_fields(state)
    if previous is None or state.created_position != previous.created_position:
        raw["variables"] = [_variable(v) for v in state.variables.values()]
        raw["removed"] = []
        raw["whole"] = True
    else:
        since, before = previous.position, previous.variables
        raw["variables"] = [_variable(v) for v in state.variables.values() if v.position > since]
        raw["removed"] = [vid for vid in before if vid not in state.variables]
        raw["whole"] = False
    return raw


def _snapshots_from(chain: list[dict[str, Any]]) -> list[SessionState]:
    """The states a chain encodes: each applies its changes to the maps of the one
    before (persistent maps: unchanged variables are shared, as in the live server)."""
    states: list[SessionState] = []
    variables: Map[str, VariableState] = Map()
    names: Map[str, str] = Map()
    for raw in chain:
        if raw["whole"]:
            variables, names = Map(), Map()
        new_variables, new_names = variables.mutate(), names.mutate()
        for vid in raw["removed"]:
            gone = variables[vid]
            del new_variables[vid]
            if new_names.get(gone.name) == vid:
                del new_names[gone.name]
        for v in raw["variables"]:
            variable = _variable_state(v)
            new_variables[variable.id] = variable
            new_names[variable.name] = variable.id
        variables, names = new_variables.finish(), new_names.finish()
        states.append(_state_with(raw, variables, names))
    return states


def _session(state: SessionState) -> dict[str, Any]:
    raw = _session_fields(state)
    raw["variables"] = [_variable(v) for v in state.variables.values()]
    return raw


def _session_fields(state: SessionState) -> dict[str, Any]:
    return {
        "session_id": state.session_id,
        "metadata": dict(state.metadata),
        "ttl_seconds": state.ttl_seconds,
        "created_at": state.created_at.isoformat(),
        "updated_at": state.updated_at.isoformat(),
        "position": state.position,
        "created_position": state.created_position,
        "deleted": state.deleted,
        "staged_until": state.staged_until,
    }


def _variable(variable: VariableState) -> dict[str, Any]:
    return {
        "id": variable.id,
        "name": variable.name,
        "type": variable.type,
        "value": variable.value,
        "constraints": variable.constraints.to_dict(),
        "metadata": dict(variable.metadata),
        "source": variable.source,
        "version": variable.version,
        "created_at": variable.created_at.isoformat(),
        "updated_at": variable.updated_at.isoformat(),
        "position": variable.position,
        "created_position": variable.created_position,
    }


def _state(raw: dict[str, Any]) -> SessionState:
    variables = Map((v["id"], _variable_state(v)) for v in raw["variables"])
    return _state_with(raw, variables, Map((v.name, v.id) for v in variables.values()))


def _state_with(
    raw: dict[str, Any], variables: Map[str, VariableState], names: Map[str, str]
) -> SessionState:
    return SessionState(
        session_id=raw["session_id"],
        metadata=raw["metadata"],
        ttl_seconds=raw["ttl_seconds"],
        created_at=datetime.fromisoformat(raw["created_at"]),
        updated_at=datetime.fromisoformat(raw["updated_at"]),
        position=raw["position"],
        variables=variables,
        names=names,
        deleted=raw["deleted"],
        created_position=raw["created_position"],
        staged_until=raw.get("staged_until", 0),
    )


def _variable_state(v: dict[str, Any]) -> VariableState:
    return VariableState(
        id=v["id"],
        name=v["name"],
        type=v["type"],
        value=v["value"],
        constraints=Constraints.trusted(v["constraints"]),
        metadata=v["metadata"],
        source=v["source"],
        version=v["version"],
        created_at=datetime.fromisoformat(v["created_at"]),
        updated_at=datetime.fromisoformat(v["updated_at"]),
        position=v["position"],
        created_position=v["created_position"],
    )
