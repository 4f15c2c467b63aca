"""The client's one retry helper: a request id on every write, retries of UNAVAILABLE,
DEADLINE_EXCEEDED and an unknown commit outcome (reads: UNAVAILABLE only), backoff with
jitter, and a deadline over the whole call.

The decisions are tested as the pure functions and flow they are; the behaviour through a
real varstore server behind a small real gRPC proxy on a free port (tests/proxy.py), which
passes calls on as raw bytes and, as a test tells it, fails a call with UNAVAILABLE before
passing it on, or passes it on and then answers too late (the write landed, the client sees
DEADLINE_EXCEEDED) or with COMMIT_OUTCOME_UNKNOWN. Each such test runs for the sync and
the asyncio client (ids ``[sync]`` and ``[async]``, tests/flavours.py).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from flavours import FLAVOURS, Opened, client_opener, settle
from hypothesis import given
from hypothesis import strategies as st
from proxy import FlakyProxy, proxied
from servers import in_process_server

from varstore.api.server import RunningServer
from varstore.client import (
    AsyncSessionContext,
    CommitOutcomeUnknown,
    DeadlineExceeded,
    SessionContext,
    Unavailable,
    ValidationError,
)
from varstore.client._effects import Blocking, Call, Sleep
from varstore.client._flow import Retry, Runner, next_delay, retried
from varstore.v1 import varstore_pb2 as pb

# -- the decisions ---------------------------------------------------------------------------


def test_the_retry_settings_are_immutable_and_change_by_copy() -> None:
    retry = Retry()
    with pytest.raises(dataclasses.FrozenInstanceError):
        retry.deadline = 1.0  # type: ignore[misc]
    shorter = retry.with_deadline(5.0)
    assert (shorter.deadline, retry.deadline) == (5.0, 60.0)
    assert retry.with_enabled(False).enabled is False and retry.enabled is True
    assert retry.with_delay(initial=1.0).initial == 1.0 and retry.initial == 0.05


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param({}, Retry(), id="default"),
        pytest.param({"retry": False}, Retry(enabled=False), id="off"),
        pytest.param({"retry_deadline": 2}, Retry(deadline=2), id="deadline"),
        pytest.param({"retry": Retry(initial=0.5)}, Retry(initial=0.5), id="settings"),
    ],
)
def test_the_config_keys_make_the_retry_settings(config: dict[str, Any], expected: Retry) -> None:
    assert Retry.from_config(config) == expected


@pytest.mark.parametrize(
    "config",
    [{"retry_deadline": 0}, {"retry_deadline": float("inf")}, {"retry": "yes"}],
    ids=["zero-deadline", "infinite-deadline", "not-a-bool"],
)
def test_unusable_retry_config_is_refused_when_the_context_is_made(config: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError)):
        SessionContext("s", grpc.insecure_channel("127.0.0.1:1"), config)


def test_the_pause_ceiling_grows_exponentially_up_to_the_maximum() -> None:
    retry = Retry(initial=0.1, maximum=1.0, multiplier=2.0)
    assert [retry.ceiling(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert retry.ceiling(10_000) == 1.0


@given(
    attempt=st.integers(1, 200),
    draw=st.floats(0, 1, exclude_max=True),
    left=st.floats(0, 100),
)
def test_a_pause_is_a_jittered_share_of_its_ceiling_and_never_outlasts_the_deadline(
    attempt: int, draw: float, left: float
) -> None:
    retry = Retry()
    pause = next_delay(retry, attempt, Unavailable("down"), write=True, left=left, draw=draw)
    if pause is None:
        assert retry.ceiling(attempt) * draw >= left
    else:
        assert 0 <= pause <= retry.ceiling(attempt) and pause < left


@pytest.mark.parametrize(
    ("error", "write", "retried_"),
    [
        pytest.param(Unavailable("x"), True, True, id="write-unavailable"),
        pytest.param(DeadlineExceeded("x"), True, True, id="write-deadline"),
        pytest.param(CommitOutcomeUnknown("x"), True, True, id="write-unknown-outcome"),
        pytest.param(ValidationError("x"), True, False, id="write-invalid"),
        pytest.param(Unavailable("x"), False, True, id="read-unavailable"),
        pytest.param(DeadlineExceeded("x"), False, False, id="read-deadline"),
        pytest.param(CommitOutcomeUnknown("x"), False, False, id="read-unknown-outcome"),
    ],
)
def test_writes_retry_three_failures_and_reads_only_unavailable(
    error: Exception, write: bool, retried_: bool
) -> None:
    pause = next_delay(Retry(), 1, error, write=write, left=10.0, draw=0.5)
    assert (pause is not None) is retried_
    assert next_delay(Retry(enabled=False), 1, error, write=write, left=10.0, draw=0.5) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _run_failing(
    flow_of: Callable[[FakeClock], Any], failures: list[Exception]
) -> tuple[Runner[Any], list[Any], FakeClock]:
    """Run a retried flow whose calls fail with ``failures`` in turn, then answer "ok";
    returns the runner, every effect it asked for, and the clock (moved by each Sleep)."""
    clock = FakeClock()
    runner: Runner[Any] = Runner(flow_of(clock))
    effects: list[Any] = []
    left = list(failures)
    while not runner.done:
        effect = runner.effect
        effects.append(effect)
        if isinstance(effect, Sleep):
            clock.now += effect.seconds
            runner.send(None)
        elif left:
            runner.throw(left.pop(0))
        else:
            runner.send("ok")
    return runner, effects, clock


def test_a_write_gets_one_request_id_that_every_retry_repeats() -> None:
    request = pb.SetVariableRequest(session_id="s", variable_identifier="x")
    call = Call("SetVariable", request, 5.0)
    runner, effects, _ = _run_failing(
        lambda clock: retried(call, Retry(), clock=clock, draw=lambda: 0.5),
        [Unavailable("down"), DeadlineExceeded("late")],
    )
    calls = [effect for effect in effects if isinstance(effect, Call)]
    assert runner.result == "ok" and len(calls) == 3
    assert len({getattr(c.request, "request_id") for c in calls}) == 1  # noqa: B009
    assert request.request_id
    assert [type(e).__name__ for e in effects] == ["Call", "Sleep", "Call", "Sleep", "Call"]


def test_a_request_id_the_caller_set_is_kept_and_a_read_gets_none() -> None:
    write = pb.DeleteSessionRequest(session_id="s", request_id="mine")
    list(_run_failing(lambda clock: retried(Call("DeleteSession", write, 1.0), Retry()), []))
    read = pb.GetSessionRequest(session_id="s")
    list(_run_failing(lambda clock: retried(Call("GetSession", read, 1.0), Retry()), []))
    assert write.request_id == "mine"
    assert "request_id" not in pb.GetSessionRequest.DESCRIPTOR.fields_by_name


def test_each_attempt_gets_the_calls_timeout_cut_to_the_time_left() -> None:
    call = Call("SetVariable", pb.SetVariableRequest(session_id="s"), 4.0)
    retry = Retry(deadline=5.0, initial=1.0, maximum=1.0)
    _, effects, _ = _run_failing(
        lambda clock: retried(call, retry, clock=clock, draw=lambda: 0.999),
        [Unavailable("1"), Unavailable("2")],
    )
    timeouts = [effect.timeout for effect in effects if isinstance(effect, Call)]
    assert timeouts == pytest.approx([4.0, 4.0, 3.002])  # 5 s, less two pauses of 0.999


def test_at_the_deadline_the_last_error_is_raised() -> None:
    call = Call("SetVariable", pb.SetVariableRequest(session_id="s"), 1.0)
    retry = Retry(deadline=1.0, initial=0.4, maximum=0.4)
    failures: list[Exception] = [Unavailable(f"attempt {n}") for n in range(1, 10)]
    with pytest.raises(Unavailable, match="attempt 3"):
        _run_failing(lambda clock: retried(call, retry, clock=clock, draw=lambda: 0.999), failures)


def test_without_retries_a_write_makes_one_attempt_but_still_has_a_request_id() -> None:
    request = pb.SetVariableRequest(session_id="s")
    with pytest.raises(Unavailable):
        _run_failing(
            lambda clock: retried(Call("SetVariable", request, 1.0), Retry(enabled=False)),
            [Unavailable("down")],
        )
    assert request.request_id


def test_a_blocking_transfer_is_retried_as_the_caller_says() -> None:
    effect = Blocking(print, (), {"request_id": "fork-1"})
    runner, effects, _ = _run_failing(
        lambda clock: retried(effect, Retry(), write=True, clock=clock, draw=lambda: 0.1),
        [DeadlineExceeded("late")],
    )
    assert runner.result == "ok"
    assert [e for e in effects if isinstance(e, Blocking)] == [effect, effect]


# -- a real server behind a flaky proxy ------------------------------------------------------


@pytest.fixture
def backend() -> Iterator[RunningServer]:
    with in_process_server() as running:
        yield running


@pytest.fixture
def proxy(backend: RunningServer) -> Iterator[tuple[FlakyProxy, str]]:
    with proxied(backend.address) as made:
        yield made


@pytest.fixture(params=FLAVOURS)
async def opener(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Opened]]:
    """Connects clients of the flavour the test id names; closes them after."""
    async with client_opener(request.param, {"timeout": 5.0, "retry_deadline": 20.0}) as made:
        yield made


def _ready(backend: RunningServer, session_id: str) -> None:
    """A session with an integer variable ``x`` at version 0, made directly on the store."""
    from varstore.api import commands

    backend.store.execute(session_id, commands.CreateSession(session_id))
    backend.store.execute(session_id, commands.RegisterVariable(session_id, "x", "integer", 0))


def _stamped(backend: RunningServer, session_id: str) -> list[str]:
    """The request ids of the session's events, in order."""
    return [event.request_id for event in backend.store.recorder.read_session(session_id)]


