"""What every benchmark under ``bench/`` shares; nothing here measures anything by itself.

* the machine line (date, kernel, CPU, cores, Python, grpcio, protobuf): :func:`machine`,
  :func:`machine_line`;
* child servers that print ``listening on HOST:PORT`` (:func:`child_server`), the varstore
  one among them (:func:`varstore_server`), and connected channels (:func:`open_channel`);
* the benchmark session (``v0..v99`` and ``f``) and the raw generated-stub calls on it
  (:func:`set_up_session`, :func:`make_call`), so every script times the same requests;
* spawned client processes that run jobs sent down a pipe (:class:`ProcessPool`);
* nearest-rank percentiles (:func:`percentile`, :func:`p50_p99`);
* the report: markdown tables, targets, JSON or markdown on stdout, progress on stderr.

The scripts run as ``python bench/<script>.py`` from the repository root, so ``bench/`` is
``sys.path[0]`` and they ``import benchlib``; spawned client processes inherit that path.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

import grpc

from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

CALL_TIMEOUT = 10.0  # seconds; a hung server fails the call instead of the run
ECHO_METHOD = "/bench.Echo/Echo"  # bench_grpc's empty call, the floor of every RPC
SESSION_ID = "bench"
VARIABLES = 100
LISTENING = re.compile(r"listening on (\S+)$")

Call = Callable[[], object]
Number = TypeVar("Number", int, float)


# -- the machine --------------------------------------------------------------------------


def machine(**extra: str) -> dict[str, str]:
    """Where and when the run happened, in header order, then ``extra`` (other versions)."""
    from google.protobuf import __version__ as protobuf_version
    from google.protobuf.internal import api_implementation

    cpu = "unknown"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": f"{protobuf_version} ({api_implementation.Type()})",
        "load average": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        **extra,
    }


def machine_line(info: Mapping[str, str]) -> str:
    """The report's header line: ``Machine: date ...; kernel ...; ...``."""
    return "Machine: " + "; ".join(f"{key} {value}" for key, value in info.items())


# -- child servers ------------------------------------------------------------------------


@dataclass
class Child:
    """A server child process and the address from its ``listening on`` line."""

    name: str
    process: subprocess.Popen[str]
    address: str
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=50))

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 15 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _start(name: str, command: Sequence[str], timeout: float) -> Child:
    """Run ``command`` and wait for its ``listening on HOST:PORT`` line (address last)."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output: collections.deque[str] = collections.deque(maxlen=50)
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:  # drains the pipe for the child's whole life
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line.rstrip("\n"))
            match = LISTENING.search(line.strip())
            if match and not found:
                found.append(match.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=read, name=f"{name}-output", daemon=True).start()
    if not ready.wait(timeout) or not found:
        process.kill()
        process.wait(timeout=5)
        raise RuntimeError(f"{name} server did not start:\n" + "\n".join(output))
    return Child(name, process, found[0], output)


@contextmanager
def child_server(name: str, command: Sequence[str], timeout: float = 30.0) -> Iterator[Child]:
    """A child server, listening; stopped (SIGTERM) on the way out."""
    child = _start(name, command, timeout)
    try:
        yield child
    finally:
        child.stop()


def varstore_server(db: str | Path, listen: str = "127.0.0.1:0") -> AbstractContextManager[Child]:
    """``varstore serve --db DB --listen LISTEN`` (default ``--sync full``) as a child;
    ``LISTEN`` is a free loopback port unless given (a restart on the same address)."""
    command = [sys.executable, "-m", "varstore.api.cli", "serve", "--db", str(db)]
    return child_server("varstore", [*command, "--listen", listen])


def open_channel(address: str) -> grpc.Channel:
    """A fresh channel, connected."""
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=10)
    return channel


# -- the benchmark session and the raw calls on it ----------------------------------------


def names(start: int, count: int) -> list[str]:
    """``count`` variable names from ``v{start}`` on, wrapping at ``v99``."""
    return [f"v{(start + i) % VARIABLES}" for i in range(count)]


def create_session(
    stub: varstore_pb2_grpc.VariableStoreStub,
    session_id: str,
    integers: Iterable[str],
    floats: Mapping[str, float] | None = None,
) -> None:
    """Create ``session_id`` with integer variables (0) and float variables (as given)."""
    stub.CreateSession(pb.CreateSessionRequest(session_id=session_id), timeout=CALL_TIMEOUT)
    registrations = [(name, "integer", pb.Value(integer_value=0)) for name in integers]
    registrations += [
        (name, "float", pb.Value(float_value=value)) for name, value in (floats or {}).items()
    ]
    for name, type_, initial in registrations:
        stub.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id=session_id, name=name, type=type_, initial_value=initial
            ),
            timeout=CALL_TIMEOUT,
        )


def set_up_session(address: str, session_id: str = SESSION_ID) -> None:
    """The benchmark session: ``v0..v99`` (integer, 0) and ``f`` (float, 0.5)."""
    channel = open_channel(address)
    try:
        stub = varstore_pb2_grpc.VariableStoreStub(channel)
        create_session(stub, session_id, names(0, VARIABLES), {"f": 0.5})
    finally:
        channel.close()


def make_call(
    operation: str, channel: grpc.Channel, client: int, session_id: str = SESSION_ID
) -> Call:
    """One call of ``operation`` on ``channel`` in the benchmark session ``session_id``;
    ``client`` spreads clients over variables.

    Operations: ``echo`` (the empty call), ``get``, ``set``, ``get10``, ``get100``,
    ``set10``, ``set100`` (atomic). Requests are built up front; writes cycle through a
    ring of prebuilt requests so every call changes the value it writes.
    """
    if operation == "echo":
        echo: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(ECHO_METHOD)
        return lambda: echo(b"", timeout=CALL_TIMEOUT)
    stub = varstore_pb2_grpc.VariableStoreStub(channel)
    ring = 16
    counter = iter(range(1 << 62))

    def nth(requests: Sequence[Any]) -> Any:
        return requests[next(counter) % ring]

    if operation == "get":
        get = pb.GetVariableRequest(session_id=session_id, variable_identifier=names(client, 1)[0])
        return lambda: stub.GetVariable(get, timeout=CALL_TIMEOUT)
    if operation in ("get10", "get100"):
        size = 10 if operation == "get10" else 100
        many = pb.GetVariablesRequest(
            session_id=session_id, variable_identifiers=names(client * size, size)
        )
        return lambda: stub.GetVariables(many, timeout=CALL_TIMEOUT)
    base = client * 1_000_000
    if operation == "set":
        name = names(client, 1)[0]
        sets = [
            pb.SetVariableRequest(
                session_id=session_id,
                variable_identifier=name,
                value=pb.Value(integer_value=base + i),
            )
            for i in range(ring)
        ]
        return lambda: stub.SetVariable(nth(sets), timeout=CALL_TIMEOUT)
    if operation in ("set10", "set100"):
        size = 10 if operation == "set10" else 100
        batches = [
            pb.SetVariablesRequest(
                session_id=session_id,
                updates={n: pb.Value(integer_value=base + i) for n in names(client * size, size)},
                atomic=True,
            )
            for i in range(ring)
        ]
        return lambda: stub.SetVariables(nth(batches), timeout=CALL_TIMEOUT)
    raise ValueError(f"unknown operation {operation!r}")


# -- client processes ---------------------------------------------------------------------

#: What a pool's process does with each job: ``handle(job, connection)``; it answers on
#: ``connection`` (one report, or a short conversation the script defines).
Handler = Callable[[Any, multiprocessing.connection.Connection], None]


def serve_jobs(connection: multiprocessing.connection.Connection, handle: Handler) -> None:
    """A pool process's life: handle each job received, until it receives None."""
    while True:
        job = connection.recv()
        if job is None:
            return
        handle(job, connection)


