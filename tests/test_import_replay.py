"""An import replays each event through the deciders of the live commands: it accepts
every log live calls can write (forks, rollbacks, expiry, re-created ids included) and
refuses an edited event with the reason text the live call gives; against real servers."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import hypothesis
import pytest
from _support import edited_events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_transfer import export, fresh, import_events, make_origin, read_log, without_ids

from varstore.api import commands
from varstore.api.server import RunningServer
from varstore.types import to_proto
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

Stub = pb_grpc.VariableStoreStub
Change = Callable[[pb.Event], Any]


def exported(stub: Stub, session_id: str) -> list[pb.Event]:
    return [event for chunk in export(stub, session_id) for event in chunk.events]


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error: Any = caught.value
    return error.code(), error.details()


def expire(server: RunningServer, session_id: str) -> None:
    """What the TTL sweeper does to a session whose time ran out."""
    server.store.execute(session_id, commands.ExpireSession(session_id, lambda state: True))


def assert_round_trip(stub: Stub, session_id: str) -> str:
    """Export ``session_id``, import it into a new id: the same log and the same state."""
    events = exported(stub, session_id)
    copy = fresh("copy")
    response = import_events(stub, events, copy, chunk=4)
    assert response.header.position == len(events)
    assert without_ids(read_log(stub, copy)) == without_ids(events)
    assert variables(stub, copy) == variables(stub, session_id)
    return copy


def variables(stub: Stub, session_id: str) -> list[pb.Variable] | str:
    """A session's variables (with their ids, versions and times), or how it ended."""
    try:
        return list(stub.ListVariables(pb.ListVariablesRequest(session_id=session_id)).variables)
    except grpc.RpcError as error:
        return str(error.code())


# -- any log live calls write imports as it is ------------------------------------------------

NAMES = ("a", "b", "c")
numbers = st.one_of(st.integers(-2, 2), st.integers(-2, 2).map(float), st.floats(-2, 2))
values = st.one_of(numbers, numbers, st.sampled_from(["", "x", "yy", "zzz"]), st.booleans())
#: A value for a set: (number, string, boolean, whether to take the one that fits the
#: variable's type); the call picks when it knows the type, so most writes are accepted.
candidates = st.tuples(
    numbers,
    st.sampled_from(["", "x", "yy", "zzz"]),
    st.booleans(),
    st.sampled_from([True, True, True, False]),
)
reasons = st.dictionaries(st.sampled_from(["why", "who"]), st.text("ab", max_size=2), max_size=2)
#: Constraints of every kind (some do not fit the type: a refusal).
RULES = st.sampled_from(
    [pb.Constraints(), pb.Constraints(min=-1, max=2), pb.Constraints(max_length=2)]
)
#: (initial value, constraints) that mostly fit each type.
FITTING: dict[str, st.SearchStrategy[tuple[Any, pb.Constraints]]] = {
    "float": st.tuples(numbers, st.sampled_from([pb.Constraints(), pb.Constraints(min=-1, max=2)])),
    "integer": st.tuples(
        st.integers(-2, 2), st.sampled_from([pb.Constraints(), pb.Constraints(min=-1, max=2)])
    ),
    "string": st.tuples(
        st.sampled_from(["", "x", "yy"]),
        st.sampled_from([pb.Constraints(), pb.Constraints(max_length=2)]),
    ),
    "boolean": st.tuples(st.booleans(), st.just(pb.Constraints())),
}
#: Every kind of live call, weighted towards the writes that keep a session busy.
KINDS = (
    ["register"] * 4 + ["set"] * 6 + ["batch"] * 3 + ["rollback"] * 3
    + ["delete", "drop", "expire", "create", "fork"]
)  # fmt: skip


