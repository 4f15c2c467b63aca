"""The gRPC front: reads of the current state answer on the event loop, so a pool whose
every thread is taken (by reads waiting for a position, by writes waiting for their
commit) never holds them up."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import grpc
import pytest

from varstore.api.server import RunningServer, start_server
from varstore.api.store import Store
from varstore.eventstore import MemoryRecorder
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

#: How long the one pool thread is kept busy: longer than any read below may take.
HOLD_SECONDS = 4.0


@pytest.fixture
def one_thread_server() -> Iterator[RunningServer]:
    server = start_server(Store(MemoryRecorder()), max_workers=1)
    try:
        yield server
    finally:
        server.stop(1.0)
        server.store.close()


def _holding_the_pool(stub: pb_grpc.VariableStoreStub) -> threading.Thread:
    """A call that waits in the only pool thread for a position the log never reaches."""

    def wait_for_the_future() -> None:
        request = pb.GetVariableRequest(session_id="s", variable_identifier="n", min_position=99)
        # UNAVAILABLE or DEADLINE_EXCEEDED: it waited, as it should.
        with contextlib.suppress(grpc.RpcError):
            stub.GetVariable(request, timeout=HOLD_SECONDS)

    thread = threading.Thread(target=wait_for_the_future)
    thread.start()
    return thread


@pytest.mark.parametrize("min_position", [0, 1, 2])
def test_a_read_of_a_reached_position_answers_while_the_pool_is_taken(
    one_thread_server: RunningServer, min_position: int
) -> None:
    with grpc.insecure_channel(one_thread_server.address) as channel:
        stub = pb_grpc.VariableStoreStub(channel)
        stub.CreateSession(pb.CreateSessionRequest(session_id="s"))
        stub.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id="s", name="n", type="integer", initial_value=pb.Value(integer_value=7)
            )
        )
        holder = _holding_the_pool(stub)
        try:
            request = pb.GetVariableRequest(
                session_id="s", variable_identifier="n", min_position=min_position
            )
            # Well before the held call lets the thread go: answered on the loop.
            answer = stub.GetVariable(request, timeout=HOLD_SECONDS / 2)
            assert answer.variable.value.integer_value == 7
            assert answer.header.position == 2
        finally:
            holder.join()
