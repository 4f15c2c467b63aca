"""Big sessions: writes while a checkpoint is taken and while a 1,000,000-event session
is forked and exported, the first read of the past after a restart, and the server's
memory per million events held, each beside its reference measured in the same run.

What it measures
----------------
The bench writes a log of one session, ``big``, straight into a SQLite file through the
recorder (bench only: a million SetVariable calls would take an hour): a SessionCreated,
10 integer variables, then VariableUpdated events cycling over them, ``EVENTS`` in all,
recorded 1 ms apart. Then ``varstore serve`` child processes (default ``--sync full``)
open that file, one after the other:

1. an **empty** server: its RSS is the memory reference;
2. a server with ``--checkpoint-every 100``: it folds the log at start-up, saves its
   first checkpoint, and then, while one client thread writes ``SetVariable`` on a small
   session ``w`` as fast as it answers for ``CHECKPOINT_SECONDS``, checkpoints every
   maintenance round (0.5 s; each holds the states, snapshots and history index of
   ``big``): the **writes while checkpoints are taken**;
3. a server with checkpoints off (``--checkpoint-every 1000000000``), started from that
   checkpoint: the **first past read** (``GetVariable`` of ``big`` at position
   ``EVENTS // 2``, the first call after start-up) beside a **later past read** (the median
   of 20 reads at other positions); its **RSS** (minus the empty server's) per million
   events held, before and after the **first history read** (``GetVariableHistory`` of
   one variable: the session's history index came with the checkpoint); then the
   **writes without** (reference: ``BASELINE_WRITES`` sequential writes), the **writes
   during a fork** of ``big`` at position ``EVENTS - 1`` (a fork holds at most 1,000,000
   events, its SessionForked included) and the **writes during an export** of ``big``
   (streamed to a client thread that drops the messages).

Writes "during" an operation are those that started after it started and before it
ended; their p99.9 is held against the p99 of the writes without.

Usage: ``.venv/bin/python bench/bench_big.py [--quick] [--json]`` from the repository
root. ``--quick`` is a smoke run on 20,000 events (about 20 to 40 s); the default run
(one million events) took 6 to 12 minutes on 2 loaded cores. Progress goes to stderr. Exit
status 1 if a call failed.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from benchlib import (  # bench/ is sys.path[0] when this file runs
    CALL_TIMEOUT,
    Child,
    Target,
    arguments,
    child_server,
    json_document,
    machine,
    machine_line,
    markdown_table,
    open_channel,
    percentile,
    print_report,
    progress,
    targets_text,
)

from varstore.eventstore import Append, NewEvent
from varstore.eventstore.sqlite import SQLiteRecorder
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc

Stub = varstore_pb2_grpc.VariableStoreStub

#: Variables of the big session.
BIG_VARIABLES = 10
#: Events appended to the recorder per transaction while the log is built.
BUILD_BATCH = 20_000
#: The write p99.9 during an operation over the write p99 without, at most.
TARGET_TAIL_RATIO = 3.0
#: The first past read after a restart, at most.
TARGET_FIRST_PAST_READ_MS = 100.0
#: Past reads after the first (the reference is their median).
LATER_PAST_READS = 20


@dataclass(frozen=True)
class Settings:
    """The size of the big session and how long each phase writes."""

    events: int
    baseline_writes: int
    checkpoint_seconds: float


FULL = Settings(events=1_000_000, baseline_writes=5000, checkpoint_seconds=15.0)
QUICK = Settings(events=20_000, baseline_writes=300, checkpoint_seconds=2.0)


# -- the log --------------------------------------------------------------------------------


def build_log(db: Path, events: int) -> None:
    """``big``'s log of ``events`` events, appended through the recorder."""
    start = datetime.now(UTC) - timedelta(milliseconds=events + 60_000)
    ids = [f"var_v{i}_{i + 2}" for i in range(BIG_VARIABLES)]

    def event(position: int) -> NewEvent:
        at = start + timedelta(milliseconds=position)
        if position == 1:
            return NewEvent("SessionCreated", {"metadata": {}, "ttl_seconds": 0}, at, "bench")
        index = position - 2
        if index < BIG_VARIABLES:
            payload = {
                "variable_id": ids[index],
                "name": f"v{index}",
                "type": "integer",
                "value": 0,
                "constraints": {},
            }
            return NewEvent("VariableRegistered", payload, at, "bench")
        update = {"variable_id": ids[index % BIG_VARIABLES], "value": position}
        return NewEvent("VariableUpdated", update, at, "bench")

    recorder = SQLiteRecorder(db, synchronous="normal")
    try:
        written = 0
        while written < events:
            batch = [event(p) for p in range(written + 1, min(events, written + BUILD_BATCH) + 1)]
            recorder.append_many([Append("big", written, batch)])
            written += len(batch)
    finally:
        recorder.close()


