"""Run the audit page: uvicorn on its own thread and event loop inside ``varstore serve``.

The page reads the same store (and so the same projections) as the gRPC server; it adds
no source of truth. It has no authentication and no TLS: like the gRPC exposure rule, it
listens on a loopback address unless ``insecure`` (``--insecure``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from dataclasses import dataclass, field

import uvicorn

from varstore.api.config import check_http_exposure, split_address
from varstore.api.queries import ReadableStore
from varstore.api.web.app import build_app
from varstore.api.web.live import LiveFeed, Subscribe

__all__ = ["WebServer", "start_web"]

#: Seconds a stopping page waits for open requests (event streams end at once).
STOP_GRACE = 2.0


@dataclass
class WebServer:
    """A running audit page."""

    host: str
    port: int
    _server: uvicorn.Server
    _thread: threading.Thread
    _loop: list[asyncio.AbstractEventLoop] = field(default_factory=list)
    _feed: list[LiveFeed] = field(default_factory=list)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """End the event streams, let other requests finish, stop the thread."""
        if self._loop and self._feed and not self._loop[0].is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop[0].call_soon_threadsafe(self._feed[0].close)
        self._server.should_exit = True
        self._thread.join(timeout=STOP_GRACE + 3)


def start_web(
    store: ReadableStore,
    listen: str,
    *,
    grpc_address: str,
    subscribe: Subscribe,
    insecure: bool = False,
) -> WebServer:
    """Serve the audit page for ``store`` on ``listen`` ("HOST:PORT"; port 0 picks a free
    one) and return once it accepts connections. ``subscribe`` is the store's
    ``subscribe`` (live updates); ``grpc_address`` is shown in commands.

    Raises:
        ConfigError: a bad or exposed address.
        OSError: the address cannot be bound.
    """
    check_http_exposure(listen, insecure=insecure)
    host, port = split_address(listen, "--http")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as problem:
        sock.close()
        raise OSError(f"cannot serve the audit page on {listen}: {problem.strerror}") from None
    sock.listen(128)
    bound = sock.getsockname()[1]
    loops: list[asyncio.AbstractEventLoop] = []
    feeds: list[LiveFeed] = []

    def the_feed() -> LiveFeed:
        return feeds[0]

    app = build_app(store, grpc_address, the_feed)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=int(STOP_GRACE),
        ws="none",
    )
    # uvicorn's own start and stop lines are noise beside varstore's start-up line.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    server = uvicorn.Server(config)
    failed: list[BaseException] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        feed = LiveFeed(loop)
        feed.attach(subscribe)
        loops.append(loop)
        feeds.append(feed)
        try:
            await server.serve(sockets=[sock])
        finally:
            feed.close()

    def main() -> None:
        try:
            asyncio.run(run())
        except Exception as problem:  # noqa: BLE001 - start_web reports it
            failed.append(problem)
        finally:
            sock.close()

    thread = threading.Thread(target=main, name="varstore-web", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        thread.join(0.01)
    if not server.started:
        raise OSError(f"the audit page did not start: {failed[0] if failed else 'unknown'}")
    return WebServer(host, bound, server, thread, loops, feeds)
