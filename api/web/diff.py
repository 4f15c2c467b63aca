"""A readable difference between two values of one variable."""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Final

from varstore.types import PyValue

__all__ = ["MAX_DIFF_CHARS", "Segment", "difference"]

#: Longest strings diffed character by character (SequenceMatcher is quadratic at worst);
#: longer ones are compared word by word.
MAX_DIFF_CHARS: Final = 4000


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of text: "same", "removed" or "added"."""

    kind: str
    text: str


def difference(old: PyValue | None, new: PyValue | None) -> tuple[list[Segment], str]:
    """Segments from ``old`` to ``new`` for strings; for others none, and a summary
    (a number's change, e.g. "+2.5")."""
    if isinstance(old, str) and isinstance(new, str):
        return _segments(old, new), ""
    if (
        isinstance(old, int | float)
        and isinstance(new, int | float)
        and not isinstance(old, bool)
        and not isinstance(new, bool)
    ):
        delta = new - old
        return [], f"{'+' if delta >= 0 else ''}{delta:g}"
    return [], "changed" if old != new else "unchanged"


def _segments(old: str, new: str) -> list[Segment]:
    if max(len(old), len(new)) <= MAX_DIFF_CHARS:
        a: list[str] = list(old)
        b: list[str] = list(new)
    else:
        a, b = old.split(" "), new.split(" ")
        a = [word + " " for word in a[:-1]] + a[-1:]
        b = [word + " " for word in b[:-1]] + b[-1:]
    segments: list[Segment] = []
    for op, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            segments.append(Segment("same", "".join(a[i1:i2])))
            continue
        if i2 > i1:
            segments.append(Segment("removed", "".join(a[i1:i2])))
        if j2 > j1:
            segments.append(Segment("added", "".join(b[j1:j2])))
    return segments