class ProcessPool:
    """Spawned client processes, started once before any phase and reused by every phase.

    Each has its own GIL, so clients in several processes are not capped by one
    interpreter. ``handle`` must be a module-level function (it is pickled by name).
    """

    def __init__(self, handle: Handler, processes: int, name: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.links: list[multiprocessing.connection.Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        for index in range(processes):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=serve_jobs, args=(theirs, handle), name=f"{name}-{index}", daemon=True
            )
            process.start()
            theirs.close()
            self.links.append(ours)
            self._processes.append(process)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Send each process its stop message (None), wait, and terminate stragglers."""
        for link in self.links:
            with suppress(OSError):
                link.send(None)
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


def receive_all(
    links: Sequence[multiprocessing.connection.Connection], until: float, failure: str
) -> list[Any]:
    """One message from each link, all by ``until`` (``time.monotonic()``); else
    ``RuntimeError(failure)``."""
    received = []
    for link in links:
        if not link.poll(max(0.0, until - time.monotonic())):
            raise RuntimeError(failure)
        received.append(link.recv())
    return received


# -- figures ------------------------------------------------------------------------------


def percentile(ordered: Sequence[Number], q: float) -> Number:
    """The nearest-rank ``q`` quantile of an ascending, non-empty sequence."""
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def p50_p99(samples: Iterable[Number]) -> tuple[Number, Number]:
    """The nearest-rank p50 and p99 of non-empty ``samples`` (in any order)."""
    ordered = sorted(samples)
    return percentile(ordered, 0.50), percentile(ordered, 0.99)


# -- the report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A goal the numbers are held to: ``value`` and ``limit`` as shown in the report."""

    name: str
    value: str
    limit: str
    passed: bool


def markdown_table(header: Sequence[str], align: str, rows: Iterable[Sequence[str]]) -> str:
    """A markdown table; ``align`` has one letter per column, ``l`` (left) or ``r`` (right)."""
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r} does not fit {len(header)} columns")
    rule = "".join("|---:" if side == "r" else "|---" for side in align) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {row!r} does not fit {len(header)} columns")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def targets_text(targets: Iterable[Target]) -> str:
    """``Targets:`` and one ``- PASS|MISS: name: value (target limit)`` line each."""
    return "\n".join(
        ["Targets:"]
        + [
            f"- {'PASS' if t.passed else 'MISS'}: {t.name}: {t.value} (target {t.limit})"
            for t in targets
        ]
    )


def arguments(doc: str | None, quick: str) -> argparse.ArgumentParser:
    """A script's parser, described by its docstring's first paragraph: ``--quick`` (a
    smoke run, described by ``quick``) and ``--json``."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    return parser


def json_document(
    info: Mapping[str, str],
    method: str,
    settings: DataclassInstance,
    rows: Iterable[DataclassInstance],
    targets: Iterable[Target],
    **more: object,
) -> dict[str, object]:
    """The JSON report: machine, method, settings, rows and targets, then ``more``."""
    return {
        "machine": dict(info),
        "method": method,
        "settings": asdict(settings),
        "rows": [asdict(row) for row in rows],
        "targets": [asdict(target) for target in targets],
        **more,
    }


def print_report(as_json: bool, document: Mapping[str, object], markdown: str) -> None:
    """The report on stdout: ``document`` as JSON, or the markdown text."""
    print(json.dumps(document, indent=2) if as_json else markdown, flush=True)


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries only the report)."""
    print(message, file=sys.stderr, flush=True)
