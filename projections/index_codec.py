"""History indexes in checkpoints, so a restarted server reads the past without folding
a session's whole log.

A session's index is saved in segments of :data:`SEGMENT` positions. A segment holds the
event times of its positions (microseconds), the lifetimes registered in it (id, name,
type) and, per lifetime changed in it, the entries of those changes (position and kind);
the numbers are 64-bit differences in binary after a small JSON header, compressed with
zlib, in base64 (a million events decode in a tenth of a second: no number is parsed). A segment never
changes once the log has passed its end, so :class:`IndexEncodings` keeps each one's
encoding from one checkpoint to the next: a checkpoint encodes only the segment the
session's last events fall in (and nothing for a session unchanged since the last).
"""

from __future__ import annotations

import base64
import json
import struct
import sys
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Iterator, Mapping
from itertools import accumulate, repeat
from operator import sub, truediv
from typing import Any

from varstore.projections.history import KIND_BITS, HistoryIndex, Lifetime
from varstore.projections.index import IndexCut, SessionIndex

__all__ = ["SEGMENT", "IndexEncodings", "decode_index"]

#: Positions per saved segment of a session's index (the most a checkpoint encodes for
#: a session, beside the segments it reuses).
SEGMENT = 1 << 13
_KIND_MASK = (1 << KIND_BITS) - 1
#: The length of a segment's JSON header, before it.
_HEADER_SIZE = struct.Struct("<I")


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
    """Positions ``base < p <= end`` of ``cut`` as a JSON string: base64 of zlib of a
    header (its length in 4 bytes, then JSON: the event count, the lifetimes registered,
    each changed lifetime's ordinal and entry count) and the arrays it counts, as
    little-endian 64-bit differences (event times in microseconds, then each lifetime's
    entries), so decoding is ``frombytes`` and a running sum, no per-number parsing."""
    index = cut.index
    micros = [round(moment * 1e6) for moment in index.times[base:end]]
    lifetimes = index.history.lifetimes[: cut.lifetimes]
    first_new = bisect_right(lifetimes, base, key=_registered_at)
    last_new = bisect_right(lifetimes, end, key=_registered_at)
    changed: list[list[int]] = []
    arrays = [_packed(micros)]
    above_base, above_end = base << KIND_BITS | _KIND_MASK, end << KIND_BITS | _KIND_MASK
    for ordinal in range(last_new):
        entries = lifetimes[ordinal].entries
        if not entries or entries[-1] <= above_base:
            continue
        start = bisect_right(entries, above_base)
        stop = bisect_right(entries, above_end, start)
        if start < stop:
            changed.append([ordinal, stop - start])
            arrays.append(_packed(entries[start:stop]))
    header = json.dumps(
        {
            "times": len(micros),
            "new": [[lt.variable_id, lt.name, lt.type] for lt in lifetimes[first_new:last_new]],
            "changes": changed,
        },
        separators=(",", ":"),
    ).encode()
    body = b"".join([_HEADER_SIZE.pack(len(header)), header, *arrays])
    return b'"' + base64.b64encode(zlib.compress(body, 1)) + b'"'


def _packed(values: Any) -> bytes:
    """Ascending ints as little-endian 64-bit differences, the first from 0."""
    differences = array("q", _deltas(values, 0))
    if sys.byteorder == "big":  # pragma: no cover - no big-endian machine in CI
        differences.byteswap()
    return differences.tobytes()


def _unpacked(body: bytes, offset: int, count: int) -> tuple[Iterator[int], int]:
    """``count`` ints :func:`_packed` wrote at ``offset`` (summed back), and the offset
    after them."""
    end = offset + 8 * count
    if end > len(body):
        raise ValueError(f"a segment ends at byte {len(body)}, not {end}")
    differences = array("q")
    differences.frombytes(body[offset:end])
    if sys.byteorder == "big":  # pragma: no cover - no big-endian machine in CI
        differences.byteswap()
    return accumulate(differences), end


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
        body = zlib.decompress(base64.b64decode(packed))
        (header_size,) = _HEADER_SIZE.unpack_from(body)
        offset = _HEADER_SIZE.size + header_size
        segment = json.loads(body[_HEADER_SIZE.size : offset])
        micros, offset = _unpacked(body, offset, int(segment["times"]))
        times.extend(map(truediv, micros, repeat(1e6)))
        lifetimes.extend(Lifetime(str(v), str(n), str(t)) for v, n, t in segment["new"])
        low = number * size << KIND_BITS
        for ordinal, count in segment["changes"]:
            entries, offset = _unpacked(body, offset, int(count))
            lifetime = lifetimes[ordinal]
            before = len(lifetime.entries)
            lifetime.entries.extend(entries)
            if len(lifetime.entries) == before or lifetime.entries[before] <= low | _KIND_MASK:
                raise ValueError(f"lifetime {ordinal}: an entry before segment {number}")
        if offset != len(body):
            raise ValueError(f"segment {number}: {len(body) - offset} bytes left over")
    if len(times) != raw["position"]:
        raise ValueError(f"{len(times)} event times for position {raw['position']}")
    return SessionIndex(HistoryIndex(lifetimes), times)
