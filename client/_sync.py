"""The synchronous client: :class:`SessionContext`, :class:`SessionView`,
:class:`WatchStream`, :class:`Client` and :func:`connect`.

Every operation is written once, as a flow (:mod:`varstore.client._session`,
:mod:`varstore.client._client`, :mod:`varstore.client._watch`); this module only performs
the effects flows ask for, with blocking calls. Its mirror,
:mod:`varstore.client._async`, does the same with ``await``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any, Self, TypeVar

import grpc

from varstore.client import _effects as effects
from varstore.client._channels import Address, ChannelSecurity, Pem, address_text, open_channel
from varstore.client._client import ClientOps
from varstore.client._core import MISSING
from varstore.client._flow import Flow, Runner, Sync
from varstore.client._session import SessionOps, ViewOps
from varstore.client._watch import WatchItem, WatchPosition, WatchStreamBase
from varstore.types import VarstoreError
from varstore.v1 import varstore_pb2_grpc as pb_grpc

__all__ = ["Client", "SessionContext", "SessionView", "WatchStream", "connect"]

T = TypeVar("T")


class _Line:
    """The server stream one run has open. ``stop`` may come from any thread: it cancels
    the call and ends a pause, and the run stops before its next effect."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        # Guards _call: stop() on one thread, open() on the run's.
        self._lock = threading.Lock()
        self._call: Any = None

    def open(self, stub: pb_grpc.VariableStoreStub, effect: effects.Open) -> None:
        try:
            call = getattr(stub, effect.method)(effect.request, timeout=effect.timeout)
        except ValueError as closed:
            raise effects.ChannelClosed(str(closed)) from closed
        with self._lock:
            previous, self._call = self._call, call
            if self.stopped.is_set():
                call.cancel()
        if previous is not None:
            previous.cancel()

    def receive(self) -> Any:
        try:
            return next(self._call)
        except StopIteration:
            return effects.END

    def stop(self) -> None:
        self.stopped.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()


class _Driver:
    """Performs the effects of flows with blocking calls on one stub: the only place the
    sync client does I/O. A failure is thrown into the flow where it waits."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = pb_grpc.VariableStoreStub(channel)

    def run(self, flow: Flow[T]) -> T:
        """``flow``'s result, once it has run to its end."""
        runner = Runner(flow)
        while not runner.done:
            self._perform(runner)
        return runner.result

    def next_item(self, runner: Runner[None], line: _Line) -> WatchItem | None:
        """Run a streaming flow on ``line`` up to the item it emits next; None once it
        ended or was stopped."""
        while not line.stopped.is_set() and not runner.done:
            effect = runner.effect
            if isinstance(effect, effects.Emit):
                runner.send(None)
                return effect.item  # type: ignore[no-any-return]
            self._perform(runner, line)
        return None

    def _perform(self, runner: Runner[Any], line: _Line | None = None) -> None:
        try:
            answer = self._answer(runner.effect, line)
        except Exception as failure:  # noqa: BLE001 - the flow decides what it means
            runner.fail(failure)
        else:
            runner.send(answer)

    def _answer(self, effect: object, line: _Line | None) -> Any:
        if isinstance(effect, effects.Call):
            return getattr(self.stub, effect.method)(effect.request, timeout=effect.timeout)
        if isinstance(effect, effects.Blocking):
            return effect.function(self.stub, *effect.args, **effect.kwargs)
        if isinstance(effect, effects.Background):
            return _Watcher(self, effect)
        if isinstance(effect, effects.Stop):
            return effect.handle.stop()
        if isinstance(effect, effects.Sleep):  # a retry's pause, or a watch's (ends on stop)
            if line is None:
                time.sleep(effect.seconds)
            else:
                line.stopped.wait(effect.seconds)
            return None
        assert line is not None, f"{effect!r} outside a streaming run"
        if effect is effects.RECEIVE:
            return line.receive()
        if isinstance(effect, effects.Open):
            return line.open(self.stub, effect)
        raise TypeError(f"no way to perform {effect!r}")


