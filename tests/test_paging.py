"""Stable pages through a real server: a write between two pages neither breaks paging nor
repeats or drops an item (ReadEvents, GetVariableHistory, ListSessions)."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from servers import in_process_server, stub_for

from varstore.api import commands
from varstore.api.server import RunningServer
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


def delete_variable(stub: Stub, sid: str, name: str) -> None:
    stub.DeleteVariable(pb.DeleteVariableRequest(session_id=sid, variable_identifier=name))


def history_versions(stub: Stub, sid: str, identifier: str, **kwargs: Any) -> list[tuple[str, int]]:
    changes = stub.GetVariableHistory(
        pb.GetVariableHistoryRequest(
            session_id=sid, variable_identifier=identifier, page_size=1000, **kwargs
        )
    ).changes
    return [(c.variable_id, c.version) for c in changes]


def test_read_events_backwards_pages_on_after_writes_between_pages(stub: Stub, sid: str) -> None:
    register(stub, sid, "n")
    for value in range(1, 9):
        set_value(stub, sid, "n", value)  # positions 1..10
    seen: list[int] = []
    token = ""
    while True:
        page = stub.ReadEvents(
            pb.ReadEventsRequest(session_id=sid, backwards=True, page_size=3, page_token=token)
        )
        seen.extend(e.position for e in page.events)
        assert page.header.position == 10
        token = page.next_page_token
        if not token:
            break
        set_value(stub, sid, "n", 100 + len(seen))
    assert seen == list(range(10, 0, -1))


def test_read_events_within_a_range_ignores_writes_between_pages(stub: Stub, sid: str) -> None:
    register(stub, sid, "n")
    for value in range(1, 9):
        set_value(stub, sid, "n", value)
    request: dict[str, Any] = {"session_id": sid, "from_position": 3, "to_position": 8}
    first = stub.ReadEvents(pb.ReadEventsRequest(**request, page_size=4))
    set_value(stub, sid, "n", 99)
    # AIP-158: page_size may change from page to page; the other fields may not.
    second = stub.ReadEvents(
        pb.ReadEventsRequest(**request, page_size=10, page_token=first.next_page_token)
    )
    assert [e.position for e in first.events] == [3, 4, 5, 6]
    assert [e.position for e in second.events] == [7, 8]
    assert second.next_page_token == ""


def test_history_oldest_first_ends_at_the_first_pages_end(stub: Stub, sid: str) -> None:
    register(stub, sid, "n")
    for value in range(1, 5):
        set_value(stub, sid, "n", value)  # versions 0..4
    first = stub.GetVariableHistory(
        pb.GetVariableHistoryRequest(session_id=sid, variable_identifier="n", page_size=3)
    )
    set_value(stub, sid, "n", 5)
    second = stub.GetVariableHistory(
        pb.GetVariableHistoryRequest(
            session_id=sid, variable_identifier="n", page_size=3, page_token=first.next_page_token
        )
    )
    assert [c.version for c in (*first.changes, *second.changes)] == [0, 1, 2, 3, 4]
    assert second.next_page_token == ""
    assert first.header.position == second.header.position


@pytest.mark.parametrize("newest_first", [False, True], ids=["oldest-first", "newest-first"])
@pytest.mark.parametrize("by", ["name", "id"])
def test_history_across_lifetimes_neither_repeats_nor_drops_while_the_name_is_reused(
    stub: Stub, sid: str, newest_first: bool, by: str
) -> None:
    first_id = register(stub, sid, "n")
    for value in range(1, 4):
        set_value(stub, sid, "n", value)
    delete_variable(stub, sid, "n")
    register(stub, sid, "n", 10)
    for value in range(11, 14):
        set_value(stub, sid, "n", value)
    identifier = "n" if by == "name" else first_id
    expected = history_versions(stub, sid, identifier, newest_first=newest_first)
    seen: list[tuple[str, int]] = []
    token = ""
    writes = iter([lambda: delete_variable(stub, sid, "n"), lambda: register(stub, sid, "n", 20)])
    while True:
        page = stub.GetVariableHistory(
            pb.GetVariableHistoryRequest(
                session_id=sid,
                variable_identifier=identifier,
                newest_first=newest_first,
                page_size=2,
                page_token=token,
            )
        )
        seen.extend((c.variable_id, c.version) for c in page.changes)
        token = page.next_page_token
        if not token:
            break
        next(writes, lambda: set_value(stub, sid, "n", 30 + len(seen)))()
    assert seen == expected


def _tampered(token: str, **fields: object) -> str:
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    data.update(fields)
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"e": 10**6}, id="end-beyond-the-log"),
        pytest.param({"l": 2**63}, id="last-beyond-int64"),
        pytest.param({"e": 2**70}, id="end-beyond-int64"),
        pytest.param({"l": -1}, id="negative-last"),
        pytest.param({"l": True}, id="boolean-last"),
        pytest.param({"l": "3"}, id="text-last"),
        pytest.param({"l": 3.0}, id="float-last"),
        pytest.param({"l": 50, "e": 5}, id="last-past-end"),
        pytest.param({"x": 1}, id="an-extra-field"),
        pytest.param({"q": 7}, id="numeric-fingerprint"),
    ],
)
def test_a_tampered_read_events_token_is_invalid_argument(
    stub: Stub, sid: str, fields: dict[str, object]
) -> None:
    register(stub, sid, "n")
    first = stub.ReadEvents(pb.ReadEventsRequest(session_id=sid, page_size=1))
    with pytest.raises(grpc.RpcError) as refused:
        stub.ReadEvents(
            pb.ReadEventsRequest(
                session_id=sid, page_size=1, page_token=_tampered(first.next_page_token, **fields)
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (refused.value.details() or "")


# -- ListSessions ---------------------------------------------------------------------------


@pytest.fixture
def listing() -> Iterator[tuple[RunningServer, Stub]]:
    """A server of its own: these tests count every session on it."""
    with in_process_server() as running, stub_for(running.address) as made:
        yield running, made


def create_sessions(running: RunningServer, *ids: str) -> None:
    for session_id in ids:  # through the store: quicker than a thousand calls
        running.store.execute(session_id, commands.CreateSession(session_id))


def list_ids(stub: Stub, page_size: int = 0, token: str = "") -> tuple[list[str], str]:
    page = stub.ListSessions(pb.ListSessionsRequest(page_size=page_size, page_token=token))
    return [s.id for s in page.sessions], page.next_page_token


def test_list_sessions_serves_100_by_default_and_at_most_1000(
    listing: tuple[RunningServer, Stub],
) -> None:
    running, stub = listing
    create_sessions(running, *(f"s{i:04}" for i in range(1100)))
    default, token = list_ids(stub)
    assert default == [f"s{i:04}" for i in range(100)]
    assert token
    capped, token = list_ids(stub, page_size=5000)
    assert capped == [f"s{i:04}" for i in range(1000)]
    rest, token = list_ids(stub, page_size=5000, token=token)
    assert rest == [f"s{i:04}" for i in range(1000, 1100)]
    assert token == ""


def test_list_sessions_pages_by_id_while_sessions_come_and_go(
    listing: tuple[RunningServer, Stub],
) -> None:
    running, stub = listing
    create_sessions(running, *(f"s{i}" for i in range(10)))  # s0..s9
    first, token = list_ids(stub, page_size=4)
    assert first == ["s0", "s1", "s2", "s3"]
    create_sessions(running, "s1a", "s5a")  # one before the cursor, one after
    stub.DeleteSession(pb.DeleteSessionRequest(session_id="s2"))  # already listed
    stub.DeleteSession(pb.DeleteSessionRequest(session_id="s6"))  # not yet listed
    rest: list[str] = []
    while token:
        page, token = list_ids(stub, page_size=4, token=token)
        rest.extend(page)
    assert rest == ["s4", "s5", "s5a", "s7", "s8", "s9"]


def test_a_list_sessions_token_keeps_working_when_its_last_session_is_deleted(
    listing: tuple[RunningServer, Stub],
) -> None:
    running, stub = listing
    create_sessions(running, "a", "b", "c")
    first, token = list_ids(stub, page_size=2)
    assert first == ["a", "b"]
    stub.DeleteSession(pb.DeleteSessionRequest(session_id="b"))
    assert list_ids(stub, page_size=2, token=token) == (["c"], "")
