"""etcd as a reference for the benches: a throwaway etcd server and a minimal gRPC client.

* :class:`EtcdServer` runs ``etcd`` (3.4, Debian's ``etcd-server``; ``$ETCD`` names
  another binary) on free loopback client and peer ports with a data directory of its own,
  waits until it answers a Range, and stops it (SIGTERM, then SIGKILL) and removes the
  directory on the way out: on :meth:`EtcdServer.stop`, at the end of a ``with`` block (an
  exception included), at interpreter exit, and on SIGTERM when :meth:`EtcdServer.start`
  runs in the main thread of a process that had no SIGTERM handler of its own.
* :class:`EtcdClient` speaks etcd's native gRPC API without etcd's ``.proto`` files: the
  few messages it needs (``KV/Put``, ``KV/Range``, ``Watch/Watch`` and ``mvccpb.KeyValue``/
  ``Event``) are declared here with ``descriptor_pb2`` under etcd's field numbers (from
  ``api/etcdserverpb/rpc.proto`` and ``api/mvccpb/kv.proto``) in a private descriptor pool,
  so the wire format is etcd's and the classes are protobuf's own (upb).

etcd's default durability is kept: every acknowledged Put is in its write-ahead log,
fsynced (``--unsafe-no-fsync`` is never passed).

``python bench/etcdlib.py`` is a self-check: start, put, read back, watch from a past
revision and live, stop.
"""

from __future__ import annotations

import atexit
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

CALL_TIMEOUT = 10.0  # seconds
START_TIMEOUT = 30.0  # seconds for etcd to answer after it is started

# -- the messages (etcd's field numbers) --------------------------------------------------

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "varstore_bench_etcd"  # private: the wire knows field numbers, not type names


def _field(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    kind: int,
    type_name: str = "",
    repeated: bool = False,
) -> descriptor_pb2.FieldDescriptorProto:
    field = message.field.add(name=name, number=number, type=kind)
    field.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    if type_name:
        field.type_name = f".{_PACKAGE}.{type_name}"
    return field


def _file() -> descriptor_pb2.FileDescriptorProto:
    """ResponseHeader, Put*, Range*, Watch* (create only) and mvccpb's KeyValue and Event."""
    file = descriptor_pb2.FileDescriptorProto(
        name="varstore_bench_etcd.proto", package=_PACKAGE, syntax="proto3"
    )
    i64, u64, by, bo, msg = (
        _F.TYPE_INT64,
        _F.TYPE_UINT64,
        _F.TYPE_BYTES,
        _F.TYPE_BOOL,
        _F.TYPE_MESSAGE,
    )
    m = file.message_type.add(name="ResponseHeader")
    for name, number, kind in (
        ("cluster_id", 1, u64),
        ("member_id", 2, u64),
        ("revision", 3, i64),
        ("raft_term", 4, u64),
    ):
        _field(m, name, number, kind)
    m = file.message_type.add(name="KeyValue")  # mvccpb.KeyValue
    for name, number, kind in (
        ("key", 1, by),
        ("create_revision", 2, i64),
        ("mod_revision", 3, i64),
        ("version", 4, i64),
        ("value", 5, by),
        ("lease", 6, i64),
    ):
        _field(m, name, number, kind)
    m = file.message_type.add(name="Event")  # mvccpb.Event; type: PUT = 0, DELETE = 1
    _field(m, "type", 1, _F.TYPE_INT32)
    _field(m, "kv", 2, msg, "KeyValue")
    _field(m, "prev_kv", 3, msg, "KeyValue")
    m = file.message_type.add(name="PutRequest")
    _field(m, "key", 1, by)
    _field(m, "value", 2, by)
    _field(m, "lease", 3, i64)
    _field(m, "prev_kv", 4, bo)
    m = file.message_type.add(name="PutResponse")
    _field(m, "header", 1, msg, "ResponseHeader")
    _field(m, "prev_kv", 2, msg, "KeyValue")
    m = file.message_type.add(name="RangeRequest")
    _field(m, "key", 1, by)
    _field(m, "range_end", 2, by)
    _field(m, "limit", 3, i64)
    _field(m, "revision", 4, i64)
    _field(m, "serializable", 7, bo)
    m = file.message_type.add(name="RangeResponse")
    _field(m, "header", 1, msg, "ResponseHeader")
    _field(m, "kvs", 2, msg, "KeyValue", repeated=True)
    _field(m, "more", 3, bo)
    _field(m, "count", 4, i64)
    m = file.message_type.add(name="WatchCreateRequest")
    _field(m, "key", 1, by)
    _field(m, "range_end", 2, by)
    _field(m, "start_revision", 3, i64)
    _field(m, "progress_notify", 4, bo)
    _field(m, "prev_kv", 6, bo)
    m = file.message_type.add(name="WatchCancelRequest")
    _field(m, "watch_id", 1, i64)
    m = file.message_type.add(name="WatchRequest")  # oneof request_union (1, 2) left plain
    _field(m, "create_request", 1, msg, "WatchCreateRequest")
    _field(m, "cancel_request", 2, msg, "WatchCancelRequest")
    m = file.message_type.add(name="WatchResponse")
    _field(m, "header", 1, msg, "ResponseHeader")
    _field(m, "watch_id", 2, i64)
    _field(m, "created", 3, bo)
    _field(m, "canceled", 4, bo)
    _field(m, "compact_revision", 5, i64)
    _field(m, "cancel_reason", 6, _F.TYPE_STRING)
    _field(m, "fragment", 7, bo)
    _field(m, "events", 11, msg, "Event", repeated=True)
    return file


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())


