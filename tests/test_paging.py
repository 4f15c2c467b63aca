"""Stable pages through a real server: a write between two pages neither breaks paging nor
repeats or drops an item (ReadEvents, GetVariableHistory, ListSessions)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from servers import in_process_server, stub_for

from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

Stub = pb_grpc.VariableStoreStub

_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def stub() -> Iterator[Stub]:
    with in_process_server() as running, stub_for(running.address) as made:
        yield made


@pytest.fixture
def sid(stub: Stub) -> str:
    name = f"p{next(_numbers)}"
    stub.CreateSession(pb.CreateSessionRequest(session_id=name))
    return name


def register(stub: Stub, sid: str, name: str, value: int = 0) -> str:
    return stub.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id=sid, name=name, type="integer", initial_value=pb.Value(integer_value=value)
        )
    ).variable_id


def set_value(stub: Stub, sid: str, name: str, value: int) -> int:
    return stub.SetVariable(
        pb.SetVariableRequest(
            session_id=sid, variable_identifier=name, value=pb.Value(integer_value=value)
        )
    ).header.position


def test_read_events_pages_on_after_a_write_between_pages(stub: Stub, sid: str) -> None:
    register(stub, sid, "n")
    for value in range(1, 6):
        set_value(stub, sid, "n", value)  # positions 1..7
    first = stub.ReadEvents(pb.ReadEventsRequest(session_id=sid, page_size=3))
    set_value(stub, sid, "n", 99)  # position 8, after the pin
    second = stub.ReadEvents(
        pb.ReadEventsRequest(session_id=sid, page_size=3, page_token=first.next_page_token)
    )
    third = stub.ReadEvents(
        pb.ReadEventsRequest(session_id=sid, page_size=3, page_token=second.next_page_token)
    )
    positions = [e.position for page in (first, second, third) for e in page.events]
    assert positions == [1, 2, 3, 4, 5, 6, 7]
    assert third.next_page_token == ""
    assert first.header.position == second.header.position == third.header.position == 7


def test_history_newest_first_repeats_nothing_after_a_write_between_pages(
    stub: Stub, sid: str
) -> None:
    register(stub, sid, "n")
    for value in range(1, 11):
        set_value(stub, sid, "n", value)  # versions 0..10
    request: dict[str, Any] = {
        "session_id": sid,
        "variable_identifier": "n",
        "newest_first": True,
        "page_size": 3,
    }
    first = stub.GetVariableHistory(pb.GetVariableHistoryRequest(**request))
    assert [c.version for c in first.changes] == [10, 9, 8]
    set_value(stub, sid, "n", 11)
    second = stub.GetVariableHistory(
        pb.GetVariableHistoryRequest(**request, page_token=first.next_page_token)
    )
    assert [c.version for c in second.changes] == [7, 6, 5]