@st.composite
def a_step(draw: st.DrawFn) -> tuple[str, Any]:
    """One live call: (kind, arguments)."""
    kind = draw(st.sampled_from(KINDS))
    name = draw(st.sampled_from(NAMES))
    if kind == "register":
        type_name = draw(st.sampled_from(["float", "float", "float", *sorted(FITTING)]))
        value, rules = draw(
            st.one_of(FITTING[type_name], FITTING[type_name], st.tuples(values, RULES))
        )
        return kind, (name, type_name, value, rules, draw(reasons))
    if kind == "set":
        return kind, (name, draw(candidates), draw(reasons))
    if kind == "batch":
        names = st.sampled_from(["a", "b", *NAMES])  # mostly the two registered at first
        updates = draw(st.dictionaries(names, candidates, min_size=1, max_size=3))
        return kind, (updates, draw(st.sampled_from([True, True, False])))
    if kind == "rollback":
        return kind, (name, draw(st.integers(0, 2)))
    if kind == "create":
        return kind, (draw(st.sampled_from([0, 600])), draw(reasons))
    if kind in ("drop", "expire"):  # and, mostly, created again at once
        return kind, (draw(st.sampled_from([True, True, True, False])),)
    return kind, (name,)


def value_for(stub: Stub, session_id: str, name: str, candidate: tuple[Any, ...]) -> pb.Value:
    """The candidate's value that fits the variable's type, or (when it says so, or the
    variable is not there) its number."""
    number, text, boolean, fit = candidate
    kind = ""
    if fit:
        with contextlib.suppress(grpc.RpcError):
            kind = stub.GetVariable(
                pb.GetVariableRequest(session_id=session_id, variable_identifier=name)
            ).variable.type
    chosen = {"string": text, "boolean": boolean, "integer": round(number)}.get(kind, number)
    return to_proto(chosen)


def take(stub: Stub, server: RunningServer, session_id: str, step: tuple[str, Any]) -> str:
    """Make the live call (a refusal is fine: it writes nothing); the session to go on
    with (a fork goes on in the fork)."""
    kind, args = step
    calls: dict[str, Callable[[], Any]] = {
        "register": lambda: stub.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id=session_id,
                name=args[0],
                type=args[1],
                initial_value=to_proto(args[2]),
                constraints=args[3],
                metadata=args[4],
            )
        ),
        "set": lambda: stub.SetVariable(
            pb.SetVariableRequest(
                session_id=session_id,
                variable_identifier=args[0],
                value=value_for(stub, session_id, args[0], args[1]),
                metadata=args[2],
            )
        ),
        "batch": lambda: stub.SetVariables(
            pb.SetVariablesRequest(
                session_id=session_id,
                updates={
                    name: value_for(stub, session_id, name, candidate)
                    for name, candidate in args[0].items()
                },
                atomic=args[1],
            )
        ),
        "rollback": lambda: stub.RollbackVariable(
            pb.RollbackVariableRequest(
                session_id=session_id, variable_identifier=args[0], to_version=args[1]
            )
        ),
        "delete": lambda: stub.DeleteVariable(
            pb.DeleteVariableRequest(session_id=session_id, variable_identifier=args[0])
        ),
        "drop": lambda: stub.DeleteSession(pb.DeleteSessionRequest(session_id=session_id)),
        "expire": lambda: expire(server, session_id),
        "create": lambda: stub.CreateSession(
            pb.CreateSessionRequest(session_id=session_id, ttl_seconds=args[0], metadata=args[1])
        ),
    }
    if kind == "fork":
        fork_id = fresh("fork")
        try:
            stub.ForkSession(pb.ForkSessionRequest(session_id=session_id, new_session_id=fork_id))
        except grpc.RpcError:
            return session_id  # not live now: nothing to fork
        return fork_id
    with contextlib.suppress(grpc.RpcError):
        calls[kind]()
    if kind in ("drop", "expire") and args[0]:
        with contextlib.suppress(grpc.RpcError):
            stub.CreateSession(pb.CreateSessionRequest(session_id=session_id))
    return session_id


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(a_step(), min_size=3, max_size=25))
def test_any_log_live_calls_write_imports_into_a_new_id_as_the_same_log_and_state(
    server: RunningServer, stub: Stub, steps: list[tuple[str, Any]]
) -> None:
    session_id = fresh("live")
    stub.CreateSession(pb.CreateSessionRequest(session_id=session_id, metadata={"k": "v"}))
    take(stub, server, session_id, ("register", ("a", "float", 0.5, pb.Constraints(max=2), {})))
    take(stub, server, session_id, ("register", ("b", "integer", 1, pb.Constraints(), {})))
    for step in steps:
        session_id = take(stub, server, session_id, step)
    log = read_log(stub, session_id)
    for kind in sorted({describe_event(message) for message in log}):
        hypothesis.event(kind)  # the statistics show which kinds the examples reached
    assert_round_trip(stub, session_id)