@pytest.mark.parametrize("failures", [1, 3])
async def test_a_write_the_server_is_unavailable_for_lands_exactly_once(
    opener: Callable[..., Opened],
    proxy: tuple[FlakyProxy, str],
    backend: RunningServer,
    failures: int,
) -> None:
    flaky, address = proxy
    _ready(backend, "s")
    flaky.plan("SetVariable", *["unavailable"] * failures)
    ctx = opener(address).session("s")

    assert await settle(ctx.set_variable("x", 7)) == 1

    ids = flaky.request_ids("SetVariable", pb.SetVariableRequest)
    assert len(ids) == failures + 1 and len(set(ids)) == 1 and ids[0]
    assert _stamped(backend, "s") == ["", "", ids[0]]


@pytest.mark.parametrize("outcome", ["late", "unknown"])
async def test_a_write_that_landed_but_whose_answer_was_lost_is_answered_by_its_retry(
    opener: Callable[..., Opened],
    proxy: tuple[FlakyProxy, str],
    backend: RunningServer,
    outcome: str,
) -> None:
    """ "late": DEADLINE_EXCEEDED on a write that did land; "unknown": the server's
    COMMIT_OUTCOME_UNKNOWN. Either way the retry carries the same id and the server
    answers with the first answer: no second event."""
    flaky, address = proxy
    _ready(backend, "s")
    flaky.plan("SetVariable", outcome)
    ctx = opener(address, timeout=0.5).session("s")

    assert await settle(ctx.set_variable("x", 7)) == 1
    assert await settle(ctx.get_variable("x", bypass_cache=True)) == 7

    ids = flaky.request_ids("SetVariable", pb.SetVariableRequest)
    assert len(ids) == 2 and ids[0] == ids[1]
    assert _stamped(backend, "s") == ["", "", ids[0]]