def _message_class(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


PutRequest = _message_class("PutRequest")
PutResponse = _message_class("PutResponse")
RangeRequest = _message_class("RangeRequest")
RangeResponse = _message_class("RangeResponse")
WatchCreateRequest = _message_class("WatchCreateRequest")
WatchCancelRequest = _message_class("WatchCancelRequest")
WatchRequest = _message_class("WatchRequest")
WatchResponse = _message_class("WatchResponse")

PUT_METHOD = "/etcdserverpb.KV/Put"
RANGE_METHOD = "/etcdserverpb.KV/Range"
WATCH_METHOD = "/etcdserverpb.Watch/Watch"


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())


def put_callable(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable[Any, Any]:
    """The raw ``KV/Put`` call on ``channel`` (takes a :data:`PutRequest`): for benches that
    time the bare call, as they time varstore's generated stubs."""
    return channel.unary_unary(
        PUT_METHOD, request_serializer=_serialize, response_deserializer=PutResponse.FromString
    )


def _as_bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


# -- the client ---------------------------------------------------------------------------


class Watch:
    """One etcd watch on one key, on a stream of its own: iterate for ``(mod_revision,
    value)`` per event, in order, or :meth:`batches` for one list per WatchResponse.

    It is created (etcd answered ``created``) when the constructor returns, so writes made
    after that are seen. :meth:`cancel` ends it; iteration then stops.
    """

    def __init__(self, channel: grpc.Channel, key: bytes, start_revision: int) -> None:
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._requests.put(
            WatchRequest(create_request=WatchCreateRequest(key=key, start_revision=start_revision))
        )
        call = channel.stream_stream(
            WATCH_METHOD,
            request_serializer=_serialize,
            response_deserializer=WatchResponse.FromString,
        )
        self._responses: Any = call(self._outgoing())
        first = next(self._responses)
        if not first.created:
            self.cancel()
            raise RuntimeError(f"etcd did not create the watch: {first}")
        self.watch_id = int(first.watch_id)
        self._pending: list[tuple[int, bytes]] = self._events(first)

    def _outgoing(self) -> Iterator[Any]:
        while (request := self._requests.get()) is not None:
            yield request

    @staticmethod
    def _events(response: Any) -> list[tuple[int, bytes]]:
        return [(int(event.kv.mod_revision), bytes(event.kv.value)) for event in response.events]

    def batches(self) -> Iterator[list[tuple[int, bytes]]]:
        """One list of ``(mod_revision, value)`` per WatchResponse that carries events."""
        if self._pending:
            yield self._pending
            self._pending = []
        try:
            for response in self._responses:
                if response.canceled:
                    return
                if response.events:
                    yield self._events(response)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        for batch in self.batches():
            yield from batch

    def cancel(self) -> None:
        """End the watch and its stream (idempotent)."""
        self._requests.put(None)
        self._responses.cancel()


class EtcdClient:
    """A channel to one etcd server and the calls the benches use."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self._put = put_callable(self.channel)
        self._range = self.channel.unary_unary(
            RANGE_METHOD,
            request_serializer=_serialize,
            response_deserializer=RangeResponse.FromString,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait_ready(self, timeout: float) -> None:
        """Until the channel connects (``grpc.FutureTimeoutError`` after ``timeout`` s)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def put(self, key: bytes | str, value: bytes | str) -> int:
        """Put ``value`` at ``key``; the revision the write made."""
        request = PutRequest(key=_as_bytes(key), value=_as_bytes(value))
        return int(self._put(request, timeout=CALL_TIMEOUT).header.revision)

    def get(self, key: bytes | str) -> tuple[bytes, int] | None:
        """``(value, mod_revision)`` at ``key`` (linearizable read), or None."""
        response = self._range(RangeRequest(key=_as_bytes(key)), timeout=CALL_TIMEOUT)
        if not response.kvs:
            return None
        kv = response.kvs[0]
        return bytes(kv.value), int(kv.mod_revision)

    def revision(self) -> int:
        """The store's current revision."""
        response = self._range(RangeRequest(key=b"\0", limit=1), timeout=CALL_TIMEOUT)
        return int(response.header.revision)

    def watch(self, key: bytes | str, start_revision: int = 0) -> Watch:
        """A created watch on ``key`` from ``start_revision`` (inclusive; 0 is "now")."""
        return Watch(self.channel, _as_bytes(key), start_revision)

    def close(self) -> None:
        """Close the channel (open watches end)."""
        self.channel.close()


# -- the server ---------------------------------------------------------------------------


class EtcdUnavailable(RuntimeError):
    """etcd cannot be run here: no binary, or it never answered (the message says which)."""


def binary() -> str:
    """The etcd executable: ``$ETCD``, else ``etcd`` on the PATH, else ``/usr/bin/etcd``."""
    return os.environ.get("ETCD") or shutil.which("etcd") or "/usr/bin/etcd"


def version(executable: str | None = None) -> str:
    """etcd's version as ``etcd --version`` prints it (``3.4.23``), or ``unknown``."""
    try:
        done = subprocess.run(
            [executable or binary(), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    for line in done.stdout.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class EtcdServer:
    """A one-member etcd on free loopback ports in a temporary data directory."""

    def __init__(self, executable: str | None = None) -> None:
        self.binary = executable or binary()
        self.address = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._directory: Path | None = None
        self._previous_sigterm: Any = None

    @property
    def pid(self) -> int:
        """The etcd process id (for its CPU time in /proc)."""
        if self.process is None:
            raise RuntimeError("etcd is not running")
        return self.process.pid

    def start(self, attempts: int = 3) -> str:
        """Start etcd and wait until it answers; its client address ``127.0.0.1:PORT``.

        A port taken between choosing and binding it makes etcd exit: it is retried on
        new ports up to ``attempts`` times. :class:`EtcdUnavailable` without a binary, or
        with etcd's last output if it never answers.
        """
        if self.process is not None:
            return self.address
        if not os.access(self.binary, os.X_OK):
            raise EtcdUnavailable(
                f"no etcd executable at {self.binary} (apt-get install etcd-server, or set ETCD)"
            )
        atexit.register(self.stop)
        self._catch_sigterm()
        failure = ""
        for _ in range(attempts):
            try:
                return self._start_once()
            except EtcdUnavailable as error:
                failure = str(error)
                self.stop()
        raise EtcdUnavailable(failure)

    def _start_once(self) -> str:
        self._directory = Path(tempfile.mkdtemp(prefix="varstore-bench-etcd-"))
        client, peer = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        command = [
            self.binary,
            "--name=bench",
            f"--data-dir={self._directory / 'data'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=bench={peer_url}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-outputs=stderr",
            "--log-level=warn",
        ]
        log = (self._directory / "etcd.log").open("wb")
        with log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.address = f"127.0.0.1:{client}"
        deadline = time.monotonic() + START_TIMEOUT
        with EtcdClient(self.address) as client_:
            while True:
                if self.process.poll() is not None:
                    code = self.process.returncode
                    raise EtcdUnavailable(f"etcd exited ({code}):\n{self._log()}")
                try:
                    client_.wait_ready(timeout=0.5)
                    client_.revision()
                    return self.address
                except (grpc.FutureTimeoutError, grpc.RpcError):
                    if time.monotonic() > deadline:
                        raise EtcdUnavailable(f"etcd did not answer:\n{self._log()}") from None
                    time.sleep(0.05)

    def _log(self, lines: int = 20) -> str:
        if self._directory is None:
            return ""
        try:
            text = (self._directory / "etcd.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _catch_sigterm(self) -> None:
        """In the main thread, with no handler of the process's own: SIGTERM raises
        SystemExit, so ``with`` blocks and ``finally`` clauses stop etcd."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)

        self._previous_sigterm = signal.signal(signal.SIGTERM, exit_on_sigterm)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 10 s), then remove the data directory; idempotent."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        directory, self._directory = self._directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# -- self-check ---------------------------------------------------------------------------


def self_check() -> None:
    """Start etcd, put three values, read one back, watch from the first revision (the
    past) and then live, stop; ``AssertionError`` if anything is off."""
    with EtcdServer() as server, EtcdClient(server.address) as client:
        revisions = [client.put("k", f"v{i}") for i in range(3)]
        assert revisions == sorted(revisions) and len(set(revisions)) == 3, revisions
        assert client.get("k") == (b"v2", revisions[-1]), client.get("k")
        assert client.get("missing") is None
        watch = client.watch("k", start_revision=revisions[0])
        seen: list[tuple[int, bytes]] = []
        for event in watch:
            seen.append(event)
            if len(seen) == 3:
                live = client.put("k", "live")
            if len(seen) == 4:
                break
        watch.cancel()
        expected = [(r, f"v{i}".encode()) for i, r in enumerate(revisions)] + [(live, b"live")]
        assert seen == expected, seen
        print(f"etcd at {server.address} (pid {server.pid}): put, get and watch ok: {seen}")
    assert server.process is None


if __name__ == "__main__":
    self_check()
