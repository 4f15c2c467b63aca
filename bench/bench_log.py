"""What the log gives, at size: history, past reads, start-up and replay.

A session of N events (default 1,000,000: one SessionCreated, 100 VariableRegistered,
then VariableUpdated events cycling over the 100 variables) is written straight into a
SQLite log through the recorder. Then, in this process (no gRPC; add about one empty
call, ~0.5 ms, for the RPC):

* start-up: ``Store(SQLiteRecorder(db))`` folding the whole log, then again from a
  checkpoint (the default every 10,000 events; here one is taken at the end);
* history: the first history read after the start from the checkpoint (the session's
  history index comes with the checkpoint), then a page of the 100 newest versions of one
  variable, as GetVariableHistory reads it (``queries.variable_history``, newest first);
* past reads: ``state_at`` a random position (nearest snapshot, default every 1,000
  events, plus the fold of at most that many events read from SQLite), p50 and p99;
* replay rate: events folded per second from SQLite and from memory, side by side with
  the ``eventsourcing`` library (9.5.x) replaying one aggregate of the same number of
  events from its SQLite and in-memory (POPO) recorders, measured in the same run.

Usage: ``.venv/bin/pip install -e ".[bench]"`` once, then
``.venv/bin/python bench/bench_log.py [--events N] [--quick] [--json]`` from the
repository root. ``--quick`` is a smoke run of 20,000 events (a few seconds). Without the
``eventsourcing`` library the run still measures varstore and leaves the reference column
empty (and says so). Progress goes to stderr.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib
import importlib.metadata
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import (  # bench/ is sys.path[0] when this file runs
    Target,
    arguments,
    json_document,
    machine,
    machine_line,
    markdown_table,
    p50_p99,
    print_report,
    progress,
    targets_text,
)

from varstore.api import queries
from varstore.api.store import Store
from varstore.eventstore import NewEvent
from varstore.eventstore.memory import MemoryRecorder
from varstore.eventstore.sqlite import SQLiteRecorder
from varstore.projections import replay

VARIABLES = 100
CHUNK = 10_000
QUICK_EVENTS = 20_000
NO_REFERENCE = (
    "The reference column is empty and the replay targets are not checked: the "
    "eventsourcing library is not installed "
    '(`.venv/bin/pip install -e ".[bench]"`).'
)


def events(count: int) -> list[NewEvent]:
    """The benchmark session's events."""
    now = dt.datetime.now(dt.UTC)
    made = [NewEvent("SessionCreated", {"metadata": {}, "ttl_seconds": 0}, now)]
    for n in range(VARIABLES):
        payload = {
            "variable_id": f"var_v{n}_{n + 2}",
            "name": f"v{n}",
            "type": "integer",
            "value": 0,
            "constraints": {},
        }
        made.append(NewEvent("VariableRegistered", payload, now, source="bench"))
    for n in range(count - len(made)):
        variable = n % VARIABLES
        payload = {"variable_id": f"var_v{variable}_{variable + 2}", "value": n}
        when = now + dt.timedelta(microseconds=n)
        made.append(NewEvent("VariableUpdated", payload, when, "bench", {"reason": "load"}))
    return made


def write(recorder: SQLiteRecorder | MemoryRecorder, made: list[NewEvent]) -> None:
    """Append ``made`` to the session ``big`` in chunks."""
    for start in range(0, len(made), CHUNK):
        recorder.append("big", start, made[start : start + CHUNK])


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action`` took."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


@functools.cache
def _aggregate_class() -> Any:
    """The eventsourcing aggregate (defined once: the library registers it by topic).

    The library is optional (the ``bench`` extra), so it is imported by name and typed Any.
    """
    domain: Any = importlib.import_module("eventsourcing.domain")

    class Variable(domain.Aggregate):  # type: ignore[misc]
        def __init__(self) -> None:
            self.value = 0

        @domain.event("Set")  # type: ignore[untyped-decorator]
        def set_value(self, value: int) -> None:
            self.value = value

    return Variable


def eventsourcing_version() -> str | None:
    """The installed eventsourcing library's version, or None when it is not installed."""
    try:
        return importlib.metadata.version("eventsourcing")
    except importlib.metadata.PackageNotFoundError:
        return None


def eventsourcing_replay(count: int, persistence: str, db: Path) -> float:
    """Seconds for the eventsourcing library to replay one aggregate of ``count`` events."""
    application: Any = importlib.import_module("eventsourcing.application")
    variable_class = _aggregate_class()
    env = {"PERSISTENCE_MODULE": persistence}
    if persistence.endswith("sqlite"):
        env["SQLITE_DBNAME"] = str(db)
    app = application.Application(env=env)
    aggregate = variable_class()
    for n in range(count - 1):
        aggregate.set_value(n)
    app.save(aggregate)
    return timed(lambda: app.repository.get(aggregate.id))


@dataclass(frozen=True)
class Settings:
    """The session's size."""

    events: int
    variables: int


@dataclass(frozen=True)
class Row:
    """One line of the table, as shown."""

    what: str
    varstore: str
    reference: str = ""
    ratio: str = ""


@dataclass(frozen=True)
class Measured:
    """The run's figures, in seconds (replay rates in events per second)."""

    full_startup: float
    checkpoint_startup: float
    first_history: float
    history_pages: list[float]
    past_reads: list[float]
    sqlite_rate: float
    memory_rate: float
    reference_sqlite_rate: float | None  # None without the eventsourcing library
    reference_memory_rate: float | None


