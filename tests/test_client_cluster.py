"""The Python client on several servers sharing one PostgreSQL log: addresses (a list, a
comma-separated string, one DNS name), read-your-writes on any server (``min_position``
from the client's record of the positions it has seen), failover when a server is
SIGKILLed, and watches that resume on another server with no gap and no repeat.

The servers are ``varstore serve --db postgresql://...`` child processes on one schema made
for the test (dropped after; tests/cluster.py). The mechanism (what the record holds, what
each request carries) is checked as the pure code it is and on the wire through a recording
proxy (tests/proxy.py); the property end to end through round robin, sync and asyncio alike.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster
from flavours import FLAVOURS, Opened, client_opener, settle
from hypothesis import given
from hypothesis import strategies as st
from pki import ADMIN, Pki, serving, tls
from proxy import FlakyProxy, proxied
from servers import ServerProcess, in_process_server

from varstore.api.config import Security
from varstore.api.server import RunningServer
from varstore.client import (
    AsyncClient,
    Unavailable,
    WatchStream,
    WatchUpdate,
    aconnect,
    connect,
)
from varstore.client._channels import ChannelSecurity, address_text, open_channel, target_of
from varstore.client._effects import Call, Emit, Open, Sleep
from varstore.client._flow import Retry, Runner, retried
from varstore.client._positions import SeenPositions
from varstore.client._watch import WatchPosition, watch_flow
from varstore.v1 import varstore_pb2 as pb

_ids = itertools.count(1)
#: Client settings for the cluster tests: short calls, a deadline far past any failover.
CONFIG = {"timeout": 10.0, "retry_deadline": 30.0}
#: A generous liveness bound (seconds) for one call across a failover; the target is ~2 s.
FAILOVER_BOUND = 15.0


# -- real servers and clients ----------------------------------------------------------------


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """``varstore serve`` processes on a schema of their own (tests/cluster.py)."""
    with Cluster.opened() as made:
        yield made


def addresses(servers: list[ServerProcess]) -> list[str]:
    """Where ``servers`` listen, in order."""
    return [server.address for server in servers]


@pytest.fixture(params=FLAVOURS)
async def opener(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Opened]]:
    """Connects clients of the flavour the test id names; closes them after."""
    async with client_opener(request.param, CONFIG) as made:
        yield made


def closed_port_address() -> str:
    """A loopback address nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


# -- addresses --------------------------------------------------------------------------------


def test_addresses_come_as_a_list_or_a_comma_separated_string() -> None:
    assert address_text(["127.0.0.1:1", " 127.0.0.1:2 "]) == "127.0.0.1:1,127.0.0.1:2"
    assert address_text("127.0.0.1:1, 127.0.0.1:2") == "127.0.0.1:1,127.0.0.1:2"
    assert target_of("127.0.0.1:1,127.0.0.1:2").target == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert target_of(["[::1]:1", "127.0.0.1:2"]).target == "ipv6:[::1]:1,[::ffff:7f00:1]:2"
    # One address, or a gRPC target, is gRPC's to resolve (every DNS record).
    assert target_of("localhost:5").target == "localhost:5"
    assert target_of("dns:///localhost:5").target == "dns:///localhost:5"
    assert target_of("ipv4:127.0.0.1:1,127.0.0.1:2").target == "ipv4:127.0.0.1:1,127.0.0.1:2"
    # A name in a list is resolved now; the authority (and TLS name) is the first one's.
    named = target_of(["localhost:7", "127.0.0.1:8"], tls=True)
    assert named.target.startswith(("ipv4:", "ipv6:")) and named.target.endswith(":8")
    assert dict(named.options) == {
        "grpc.default_authority": "localhost:7",
        "grpc.ssl_target_name_override": "localhost",
    }
    for bad in ("127.0.0.1:1,nohost", "127.0.0.1:1,:5", ",", "127.0.0.1:1,dns:///x:1"):
        with pytest.raises(ValueError):
            target_of(bad)
    with pytest.raises(ValueError, match="cannot resolve"):
        target_of("127.0.0.1:1,no-such-host.invalid:1")


def test_a_token_goes_without_tls_only_when_every_address_is_loopback() -> None:
    security = ChannelSecurity.of(token="t0ken")
    open_channel(["127.0.0.1:1", "localhost:2", "[::1]:3"], security).close()
    open_channel("ipv4:127.0.0.1:1,127.0.0.2:2", security).close()
    for remote in (
        "127.0.0.1:1,192.0.2.1:2",
        "dns:///example.com:1",
        "ipv4:127.0.0.1:1,10.0.0.1:2",
    ):
        with pytest.raises(ValueError, match="without TLS"):
            open_channel(remote, security)


