"""Client failover for ``bench_cluster.py``: a client loops set/get through two servers on
one log; the server it uses is SIGKILLed; the time until its next successful call.

The client is the Python client given both addresses (``connect("A,B")``, caching off);
if it does not take an address list, a raw grpc channel on ``ipv4:A,B`` with the
``round_robin`` policy and a retry loop stands in, and the report says so.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import grpc
from bench_grpc import cpu_seconds
from benchlib import Child, create_session, markdown_table, open_channel, progress, varstore_server
from clusterlib import session_position, wait_for_session

from varstore.client import VarstoreError, connect
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc

FAILOVER_SESSION = "failover"
RAW_POLICY = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


@dataclass
class CallLoop:
    """A thread calling ``call(n)`` over and over: each success's start and end, and each
    failure's time and text."""

    call: Callable[[int], object]
    successes: list[tuple[int, int]] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    pause_after_failure: float = 0.01

    def run(self) -> None:
        """Call until ``stopping`` is set; a failure pauses the loop briefly."""
        n = 0
        while not self.stopping.is_set():
            began = time.monotonic_ns()
            try:
                self.call(n)
            except (grpc.RpcError, VarstoreError) as failure:
                self.failures.append((time.monotonic_ns(), str(failure)[:200]))
                time.sleep(self.pause_after_failure)
            else:
                self.successes.append((began, time.monotonic_ns()))
            n += 1

    def first_success_after(self, moment: int, timeout: float) -> int | None:
        """The end of the first success begun at or after ``moment`` (None after
        ``timeout`` seconds without one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = None
            for began, ended in reversed(self.successes):  # in the order they began
                if began < moment:
                    break
                found = ended
            if found is not None:
                return found
            time.sleep(0.005)
        return None


@contextmanager
def failover_caller(addresses: list[str]) -> Iterator[tuple[Callable[[int], object], str]]:
    """A set/get call on the failover session through both servers, and what makes it:
    the Python client given the address list, else a raw round-robin channel."""
    joined = ",".join(addresses)
    supported = True
    try:
        with connect(joined, {"retry": False, "timeout": 2.0}) as probe:
            probe.session(FAILOVER_SESSION).get_variable("x", bypass_cache=True)
    except (VarstoreError, ValueError, grpc.RpcError):
        supported = False
    if supported:
        with connect(joined, {"enable_caching": False}) as client:
            ctx = client.session(FAILOVER_SESSION)

            def client_call(n: int) -> object:
                return ctx.set_variable("x", n) if n % 2 == 0 else ctx.get_variable("x")

            yield client_call, f'Python client, connect("{joined}")'
        return
    target = "ipv4:" + joined
    channel = grpc.insecure_channel(target, options=[("grpc.service_config", RAW_POLICY)])
    try:
        stub = varstore_pb2_grpc.VariableStoreStub(channel)
        get = pb.GetVariableRequest(session_id=FAILOVER_SESSION, variable_identifier="x")

        def raw_call(n: int) -> object:
            if n % 2:
                return stub.GetVariable(get, timeout=1.0)
            value = pb.Value(integer_value=n)
            set_ = pb.SetVariableRequest(
                session_id=FAILOVER_SESSION, variable_identifier="x", value=value
            )
            return stub.SetVariable(set_, timeout=1.0)

        yield (
            raw_call,
            (
                f'raw grpc channel "{target}", round_robin, retry loop (the Python client does not '
                "take an address list yet)"
            ),
        )
    finally:
        channel.close()


@dataclass(frozen=True)
class FailoverRow:
    """One attempt."""

    attempt: int
    killed: str
    recovery_ms: float | None
    failures: int


def busiest(servers: Sequence[Child], seconds: float) -> int:
    """The index of the server whose CPU rose most over ``seconds``."""
    before = [cpu_seconds(s.process.pid) for s in servers]
    time.sleep(seconds)
    rises = [cpu_seconds(s.process.pid) - b for s, b in zip(servers, before, strict=True)]
    return rises.index(max(rises))


@dataclass(frozen=True)
class FailoverSettings:
    """How many attempts, and how long to find the server in use and to settle after a
    restart."""

    attempts: int
    detect_seconds: float
    settle_seconds: float


def measure_failover(
    servers: list[Child], dsn: str, stack: ExitStack, settings: FailoverSettings
) -> tuple[str, list[FailoverRow]]:
    """Kill whichever of ``servers`` (two, on the log at ``dsn``) the client uses,
    ``settings.attempts`` times; restart it on its address (entered on ``stack``, the list
    updated) before each next attempt. Returns the client used and the attempts."""
    rows: list[FailoverRow] = []
    with ExitStack() as calling:
        channel = open_channel(servers[0].address)
        try:
            create_session(varstore_pb2_grpc.VariableStoreStub(channel), FAILOVER_SESSION, ["x"])
        finally:
            channel.close()
        position = session_position(servers[0].address, FAILOVER_SESSION)
        wait_for_session(servers[1].address, FAILOVER_SESSION, position)
        call, mode = calling.enter_context(failover_caller([s.address for s in servers]))
        progress(f"failover client: {mode}")
        loop = CallLoop(call)
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        try:
            if loop.first_success_after(time.monotonic_ns(), 10) is None:
                raise RuntimeError("the failover client never got an answer")
            for attempt in range(1, settings.attempts + 1):
                time.sleep(settings.settle_seconds)
                index = busiest(servers, settings.detect_seconds)
                victim = servers[index]
                killed = time.monotonic_ns()
                victim.process.kill()
                recovered = loop.first_success_after(killed, 30)
                failures = sum(1 for at, _ in loop.failures if at >= killed)
                victim.process.wait(timeout=10)
                rows.append(
                    FailoverRow(
                        attempt,
                        "AB"[index],
                        (recovered - killed) / 1e6 if recovered is not None else None,
                        failures,
                    )
                )
                progress(f"failover {attempt}: killed {'AB'[index]}, {rows[-1].recovery_ms} ms")
                if attempt < settings.attempts:
                    restart = varstore_server(dsn, victim.address)
                    servers[index] = stack.enter_context(restart)
        finally:
            loop.stopping.set()
            thread.join(timeout=30)
    return mode, rows


def failover_table(rows: Sequence[FailoverRow]) -> str:
    """The attempts as a markdown table."""
    header = ("attempt", "killed", "kill to next success ms", "failed calls seen by the loop")
    cells = [
        (
            str(r.attempt),
            r.killed,
            "never" if r.recovery_ms is None else f"{r.recovery_ms:,.1f}",
            str(r.failures),
        )
        for r in rows
    ]
    return markdown_table(header, "rlrr", cells)
