"""History indexes in checkpoints, so a restarted server reads the past without folding
a session's whole log.

A session's index is saved in segments of :data:`SEGMENT` positions. A segment holds the
event times of its positions (microseconds, delta-encoded), the lifetimes registered in
it (id, name, type) and, per lifetime changed in it, the positions (delta-encoded) and
kinds of those changes; it is JSON compressed with zlib, in base64. A segment never
changes once the log has passed its end, so :class:`IndexEncodings` keeps each one's
encoding from one checkpoint to the next: a checkpoint encodes only the segment the
session's last events fall in (and nothing for a session unchanged since the last).
"""

from __future__ import annotations

import base64
import json
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Mapping
from itertools import accumulate, repeat
from operator import add, mul, sub, truediv
from typing import Any

from varstore.projections.history import KIND_BITS, HistoryIndex, Lifetime
from varstore.projections.index import IndexCut, SessionIndex

__all__ = ["SEGMENT", "IndexEncodings", "decode_index"]

#: Positions per saved segment of a session's index (the most a checkpoint encodes for
#: a session, beside the segments it reuses).
SEGMENT = 1 << 13
#: Kind codes (0 to 3) as the digits a segment writes them as, and back.
_TO_DIGITS = bytes(range(48, 52)).ljust(256, b"?")
_FROM_DIGITS = bytes(range(256)).replace(b"0123", bytes(range(4)))
_KIND_MASK = (1 << KIND_BITS) - 1
_CODES = bytes(range(4))


class IndexEncodings:
    """The segments the last checkpoint encoded, reused by the next (a segment depends
    only on the log up to its last position)."""

    def __init__(self, segment: int = SEGMENT) -> None:
        self.segment = segment
        self._known: dict[tuple[str, int, int], bytes] = {}
        self._used: dict[tuple[str, int, int], bytes] = {}

    def session(self, session_id: str, cut: IndexCut) -> bytes:
        """The JSON of one session's index as ``cut`` stands."""
        pieces = []
        size = self.segment
        for number in range((cut.position + size - 1) // size):
            base = number * size
            key = (session_id, base, min(cut.position, base + size))
            encoded = self._known.get(key)
            if encoded is None:
                encoded = _segment(cut, *key[1:])
            self._used[key] = encoded
            pieces.append(encoded)
        return b'{"position":%d,"segment":%d,"segments":[%s]}' % (
            cut.position,
            size,
            b",".join(pieces),
        )

    def sealed(self) -> None:
        """Forget the encodings the checkpoint just sealed did not use."""
        self._known, self._used = self._used, {}

    def keep(self, session_id: str, raw: Mapping[str, Any]) -> None:
        """Reuse the segments of a session's index as a checkpoint held them (``raw``: the
        parsed JSON :meth:`session` wrote), so the next checkpoint after start-up does
        not encode them again."""
        size, position = int(raw["segment"]), int(raw["position"])
        if size != self.segment:
            return
        for number, packed in enumerate(raw["segments"]):
            base = number * size
            key = (session_id, base, min(position, base + size))
            self._known[key] = b'"' + str(packed).encode() + b'"'


def _segment(cut: IndexCut, base: int, end: int) -> bytes:
    """Positions ``base < p <= end`` of ``cut`` as a JSON string (base64 of zlib of JSON)."""
    index = cut.index
    micros = [round(moment * 1e6) for moment in index.times[base:end]]
    lifetimes = index.history.lifetimes[: cut.lifetimes]
    first_new = bisect_right(lifetimes, base, key=_registered_at)
    last_new = bisect_right(lifetimes, end, key=_registered_at)
    changes = []
    above_base, above_end = base << KIND_BITS | _KIND_MASK, end << KIND_BITS | _KIND_MASK
    for ordinal in range(last_new):
        entries = lifetimes[ordinal].entries
        if not entries or entries[-1] <= above_base:
            continue
        start = bisect_right(entries, above_base)
        stop = bisect_right(entries, above_end, start)
        if start < stop:
            taken = entries[start:stop]
            positions = [entry >> KIND_BITS for entry in taken]
            kinds = bytes(entry & _KIND_MASK for entry in taken).translate(_TO_DIGITS)
            changes.append([ordinal, _deltas(positions, base), kinds.decode()])
    document = {
        "times": _deltas(micros, 0),
        "new": [[lt.variable_id, lt.name, lt.type] for lt in lifetimes[first_new:last_new]],
        "changes": changes,
    }
    packed = zlib.compress(json.dumps(document, separators=(",", ":")).encode(), 1)
    return b'"' + base64.b64encode(packed) + b'"'


def _registered_at(lifetime: Lifetime) -> int:
    return lifetime.position(0)


def _deltas(values: Any, start: int) -> list[int]:
    """``values`` (ascending ints) as differences, the first from ``start``."""
    if not len(values):
        return []
    return [values[0] - start, *map(sub, values[1:], values[:-1])]


def decode_index(raw: Mapping[str, Any]) -> SessionIndex:
    """The index :meth:`IndexEncodings.session` encoded (from its parsed JSON).

    Raises:
        ValueError, KeyError, ...: a shape it did not write.
    """
    lifetimes: list[Lifetime] = []
    times: array[float] = array("d")
    size = int(raw["segment"])
    for number, packed in enumerate(raw["segments"]):
        segment = json.loads(zlib.decompress(base64.b64decode(packed)))
        base = number * size
        times.extend(map(truediv, accumulate(segment["times"]), repeat(1e6)))
        lifetimes.extend(Lifetime(str(v), str(n), str(t)) for v, n, t in segment["new"])
        for ordinal, deltas, kinds in segment["changes"]:
            if len(deltas) != len(kinds):
                raise ValueError(f"lifetime {ordinal}: {len(deltas)} positions, {len(kinds)} kinds")
            if deltas:
                deltas[0] += base
            shifted = map(mul, accumulate(deltas), repeat(1 << KIND_BITS))
            codes = kinds.encode().translate(_FROM_DIGITS)
            if codes.translate(None, _CODES):
                raise ValueError(f"lifetime {ordinal}: kinds {kinds!r}")
            lifetimes[ordinal].entries.extend(map(add, shifted, codes))
    if len(times) != raw["position"]:
        raise ValueError(f"{len(times)} event times for position {raw['position']}")
    return SessionIndex(HistoryIndex(lifetimes), times)