async def test_tls_to_several_servers_checks_their_certificates_against_the_first_name(
    pki: Pki,
) -> None:
    """Each server's certificate names localhost; the list is resolved to addresses, and
    the name checked is the first address's (grpc.ssl_target_name_override)."""
    security = Security(tls=tls(pki), admin_token=ADMIN)
    with serving(security) as first, serving(security) as second:
        names = [f"localhost:{running.address.rpartition(':')[2]}" for running in (first, second)]
        with connect(names, root_certificates=pki.ca, token=ADMIN) as client:
            for _ in range(6):
                client.create_session()
        async with aconnect(",".join(names), root_certificates=pki.ca, token=ADMIN) as aclient:
            for _ in range(6):
                await aclient.create_session()
        # Round robin: both servers answered, over TLS, with the token.
        assert len(first.store.sessions()) + len(second.store.sessions()) == 12
        assert first.store.sessions() and second.store.sessions()
        with pytest.raises(ValueError, match="without TLS"):
            connect([*names, "192.0.2.1:1"], token=ADMIN)


# -- the record of positions seen -------------------------------------------------------------

_seen_ops = st.lists(st.tuples(st.sampled_from(["a", "b", ""]), st.integers(-3, 50)), max_size=40)


@given(_seen_ops, st.integers(0, 60))
def test_the_record_keeps_the_highest_position_per_session_and_stamps_it(
    ops: list[tuple[str, int]], at_least: int
) -> None:
    seen = SeenPositions()
    model: dict[str, int] = {}
    for session_id, position in ops:
        seen.saw(session_id, position)
        if session_id and position > 0:
            model[session_id] = max(model.get(session_id, 0), position)
    for session_id in ("a", "b"):
        assert seen.position(session_id) == model.get(session_id, 0)
        read = pb.GetVariableRequest(session_id=session_id)
        seen.stamp(read)
        assert read.min_position == model.get(session_id, 0)
        watch = pb.WatchSessionRequest(session_id=session_id)
        seen.stamp(watch, at_least=at_least)
        assert watch.min_position == max(at_least, model.get(session_id, 0))
        write = pb.SetVariableRequest(session_id=session_id)  # no min_position: untouched
        seen.stamp(write)
        assert write == pb.SetVariableRequest(session_id=session_id)