def describe_event(message: pb.Event) -> str:
    if message.HasField("variable_updated") and message.variable_updated.HasField(
        "rollback_to_version"
    ):
        return "rollback"
    if message.HasField("session_deleted"):
        return f"SessionDeleted({message.session_deleted.reason})"
    return message.type


def test_an_expired_session_imports_as_expired(stub: Stub, server: RunningServer) -> None:
    origin = fresh("expiring")
    make_origin(stub, origin)
    expire(server, origin)
    copy = assert_round_trip(stub, origin)
    last = read_log(stub, copy)[-1]
    assert (last.type, last.session_deleted.reason) == ("SessionDeleted", "expired")
    code, _ = refusal(lambda: stub.GetSession(pb.GetSessionRequest(session_id=copy)))
    assert code == grpc.StatusCode.NOT_FOUND


def test_a_session_created_again_after_its_deletion_imports(stub: Stub) -> None:
    origin = fresh("again")
    make_origin(stub, origin)
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=origin))
    stub.CreateSession(pb.CreateSessionRequest(session_id=origin, ttl_seconds=60))
    stub.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id=origin, name="temperature", type="integer", initial_value=to_proto(4)
        )
    )
    copy = assert_round_trip(stub, origin)
    got = stub.GetVariable(
        pb.GetVariableRequest(session_id=copy, variable_identifier="temperature")
    )
    assert (got.variable.id, got.variable.value.integer_value) == ("var_temperature_10", 4)


def test_a_fork_of_a_fork_imports(stub: Stub) -> None:
    origin, first, second = fresh("origin"), fresh("fork"), fresh("fork")
    make_origin(stub, origin)
    stub.ForkSession(pb.ForkSessionRequest(session_id=origin, at_position=3, new_session_id=first))
    stub.SetVariable(
        pb.SetVariableRequest(session_id=first, variable_identifier="model", value=to_proto("big"))
    )
    stub.ForkSession(pb.ForkSessionRequest(session_id=first, new_session_id=second))
    assert [e.type for e in read_log(stub, second)].count("SessionForked") == 2
    assert_round_trip(stub, second)


def test_a_value_is_coerced_to_its_variable_type_as_a_live_write_coerces_it(stub: Stub) -> None:
    origin = fresh("origin")
    make_origin(stub, origin)
    events = edited_events(
        exported(stub, origin), 4, lambda e: e.variable_updated.value.CopyFrom(to_proto(1))
    )
    copy = fresh("coerced")
    import_events(stub, events, copy)
    assert read_log(stub, copy)[3].variable_updated.value == pb.Value(float_value=1.0)


# -- an edited event is refused with the live call's reason --------------------------------------


def _too_many() -> dict[str, str]:
    return {f"k{index}": "v" for index in range(65)}


def _live_set(
    value: pb.Value, metadata: dict[str, str] | None = None
) -> Callable[[Stub, str], Any]:
    def call(stub: Stub, session_id: str) -> Any:
        return stub.SetVariable(
            pb.SetVariableRequest(
                session_id=session_id,
                variable_identifier="temperature",
                value=value,
                metadata=metadata or {},
            )
        )

    return call


def _live_create(**fields: Any) -> Callable[[Stub, str], Any]:
    def call(stub: Stub, session_id: str) -> Any:
        return stub.CreateSession(pb.CreateSessionRequest(session_id=fresh("live"), **fields))

    return call


