"""Assemble and run the gRPC server: the VariableStore service, health and reflection,
behind chained interceptors (errors, metrics, request log, auth, rate limit).

The front is :mod:`grpc.aio`'s server on one event loop thread (:mod:`varstore.api.eventloop`);
the store stays synchronous. Unary and short streaming calls run in a thread pool of
``max_workers`` threads (:mod:`varstore.api.bridge`), but for the reads of the current
state, which never wait and run on the loop; WatchSession streams are coroutines on the
loop and hold no thread, so open watches are bounded by ``max_watchers`` alone.

Health follows the log: SERVING while it can be written, NOT_SERVING while it cannot (the
store reports it; reads still work), NOT_SERVING for good once stopping. Stopping ends
open health Watch streams at once, so a load balancer's watch does not hold it up.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from varstore.api.auth import AuthInterceptor, current_identity
from varstore.api.bridge import SyncBridge
from varstore.api.calls import Chain, HandlerCache
from varstore.api.config import (
    ConfigError,
    Security,
    ServerConfig,
    check_exposure,
    split_address,
)
from varstore.api.eventloop import LoopThread
from varstore.api.health import Health
from varstore.api.interceptors import ErrorInterceptor
from varstore.api.limits import Limits
from varstore.api.logs import RequestLogInterceptor
from varstore.api.metrics import Metrics
from varstore.api.ratelimit import RateLimitInterceptor, caller_identity
from varstore.api.service import VariableStoreService
from varstore.api.store import Store
from varstore.api.watch import WatchHub, encoded_watches
from varstore.eventstore import Recorder
from varstore.eventstore.memory import MemoryRecorder
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from varstore.api.web import WebServer

__all__ = ["MEMORY", "RunningServer", "open_recorder", "serve", "start_server"]

log = logging.getLogger(__name__)

#: The ``--db`` value that keeps the log in memory (tests, throwaway servers).
MEMORY = ":memory:"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VariableStore"].full_name
#: Seconds a thread holds the GIL before another may take it (``sys.setswitchinterval``).
GIL_SWITCH_INTERVAL = 0.0005
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

    path = Path(db).expanduser()
    if not path.parent.is_dir():
        problem = "is not a directory" if path.parent.exists() else "does not exist"
        raise ConfigError(f"--db {db}: {path.parent} {problem} (create the directory first)")
    if path.is_dir():
        raise ConfigError(f"--db {db} is a directory: give the path of a database file")
    return SQLiteRecorder(path, synchronous=sync)


def _where(db: str, sync: str) -> str:
    """Where the log is, as the start-up line says it (a DSN without its password)."""
    from varstore.eventstore.postgres import describe_dsn, is_postgres_dsn

    return describe_dsn(db) if is_postgres_dsn(db) else f"{db} (sync {sync})"


@dataclass
class RunningServer:
    """A started server: its address, store and the means to stop it."""

    server: grpc.aio.Server
    store: Store
    health: Health
    host: str
    port: int
    _sweeper_stop: threading.Event
    #: The WatchSession fan-out; closed first on stop so open watches end promptly.
    hub: WatchHub | None = None
    #: The Prometheus metrics, if they are served.
    metrics: Metrics | None = None
    #: The port ``/metrics`` is served on (0 when not served).
    metrics_port: int = 0
    #: The event loop the gRPC front runs on, and the pool its sync handlers run in.
    front: LoopThread | None = None
    pool: ThreadPoolExecutor | None = None
    #: The audit page, if it is served (``--http``).
    web: WebServer | None = None

    @property
    def address(self) -> str:
        """``host:port`` that clients dial."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls, end watches (health and sessions), let in-flight calls finish
        (up to ``grace`` s), close the log."""
        self._sweeper_stop.set()
        if self.web is not None:
            self.web.stop()
        if self.front is not None and not self.front.loop.is_closed():
            self.front.run(_on_loop(self.health.shut_down))
            if self.hub is not None:
                self.hub.close()
            self.front.run(self.server.stop(grace))
        self.store.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.front is not None:
            self.front.close()
        if self.pool is not None:
            self.pool.shutdown(wait=False)


async def _on_loop(function: Any) -> None:
    function()


def start_server(
    store: Store,
    listen: str = "127.0.0.1:0",
    *,
    max_workers: int = 32,
    max_watchers: int | None = None,
    hub: WatchHub | None = None,
    security: Security | None = None,
    insecure: bool = False,
    metrics: str | None = None,
    request_log_level: int = logging.DEBUG,
) -> RunningServer:
    """Start serving ``store`` on ``listen`` (port 0 picks a free port).

    ``security`` sets TLS (mTLS) and tokens; without TLS only a loopback address is
    accepted unless ``insecure`` (ConfigError otherwise). ``metrics`` ("HOST:PORT") serves
    Prometheus metrics; ``request_log_level`` is the level of the one line per call.

    Sync handlers run in a pool of ``max_workers`` threads; WatchSession streams hold no
    thread (they are coroutines on the server's event loop), so as many as the hub admits
    (``max_watchers``, or the given ``hub``'s own limit; by default the store's
    ``limits.max_watchers``) cost no more threads than one.

    The store's limits also set the largest request (``max_message_bytes``: gRPC refuses a
    larger one with RESOURCE_EXHAUSTED), how long a connection may be idle
    (``idle_connection_seconds``) and each client's request rate
    (``max_requests_per_second``, :class:`~varstore.api.ratelimit.RateLimitInterceptor`).
    """
    security = security or Security()
    host, port = split_address(listen)
    check_exposure(listen, security, insecure=insecure)
    hub = hub or WatchHub(store, max_watchers=max_watchers)
    limits = store.limits
    observed = Metrics(store, hub) if metrics is not None else None
    # The error interceptor comes first, so that what the others raise is mapped too (and a
    # bug in any of them is INTERNAL); metrics and the request log see every call's code,
    # refusals of the auth and rate limit included.
    interceptors: list[HandlerCache] = [ErrorInterceptor()]
    if observed is not None:
        interceptors.append(observed.interceptor())
    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="varstore-rpc")
    interceptors += [
        RequestLogInterceptor(request_log_level),
        AuthInterceptor(
            security.tokens(),
            lambda sid: _creation_of(store, sid),
            certificates=security.tls is not None and security.tls.client_ca is not None,
        ),
        RateLimitInterceptor(limits.max_requests_per_second, identity=_rate_identity),
        encoded_watches(),  # WatchSession streams send their cached encodings as they are
        SyncBridge(pool, _reads_now(store)),  # innermost: the sync servicers run in the pool
    ]
    front = LoopThread("varstore-grpc", pool)
    try:
        server, health_servicer = front.run(_assemble(store, hub, [Chain(interceptors)], limits))
        bind_host = f"[{host}]" if ":" in host else host
        _check_port_free(host, port, listen)
        try:
            if security.tls is not None:
                bound = server.add_secure_port(f"{bind_host}:{port}", security.tls.credentials())
            else:
                bound = server.add_insecure_port(f"{bind_host}:{port}")
        except RuntimeError:  # grpc's way of saying it could not bind
            bound = 0
        if bound == 0:
            raise OSError(f"cannot listen on {listen} (is the port taken?)")
        metrics_port = 0
        if observed is not None and metrics is not None:
            try:
                metrics_port = observed.serve(*split_address(metrics, "--metrics"))
            except OSError as problem:
                reason = problem.strerror or str(problem)
                raise OSError(f"cannot serve --metrics on {metrics}: {reason}") from None
        front.run(server.start())
    except BaseException:
        front.close()
        pool.shutdown(wait=False)
        hub.close()
        raise
    _follow_the_log(store, health_servicer)
    stop = threading.Event()
    threading.Thread(
        target=_sweep, args=(store, stop), name="varstore-ttl-sweeper", daemon=True
    ).start()
    return RunningServer(
        server, store, health_servicer, host, bound, stop, hub, observed, metrics_port, front, pool
    )


async def _assemble(
    store: Store,
    hub: WatchHub,
    interceptors: list[grpc.aio.ServerInterceptor],
    limits: Limits,
) -> tuple[grpc.aio.Server, Health]:
    """The aio server with its services (on the loop it will run on)."""
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[("grpc.so_reuseport", 0), *_limit_options(limits)],
    )
    pb_grpc.add_VariableStoreServicer_to_server(VariableStoreService(store, hub), server)
    health_servicer = Health(asyncio.get_running_loop())
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return server, health_servicer


def _check_port_free(host: str, port: int, listen: str) -> None:
    """Refuse a port another process holds, an address not on this machine or a host name
    that does not resolve, in one line (grpc would log lines of its own)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as problem:
        reason = problem.strerror or str(problem)
        raise OSError(f"cannot listen on {listen}: cannot resolve {host}: {reason}") from None
    for family, kind, proto, _, address in infos[:1]:
        with socket.socket(family, kind, proto) as probe:
            # As grpc binds: a port whose old connections linger (TIME_WAIT) is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as problem:
                reason = _BIND_PROBLEMS.get(problem.errno or 0) or problem.strerror or str(problem)
                raise OSError(f"cannot listen on {listen}: {reason}") from None


