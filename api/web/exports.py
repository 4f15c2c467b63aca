"""The page's downloads: a session's log as JSON Lines (the format ``varstore export``
writes and ``varstore import`` reads) and a variable's history as CSV, streamed a page
at a time, with file names that carry the session and the position range."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Sequence
from urllib.parse import quote

from varstore.api import queries
from varstore.api.event_codec import event_to_proto
from varstore.api.queries import ReadableStore
from varstore.client.transfer import event_to_json
from varstore.projections import Change
from varstore.types import PyValue

__all__ = ["CSV_COLUMNS", "attachment", "history_csv", "session_lines"]

#: Events or changes read per step.
STEP = 1000

CSV_COLUMNS = (
    "version",
    "kind",
    "value",
    "previous_value",
    "position",
    "recorded_at",
    "source",
    "metadata",
    "in_batch",
    "rollback_to_version",
    "variable_id",
)


def attachment(session_id: str, name: str, first: int, last: int, suffix: str) -> str:
    """A Content-Disposition naming ``<session>[_<name>]_<first>-<last>.<suffix>``."""
    stem = "_".join(part for part in (session_id, name) if part)
    full = f"{stem}_{first}-{last}.{suffix}"
    plain = re.sub(r"[^A-Za-z0-9._-]", "_", full)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(full, safe='')}"


def session_lines(store: ReadableStore, session_id: str, first: int, last: int) -> Iterator[bytes]:
    """The events ``first..last`` as JSON Lines, read a page at a time (all pages
    pinned at the first's end, as ``varstore export`` reads them)."""
    token = ""
    while True:
        page = queries.read_events(
            store,
            session_id,
            from_position=first,
            to_position=last,
            page_size=STEP,
            page_token=token,
        )
        chunk = "".join(
            json.dumps(
                event_to_json(event_to_proto(event)), ensure_ascii=False, separators=(",", ":")
            )
            + "\n"
            for event in page.items
        )
        yield chunk.encode()
        token = page.next_token
        if not token:
            return


def history_csv(store: ReadableStore, session_id: str, name: str) -> Iterator[bytes]:
    """A variable's every change, oldest first, as CSV with a header row."""
    yield _rows([CSV_COLUMNS])
    token = ""
    while True:
        page = queries.variable_history(store, session_id, name, page_size=STEP, page_token=token)
        yield _rows([_row(change) for change in page.items])
        token = page.next_token
        if not token:
            return


def _rows(rows: Sequence[Sequence[object]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


def _row(change: Change) -> tuple[object, ...]:
    return (
        change.version,
        change.kind,
        _cell(change.value),
        _cell(change.previous_value),
        change.position,
        change.recorded_at.isoformat(),
        _safe(change.source),
        _safe(json.dumps(dict(change.metadata), ensure_ascii=False, sort_keys=True)),
        "true" if change.in_batch else "false",
        "" if change.rollback_to_version is None else change.rollback_to_version,
        change.variable_id,
    )


def _cell(value: PyValue | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _safe(value)
    return repr(value)


def _safe(text: str) -> str:
    """Text a spreadsheet will not run as a formula (OWASP's CSV injection advice)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
