"""The query layer over a real store: domain objects out, no protobuf in, stable pages."""

from __future__ import annotations

import ast
import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from varstore.api import commands, paging, queries
from varstore.api.store import Store
from varstore.eventstore import RecordedEvent
from varstore.eventstore.memory import MemoryRecorder
from varstore.projections import Change, VariableState
from varstore.types import (
    LimitExceeded,
    OutOfRange,
    SessionNotFound,
    Unavailable,
    ValidationError,
    VariableNotFound,
)

T = TypeVar("T")
QUERIES = Path(queries.__file__)


@contextmanager
def seeded_store() -> Iterator[Store]:
    """A store whose session "s" holds n (versions 0..5, positions 2 and 4..8) and label."""
    made = Store(MemoryRecorder(), snapshot_every=4)
    try:
        made.execute("s", commands.CreateSession("s"))  # position 1
        made.execute("s", commands.RegisterVariable("s", "n", "integer", 0))  # 2
        made.execute("s", commands.RegisterVariable("s", "label", "string", "a"))  # 3
        for value in range(1, 6):
            made.execute("s", commands.SetVariable("s", "n", value))  # 4..8
        yield made
    finally:
        made.close()


@pytest.fixture
def store() -> Iterator[Store]:
    with seeded_store() as made:
        yield made


def test_the_query_layer_imports_no_protobuf_and_no_grpc() -> None:
    tree = ast.parse(QUERIES.read_text(encoding="utf-8"))
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {m for m in imported if m and m.startswith(("grpc", "google", "varstore.v1"))}


def test_get_variable_reads_now_at_a_position_and_at_a_moment(store: Store) -> None:
    now = queries.get_variable(store, "s", "n")
    assert isinstance(now.variable, VariableState)
    assert (now.session_id, now.position, now.variable.value, now.variable.version) == (
        "s",
        8,
        5,
        5,
    )
    then = queries.get_variable(store, "s", "n", 5)
    assert (then.position, then.variable.value) == (5, 2)
    moment = then.variable.updated_at
    assert queries.get_variable(store, "s", "n", moment).variable.value == 2


def test_get_variables_keys_found_ones_as_asked_and_lists_the_missing_in_order(
    store: Store,
) -> None:
    read = queries.get_variables(store, "s", ["zz", "n", "var_label_3", "aa"])
    assert {key: v.value for key, v in read.found.items()} == {"n": 5, "var_label_3": "a"}
    assert read.missing == ("zz", "aa")
    assert read.position == 8


def test_get_variables_refuses_more_identifiers_than_the_batch_limit(store: Store) -> None:
    with pytest.raises(LimitExceeded, match="1001 identifiers"):
        queries.get_variables(store, "s", [f"v{i}" for i in range(1001)])


def test_list_variables_matches_a_glob_and_orders_by_name(store: Store) -> None:
    assert [v.name for v in queries.list_variables(store, "s").variables] == ["label", "n"]
    assert [v.name for v in queries.list_variables(store, "s", "l*").variables] == ["label"]
    assert queries.list_variables(store, "s", "", 2).variables[0].name == "n"


@pytest.mark.parametrize(
    ("at", "error"),
    [
        pytest.param(-1, ValidationError, id="negative-position"),
        pytest.param(99, OutOfRange, id="beyond-the-log"),
        pytest.param(datetime(2000, 1, 1), ValidationError, id="naive-datetime"),
        pytest.param(datetime(2000, 1, 1, tzinfo=UTC), SessionNotFound, id="before-the-session"),
    ],
)
def test_session_at_refuses_what_cannot_be_read(
    store: Store, at: queries.At, error: type[Exception]
) -> None:
    with pytest.raises(error):
        queries.session_at(store, "s", at)


def test_get_session_and_list_sessions_give_the_expiry_of_sessions_with_a_ttl(
    store: Store,
) -> None:
    store.execute("t", commands.CreateSession("t", ttl_seconds=60))
    summary = queries.get_session(store, "t")
    assert summary.expires_at is not None
    assert timedelta(0) < summary.expires_at - datetime.now(UTC) <= timedelta(seconds=60)
    assert queries.get_session(store, "s").expires_at is None
    page = queries.list_sessions(store)
    assert [s.state.session_id for s in page.items] == ["s", "t"]
    assert (page.next_token, page.position) == ("", 0)


def test_history_and_events_pages_hold_domain_objects(store: Store) -> None:
    history = queries.variable_history(store, "s", "n", page_size=2)
    assert all(isinstance(c, Change) for c in history.items)
    assert [c.version for c in history.items] == [0, 1]
    assert history.position == 8 and history.next_token
    events = queries.read_events(store, "s", backwards=True, page_size=3)
    assert all(isinstance(e, RecordedEvent) for e in events.items)
    assert [e.position for e in events.items] == [8, 7, 6]


def test_history_of_a_name_that_never_existed_is_variable_not_found(store: Store) -> None:
    with pytest.raises(VariableNotFound):
        queries.variable_history(store, "s", "never")
    with pytest.raises(SessionNotFound):
        queries.variable_history(store, "nobody", "n")


def test_rollback_target_gives_the_value_of_an_earlier_version(store: Store) -> None:
    target = queries.rollback_target(store, "s", "n", 2)
    assert (target.variable.id, target.value) == ("var_n_2", 2)
    with pytest.raises(ValidationError, match="no version 9"):
        queries.rollback_target(store, "s", "n", 9)


# -- wait until applied -----------------------------------------------------------------------


