"""Write and read cost against the session's size: SetVariable and GetVariable in sessions
of 10, 1,000 and 10,000 variables, measured in the same run.

What it measures
----------------
One ``python -m varstore.api.cli serve --db <tmp>/sizes.db --listen 127.0.0.1:0`` child
process (default ``--sync full``: every acknowledged write is fsynced) holds one session
per size, ``size-N`` with ``N`` integer variables ``v0..v{N-1}`` (registered up front by
8 client threads; 10,000 is the default ``max_variables_per_session``). The calls go
through the generated stubs, one client thread on one channel in this process, one call
after the other:

* **write**: ``SetVariable`` of a new value, cycling through 16 variables spread evenly
  over the session (``v0``, ``v{N/16}``, ...), so writes touch the whole map;
* **read**: ``GetVariable`` of the same 16 names, in turn.

Each round measures every size, writes then reads, after a few warm-up calls; the
order of the sizes turns by one each round (A/B alternation), and the figures pool the
rounds, so load that comes and goes on the machine spreads over every size alike.
"server CPU µs/call" is the server process's user+system time (all threads, from
``/proc/PID/stat``) over the timed calls, divided by the calls.

How to read it
--------------
The 10-variable session is the reference: ``vs 10`` is a size's p50 over the 10-variable
p50 (1.00x = the size costs nothing). The target holds the 10,000-variable write and read
p50 within 1.2x of the 10-variable ones.

Usage: ``.venv/bin/python bench/bench_sizes.py [--quick] [--json]`` from the repository
root. ``--quick`` is a smoke run (one round of 100 calls per size and operation; about
15 s, most of it registering the 11,010 variables); the default run takes about a minute.
Progress goes to stderr. Exit status 1 if a call failed.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from bench_grpc import cpu_seconds
from benchlib import (  # bench/ is sys.path[0] when this file runs
    CALL_TIMEOUT,
    Target,
    arguments,
    json_document,
    machine,
    machine_line,
    markdown_table,
    open_channel,
    p50_p99,
    print_report,
    progress,
    targets_text,
    varstore_server,
)

from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc

#: Session sizes, in variables; the first is the reference.
SIZES = (10, 1_000, 10_000)
#: Variables each size's calls cycle through, spread over the session.
TOUCHED = 16
#: Client threads registering the variables (group commit shares their fsyncs).
REGISTERING_THREADS = 8
#: The 10,000-variable p50 over the 10-variable p50, at most (writes and reads alike).
TARGET_RATIO = 1.2

OPERATIONS = (("set", "SetVariable"), ("get", "GetVariable"))


@dataclass(frozen=True)
class Settings:
    """How many calls each size and operation gets, split evenly over ``rounds``."""

    rounds: int
    warmup_calls: int  # per round, size and operation
    calls: int  # in total, per size and operation


FULL = Settings(rounds=5, warmup_calls=50, calls=3000)
QUICK = Settings(rounds=1, warmup_calls=10, calls=100)


# -- the sessions -------------------------------------------------------------------------


def session_id(size: int) -> str:
    """The benchmark session holding ``size`` variables."""
    return f"size-{size}"


def touched(size: int) -> list[str]:
    """The names the calls cycle through: ``TOUCHED`` of them, spread over the session."""
    count = min(TOUCHED, size)
    return [f"v{i * size // count}" for i in range(count)]


def set_up(address: str, sizes: Sequence[int]) -> None:
    """Create every size's session and register its variables (integers, 0)."""
    channels = [open_channel(address) for _ in range(REGISTERING_THREADS)]
    stubs = [varstore_pb2_grpc.VariableStoreStub(channel) for channel in channels]
    try:
        for size in sizes:
            sid = session_id(size)
            stubs[0].CreateSession(pb.CreateSessionRequest(session_id=sid), timeout=CALL_TIMEOUT)

            def register(thread: int, sid: str = sid, size: int = size) -> None:
                for index in range(thread, size, REGISTERING_THREADS):
                    stubs[thread].RegisterVariable(
                        pb.RegisterVariableRequest(
                            session_id=sid,
                            name=f"v{index}",
                            type="integer",
                            initial_value=pb.Value(integer_value=0),
                        ),
                        timeout=CALL_TIMEOUT,
                    )

            started = time.monotonic()
            with ThreadPoolExecutor(REGISTERING_THREADS) as pool:
                list(pool.map(register, range(REGISTERING_THREADS)))
            progress(f"{sid}: {size:,} variables in {time.monotonic() - started:.1f} s")
    finally:
        for channel in channels:
            channel.close()


