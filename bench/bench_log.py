"""What the log gives, at size: history, past reads, start-up and replay.

A session of N events (default 1,000,000: one SessionCreated, 100 VariableRegistered,
then VariableUpdated events cycling over the 100 variables) is written straight into a
SQLite log through the recorder. Then, in this process (no gRPC; add about one empty
call, ~0.5 ms, for the RPC):

* start-up: ``Store(SQLiteRecorder(db))`` folding the whole log, then again from a
  checkpoint (the default every 10,000 events; here one is taken at the end);
* history: the first request builds the session's index from its log (once per session
  per server life); then a page of the 100 newest versions of one variable;
* past reads: ``state_at`` a random position (nearest snapshot, default every 1,000
  events, plus the fold of at most that many events read from SQLite), p50 and p99;
* replay rate: events folded per second from SQLite and from memory, side by side with
  the ``eventsourcing`` library (9.5.x) replaying one aggregate of the same number of
  events from its SQLite and in-memory (POPO) recorders, measured in the same run.

Usage: ``.venv/bin/pip install -e ".[bench]"`` once, then
``.venv/bin/python bench/bench_log.py [--events N] [--quick]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from varstore.api.store import Store
from varstore.eventstore import NewEvent
from varstore.eventstore.memory import MemoryRecorder
from varstore.eventstore.sqlite import SQLiteRecorder
from varstore.projections import replay

VARIABLES = 100
CHUNK = 10_000


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
    for start in range(0, len(made), CHUNK):
        recorder.append("big", start, made[start : start + CHUNK])


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


@functools.cache
def _aggregate_class() -> Any:
    """The eventsourcing aggregate (defined once: the library registers it by topic)."""
    from eventsourcing.domain import Aggregate, event

    class Variable(Aggregate):
        def __init__(self) -> None:
            self.value = 0

        @event("Set")
        def set_value(self, value: int) -> None:
            self.value = value

    return Variable


def eventsourcing_replay(count: int, persistence: str, db: Path) -> float:
    """Seconds for the eventsourcing library to replay one aggregate of ``count`` events."""
    from eventsourcing.application import Application

    variable_class = _aggregate_class()
    env = {"PERSISTENCE_MODULE": persistence}
    if persistence.endswith("sqlite"):
        env["SQLITE_DBNAME"] = str(db)
    app: Application = Application(env=env)
    aggregate = variable_class()
    for n in range(count - 1):
        aggregate.set_value(n)
    app.save(aggregate)
    return timed(lambda: app.repository.get(aggregate.id))


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.platform()}; cpu {cpu}; cpu_count {os.cpu_count()}; "
        f"python {platform.python_version()}; date {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="50,000 events")
    args = parser.parse_args()
    count = 50_000 if args.quick else args.events
    made = events(count)
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "log.db"
        recorder = SQLiteRecorder(db)
        write_s = timed(lambda: write(recorder, made))
        recorder.close()
        print(f"wrote {count:,} events in {write_s:.1f} s", file=sys.stderr)

        holder: list[Store] = []
        full = timed(lambda: holder.append(Store(SQLiteRecorder(db))))
        store = holder.pop()
        store.checkpoint()
        store.close()
        from_checkpoint = timed(lambda: holder.append(Store(SQLiteRecorder(db))))
        store = holder.pop()
        rows.append(("start-up, whole log folded", f"{full * 1e3:,.0f} ms", "", ""))
        rows.append(
            (
                "start-up from a checkpoint",
                f"{from_checkpoint * 1e3:,.0f} ms",
                "whole-log start-up",
                f"{from_checkpoint / full:.3f}x",
            )
        )

        build = timed(lambda: store.history("big"))
        history = store.history("big")
        pages = []
        for _ in range(200):
            pages.append(timed(lambda: history.changes("var_v7_9")[-100:][::-1]))
        rows.append(("index build (first history / past read)", f"{build * 1e3:,.0f} ms", "", ""))
        rows.append(
            (
                "history page: 100 newest versions of one variable",
                f"{statistics.median(pages) * 1e6:.0f} µs p50",
                "",
                "",
            )
        )

        last = store.published("big")
        assert last is not None
        reads = sorted(
            timed(lambda: store.state_at("big", random.randint(1, last.position)))
            for _ in range(200)
        )
        rows.append(
            (
                "read at a random past position",
                (
                    f"{statistics.median(reads) * 1e3:.2f} ms p50, "
                    f"{reads[int(len(reads) * 0.99) - 1] * 1e3:.2f} ms p99"
                ),
                "",
                "",
            )
        )
        store.close()

        memory = MemoryRecorder()
        write(memory, made)
        stored = list(memory.read_all())
        memory_fold = timed(lambda: replay(stored))
        sqlite_rate = count / full
        memory_rate = count / memory_fold
        es_sqlite = count / eventsourcing_replay(count, "eventsourcing.sqlite", Path(tmp) / "es.db")
        es_memory = count / eventsourcing_replay(count, "eventsourcing.popo", Path(tmp) / "x")
        rows.append(
            (
                "replay from SQLite (events/s)",
                f"{sqlite_rate:,.0f}",
                f"eventsourcing SQLite {es_sqlite:,.0f}",
                f"{sqlite_rate / es_sqlite:.1f}x",
            )
        )
        rows.append(
            (
                "replay from memory (events/s)",
                f"{memory_rate:,.0f}",
                f"eventsourcing POPO {es_memory:,.0f}",
                f"{memory_rate / es_memory:.1f}x",
            )
        )

    print(f"\nSession of {count:,} events, {VARIABLES} variables.\n")
    print("| what | varstore | reference | ratio |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\nTargets:")
    history_ms = statistics.median(pages) * 1e3
    read_ms = statistics.median(reads) * 1e3
    checks = [
        ("history page in milliseconds", history_ms < 10, f"{history_ms:.3f} ms"),
        ("past read in milliseconds (p50)", read_ms < 10, f"{read_ms:.2f} ms"),
        ("start-up under 1 s with a checkpoint", from_checkpoint < 1, f"{from_checkpoint:.3f} s"),
        (
            "replay >= 5x eventsourcing (SQLite)",
            sqlite_rate >= 5 * es_sqlite,
            f"{sqlite_rate / es_sqlite:.1f}x",
        ),
        (
            "replay >= 5x eventsourcing (memory)",
            memory_rate >= 5 * es_memory,
            f"{memory_rate / es_memory:.1f}x",
        ),
    ]
    for name, ok, shown in checks:
        print(f"- {'PASS' if ok else 'MISS'}: {name}: {shown}")
    print(f"\nMachine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
