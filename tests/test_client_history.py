"""The client's view of the past: history(), at() and rollback_variable(), both flavours."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from servers import in_process_server

from varstore.api.server import RunningServer
from varstore.client import (
    AsyncSessionContext,
    OutOfRange,
    SessionContext,
    SessionNotFound,
    ValidationError,
    aconnect,
)


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with in_process_server() as running:
        yield running


_count = iter(range(1, 10**6))


@pytest.fixture
def ctx(server: RunningServer) -> Iterator[SessionContext]:
    channel = grpc.insecure_channel(server.address)
    yield SessionContext(f"ch{next(_count)}", channel)
    channel.close()


def test_history_lists_versions_with_previous_values_and_reasons(ctx: SessionContext) -> None:
    ctx.register_variable("t", "float", 0.5)
    ctx.set_variable("t", 0.7, metadata={"reason": "warmer"})
    ctx.update_variables({"t": 0.9})
    changes = ctx.history("t")
    assert [(c.version, c.value, c.previous_value) for c in changes] == [
        (0, 0.5, None),
        (1, 0.7, 0.5),
        (2, 0.9, 0.7),
    ]
    assert changes[1].metadata["reason"] == "warmer"
    assert changes[1].source == "python"
    assert [c.in_batch for c in changes] == [False, False, True]
    assert [c.version for c in ctx.history("t", newest_first=True)] == [2, 1, 0]


def test_at_reads_the_session_as_it_stood(ctx: SessionContext) -> None:
    ctx.register_variable("n", "integer", 1)
    ctx.set_variable("n", 2)
    time.sleep(0.01)
    moment = datetime.now(UTC)
    time.sleep(0.01)
    ctx.set_variable("n", 3)
    assert ctx.at(2).get_variable("n") == 1
    assert ctx.at(3).get_variables(["n", "zz"], defaults={"zz": 0}) == {"n": 2, "zz": 0}
    assert ctx.at(moment).get_variable("n") == 2
    assert [v.value for v in ctx.at(1).list_variables()] == []
    assert ctx.at(1).get_variable("n", default=None) is None
    with pytest.raises(OutOfRange):
        ctx.at(99).get_variable("n")
    with pytest.raises(SessionNotFound):
        ctx.at(datetime(2000, 1, 1, tzinfo=UTC)).get_variable("n")


def test_rollback_restores_an_earlier_value_and_the_cache_sees_it(ctx: SessionContext) -> None:
    ctx.register_variable("n", "integer", 1)
    ctx.set_variable("n", 2)
    assert ctx.get_variable("n") == 2  # cached
    assert ctx.rollback_variable("n", 0, metadata={"reason": "revert"}) == 2
    assert ctx.get_variable("n") == 1
    last = ctx.history("n")[-1]
    assert (last.kind, last.rollback_to_version, last.value) == ("rolled_back", 0, 1)
    with pytest.raises(ValidationError):
        ctx.rollback_variable("n", 5)


async def test_the_async_context_offers_the_same(server: RunningServer) -> None:
    channel = grpc.aio.insecure_channel(server.address)
    actx = AsyncSessionContext(f"ach{next(_count)}", channel)
    await actx.register_variable("n", "integer", 1)
    await actx.set_variable("n", 2)
    assert [c.value for c in await actx.history("n")] == [1, 2]
    assert await actx.at(2).get_variable("n") == 1
    assert await actx.rollback_variable("n", 0) == 2
    assert await actx.get_variable("n") == 1
    await channel.close()


def test_read_events_returns_the_log_in_the_export_format(ctx: SessionContext) -> None:
    ctx.register_variable("n", "integer", 1)
    ctx.update_variables({"n": 2})
    events = ctx.read_events()
    assert [e["type"] for e in events] == ["SessionCreated", "VariableRegistered", "BatchApplied"]
    assert events[2]["payload"]["updates"][0]["value"] == 2
    assert [e["position"] for e in ctx.read_events(backwards=True, limit=2)] == [3, 2]


async def test_the_async_context_reads_events_too(server: RunningServer) -> None:
    channel = grpc.aio.insecure_channel(server.address)
    actx = AsyncSessionContext(f"ach{next(_count)}", channel)
    await actx.register_variable("n", "integer", 1)
    assert [e["position"] for e in await actx.read_events(from_position=2)] == [2]
    await channel.close()


async def test_the_async_client_forks_exports_and_imports(
    server: RunningServer, tmp_path: Path
) -> None:
    async with aconnect(server.address) as client:
        origin = await client.create_session(f"aorigin{next(_count)}")
        await origin.register_variable("n", "integer", 1)
        await origin.set_variable("n", 2)
        fork = await client.fork_session(origin.session_id, at_position=2)
        assert await fork.get_variable("n") == 1
        exported = tmp_path / "origin.jsonl"
        await client.export_session(origin.session_id, exported)
        copy = await client.import_session(exported, f"acopy{next(_count)}")
        assert await copy.get_variable("n") == 2
        assert [c.value for c in await copy.history("n")] == [1, 2]