def make_call(
    operation: str, stub: varstore_pb2_grpc.VariableStoreStub, size: int
) -> Callable[[], object]:
    """One call of ``operation`` (``set`` or ``get``) in ``size``'s session; each call
    takes the next touched name (and a write, a new value)."""
    sid, names = session_id(size), touched(size)
    turn = iter(range(1 << 62))
    if operation == "get":
        gets = [pb.GetVariableRequest(session_id=sid, variable_identifier=n) for n in names]
        return lambda: stub.GetVariable(gets[next(turn) % len(gets)], timeout=CALL_TIMEOUT)

    def write() -> object:
        i = next(turn)
        request = pb.SetVariableRequest(
            session_id=sid,
            variable_identifier=names[i % len(names)],
            value=pb.Value(integer_value=i + 1),
        )
        return stub.SetVariable(request, timeout=CALL_TIMEOUT)

    return write


# -- measuring ----------------------------------------------------------------------------


@dataclass
class Run:
    """One size and operation's latencies, pooled over rounds, and the server CPU used."""

    latencies_ns: list[int] = field(default_factory=list)
    server_cpu_s: float = 0.0


def measure_once(
    call: Callable[[], object], calls: int, warmup: int, server_pid: int, into: Run
) -> None:
    """Warm up, then time ``calls`` sequential calls into ``into``."""
    for _ in range(warmup):
        call()
    clock = time.perf_counter_ns
    cpu_before = cpu_seconds(server_pid)
    for _ in range(calls):
        start = clock()
        call()
        into.latencies_ns.append(clock() - start)
    into.server_cpu_s += cpu_seconds(server_pid) - cpu_before


def measure(
    settings: Settings, address: str, server_pid: int, sizes: Sequence[int]
) -> dict[tuple[int, str], Run]:
    """Every round: each size (the order turning by one per round), writes then reads."""
    runs = {(size, op): Run() for size in sizes for op, _ in OPERATIONS}
    channel = open_channel(address)
    try:
        stub = varstore_pb2_grpc.VariableStoreStub(channel)
        calls = {key: make_call(key[1], stub, key[0]) for key in runs}
        for round_ in range(settings.rounds):
            share = settings.calls // settings.rounds + (round_ < settings.calls % settings.rounds)
            order = [*sizes[round_ % len(sizes) :], *sizes[: round_ % len(sizes)]]
            for size in order:
                for op, label in OPERATIONS:
                    run = runs[size, op]
                    measure_once(calls[size, op], share, settings.warmup_calls, server_pid, run)
                    p50, _ = p50_p99(run.latencies_ns)
                    progress(
                        f"round {round_} {size:,} variables {label}: p50 so far {p50 / 1e3:,.0f} µs"
                    )
    finally:
        channel.close()
    return runs


# -- report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """One size and operation: latencies, their ratio to the reference size, server CPU."""

    calls: int
    p50_us: float
    p99_us: float
    p50_vs_reference: float
    server_cpu_us_per_call: float


@dataclass(frozen=True)
class Row:
    """One session size: its writes and reads."""

    variables: int
    write: Figures
    read: Figures


def figures(run: Run, reference_p50_us: float | None) -> Figures:
    """The summary of ``run`` (its own p50 is the reference when none is given)."""
    p50, p99 = p50_p99(run.latencies_ns)
    p50_us = p50 / 1e3
    calls = len(run.latencies_ns)
    return Figures(
        calls,
        p50_us,
        p99 / 1e3,
        p50_us / (reference_p50_us or p50_us),
        run.server_cpu_s * 1e6 / calls,
    )