#: What a failed bind means, in the words of the one line ``varstore serve`` prints.
_BIND_PROBLEMS = {
    errno.EADDRINUSE: "the port is taken by another process",
    errno.EADDRNOTAVAIL: "that is not an address of this machine",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


def _follow_the_log(store: Store, health_servicer: Health) -> None:
    """Health SERVING while the log can be written, NOT_SERVING while it cannot."""

    def report(writable: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if writable
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, status)

    store.watch_writable(report)
    report(store.probe_writable())


def _creation_of(store: Store, session_id: str) -> int | None:
    state = store.published(session_id)
    return state.created_position if state is not None else None


def _rate_identity(context: Any) -> str:
    """The rate limit's caller: the authenticated identity, else the peer's address."""
    identity = current_identity()
    return identity.name if identity is not None else caller_identity(context)


#: Reads answered from the state in memory, on the loop (unless they wait or look back).
_NOW_READS = frozenset(
    f"/{SERVICE_NAME}/{name}"
    for name in ("GetServerInfo", "GetSession", "GetVariable", "GetVariables")
)


def _reads_now(store: Store) -> Callable[[str, Any], bool]:
    """Whether a call only reads the current state in memory (never waits, never reads the
    log): no ``at_position`` or ``as_of``, and a ``min_position`` (read-your-writes) the
    session has already reached."""

    def reads_now(method: str, request: Any) -> bool:
        if method not in _NOW_READS:
            return False
        wanted = getattr(request, "min_position", 0)
        if wanted:
            published = store.published(getattr(request, "session_id", ""))
            if published is None or not 0 < wanted <= published.position:
                return False
        fields = request.DESCRIPTOR.fields_by_name
        return not any(
            name in fields and request.HasField(name) for name in ("at_position", "as_of")
        )

    return reads_now


def _limit_options(limits: Limits) -> list[tuple[str, int]]:
    """gRPC server options for the transport's limits (message size, idle connections)."""
    options = [("grpc.max_receive_message_length", limits.max_message_bytes)]
    if limits.idle_connection_seconds:
        options.append(("grpc.max_connection_idle_ms", limits.idle_connection_seconds * 1000))
    return options


def _sweep(store: Store, stop: threading.Event) -> None:
    while not stop.wait(SWEEP_INTERVAL):
        try:
            store.expire_idle_sessions()
        except Exception:  # the sweeper must outlive a failed sweep
            log.exception("TTL sweep failed")


def serve(config: ServerConfig) -> int:
    """Run the server ``config`` describes until SIGTERM or SIGINT, then drain and close.
    Returns an exit code; a refusal to start raises (the CLI prints it as one line)."""
    # The event loop thread is busy whenever watches stream; a handler thread waiting for
    # the GIL behind it would wait up to the default 5 ms at every hand-over.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    store = Store(
        open_recorder(config.db, config.sync),
        limits=config.limits,
        snapshot_every=config.snapshot_every,
        checkpoint_every=config.checkpoint_every,
        poll_interval=config.poll_interval,
    )
    try:
        running = start_server(
            store,
            config.listen,
            security=config.security,
            insecure=config.insecure,
            metrics=config.metrics,
            request_log_level=logging.INFO if config.log_format == "json" else logging.DEBUG,
        )
    except BaseException:
        store.close()
        raise
    if config.http is not None:
        from varstore.api.web import start_web  # only a server with a page loads it

        try:
            running.web = start_web(
                store,
                config.http,
                grpc_address=running.address,
                subscribe=store.subscribe,
                insecure=config.insecure,
            )
        except BaseException:
            running.stop(grace=0)
            raise
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    where = "memory" if config.db == MEMORY else _where(config.db, config.sync)
    protection = config.security.describe()
    if config.security.tls is None:
        protection += "; loopback only" if not config.insecure else "; INSECURE (--insecure)"
    if running.metrics_port:
        metrics_host = split_address(config.metrics or "", "--metrics")[0]
        protection += f"; metrics on {metrics_host}:{running.metrics_port}"
    if running.web is not None:
        protection += f"; audit page on {running.web.url}/"
    # Tools wait for this line; the address ends it.
    print(f"varstore (log in {where}; {protection}) listening on {running.address}", flush=True)
    if not store.writable:
        log.warning("the event log cannot be written: health is NOT_SERVING until it can")
    stopping.wait()
    log.info("stopping: draining in-flight calls")
    running.stop()
    print("varstore stopped", flush=True)
    return 0
