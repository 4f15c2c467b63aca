"""A thousand watchers of one session on one ``varstore serve`` process: every one served,
none dropped, each event received exactly once by each, and the server's threads do not
grow with the number of watchers (read from ``/proc/<pid>/status``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import grpc.aio
from servers import start_server_process

from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

WATCHERS = 1000
FIRST = 10  # watchers open when the baseline thread count is read
WRITES = 20
SESSION = "many-watchers"


def threads_of(pid: int) -> int:
    """The number of threads process ``pid`` runs now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


class Watch:
    """One watcher: its stream, the positions of the events it received, its error."""

    def __init__(self, stub: pb_grpc.VariableStoreStub, from_position: int) -> None:
        request = pb.WatchSessionRequest(
            session_id=SESSION, from_position=from_position, max_events_per_message=64
        )
        self.call = stub.WatchSession(request, timeout=120)
        self.caught_up = asyncio.Event()
        self.positions: list[int] = []
        self.error: str | None = None

    async def follow(self, last: asyncio.Future[int]) -> None:
        try:
            async for message in self.call:
                if message.HasField("progress"):
                    self.caught_up.set()
                elif message.HasField("event"):
                    self.positions.append(message.event.event.position)
                elif message.HasField("events"):
                    self.positions.extend(e.event.position for e in message.events.events)
                if last.done() and self.positions and self.positions[-1] >= last.result():
                    self.call.cancel()
                    return
        except grpc.aio.AioRpcError as error:
            self.error = f"{error.code()}: {error.details()}"
        except asyncio.CancelledError:
            pass


async def scenario(address: str, pid: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.VariableStoreStub(channel)
        await stub.CreateSession(pb.CreateSessionRequest(session_id=SESSION))
        registered = await stub.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id=SESSION,
                name="x",
                type="integer",
                initial_value=pb.Value(integer_value=0),
            )
        )
        start = registered.header.position
        last: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        watches: list[Watch] = []
        tasks: list[asyncio.Task[None]] = []

        async def open_watches(count: int) -> None:
            opened = [Watch(stub, start) for _ in range(count)]
            watches.extend(opened)
            tasks.extend(asyncio.create_task(w.follow(last)) for w in opened)
            await asyncio.wait_for(asyncio.gather(*(w.caught_up.wait() for w in opened)), 60)

        await open_watches(FIRST)
        baseline = threads_of(pid)
        await open_watches(WATCHERS - FIRST)
        with_all = threads_of(pid)
        position = start
        for value in range(WRITES):
            written = await stub.SetVariable(
                pb.SetVariableRequest(
                    session_id=SESSION, variable_identifier="x", value=pb.Value(integer_value=value)
                )
            )
            position = written.header.position
            await asyncio.sleep(0.02)
        last.set_result(position)
        await asyncio.wait_for(asyncio.gather(*tasks), 90)
        after_writes = threads_of(pid)

    assert [w.error for w in watches if w.error] == []
    expected = list(range(start + 1, position + 1))
    assert len(expected) == WRITES
    wrong = [w.positions for w in watches if w.positions != expected]
    assert wrong == [], f"{len(wrong)} watchers missed or repeated events"
    # A thread per watch would add 990 here; the pool is fixed and idle watches hold none.
    assert with_all <= baseline + 4, (baseline, with_all)
    assert after_writes <= baseline + 8, (baseline, after_writes)


def test_a_thousand_watchers_of_one_session_get_every_event_once_without_a_thread_each() -> None:
    server = start_server_process(":memory:")
    try:
        asyncio.run(scenario(server.address, server.process.pid))
    finally:
        server.terminate()