def test_wait_until_applied_returns_at_once_for_a_position_already_served(store: Store) -> None:
    started = time.monotonic()
    queries.wait_until_applied(store, "s", 8, timeout=5)
    assert time.monotonic() - started < 1


def test_wait_until_applied_says_how_far_behind_when_it_times_out(store: Store) -> None:
    with pytest.raises(Unavailable) as behind:
        queries.wait_until_applied(store, "s", 11, timeout=0.05)
    assert behind.value.info == {
        "session_id": "s",
        "position": "11",
        "applied_position": "8",
        "behind": "3",
    }
    assert "3 behind" in str(behind.value)


def test_wait_until_applied_wakes_when_the_position_is_written(store: Store) -> None:
    writer = threading.Timer(0.05, lambda: store.execute("s", commands.SetVariable("s", "n", 9)))
    writer.start()
    try:
        queries.wait_until_applied(store, "s", 9, timeout=10)
    finally:
        writer.join()
    assert queries.get_variable(store, "s", "n").variable.value == 9


# -- stable pages, as properties --------------------------------------------------------------


def _drain(fetch: Callable[[str], queries.Page[T]], between: Callable[[], None]) -> list[T]:
    """Every item of a paged read, calling ``between`` after each page but the last."""
    items: list[T] = []
    token = ""
    while True:
        page = fetch(token)
        items.extend(page.items)
        token = page.next_token
        if not token:
            return items
        between()


_writes = st.lists(
    st.sampled_from(["set", "batch", "delete-and-reregister", "other-variable"]),
    min_size=0,
    max_size=8,
)


def _writer(store: Store, plan: list[str]) -> Callable[[], None]:
    steps = iter(plan)

    def write() -> None:
        step = next(steps, "nothing")
        if step == "nothing":
            return
        if step == "set":
            store.execute("s", commands.SetVariable("s", "n", 7))
        elif step == "batch":
            store.execute("s", commands.SetVariables("s", {"n": 8, "label": "b"}, atomic=True))
        elif step == "delete-and-reregister":
            store.execute("s", commands.DeleteVariable("s", "n"))
            store.execute("s", commands.RegisterVariable("s", "n", "integer", 0))
        else:
            store.execute("s", commands.SetVariable("s", "label", "c"))

    return write


@settings(max_examples=40, deadline=None)
@given(
    plan=_writes,
    lifetimes=st.integers(1, 3),
    size=st.integers(1, 4),
    newest_first=st.booleans(),
    from_version=st.integers(0, 2),
)
def test_history_pages_equal_the_whole_history_at_the_first_page_whatever_is_written_between(
    plan: list[str], lifetimes: int, size: int, newest_first: bool, from_version: int
) -> None:
    with seeded_store() as store:
        for _ in range(lifetimes - 1):  # earlier lifetimes of the name
            store.execute("s", commands.DeleteVariable("s", "n"))
            store.execute("s", commands.RegisterVariable("s", "n", "integer", 0))
            store.execute("s", commands.SetVariable("s", "n", 1))
        kwargs: dict[str, Any] = {"newest_first": newest_first, "from_version": from_version}
        whole = queries.variable_history(store, "s", "n", page_size=1000, **kwargs).items
        paged = _drain(
            lambda token: queries.variable_history(
                store, "s", "n", page_size=size, page_token=token, **kwargs
            ),
            _writer(store, plan),
        )
    assert paged == list(whole)


@settings(max_examples=40, deadline=None)
@given(
    plan=_writes,
    size=st.integers(1, 4),
    backwards=st.booleans(),
    low=st.integers(0, 4),
    high=st.none() | st.integers(0, 12),
)
def test_event_pages_equal_the_whole_range_at_the_first_page_whatever_is_written_between(
    plan: list[str], size: int, backwards: bool, low: int, high: int | None
) -> None:
    with seeded_store() as store:
        kwargs: dict[str, Any] = {"from_position": low, "to_position": high, "backwards": backwards}
        whole = queries.read_events(store, "s", page_size=1000, **kwargs).items
        paged = _drain(
            lambda token: queries.read_events(
                store, "s", page_size=size, page_token=token, **kwargs
            ),
            _writer(store, plan),
        )
    assert [e.position for e in paged] == [e.position for e in whole]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["v", "q", "l", "e", "k", "x"]), inner, max_size=5)
    ),
    max_leaves=12,
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


@settings(max_examples=300, deadline=None)
@given(
    token=st.text(max_size=300)
    | st.binary(max_size=200).map(_b64)
    | _json.map(lambda value: _b64(json.dumps(value).encode()))
)
def test_any_token_a_caller_makes_up_is_refused_as_invalid_or_read_as_a_cursor(
    token: str,
) -> None:
    request = paging.fingerprint("events", "s", 0, None, False)
    for decode in (paging.decode_position_token, paging.decode_key_token):
        try:
            decode(request, token)
        except ValidationError as refused:
            assert set(refused.violations) == {"page_token"}


@settings(max_examples=200, deadline=None)
@given(last=_json, end=_json)
def test_a_cursor_with_the_right_fingerprint_holds_int64_positions_or_is_refused(
    last: object, end: object
) -> None:
    request = paging.fingerprint("events", "s", 0, None, False)
    token = _b64(json.dumps({"v": 1, "q": request, "l": last, "e": end}).encode())
    try:
        cursor = paging.decode_position_token(request, token)
    except ValidationError:
        return
    assert cursor is not None
    assert 0 <= cursor.last <= cursor.end + 1 and cursor.end < 2**63