def rows_of(runs: dict[tuple[int, str], Run], sizes: Sequence[int]) -> list[Row]:
    """A row per size, ratios against the first size."""
    reference = {op: figures(runs[sizes[0], op], None).p50_us for op, _ in OPERATIONS}
    return [
        Row(
            size,
            figures(runs[size, "set"], reference["set"]),
            figures(runs[size, "get"], reference["get"]),
        )
        for size in sizes
    ]


def evaluate(rows: Sequence[Row]) -> list[Target]:
    """The target: the largest session's write and read p50 within 1.2x of the smallest's."""
    largest, smallest = rows[-1], rows[0]
    return [
        Target(
            f"{what} p50 in a {largest.variables:,}-variable session / "
            f"in a {smallest.variables:,}-variable session",
            f"{ratio:.2f}x",
            f"<= {TARGET_RATIO:.2f}x",
            ratio <= TARGET_RATIO,
        )
        for what, ratio in (
            ("SetVariable", largest.write.p50_vs_reference),
            ("GetVariable", largest.read.p50_vs_reference),
        )
    ]


def method_text(settings: Settings) -> str:
    """How the numbers were taken, in words."""
    rounds = settings.rounds
    return (
        f"{rounds} round{'s' if rounds > 1 else ''}; each measures every size (the order "
        f"turning by one per round), SetVariable then GetVariable, {settings.warmup_calls} "
        f"warm-up calls each, then {settings.calls} timed calls per size and operation in "
        f"all, one client thread on one channel, calls cycling through {TOUCHED} variables "
        "spread over the session; figures pool the rounds. The server is a separate process "
        "(varstore serve, --sync full: every write fsynced) on 127.0.0.1; server CPU = "
        "user+system time of the server process over the timed calls, per call."
    )


def markdown(
    rows: Sequence[Row], targets: Sequence[Target], info: dict[str, str], settings: Settings
) -> str:
    """The report: machine, table, method, targets."""
    header = (
        "variables",
        "write p50 µs",
        "write p99 µs",
        "write vs 10",
        "read p50 µs",
        "read p99 µs",
        "read vs 10",
        "server CPU µs/write",
        "server CPU µs/read",
    )
    cells = [
        (
            f"{row.variables:,}",
            f"{row.write.p50_us:,.0f}",
            f"{row.write.p99_us:,.0f}",
            f"{row.write.p50_vs_reference:.2f}x",
            f"{row.read.p50_us:,.0f}",
            f"{row.read.p99_us:,.0f}",
            f"{row.read.p50_vs_reference:.2f}x",
            f"{row.write.server_cpu_us_per_call:,.0f}",
            f"{row.read.server_cpu_us_per_call:,.0f}",
        )
        for row in rows
    ]
    return "\n".join(
        [
            machine_line(info),
            "",
            markdown_table(header, "rrrrrrrrr", cells),
            "",
            f"Measured: {method_text(settings)}",
            "",
            targets_text(targets),
        ]
    )


def run(settings: Settings, as_json: bool, sizes: Sequence[int] = SIZES) -> int:
    """Start the server, fill the sessions, measure, print the report."""
    info = machine()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="varstore-bench-") as tmp,
            varstore_server(Path(tmp) / "sizes.db") as varstore,
        ):
            progress(f"varstore on {varstore.address}")
            set_up(varstore.address, sizes)
            runs = measure(settings, varstore.address, varstore.process.pid, sizes)
    except grpc.RpcError as failure:
        progress(f"a call failed: {failure.code()}: {failure.details()}")
        return 1
    rows = rows_of(runs, sizes)
    targets = evaluate(rows)
    document = json_document(info, method_text(settings), settings, rows, targets)
    print_report(as_json, document, markdown(rows, targets, info, settings))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = arguments(__doc__, "a smoke run of about 15 s")
    args = parser.parse_args(argv)
    return run(QUICK if args.quick else FULL, args.json)


if __name__ == "__main__":
    sys.exit(main())