class _Watcher:
    """A daemon thread running a background flow (a cache's watch) until stopped."""

    def __init__(self, driver: _Driver, effect: effects.Background) -> None:
        self._line = _Line()
        runner = Runner(effect.flow)
        self.thread = threading.Thread(
            target=driver.next_item, args=(runner, self._line), name=effect.name, daemon=True
        )
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel its call, end its pause, and wait for the thread to end."""
        self._line.stop()
        self.thread.join(timeout)


class WatchStream(WatchStreamBase[_Line]):
    """The items of one watch, an iterator (see :meth:`SessionContext.watch`);
    :meth:`close`, or leaving ``with``, cancels the call."""

    def __init__(self, driver: _Driver, flow: Flow[None], seen: WatchPosition) -> None:
        super().__init__(Runner(flow), _Line(), seen)
        self._driver = driver

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> WatchItem:
        try:
            item = self._driver.next_item(self._runner, self._line)
        except VarstoreError:
            if not self._line.stopped.is_set():
                raise
            item = None  # closed from another thread while waiting
        if item is None:
            raise StopIteration
        return item

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SessionView(ViewOps[Sync]):
    """The session as it stood at one position or moment (``ctx.at(point)``): reads only,
    never cached."""


class SessionContext(SessionOps[Sync, grpc.Channel, WatchStream, SessionView]):
    """Variables of one session, with a cache: the seed's ``SessionContext``, synchronous.

    Args:
        session_id: The session; created on first use if the server does not know it.
        channel: A ``grpc.Channel`` (the caller keeps ownership).
        config: ``enable_caching`` (True), ``cache_ttl`` (1.0 s), ``max_size`` (1000),
            ``metadata`` (session metadata if it is created), ``source`` ("python", the
            name recorded with every write), ``timeout`` (30 s per call),
            ``create_session`` (True), ``cache_mode`` ("ttl"; "watch": one watch on the
            session, run by a daemon thread from the first call on, keeps cached entries
            current, and they expire by TTL only while it is down).
        clock: Monotonic seconds for the cache's TTL (injectable for tests).
        positions: The record of session positions this context asks servers to have
            applied (read-your-writes), shared by a client's contexts; its own if not
            given.
    """

    _driver: _Driver

    def _driver_for(self, channel: grpc.Channel) -> _Driver:
        return _Driver(channel)

    def _stream(self, flow: Flow[None], seen: WatchPosition) -> WatchStream:
        return WatchStream(self._driver, flow, seen)

    def _view(self, fields: dict[str, Any]) -> SessionView:
        return SessionView(self._run, self._core, fields)

    def get_variable(self, name: str, default: Any = MISSING, bypass_cache: bool = False) -> Any:
        """A variable's value (by name or id), from the cache when fresh.

        Returns ``default`` (even None) when the variable does not exist and one is given.

        Raises:
            VariableNotFound: no such variable and no default (also a ``KeyError``).
            SessionNotFound, Unavailable, VarstoreError: for other failures.
        """
        hit, value = self._core.cached(name, bypass_cache)
        return value if hit else self._driver.run(self._fetch(name, default))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()


class Client(ClientOps[Sync, SessionContext]):
    """A connection to one or several varstore servers sharing a log, owning its channel;
    opens, creates, lists and deletes sessions. Use :func:`connect`."""

    def __init__(
        self,
        address: Address,
        config: Mapping[str, Any] | None = None,
        security: ChannelSecurity | None = None,
    ) -> None:
        self.channel = open_channel(address, security)
        super().__init__(address_text(address), config, _Driver(self.channel))

    def _context(self, session_id: str, config: Mapping[str, Any]) -> SessionContext:
        return SessionContext(session_id, self.channel, config, positions=self._seen)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(
    address: Address = "127.0.0.1:50051",
    config: Mapping[str, Any] | None = None,
    *,
    root_certificates: Pem | None = None,
    certificate_chain: Pem | None = None,
    private_key: Pem | None = None,
    token: str | None = None,
    tls: bool | None = None,
) -> Client:
    """A :class:`Client` on ``address`` that owns its channel (use it as a context manager).

    ``address``: one server ("host:port"; a DNS name with several records reaches them
    all), or several servers sharing one log, as ``"h1:50051,h2:50051"`` or a list. Calls
    go round robin to the servers that answer; a call whose server went away is retried
    on another (with retries on, the default), and the client reads its own writes on
    any of them (see ``varstore.client._channels`` for how addresses are resolved).

    TLS and tokens (the server's ``--tls-cert``, ``--tls-client-ca`` and tokens): give
    ``root_certificates`` (PEM bytes or a file's path; ``tls=True`` alone uses the system's
    roots), ``certificate_chain`` and ``private_key`` for mTLS, and ``token`` for a bearer
    token (sent only over TLS or to a loopback address).
    """
    security = ChannelSecurity.of(
        root_certificates=root_certificates,
        certificate_chain=certificate_chain,
        private_key=private_key,
        token=token,
        tls=tls,
    )
    return Client(address, config, security)