def test_the_record_is_shared_safely_and_bounded() -> None:
    seen = SeenPositions()

    def note(offset: int) -> None:
        for position in range(offset, 5000, 4):
            seen.saw("s", position)
            seen.saw_answer(
                pb.GetVariableResponse(header=pb.ResponseHeader(session_id="t", position=position))
            )

    threads = [threading.Thread(target=note, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (seen.position("s"), seen.position("t")) == (4999, 4999)

    small = SeenPositions(max_sessions=2)
    for session_id in ("x", "y", "z"):
        small.saw(session_id, 1)
    assert [small.position(s) for s in ("x", "y", "z")] == [0, 1, 1]  # the oldest forgotten


def test_every_attempt_asks_for_what_the_client_has_seen_and_records_the_answer() -> None:
    seen = SeenPositions()
    seen.saw("s", 4)
    request = pb.GetVariableRequest(session_id="s", variable_identifier="x")
    run = Runner(retried(Call("GetVariable", request, 5.0), Retry(), seen=seen, draw=lambda: 0.0))
    assert isinstance(run.effect, Call) and run.effect.request is request
    assert request.min_position == 4

    seen.saw("s", 6)  # another call's answer meanwhile
    run.fail(Unavailable("session 's' is served up to position 4, 2 behind"))
    assert isinstance(run.effect, Sleep)
    run.send(None)
    assert isinstance(run.effect, Call) and request.min_position == 6
    run.send(pb.GetVariableResponse(header=pb.ResponseHeader(session_id="s", position=9)))
    assert run.done and seen.position("s") == 9


# -- a watch resumes by itself ----------------------------------------------------------------


def _update(position: int) -> pb.WatchSessionResponse:
    message = pb.WatchSessionResponse()
    message.event.event.position = position
    message.event.event.type = "VariableUpdated"
    return message


def test_a_watch_whose_server_goes_away_resumes_after_what_it_delivered() -> None:
    seen, record = WatchPosition(2), SeenPositions()
    request = pb.WatchSessionRequest(session_id="s", from_position=2, include_initial=True)
    clock = [0.0]
    flow = watch_flow(
        request,
        None,
        seen,
        None,
        Retry().with_deadline(10),
        record,
        clock=lambda: clock[0],
        draw=lambda: 0.5,
    )
    run = Runner(flow)
    assert isinstance(run.effect, Open) and run.effect.request is request
    assert request.min_position == 0
    run.send(None)
    run.send(pb.WatchSessionResponse(initial=pb.WatchInitial(position=2)))
    run.send(None)  # emitted
    run.send(_update(3))
    assert isinstance(run.effect, Emit) and run.effect.item.position == 3
    run.send(None)

    run.fail(Unavailable("Socket closed"))  # the server was killed
    assert isinstance(run.effect, Sleep)
    run.send(None)
    assert isinstance(run.effect, Open) and run.effect.request is request
    assert (request.from_position, request.include_initial, request.min_position) == (3, False, 3)
    assert record.position("s") == 3

    # A server that stays away: the watch gives up once the deadline passes without news.
    for _ in range(3):
        run.fail(Unavailable("down"))
        assert isinstance(run.effect, Sleep)
        clock[0] += 4.0
        run.send(None)
    with pytest.raises(Unavailable):
        run.fail(Unavailable("down"))


def test_a_watch_without_retries_raises_when_its_server_goes_away() -> None:
    request = pb.WatchSessionRequest(session_id="s")
    run = Runner(watch_flow(request, None, WatchPosition(0), None, Retry(enabled=False)))
    run.send(None)
    with pytest.raises(Unavailable):
        run.fail(Unavailable("Socket closed"))


# -- min_position on the wire -----------------------------------------------------------------


@pytest.fixture
def recorded() -> Iterator[tuple[FlakyProxy, str, RunningServer]]:
    """A real server behind a proxy that keeps every request it passes on."""
    with in_process_server() as backend, proxied(backend.address) as (handler, address):
        yield handler, address, backend


async def test_every_read_carries_the_position_the_client_last_saw(
    opener: Callable[..., Opened], recorded: tuple[FlakyProxy, str, RunningServer], tmp_path: Path
) -> None:
    proxy, address, _ = recorded
    client = opener(address)
    writer = client.session("rw")  # every context of the client shares the record
    reader = client.session("rw", {"cache_mode": "watch"})
    await settle(writer.register_variable("x", "integer", 1))  # 1 (created), 2
    await settle(writer.set_variable("x", 2))  # 3
    assert await settle(reader.get_variable("x")) == 2  # min_position 3; starts the watch
    assert await settle(reader.get_variables(["x"], bypass_cache=True)) == {"x": 2}
    await settle(reader.list_variables())
    await settle(reader.history("x"))
    await settle(reader.read_events())
    await settle(reader.at(2).get_variable("x"))
    await settle(client.get_session("rw"))
    await settle(client.export_session("rw", tmp_path / "rw.jsonl"))
    await settle(client.fork_session("rw", new_session_id="rw-fork"))
    stream = reader.watch(from_position=1)
    first = next(stream) if isinstance(stream, WatchStream) else await stream.__anext__()
    assert isinstance(first, WatchUpdate) and first.position == 2
    stream.close()

    def min_positions(method: str, message: Any) -> list[int]:
        return [message.FromString(raw).min_position for raw in proxy.requests[method]]

    for method, message in [
        ("GetVariable", pb.GetVariableRequest),
        ("GetVariables", pb.GetVariablesRequest),
        ("ListVariables", pb.ListVariablesRequest),
        ("GetVariableHistory", pb.GetVariableHistoryRequest),
        ("ReadEvents", pb.ReadEventsRequest),
        ("GetSession", pb.GetSessionRequest),
        ("ExportSession", pb.ExportSessionRequest),
        ("ForkSession", pb.ForkSessionRequest),
    ]:
        assert min_positions(method, message) and set(min_positions(method, message)) == {3}, method
    # Both watches (the reader's and the cache's) ask for a server that has applied 3.
    assert sorted(min_positions("WatchSession", pb.WatchSessionRequest)) == [3, 3]


# -- read-your-writes through round robin -----------------------------------------------------


async def test_each_read_sees_the_write_before_it_on_whichever_server_answers(
    opener: Callable[..., Opened], cluster: Cluster
) -> None:
    servers = addresses(cluster.start(2))
    as_list = opener(servers)
    as_text = opener(",".join(servers))
    assert as_list.address == as_text.address == ",".join(servers)
    for client in (as_list, as_text):
        session_id = f"ryw_{next(_ids)}"
        writer, reader = client.session(session_id), client.session(session_id)
        await settle(writer.register_variable("n", "integer", 0))
        for value in range(1, 41):
            await settle(writer.set_variable("n", value))
            # Another context of the same client, its cache bypassed: a server behind the
            # write waits for it (or answers UNAVAILABLE, retried), never answers stale.
            assert await settle(reader.get_variable("n", bypass_cache=True)) == value
            if value % 10 == 0:
                assert await settle(reader.get_variables(["n"], bypass_cache=True)) == {"n": value}
                assert [v.value for v in await settle(reader.list_variables())] == [value]
                assert len(await settle(reader.history("n"))) == value + 1
                assert (await settle(client.get_session(session_id))).position == value + 2


# -- failover ---------------------------------------------------------------------------------


async def test_writes_and_reads_go_on_when_a_server_is_killed_and_land_once(
    opener: Callable[..., Opened], cluster: Cluster
) -> None:
    servers = cluster.start(3)
    client = opener(addresses(servers))
    session_ids = [f"failover_{next(_ids)}" for _ in range(2)]
    total, kill_after = 120, 40
    acked: dict[str, list[int]] = {sid: [] for sid in session_ids}
    slowest_after_kill = [0.0]
    killed = asyncio.Event() if isinstance(client, AsyncClient) else threading.Event()

    async def write(session_id: str) -> None:
        ctx = client.session(session_id)
        await settle(ctx.register_variable("n", "integer", 0))
        for value in range(1, total + 1):
            started = time.monotonic()
            await settle(ctx.set_variable("n", value))
            acked[session_id].append(value)
            assert await settle(ctx.get_variable("n", bypass_cache=True)) == value
            if killed.is_set():
                slowest_after_kill[0] = max(slowest_after_kill[0], time.monotonic() - started)
            if isinstance(client, AsyncClient):
                await asyncio.sleep(0)

    async def kill_mid_load() -> None:
        while min(len(values) for values in acked.values()) < kill_after:
            await asyncio.sleep(0.01)
        servers[0].kill()
        killed.set()

    if isinstance(client, AsyncClient):
        await asyncio.gather(kill_mid_load(), *(write(sid) for sid in session_ids))
    else:
        with futures.ThreadPoolExecutor(len(session_ids)) as pool:
            writers = [pool.submit(asyncio.run, write(sid)) for sid in session_ids]
            await kill_mid_load()
            for done in writers:
                done.result()

    assert slowest_after_kill[0] < FAILOVER_BOUND
    for session_id in session_ids:
        assert acked[session_id] == list(range(1, total + 1))
        events = await settle(client.session(session_id).read_events())
        written = [e["payload"]["value"] for e in events if e["type"] == "VariableUpdated"]
        assert written == list(range(1, total + 1))  # every acknowledged write once, in order


# -- watches across a killed server ----------------------------------------------------------


async def test_watches_resume_on_another_server_with_no_gap_and_no_repeat(
    opener: Callable[..., Opened], cluster: Cluster
) -> None:
    servers = cluster.start(2)
    client = opener(addresses(servers))
    session_id = f"watch_{next(_ids)}"
    writer = client.session(session_id)
    cached = client.session(session_id, {"cache_mode": "watch", "cache_ttl": 3600.0})
    await settle(writer.register_variable("n", "integer", 0))  # 1, 2
    assert await settle(cached.get_variable("n")) == 0  # the cache's watch starts at 2
    stream = writer.watch(from_position=2, progress_interval=0.2)
    total = 60
    reading = asyncio.ensure_future(_updates_until(stream, total + 2))
    # A rolling SIGKILL: whichever server each watch is on goes away at some point.
    for value in range(1, total + 1):
        await settle(writer.set_variable("n", value))
        if value == total // 3:
            await asyncio.to_thread(servers[0].kill)
            await asyncio.to_thread(cluster.restart, servers[0])
        if value == 2 * total // 3:
            await asyncio.to_thread(servers[1].kill)
    positions = await asyncio.wait_for(reading, FAILOVER_BOUND * 2)
    stream.close()

    assert positions == list(range(3, total + 3))  # no gap, no repeat

    async def cache_caught_up() -> bool:
        return bool(cached.get_cache_stats()["watch_position"] == total + 2)

    deadline = time.monotonic() + FAILOVER_BOUND * 2
    while not await cache_caught_up() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stats = cached.get_cache_stats()
    assert stats["watch_position"] == total + 2
    assert stats["watch_updates"] == total  # each event applied once: no gap, no repeat
    assert stats["watch_reconnects"] >= 1
    assert await settle(cached.get_variable("n")) == total  # kept current by the watch
    await settle(cached.close())


async def _updates_until(stream: Any, last: int) -> list[int]:
    """The positions of the updates a watch stream (sync or async) delivers, until one at
    ``last`` or later arrives."""
    positions: list[int] = []

    def note(item: Any) -> bool:
        if isinstance(item, WatchUpdate):
            positions.append(item.position)
        return bool(item.position >= last)

    if isinstance(stream, Iterator):
        await asyncio.to_thread(lambda: next(item for item in stream if note(item)))
    else:
        async for item in stream:
            if note(item):
                break
    return positions


# -- the command line -------------------------------------------------------------------------


def test_the_cli_takes_a_comma_separated_server_list(cluster: Cluster) -> None:
    [server] = cluster.start(1)
    session_id = f"cli_{next(_ids)}"
    # The first address answers nothing: the command still runs, on the one that does.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "varstore.api.cli",
            "session",
            "create",
            session_id,
            "--json",
            "--server",
            f"{closed_port_address()},{server.address}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["id"] == session_id