async def test_every_write_method_of_a_context_lands_once_through_failures(
    opener: Callable[..., Opened], proxy: tuple[FlakyProxy, str], backend: RunningServer
) -> None:
    flaky, address = proxy
    for method in (
        "CreateSession",
        "RegisterVariable",
        "SetVariable",
        "SetVariables",
        "RollbackVariable",
        "DeleteVariable",
    ):
        flaky.plan(method, "unavailable", "late")
    ctx = opener(address, timeout=0.5).session("new")  # created on first use

    await settle(ctx.register_variable("x", "integer", 1))
    await settle(ctx.set_variable("x", 2))
    assert await settle(ctx.update_variables({"x": 3})) == {"x": True}
    assert await settle(ctx.rollback_variable("x", 0)) == 3
    await settle(ctx.delete_variable("x"))

    types = [event.type for event in backend.store.recorder.read_session("new")]
    assert types == [
        "SessionCreated",
        "VariableRegistered",
        "VariableUpdated",
        "BatchApplied",
        "VariableUpdated",
        "VariableDeleted",
    ]
    assert all(_stamped(backend, "new"))


async def test_a_client_creates_forks_imports_and_deletes_once_through_late_answers(
    opener: Callable[..., Opened],
    proxy: tuple[FlakyProxy, str],
    backend: RunningServer,
    tmp_path: Path,
) -> None:
    flaky, address = proxy
    client = opener(address, timeout=0.5)
    flaky.plan("CreateSession", "late")
    made = await settle(client.create_session(metadata={"who": "retry"}))  # generated id
    await settle(made.register_variable("x", "integer", 1))
    flaky.plan("ForkSession", "late")
    forked = await settle(client.fork_session(made.session_id))
    export = tmp_path / "made.jsonl"
    flaky.plan("ExportSession", "unavailable")
    await settle(client.export_session(made.session_id, export))
    flaky.plan("ImportSession", "late")
    imported = await settle(client.import_session(export, session_id="copy", timeout=0.5))
    flaky.plan("DeleteSession", "late")
    await settle(client.delete_session(made.session_id))

    live = sorted(state.session_id for state in backend.store.sessions())
    assert live == sorted([forked.session_id, imported.session_id])
    assert backend.store.published(made.session_id) is not None  # deleted once, not twice
    assert [e.type for e in backend.store.recorder.read_session(made.session_id)][-1] == (
        "SessionDeleted"
    )
    assert len(flaky.requests["ExportSession"]) == 2
    for method, message in (
        ("CreateSession", pb.CreateSessionRequest),
        ("ForkSession", pb.ForkSessionRequest),
        ("ImportSession", pb.ImportSessionRequest),
        ("DeleteSession", pb.DeleteSessionRequest),
    ):
        ids = flaky.request_ids(method, message)
        assert len(ids) == 2 and ids[0] == ids[1] != "", method