def _live_register(name: str, value: pb.Value, kind: str = "float") -> Callable[[Stub, str], Any]:
    def call(stub: Stub, session_id: str) -> Any:
        return stub.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id=session_id, name=name, type=kind, initial_value=value
            )
        )

    return call


def _live_batch(stub: Stub, session_id: str) -> Any:
    return stub.SetVariables(
        pb.SetVariablesRequest(
            session_id=session_id,
            updates={"var_temperature_2": to_proto(5.0), "var_model_3": to_proto("big")},
            atomic=True,
        )
    )


def _live_rollback(stub: Stub, session_id: str) -> Any:
    return stub.RollbackVariable(
        pb.RollbackVariableRequest(
            session_id=session_id, variable_identifier="temperature", to_version=2
        )
    )


def _renamed(event: pb.Event) -> None:
    event.variable_registered.name = "bad name"
    event.variable_registered.variable_id = "var_bad name_2"


def _batch_value(event: pb.Event) -> None:
    for item in event.batch_applied.updates:
        if item.variable_id == "var_temperature_2":
            item.value.CopyFrom(to_proto(5.0))


# name: (position edited, the edit, the live call that asks for the same thing)
CASES: dict[str, tuple[int, Change, Callable[[Stub, str], Any]]] = {
    "a value outside the constraints": (
        4,
        lambda e: e.variable_updated.value.CopyFrom(to_proto(5.0)),
        _live_set(to_proto(5.0)),
    ),
    "a value of another type": (
        4,
        lambda e: e.variable_updated.value.CopyFrom(to_proto("hot")),
        _live_set(to_proto("hot")),
    ),
    "a bad variable name": (2, _renamed, _live_register("bad name", to_proto(0.5))),
    "a string over the size limit": (
        3,
        lambda e: e.variable_registered.value.CopyFrom(to_proto("x" * ((1 << 20) + 1))),
        _live_register("model", to_proto("x" * ((1 << 20) + 1)), "string"),
    ),
    "too many metadata entries": (
        4,
        lambda e: (e.metadata.clear(), e.metadata.update(_too_many())),
        _live_set(to_proto(1.0), _too_many()),
    ),
    "a metadata entry over the size limit": (
        4,
        lambda e: e.metadata.update({"why": "x" * 5000}),
        _live_set(to_proto(1.0), {"why": "x" * 5000}),
    ),
    "too many session metadata entries": (
        1,
        lambda e: (
            e.session_created.metadata.clear(),
            e.session_created.metadata.update(_too_many()),
        ),
        _live_create(metadata=_too_many()),
    ),
    "a negative time to live": (
        1,
        lambda e: setattr(e.session_created, "ttl_seconds", -1),
        _live_create(ttl_seconds=-1),
    ),
    "an atomic batch with a value outside the constraints": (5, _batch_value, _live_batch),
    "a rollback to the current version": (
        7,
        lambda e: setattr(e.variable_updated, "rollback_to_version", 2),
        _live_rollback,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_edited_event_is_refused_with_the_reason_the_live_call_gives(
    stub: Stub, server: RunningServer, case: str
) -> None:
    position, change, live_call = CASES[case]
    origin = fresh("origin")
    make_origin(stub, origin)
    # The live call runs on the session as it stood before the edited event.
    before = fresh("before")
    if position > 1:
        stub.ForkSession(
            pb.ForkSessionRequest(
                session_id=origin, at_position=position - 1, new_session_id=before
            )
        )
    live_code, live_reason = refusal(lambda: live_call(stub, before))
    events = edited_events(exported(stub, origin), position, change)
    target = fresh("edited")
    code, reason = refusal(lambda: import_events(stub, events, target))
    assert reason.startswith(f"import refused: event at position {position} ")
    assert reason.endswith(f": {live_reason}")
    expected = (
        grpc.StatusCode.RESOURCE_EXHAUSTED
        if live_code == grpc.StatusCode.RESOURCE_EXHAUSTED
        else grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (live_code, code) == (expected, expected)
    assert server.store.published(target) is None


# -- what only an edited log can get wrong --------------------------------------------------------

MISMATCHES: dict[str, tuple[int, Change, str]] = {
    "a deletion for a reason no call gives": (
        8,
        lambda e: setattr(e.session_deleted, "reason", "vanished"),
        "reason is 'vanished', where the live command records 'deleted'",
    ),
    "a rollback with a value the variable never had at that version": (
        7,
        lambda e: e.variable_updated.value.CopyFrom(to_proto(1.75)),
        "value is 1.75, where the live command records 0.5",
    ),
    "a variable named where its id belongs": (
        4,
        lambda e: setattr(e.variable_updated, "variable_id", "temperature"),
        "variable_id is 'temperature', where the live command records 'var_temperature_2'",
    ),
    "a variable changed twice in one batch": (
        5,
        lambda e: e.batch_applied.updates.add(variable_id="var_model_3", value=to_proto("big")),
        "variable 'var_model_3' changes twice in one batch",
    ),
    "an event after the session's deletion": (
        9,
        lambda e: None,
        "outside a live session",
    ),
    "an event metadata over the limit on a creation": (
        1,
        lambda e: e.metadata.update(_too_many()),
        "metadata has 65 entries; the limit is 64",
    ),
}


def _deleted_then_written(stub: Stub) -> list[pb.Event]:
    """The origin's log, deleted at 8, with a write at 9 copied from position 4."""
    origin = fresh("origin")
    make_origin(stub, origin)
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=origin))
    events = exported(stub, origin)
    late = pb.Event()
    late.CopyFrom(events[3])
    late.position = 9
    late.recorded_at.CopyFrom(events[-1].recorded_at)
    return [*events, late]


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_an_event_the_live_command_would_not_record_is_refused(
    stub: Stub, server: RunningServer, case: str
) -> None:
    position, change, words = MISMATCHES[case]
    events = edited_events(_deleted_then_written(stub), position, change)
    target = fresh("mismatch")
    code, reason = refusal(lambda: import_events(stub, events, target))
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert reason.startswith(f"import refused: event at position {position} "), reason
    assert words in reason
    assert server.store.published(target) is None


def test_a_fork_marker_with_nothing_copied_before_it_is_refused(stub: Stub) -> None:
    marker = pb.Event(session_id="x", position=1, type="SessionForked", schema_version=1)
    marker.recorded_at.GetCurrentTime()
    marker.session_forked.MergeFrom(pb.SessionForked(origin_session_id="o", origin_position=0))
    code, reason = refusal(lambda: import_events(stub, [marker], fresh("lonely")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "position 1 (SessionForked)" in reason
    assert "outside a live session" in reason


# -- a cancelled import ----------------------------------------------------------------------------


class _FileWentBad(Exception):
    """Raised by a request stream that stops half way."""


def test_an_import_cancelled_after_part_of_the_stream_writes_nothing(
    stub: Stub, server: RunningServer
) -> None:
    # As the client does when its file goes bad half way: send part, then cancel while the
    # server waits for more, and never end the stream.
    origin = fresh("origin")
    make_origin(stub, origin)
    events = exported(stub, origin)
    targets = [fresh("cancelled") for _ in range(10)]
    for target in targets:
        started = threading.Event()
        calls: list[Any] = []

        def requests(
            target: str = target, started: threading.Event = started, calls: list[Any] = calls
        ) -> Iterator[pb.ImportSessionRequest]:
            yield pb.ImportSessionRequest(session_id=target, events=events[:4])
            yield pb.ImportSessionRequest(events=events[4:6])
            started.wait()
            time.sleep(0.05)  # the server has read both and waits for the next
            calls[0].cancel()
            # Never end the stream as if it were complete: a client whose file went bad
            # stops mid-stream (had it ended the stream first, the import was whole and the
            # server rightly committed it; that race is the test's, not the server's).
            raise _FileWentBad

        call = stub.ImportSession.future(requests())
        calls.append(call)
        started.set()
        with pytest.raises(grpc.FutureCancelledError):
            call.result(timeout=10)
    time.sleep(1.0)  # let every handler finish what it would do
    assert [t for t in targets if server.store.published(t) is not None] == []