# -- servers and calls ----------------------------------------------------------------------


def server(db: Path, checkpoint_every: int) -> AbstractContextManager[Child]:
    """``varstore serve`` on ``db`` (start-up may fold a million events: a long timeout)."""
    command = [sys.executable, "-m", "varstore.api.cli", "serve", "--db", str(db)]
    flags = ["--listen", "127.0.0.1:0", "--checkpoint-every", str(checkpoint_every)]
    return child_server("varstore", [*command, *flags], timeout=600)


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def checkpoint_position(db: Path) -> int:
    """The global position of the checkpoint saved in ``db`` (0: none)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as connection:
        row = connection.execute("SELECT global_position FROM checkpoints").fetchone()
    return int(row[0]) if row else 0


def make_writer(stub: Stub, session_id: str) -> Callable[[], object]:
    """A SetVariable on a new small session (created here), a new value each call."""
    stub.CreateSession(pb.CreateSessionRequest(session_id=session_id), timeout=CALL_TIMEOUT)
    stub.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id=session_id, name="x", type="integer", initial_value=pb.Value(integer_value=0)
        ),
        timeout=CALL_TIMEOUT,
    )
    values = iter(range(1, 1 << 62))
    return lambda: stub.SetVariable(
        pb.SetVariableRequest(
            session_id=session_id,
            variable_identifier="x",
            value=pb.Value(integer_value=next(values)),
        ),
        timeout=CALL_TIMEOUT,
    )


@dataclass(frozen=True)
class Timed:
    """One call: when it started (monotonic ns) and how long it took."""

    started_ns: int
    took_ns: int


def time_calls(call: Callable[[], object], until: Callable[[int], bool]) -> list[Timed]:
    """Call ``call`` one after the other until ``until(calls so far)``."""
    timed: list[Timed] = []
    clock = time.perf_counter_ns
    while not until(len(timed)):
        start = clock()
        call()
        timed.append(Timed(start, clock() - start))
    return timed


def writes_during(
    write: Callable[[], object], operation: Callable[[], object]
) -> tuple[list[int], float]:
    """Write continuously while ``operation`` runs on another thread; the latencies of the
    writes that started while it ran, and how long it took (s)."""
    window: list[int] = []
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        window.append(time.perf_counter_ns())
        try:
            operation()
        except grpc.RpcError as problem:
            failure.append(problem)
        window.append(time.perf_counter_ns())
        done.set()

    for _ in range(50):  # warm
        write()
    worker = threading.Thread(target=run, name="operation")
    worker.start()
    timed = time_calls(write, lambda _: done.is_set())
    worker.join()
    if failure:
        raise failure[0]
    begin, end = window
    inside = [t.took_ns for t in timed if begin <= t.started_ns < end]
    return inside, (end - begin) / 1e9


# -- measuring --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tail:
    """Write latencies of one phase."""

    phase: str
    writes: int
    p50_us: float
    p99_us: float
    p999_us: float
    max_us: float
    operation_s: float


def tail(phase: str, latencies_ns: Sequence[int], operation_s: float) -> Tail:
    ordered = sorted(latencies_ns)
    return Tail(
        phase,
        len(ordered),
        percentile(ordered, 0.50) / 1e3,
        percentile(ordered, 0.99) / 1e3,
        percentile(ordered, 0.999) / 1e3,
        ordered[-1] / 1e3,
        operation_s,
    )


@dataclass(frozen=True)
class Figures:
    """Everything the run measured."""

    events: int
    build_s: float
    fold_start_s: float
    checkpoints_during: int
    restart_s: float
    first_past_read_ms: float
    later_past_read_ms: float
    first_history_read_ms: float
    later_history_read_ms: float
    rss_empty_mb: float
    rss_per_million_mb: float
    rss_per_million_with_history_mb: float
    tails: tuple[Tail, ...]


def checkpoint_phase(db: Path, settings: Settings) -> tuple[Tail, int, float]:
    """Writes while checkpoints are taken every round; the number of checkpoints the run
    saw, and the start-up time (folding the whole log)."""
    started = time.monotonic()
    with server(db, checkpoint_every=100) as child:
        fold_start_s = time.monotonic() - started
        while checkpoint_position(db) == 0:  # the first round saves the first checkpoint
            time.sleep(0.05)
        channel = open_channel(child.address)
        stub = Stub(channel)
        write = make_writer(stub, "w-checkpoints")
        seen: set[int] = set()
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                seen.add(checkpoint_position(db))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, name="checkpoints")
        watcher.start()
        deadline = time.monotonic() + settings.checkpoint_seconds
        timed = time_calls(write, lambda _: time.monotonic() >= deadline)
        stop.set()
        watcher.join()
        channel.close()
    during = tail("while checkpoints are taken", [t.took_ns for t in timed], 0.0)
    return during, len(seen) - 1, fold_start_s


def past_read(stub: Stub, position: int) -> float:
    """One GetVariable of ``big`` at ``position``, in ms."""
    request = pb.GetVariableRequest(session_id="big", variable_identifier="v3")
    request.at_position = position
    started = time.perf_counter()
    stub.GetVariable(request, timeout=120)
    return (time.perf_counter() - started) * 1e3


def history_read(stub: Stub, name: str) -> float:
    """One page of GetVariableHistory of a variable of ``big``, in ms."""
    request = pb.GetVariableHistoryRequest(session_id="big", variable_identifier=name)
    request.page_size = 100
    started = time.perf_counter()
    stub.GetVariableHistory(request, timeout=300)
    return (time.perf_counter() - started) * 1e3


def run(settings: Settings, as_json: bool) -> int:
    """Build the log, run the phases, print the report."""
    info = machine()
    events = settings.events
    try:
        with tempfile.TemporaryDirectory(prefix="varstore-bench-big-") as tmp:
            with server(Path(tmp) / "empty.db", checkpoint_every=10_000) as empty:
                time.sleep(1.0)
                rss_empty = rss_bytes(empty.process.pid)
            db = Path(tmp) / "big.db"
            started = time.monotonic()
            build_log(db, events)
            build_s = time.monotonic() - started
            progress(f"log of {events:,} events built in {build_s:.1f} s")
            during_checkpoints, checkpoints, fold_start_s = checkpoint_phase(db, settings)
            progress(f"checkpoint phase: {checkpoints} checkpoints, {during_checkpoints}")
            started = time.monotonic()
            with server(db, checkpoint_every=1_000_000_000) as child:
                restart_s = time.monotonic() - started
                channel = open_channel(child.address)
                stub = Stub(channel)
                first = past_read(stub, events // 2)
                later = sorted(
                    past_read(stub, (events // 3 + 7919 * i) % (events - 1) + 1)
                    for i in range(LATER_PAST_READS)
                )[LATER_PAST_READS // 2]
                progress(f"past reads after restart: first {first:.1f} ms, later {later:.1f} ms")
                time.sleep(1.0)
                rss_held = rss_bytes(child.process.pid)
                first_history = history_read(stub, "v1")
                later_history = history_read(stub, "v2")
                time.sleep(1.0)
                rss_history = rss_bytes(child.process.pid)
                progress(f"history reads: first {first_history:.0f} ms, later {later_history:.1f}")
                write = make_writer(stub, "w")
                for _ in range(100):
                    write()
                timed = time_calls(write, lambda calls: calls >= settings.baseline_writes)
                without = tail("without (reference)", [t.took_ns for t in timed], 0.0)
                progress(f"{without}")
                fork = pb.ForkSessionRequest(
                    session_id="big", at_position=events - 1, new_session_id="big-fork"
                )
                inside, fork_s = writes_during(write, lambda: stub.ForkSession(fork, timeout=3600))
                during_fork = tail(f"during a fork of {events - 1:,} events", inside, fork_s)
                progress(f"{during_fork}")

                def export() -> None:
                    request = pb.ExportSessionRequest(session_id="big")
                    for _ in stub.ExportSession(request, timeout=3600):
                        pass

                inside, export_s = writes_during(write, export)
                during_export = tail(f"during an export of {events:,} events", inside, export_s)
                progress(f"{during_export}")
                channel.close()
    except grpc.RpcError as failure:
        progress(f"a call failed: {failure.code()}: {failure.details()}")
        return 1
    million = 1e6 / events / (1 << 20)
    figures = Figures(
        events,
        build_s,
        fold_start_s,
        checkpoints,
        restart_s,
        first,
        later,
        first_history,
        later_history,
        rss_empty / (1 << 20),
        (rss_held - rss_empty) * million,
        (rss_history - rss_empty) * million,
        (without, during_checkpoints, during_fork, during_export),
    )
    targets = evaluate(figures)
    document = json_document(info, method_text(settings), settings, [figures], targets)
    print_report(as_json, document, markdown(figures, targets, info, settings))
    return 0


# -- report -----------------------------------------------------------------------------------


def evaluate(figures: Figures) -> list[Target]:
    """The targets: tails during each operation, the first past read."""
    reference = figures.tails[0].p99_us
    targets = [
        Target(
            f"write p99.9 {t.phase} / write p99 without",
            f"{t.p999_us / reference:.2f}x ({t.p999_us:,.0f} µs / {reference:,.0f} µs)",
            f"<= {TARGET_TAIL_RATIO:.1f}x",
            t.p999_us / reference <= TARGET_TAIL_RATIO,
        )
        for t in figures.tails[1:]
    ]
    targets.append(
        Target(
            f"first past read of a {figures.events:,}-event session after a restart",
            f"{figures.first_past_read_ms:.1f} ms (later reads {figures.later_past_read_ms:.1f} ms)",
            f"< {TARGET_FIRST_PAST_READ_MS:.0f} ms",
            figures.first_past_read_ms < TARGET_FIRST_PAST_READ_MS,
        )
    )
    return targets


def method_text(settings: Settings) -> str:
    """How the numbers were taken, in words."""
    return (
        f"a log of {settings.events:,} events of one session (10 variables) written "
        "through the recorder, then varstore serve child processes on it (--sync full); "
        "writes are sequential SetVariable calls of one client thread on a small session "
        f"(reference: {settings.baseline_writes:,} writes with nothing else running; "
        f"checkpoints: {settings.checkpoint_seconds:.0f} s of writes on a server "
        "checkpointing every round; fork and export: the writes that started while the "
        "operation ran). Past reads are GetVariable at a position; history reads one page "
        "of GetVariableHistory. RSS is VmRSS minus an empty server's, per million events."
    )


def markdown(
    figures: Figures, targets: Sequence[Target], info: dict[str, str], settings: Settings
) -> str:
    """The report: machine, the two tables, method, targets."""
    writes = markdown_table(
        ("writes", "calls", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "operation s"),
        "lrrrrrr",
        [
            (
                t.phase,
                f"{t.writes:,}",
                f"{t.p50_us:,.0f}",
                f"{t.p99_us:,.0f}",
                f"{t.p999_us:,.0f}",
                f"{t.max_us:,.0f}",
                f"{t.operation_s:.1f}" if t.operation_s else "",
            )
            for t in figures.tails
        ],
    )
    other = markdown_table(
        ("figure", "value", "reference"),
        "lrr",
        [
            (
                "first past read after a restart (GetVariable at a position)",
                f"{figures.first_past_read_ms:.1f} ms",
                f"later past reads: {figures.later_past_read_ms:.1f} ms",
            ),
            (
                "first history read after a restart (the index from the checkpoint)",
                f"{figures.first_history_read_ms:,.1f} ms",
                f"later history reads: {figures.later_history_read_ms:.1f} ms",
            ),
            (
                "server start-up",
                f"{figures.restart_s:.1f} s (from a checkpoint)",
                f"{figures.fold_start_s:.1f} s (folding the whole log)",
            ),
            (
                "server RSS per million events held",
                f"{figures.rss_per_million_mb:,.0f} MiB",
                (
                    f"{figures.rss_per_million_with_history_mb:,.0f} MiB after history "
                    f"reads; empty server {figures.rss_empty_mb:,.0f} MiB"
                ),
            ),
            (
                "checkpoints saved during the checkpoint phase",
                f"{figures.checkpoints_during}",
                "",
            ),
        ],
    )
    return "\n".join(
        [
            machine_line(info),
            "",
            writes,
            "",
            other,
            "",
            f"Measured: {method_text(settings)}",
            "",
            targets_text(targets),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = arguments(__doc__, "a smoke run on 20,000 events (about 40 s)")
    args = parser.parse_args(argv)
    return run(QUICK if args.quick else FULL, args.json)


if __name__ == "__main__":
    sys.exit(main())