def measure(count: int, with_reference: bool) -> Measured:
    """Write the log, then time start-up, history, past reads and replay."""
    made = events(count)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "log.db"
        recorder = SQLiteRecorder(db)
        write_s = timed(lambda: write(recorder, made))
        recorder.close()
        progress(f"wrote {count:,} events in {write_s:.1f} s")

        holder: list[Store] = []
        full = timed(lambda: holder.append(Store(SQLiteRecorder(db))))
        store = holder.pop()
        store.checkpoint()
        store.close()
        from_checkpoint = timed(lambda: holder.append(Store(SQLiteRecorder(db))))
        store = holder.pop()

        newest = functools.partial(
            queries.variable_history, store, "big", "v7", newest_first=True, page_size=100
        )
        first_history = timed(newest)
        pages = [timed(newest) for _ in range(200)]
        last = store.published("big")
        assert last is not None
        reads = [
            timed(lambda: store.state_at("big", random.randint(1, last.position)))
            for _ in range(200)
        ]
        store.close()

        memory = MemoryRecorder()
        write(memory, made)
        stored = list(memory.read_all())
        memory_fold = timed(lambda: replay(stored))
        es_sqlite = es_memory = None
        if with_reference:
            es_sqlite = count / eventsourcing_replay(
                count, "eventsourcing.sqlite", Path(tmp) / "es.db"
            )
            es_memory = count / eventsourcing_replay(count, "eventsourcing.popo", Path(tmp) / "x")
    return Measured(
        full,
        from_checkpoint,
        first_history,
        pages,
        reads,
        count / full,
        count / memory_fold,
        es_sqlite,
        es_memory,
    )


def replay_row(what: str, rate: float, reference: str, reference_rate: float | None) -> Row:
    """A replay rate beside the eventsourcing library's (empty without the library)."""
    if reference_rate is None:
        return Row(what, f"{rate:,.0f}")
    return Row(
        what, f"{rate:,.0f}", f"{reference} {reference_rate:,.0f}", f"{rate / reference_rate:.1f}x"
    )


def tabulate(m: Measured) -> list[Row]:
    """The table's rows."""
    page_p50 = p50_p99(m.history_pages)[0]
    read_p50, read_p99 = p50_p99(m.past_reads)
    return [
        Row("start-up, whole log folded", f"{m.full_startup * 1e3:,.0f} ms"),
        Row(
            "start-up from a checkpoint",
            f"{m.checkpoint_startup * 1e3:,.0f} ms",
            "whole-log start-up",
            f"{m.checkpoint_startup / m.full_startup:.3f}x",
        ),
        Row("first history page after start-up", f"{m.first_history * 1e3:,.1f} ms"),
        Row("history page: 100 newest versions of one variable", f"{page_p50 * 1e6:.0f} µs p50"),
        Row(
            "read at a random past position",
            f"{read_p50 * 1e3:.2f} ms p50, {read_p99 * 1e3:.2f} ms p99",
        ),
        replay_row(
            "replay from SQLite (events/s)",
            m.sqlite_rate,
            "eventsourcing SQLite",
            m.reference_sqlite_rate,
        ),
        replay_row(
            "replay from memory (events/s)",
            m.memory_rate,
            "eventsourcing POPO",
            m.reference_memory_rate,
        ),
    ]


def evaluate(m: Measured) -> list[Target]:
    """The targets; the replay ones only when the reference was measured."""
    history_ms = p50_p99(m.history_pages)[0] * 1e3
    read_ms = p50_p99(m.past_reads)[0] * 1e3
    targets = [
        Target("history page in milliseconds", f"{history_ms:.3f} ms", "< 10 ms", history_ms < 10),
        Target("past read in milliseconds (p50)", f"{read_ms:.2f} ms", "< 10 ms", read_ms < 10),
        Target(
            "start-up under 1 s with a checkpoint",
            f"{m.checkpoint_startup:.3f} s",
            "< 1 s",
            m.checkpoint_startup < 1,
        ),
    ]
    for name, rate, reference in (
        ("SQLite", m.sqlite_rate, m.reference_sqlite_rate),
        ("memory", m.memory_rate, m.reference_memory_rate),
    ):
        if reference is not None:
            ratio = rate / reference
            targets.append(
                Target(f"replay >= 5x eventsourcing ({name})", f"{ratio:.1f}x", ">= 5x", ratio >= 5)
            )
    return targets


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = arguments(__doc__, f"a smoke run of {QUICK_EVENTS:,} events")
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    count = QUICK_EVENTS if args.quick else args.events
    version = eventsourcing_version()
    info = machine(**({"eventsourcing": version} if version else {}))
    if version is None:
        progress(NO_REFERENCE)
    measured = measure(count, with_reference=version is not None)
    rows = tabulate(measured)
    targets = evaluate(measured)
    method = f"Session of {count:,} events, {VARIABLES} variables."
    table = markdown_table(
        ("what", "varstore", "reference", "ratio"),
        "lrrr",
        [(r.what, r.varstore, r.reference, r.ratio) for r in rows],
    )
    lines = [machine_line(info), "", method, "", table]
    if version is None:
        lines += ["", NO_REFERENCE]
    lines += ["", targets_text(targets)]
    document = json_document(
        info, method, Settings(count, VARIABLES), rows, targets, reference=version is not None
    )
    print_report(args.json, document, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
