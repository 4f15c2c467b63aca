"""The seed's five Python tests, ported as written (fixture included), against a real
server process on a free port: once for AsyncSessionContext (the seed's asyncio flavour)
and once for the sync SessionContext."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from servers import ServerProcess, start_server_process

from varstore.client import AsyncSessionContext, SessionContext


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server_process(Path(tmp_path_factory.mktemp("seed")) / "varstore.db")
    yield process
    process.terminate()


# -- asyncio, as the seed wrote them -----------------------------------------------------


@pytest.fixture
async def session_context(server: ServerProcess) -> AsyncIterator[AsyncSessionContext]:
    """Create a test session context."""
    channel = grpc.aio.insecure_channel(server.address)
    session_id = f"test_python_{int(time.time() * 1000000)}"

    # Initialize session
    context = AsyncSessionContext(session_id, channel, {"enable_caching": True, "cache_ttl": 1.0})

    # Register some test variables
    await context.register_variable("test_float", "float", 3.14)
    await context.register_variable("test_int", "integer", 42)
    await context.register_variable("test_str", "string", "hello")
    await context.register_variable("test_bool", "boolean", True)

    yield context

    # Cleanup
    await channel.close()


async def test_basic_variable_operations(session_context: AsyncSessionContext) -> None:
    """Test basic get/set operations."""
    value = await session_context.get_variable("test_float")
    assert value == 3.14

    await session_context.set_variable("test_float", 2.718)
    value = await session_context.get_variable("test_float")
    assert value == 2.718

    value = await session_context.get_variable("nonexistent", default=999)
    assert value == 999

    with pytest.raises(KeyError):
        await session_context.get_variable("nonexistent")


async def test_cache_behavior(session_context: AsyncSessionContext) -> None:
    """Test caching functionality."""
    value1 = await session_context.get_variable("test_int")
    assert value1 == 42

    stats = session_context.get_cache_stats()
    assert stats["misses"] == 1
    assert stats["hits"] == 0

    value2 = await session_context.get_variable("test_int")
    assert value2 == 42

    stats = session_context.get_cache_stats()
    assert stats["hits"] == 1

    value3 = await session_context.get_variable("test_int", bypass_cache=True)
    assert value3 == 42

    stats = session_context.get_cache_stats()
    assert stats["misses"] == 2  # Bypass counts as miss


async def test_batch_operations(session_context: AsyncSessionContext) -> None:
    """Test batch get/set operations."""
    values = await session_context.get_variables(
        ["test_float", "test_int", "test_str", "missing"], defaults={"missing": "default_value"}
    )

    assert values["test_float"] == 3.14
    assert values["test_int"] == 42
    assert values["test_str"] == "hello"
    assert values["missing"] == "default_value"

    results = await session_context.update_variables(
        {"test_float": 1.23, "test_int": 100, "test_bool": False}
    )

    assert all(v is True for v in results.values())

    values = await session_context.get_variables(["test_float", "test_int", "test_bool"])
    assert values["test_float"] == 1.23
    assert values["test_int"] == 100
    assert values["test_bool"] is False


async def test_type_safety(session_context: AsyncSessionContext) -> None:
    """Test type conversion and validation."""
    await session_context.register_variable(
        "constrained_int", "integer", 50, constraints={"min": 0, "max": 100}
    )

    await session_context.set_variable("constrained_int", 75)
    value = await session_context.get_variable("constrained_int")
    assert value == 75

    with pytest.raises(ValueError) as exc:
        await session_context.set_variable("constrained_int", 150)
    assert "above maximum" in str(exc.value)


async def test_cache_invalidation(session_context: AsyncSessionContext) -> None:
    """Test cache invalidation."""
    await session_context.get_variable("test_str")
    await session_context.get_variable("test_int")

    stats = session_context.get_cache_stats()
    assert stats["size"] == 2

    session_context.invalidate_cache("test_str")

    value = await session_context.get_variable("test_str")
    assert value == "hello"

    stats = session_context.get_cache_stats()
    assert stats["misses"] > stats["hits"]

    session_context.invalidate_cache()
    stats = session_context.get_cache_stats()
    assert stats["size"] == 0


# -- the same five, synchronous ----------------------------------------------------------


@pytest.fixture
def sync_context(server: ServerProcess) -> Iterator[SessionContext]:
    channel = grpc.insecure_channel(server.address)
    session_id = f"test_python_sync_{int(time.time() * 1000000)}"
    context = SessionContext(session_id, channel, {"enable_caching": True, "cache_ttl": 1.0})
    context.register_variable("test_float", "float", 3.14)
    context.register_variable("test_int", "integer", 42)
    context.register_variable("test_str", "string", "hello")
    context.register_variable("test_bool", "boolean", True)
    yield context
    channel.close()


def test_sync_basic_variable_operations(sync_context: SessionContext) -> None:
    assert sync_context.get_variable("test_float") == 3.14
    sync_context.set_variable("test_float", 2.718)
    assert sync_context.get_variable("test_float") == 2.718
    assert sync_context.get_variable("nonexistent", default=999) == 999
    with pytest.raises(KeyError):
        sync_context.get_variable("nonexistent")


def test_sync_cache_behavior(sync_context: SessionContext) -> None:
    assert sync_context.get_variable("test_int") == 42
    stats = sync_context.get_cache_stats()
    assert (stats["misses"], stats["hits"]) == (1, 0)
    assert sync_context.get_variable("test_int") == 42
    assert sync_context.get_cache_stats()["hits"] == 1
    assert sync_context.get_variable("test_int", bypass_cache=True) == 42
    assert sync_context.get_cache_stats()["misses"] == 2


def test_sync_batch_operations(sync_context: SessionContext) -> None:
    values = sync_context.get_variables(
        ["test_float", "test_int", "test_str", "missing"], defaults={"missing": "default_value"}
    )
    assert values == {
        "test_float": 3.14,
        "test_int": 42,
        "test_str": "hello",
        "missing": "default_value",
    }
    results = sync_context.update_variables(
        {"test_float": 1.23, "test_int": 100, "test_bool": False}
    )
    assert all(v is True for v in results.values())
    values = sync_context.get_variables(["test_float", "test_int", "test_bool"])
    assert values["test_float"] == 1.23
    assert values["test_int"] == 100
    assert values["test_bool"] is False


def test_sync_type_safety(sync_context: SessionContext) -> None:
    sync_context.register_variable(
        "constrained_int", "integer", 50, constraints={"min": 0, "max": 100}
    )
    sync_context.set_variable("constrained_int", 75)
    assert sync_context.get_variable("constrained_int") == 75
    with pytest.raises(ValueError) as exc:
        sync_context.set_variable("constrained_int", 150)
    assert "above maximum" in str(exc.value)


def test_sync_cache_invalidation(sync_context: SessionContext) -> None:
    sync_context.get_variable("test_str")
    sync_context.get_variable("test_int")
    assert sync_context.get_cache_stats()["size"] == 2
    sync_context.invalidate_cache("test_str")
    assert sync_context.get_variable("test_str") == "hello"
    stats = sync_context.get_cache_stats()
    assert stats["misses"] > stats["hits"]
    sync_context.invalidate_cache()
    assert sync_context.get_cache_stats()["size"] == 0
