"""Real servers for tests: in the test process (with its Store at hand) or as a child
process running ``varstore serve`` exactly as a user would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio

from varstore.api.bridge import SyncBridge
from varstore.api.eventloop import LoopThread
from varstore.api.server import RunningServer, start_server
from varstore.api.store import Store
from varstore.eventstore.memory import MemoryRecorder
from varstore.v1 import varstore_pb2_grpc as pb_grpc

LISTENING = re.compile(r"listening on (\S+)$")


@contextmanager
def in_process_server(store: Store | None = None) -> Iterator[RunningServer]:
    """A server on a free loopback port in this process (memory log unless given a store)."""
    running = start_server(store or Store(MemoryRecorder()))
    try:
        yield running
    finally:
        running.stop(grace=1.0)


@contextmanager
def aio_serving(
    register: Callable[[grpc.aio.Server], None],
    *interceptors: grpc.aio.ServerInterceptor,
    workers: int = 4,
) -> Iterator[str]:
    """An asyncio gRPC server as ``start_server`` runs one (its own event loop thread, sync
    handlers in a pool behind ``interceptors``), with what ``register`` adds; its address."""
    pool = futures.ThreadPoolExecutor(max_workers=workers)
    front = LoopThread("test-aio-server", pool)

    async def assemble() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(interceptors=[*interceptors, SyncBridge(pool)])
        register(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = front.run(assemble())
    try:
        yield f"127.0.0.1:{port}"
    finally:
        front.run(server.stop(1.0))
        front.close()
        pool.shutdown()


@contextmanager
def stub_for(address: str) -> Iterator[pb_grpc.VariableStoreStub]:
    """A generated stub on a fresh channel to ``address``."""
    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield pb_grpc.VariableStoreStub(channel)
    finally:
        channel.close()


@dataclass
class ServerProcess:
    """``varstore serve`` in a child process."""

    process: subprocess.Popen[str]
    address: str
    output: list[str] = field(default_factory=list)

    def kill(self) -> None:
        """SIGKILL: no drain, no close; what was acknowledged must survive."""
        self.process.kill()
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM and wait; returns the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def start_server_process(db: str | Path, *extra: str, timeout: float = 30) -> ServerProcess:
    """Run ``varstore serve --db DB --listen 127.0.0.1:0`` and wait for its listening line."""
    command = [
        sys.executable,
        "-m",
        "varstore.api.cli",
        "serve",
        "--db",
        str(db),
        "--listen",
        "127.0.0.1:0",
        *extra,
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    lines: list[str] = []
    found: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            match = LISTENING.search(line.strip())
            if match and not found:
                found.append(match.group(1))
                ready.set()
        ready.set()

    ready = threading.Event()
    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout) or not found:
        process.kill()
        raise RuntimeError("server did not start:\n" + "\n".join(lines))
    return ServerProcess(process, found[0], lines)