async def test_a_read_is_retried_after_unavailable_but_not_after_its_deadline(
    opener: Callable[..., Opened], proxy: tuple[FlakyProxy, str], backend: RunningServer
) -> None:
    flaky, address = proxy
    _ready(backend, "s")
    ctx = opener(address, timeout=0.5).session("s")
    flaky.plan("GetVariable", "unavailable", "unavailable")
    assert await settle(ctx.get_variable("x")) == 0
    assert len(flaky.requests["GetVariable"]) == 3

    flaky.plan("GetVariable", "late")
    with pytest.raises(DeadlineExceeded):
        await settle(ctx.get_variable("x", bypass_cache=True))
    assert len(flaky.requests["GetVariable"]) == 4


async def test_with_retry_off_a_failure_is_raised_after_one_attempt(
    opener: Callable[..., Opened], proxy: tuple[FlakyProxy, str], backend: RunningServer
) -> None:
    flaky, address = proxy
    _ready(backend, "s")
    flaky.plan("SetVariable", "unavailable")
    ctx = opener(address, retry=False).session("s")

    with pytest.raises(Unavailable):
        await settle(ctx.set_variable("x", 1))
    assert len(flaky.requests["SetVariable"]) == 1
    assert _stamped(backend, "s") == ["", ""]


async def test_a_server_that_stays_unavailable_fails_the_call_at_its_deadline(
    opener: Callable[..., Opened], proxy: tuple[FlakyProxy, str], backend: RunningServer
) -> None:
    flaky, address = proxy
    _ready(backend, "s")
    flaky.plan("SetVariable", *["unavailable"] * 1000)
    ctx = opener(address, retry_deadline=0.5).session("s")
    started = time.monotonic()

    with pytest.raises(Unavailable):
        await settle(ctx.set_variable("x", 1))

    assert time.monotonic() - started < 10  # bounded by the deadline, not by attempts
    assert len(flaky.requests["SetVariable"]) > 1
    assert _stamped(backend, "s") == ["", ""]


def test_a_context_on_its_own_channel_takes_the_retry_config(
    proxy: tuple[FlakyProxy, str], backend: RunningServer
) -> None:
    flaky, address = proxy
    _ready(backend, "s")
    flaky.plan("SetVariable", "unavailable")
    with grpc.insecure_channel(address) as channel:
        ctx = SessionContext("s", channel, {"retry_deadline": 10})
        assert ctx.set_variable("x", 5) == 1
    assert len(flaky.requests["SetVariable"]) == 2


async def test_an_async_context_on_its_own_channel_takes_the_retry_config(
    proxy: tuple[FlakyProxy, str], backend: RunningServer
) -> None:
    flaky, address = proxy
    _ready(backend, "s")
    flaky.plan("SetVariable", "unavailable")
    async with grpc.aio.insecure_channel(address) as channel:
        ctx = AsyncSessionContext("s", channel, {"retry_deadline": 10})
        assert await ctx.set_variable("x", 5) == 1
    assert len(flaky.requests["SetVariable"]) == 2
