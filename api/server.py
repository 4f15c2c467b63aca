"""Assemble and run the gRPC server: the VariableStore service, health and reflection."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Literal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from varstore.api.interceptors import ErrorInterceptor
from varstore.api.limits import Limits
from varstore.api.service import VariableStoreService
from varstore.api.store import CHECKPOINT_EVERY, SNAPSHOT_EVERY, Store
from varstore.api.watch import DEFAULT_MAX_WATCHERS, WatchHub
from varstore.eventstore import Recorder
from varstore.eventstore.memory import MemoryRecorder
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

__all__ = ["MEMORY", "RunningServer", "open_recorder", "serve", "start_server"]

log = logging.getLogger(__name__)

#: The ``--db`` value that keeps the log in memory (tests, throwaway servers).
MEMORY = ":memory:"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VariableStore"].full_name
#: Seconds between sweeps for sessions idle past their TTL.
SWEEP_INTERVAL = 1.0


def open_recorder(db: str, sync: Literal["full", "normal"] = "full") -> Recorder:
    """The recorder for a ``--db`` value: a PostgreSQL URL (``postgresql://...``), memory
    for ``:memory:``, else a SQLite file."""
    if db == MEMORY:
        return MemoryRecorder()
    from varstore.eventstore.postgres import PostgresRecorder, is_postgres_dsn

    if is_postgres_dsn(db):
        return PostgresRecorder(db)
    from varstore.eventstore.sqlite import SQLiteRecorder

    Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return SQLiteRecorder(Path(db).expanduser(), synchronous=sync)


def _where(db: str, sync: str) -> str:
    """Where the log is, as the start-up line says it (a DSN without its password)."""
    from varstore.eventstore.postgres import describe_dsn, is_postgres_dsn

    return describe_dsn(db) if is_postgres_dsn(db) else f"{db} (sync {sync})"


@dataclass
class RunningServer:
    """A started server: its address, store and the means to stop it."""

    server: grpc.Server
    store: Store
    health: health.HealthServicer
    host: str
    port: int
    _sweeper_stop: threading.Event
    #: The WatchSession fan-out; closed first on stop so open watches end promptly.
    hub: WatchHub | None = None

    @property
    def address(self) -> str:
        """``host:port`` that clients dial."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls, let in-flight ones finish (up to ``grace`` s), close the log."""
        self._sweeper_stop.set()
        self.health.enter_graceful_shutdown()
        if self.hub is not None:
            self.hub.close()
        self.server.stop(grace).wait()
        self.store.close()


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT, not {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def start_server(
    store: Store,
    listen: str = "127.0.0.1:0",
    *,
    max_workers: int = 32,
    max_watchers: int = DEFAULT_MAX_WATCHERS,
    hub: WatchHub | None = None,
) -> RunningServer:
    """Start serving ``store`` on ``listen`` (port 0 picks a free port).

    Every open WatchSession stream holds a thread, so the pool has ``max_workers`` threads
    for the other calls plus one per watch the hub admits (``max_watchers``, or the given
    ``hub``'s own limit).
    """
    host, port = _split_listen(listen)
    hub = hub or WatchHub(store, max_watchers=max_watchers)
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=max_workers + hub.max_watchers, thread_name_prefix="varstore-rpc"
        ),
        # Every handler's errors become statuses here, in one place.
        interceptors=[ErrorInterceptor()],
        options=[("grpc.so_reuseport", 0)],
    )
    pb_grpc.add_VariableStoreServicer_to_server(VariableStoreService(store, hub), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    bind_host = f"[{host}]" if ":" in host else host
    bound = server.add_insecure_port(f"{bind_host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {listen}")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    stop = threading.Event()
    threading.Thread(
        target=_sweep, args=(store, stop), name="varstore-ttl-sweeper", daemon=True
    ).start()
    return RunningServer(server, store, health_servicer, host, bound, stop, hub)


def _sweep(store: Store, stop: threading.Event) -> None:
    while not stop.wait(SWEEP_INTERVAL):
        try:
            store.expire_idle_sessions()
        except Exception:  # the sweeper must outlive a failed sweep
            log.exception("TTL sweep failed")


def serve(
    db: str,
    listen: str,
    sync: Literal["full", "normal"] = "full",
    limits: Limits | None = None,
    *,
    snapshot_every: int = SNAPSHOT_EVERY,
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> int:
    """Run the server until SIGTERM or SIGINT, then drain and close. Returns an exit code."""
    store = Store(
        open_recorder(db, sync),
        limits=limits,
        snapshot_every=snapshot_every,
        checkpoint_every=checkpoint_every,
    )
    try:
        running = start_server(store, listen)
    except Exception:
        store.close()
        raise
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    where = "memory" if db == MEMORY else _where(db, sync)
    # Tools wait for this line; the address ends it.
    print(f"varstore (log in {where}) listening on {running.address}", flush=True)
    stopping.wait()
    log.info("stopping: draining in-flight calls")
    running.stop()
    print("varstore stopped", flush=True)
    return 0
