"""The Python client's reads against what they are built on, measured in the same run.

What it measures
----------------
One ``varstore serve --db :memory: --listen 127.0.0.1:0`` child process (reads never touch
the log, so the in-memory log changes nothing for them) holds one session with 100
integer variables ``v0..v99`` (plus the float ``f``: ``benchlib.set_up_session``, the
session ``bench_grpc`` uses). This process holds one sync channel and one ``grpc.aio`` channel to it; every
stub and client context below shares them, so raw calls and client calls travel the same
HTTP/2 connection. Each row has a reference measured in the same run:

* **in-process reads** (no I/O): a plain ``dict`` lookup (the floor), a
  ``cachetools.TTLCache`` lookup (the reference for cached reads), and the client's cached
  ``get_variable`` on a warm ``SessionContext`` and ``AsyncSessionContext``
  (``cache_ttl=3600``, so nothing expires; the run checks that every timed read was a
  hit). Every one is the same loop, ``for name in v0..v99: get(name)`` with one call of a
  bound callable per read (``dict.__getitem__``, ``TTLCache.__getitem__``,
  ``ctx.get_variable``; ``await actx.get_variable`` for asyncio), so loop and call
  overhead are the same on both sides. One timing sample is one pass of 100 reads;
  per-call figures are the pass's time / 100, so their p99 is a p99 of 100-read means.
* **uncached single reads**: the generated stub's ``GetVariable`` (sync, then
  ``grpc.aio``) against ``get_variable`` on a context with ``enable_caching=False``
  (sync and async), plus sync ``get_variable(bypass_cache=True)`` on a caching context
  (the read still refreshes the cache). One call per sample, all reading ``v0``; the raw
  calls reuse one prebuilt request (``benchlib.make_call``, as ``bench_grpc`` does), the
  client builds its own.
* **100 names**: one raw ``GetVariables`` stub call of ``v0..v99`` against
  ``get_variables`` of the same names, uncached and from a warm cache. One call per sample.

Every timed call runs inside one asyncio event loop (sync calls simply block it; nothing
else runs there), so asyncio rows are awaited without leaving the loop between calls.
Noise is spread evenly: a run has several rounds; in each, every group takes its samples
interleaved, one sample of each row in turn (reference, subject, reference, ...), after
a few warm-up samples per row. Figures pool the rounds; the drift line shows each
reference's p50 round by round. For the "sub-millisecond cached reads" target each round
also times cached sync and async reads one call at a time (``perf_counter_ns`` around
each call, its own ~50 ns included).

How to read it
--------------
Absolute numbers drift between machines; the ratio column (p50 over the reference's p50
from the same run) does not (much). Targets, from the issue: a cached sync read within
3x of a bare ``TTLCache`` lookup (p50), the client adding at most 15% over the raw stub
on uncached reads (p50), and cached reads under 1 ms at p99 (single-call timing).

Usage: ``.venv/bin/python bench/bench_client.py [--quick] [--json]`` from the repository
root (``bench/`` must be on ``sys.path`` for ``benchlib``, which running the file does).
``--quick`` is a smoke run of a few seconds; the default run takes well under a minute.
Progress goes to stderr. Exit status 1 if a timed "cached" read missed the cache (a
missed target is reported, not an error, as in ``bench_grpc``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import cachetools
import grpc
from benchlib import (  # bench/ is sys.path[0] when this file runs
    CALL_TIMEOUT,
    SESSION_ID,
    VARIABLES,
    Target,
    arguments,
    json_document,
    machine,
    machine_line,
    make_call,
    markdown_table,
    names,
    open_channel,
    p50_p99,
    percentile,
    print_report,
    progress,
    set_up_session,
    targets_text,
    varstore_server,
)

from varstore.client import AsyncSessionContext, SessionContext
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc

#: A timing sample: makes its calls, returns the nanoseconds they took.
Sampler = Callable[[], Awaitable[int]]

ALL = names(0, VARIABLES)  # v0..v99: one in-process sample reads each once
ONE = "v0"  # what the single uncached reads read
CACHED = {"cache_ttl": 3600.0, "max_size": 1000}
UNCACHED = {"enable_caching": False}
CLOCK = time.perf_counter_ns
#: The rows others are compared with (their p50 per round is the drift check).
REFERENCES = ("dict", "ttl", "stub", "aio_stub", "stub100")


@dataclass(frozen=True)
class Settings:
    """Per round and per row: how many samples (each of ``Row.calls_per_sample`` calls)."""

    rounds: int
    warmup_samples: int
    local_samples: int  # in-process rows, 100 reads per sample
    single_samples: int  # uncached single reads
    many_samples: int  # 100-name rows
    single_call_reads: int  # cached reads timed one by one (sub-millisecond target)


FULL = Settings(6, 20, 2000, 1500, 400, 5000)
QUICK = Settings(1, 5, 200, 150, 30, 500)


@dataclass
class Row:
    """One measured operation: how a sample is taken, and the samples so far."""

    key: str
    label: str
    reference: str | None  # key of the row it is compared with
    calls_per_sample: int
    sample: Sampler
    samples_ns: list[int] = field(default_factory=list)
    rounds_p50_ns: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Result:
    """A row's figures, per call."""

    key: str
    label: str
    reference: str | None
    calls: int
    p50_ns: float
    p99_ns: float
    calls_per_s: float
    p50_vs_reference: float | None


# -- samplers -----------------------------------------------------------------------------


def reads(get: Callable[[str], object]) -> Sampler:
    """One pass of ``get(name)`` over v0..v99."""

    async def sample() -> int:
        began = CLOCK()
        for name in ALL:
            get(name)
        return CLOCK() - began

    return sample


def async_reads(get: Callable[[str], Awaitable[object]]) -> Sampler:
    """One pass of ``await get(name)`` over v0..v99, without leaving the event loop."""

    async def sample() -> int:
        began = CLOCK()
        for name in ALL:
            await get(name)
        return CLOCK() - began

    return sample


def call(make: Callable[[], object]) -> Sampler:
    """One blocking call."""

    async def sample() -> int:
        began = CLOCK()
        make()
        return CLOCK() - began

    return sample


def async_call(make: Callable[[], Awaitable[object]]) -> Sampler:
    """One awaited call."""

    async def sample() -> int:
        began = CLOCK()
        await make()
        return CLOCK() - began

    return sample


# -- the run ------------------------------------------------------------------------------


@dataclass
class Contexts:
    """The client contexts under test, kept to check their caches afterwards."""

    cached: SessionContext
    cached_async: AsyncSessionContext
    uncached: SessionContext
    uncached_async: AsyncSessionContext
    bypassing: SessionContext


async def build(
    channel: grpc.Channel, aio_channel: grpc.aio.Channel
) -> tuple[list[list[Row]], Contexts]:
    """The rows, in groups that are interleaved with each other; caches warmed."""
    table = dict.fromkeys(ALL, 0)  # the values set_up_session registers
    ttl: cachetools.TTLCache[str, int] = cachetools.TTLCache(maxsize=1000, ttl=3600.0)
    ttl.update(table)
    contexts = Contexts(
        cached=SessionContext(SESSION_ID, channel, CACHED),
        cached_async=AsyncSessionContext(SESSION_ID, aio_channel, CACHED),
        uncached=SessionContext(SESSION_ID, channel, UNCACHED),
        uncached_async=AsyncSessionContext(SESSION_ID, aio_channel, UNCACHED),
        bypassing=SessionContext(SESSION_ID, channel, CACHED),
    )
    # Warm: one get_variables fills each caching context with v0..v99 (100 misses).
    for ctx in (contexts.cached, contexts.bypassing):
        assert ctx.get_variables(ALL) == table
    assert await contexts.cached_async.get_variables(ALL) == table
    assert contexts.cached.get_variable("v7") == 0

    aio_stub = varstore_pb2_grpc.VariableStoreStub(aio_channel)
    get_one = pb.GetVariableRequest(session_id=SESSION_ID, variable_identifier=ONE)
    get_all = pb.GetVariablesRequest(session_id=SESSION_ID, variable_identifiers=ALL)
    in_process = [
        Row("dict", "dict lookup", None, VARIABLES, reads(table.__getitem__)),
        Row("ttl", "cachetools.TTLCache lookup", "dict", VARIABLES, reads(ttl.__getitem__)),
        Row(
            "cached",
            "cached sync get_variable",
            "ttl",
            VARIABLES,
            reads(contexts.cached.get_variable),
        ),
        Row(
            "cached_async",
            "cached async get_variable",
            "ttl",
            VARIABLES,
            async_reads(contexts.cached_async.get_variable),
        ),
    ]
    single = [
        Row("stub", "raw stub GetVariable (sync)", None, 1, call(make_call("get", channel, 0))),
        Row(
            "uncached",
            "uncached sync get_variable (enable_caching=False)",
            "stub",
            1,
            call(lambda: contexts.uncached.get_variable(ONE)),
        ),
        Row(
            "bypass",
            "sync get_variable(bypass_cache=True)",
            "stub",
            1,
            call(lambda: contexts.bypassing.get_variable(ONE, bypass_cache=True)),
        ),
        Row(
            "aio_stub",
            "raw aio stub GetVariable",
            None,
            1,
            async_call(lambda: aio_stub.GetVariable(get_one, timeout=CALL_TIMEOUT)),
        ),
        Row(
            "uncached_async",
            "uncached async get_variable (enable_caching=False)",
            "aio_stub",
            1,
            async_call(lambda: contexts.uncached_async.get_variable(ONE)),
        ),
    ]
    raw_many = make_call("get100", channel, 0)  # GetVariables of v0..v99
    assert len(get_all.variable_identifiers) == VARIABLES
    many = [
        Row("stub100", "raw stub GetVariables(100)", None, 1, call(raw_many)),
        Row(
            "many_uncached",
            "uncached get_variables(100)",
            "stub100",
            1,
            call(lambda: contexts.uncached.get_variables(ALL)),
        ),
        Row(
            "many_cached",
            "cached get_variables(100)",
            "stub100",
            1,
            call(lambda: contexts.cached.get_variables(ALL)),
        ),
    ]
    return [in_process, single, many], contexts


async def interleaved(rows: list[Row], samples: int, warmup: int) -> None:
    """One round of a group: warm-up samples, then one sample of each row in turn."""
    for row in rows:
        for _ in range(warmup):
            await row.sample()
    began = [len(row.samples_ns) for row in rows]
    for _ in range(samples):
        for row in rows:
            row.samples_ns.append(await row.sample())
    for row, start in zip(rows, began, strict=True):
        this_round = sorted(row.samples_ns[start:])
        row.rounds_p50_ns.append(percentile(this_round, 0.5) / row.calls_per_sample)


async def one_by_one(
    sync_ctx: SessionContext, async_ctx: AsyncSessionContext, count: int
) -> tuple[list[int], list[int]]:
    """Cached reads timed one call at a time, sync and async alternating."""
    sync_ns: list[int] = []
    async_ns: list[int] = []
    get = sync_ctx.get_variable
    aget = async_ctx.get_variable
    for i in range(count):
        name = ALL[i % VARIABLES]
        began = CLOCK()
        get(name)
        sync_ns.append(CLOCK() - began)
        began = CLOCK()
        await aget(name)
        async_ns.append(CLOCK() - began)
    return sync_ns, async_ns


@dataclass
class Measured:
    """Everything one run measured."""

    rows: list[Row]
    single_sync_ns: list[int]
    single_async_ns: list[int]
    cache_stats: dict[str, dict[str, object]]


async def measure(address: str, settings: Settings) -> Measured:
    """Open the channels, build the rows, run every round."""
    channel = open_channel(address)
    aio_channel = grpc.aio.insecure_channel(address)
    try:
        await asyncio.wait_for(aio_channel.channel_ready(), 10)
        groups, contexts = await build(channel, aio_channel)
        single_sync: list[int] = []
        single_async: list[int] = []
        per_group = (settings.local_samples, settings.single_samples, settings.many_samples)
        for round_ in range(settings.rounds):
            for rows, samples in zip(groups, per_group, strict=True):
                await interleaved(rows, samples, settings.warmup_samples)
                progress(
                    f"round {round_}: "
                    + ", ".join(f"{row.key} {format_ns(row.rounds_p50_ns[-1])}" for row in rows)
                )
            sync_ns, async_ns = await one_by_one(
                contexts.cached, contexts.cached_async, settings.single_call_reads
            )
            single_sync += sync_ns
            single_async += async_ns
        stats = {
            "cached sync": contexts.cached.get_cache_stats(),
            "cached async": contexts.cached_async.get_cache_stats(),
        }
        return Measured([row for rows in groups for row in rows], single_sync, single_async, stats)
    finally:
        await aio_channel.close()
        channel.close()


# -- report -------------------------------------------------------------------------------


def format_ns(ns: float) -> str:
    """Nanoseconds below 1 µs, else microseconds."""
    if ns < 1_000:
        return f"{ns:,.0f} ns"
    if ns < 10_000:
        return f"{ns / 1e3:,.2f} µs"
    if ns < 100_000:
        return f"{ns / 1e3:,.1f} µs"
    return f"{ns / 1e3:,.0f} µs"


def summarize(rows: list[Row]) -> dict[str, Result]:
    """Per-call figures of every row, and its ratio to its reference."""
    results: dict[str, Result] = {}
    for row in rows:
        per = row.calls_per_sample
        calls = len(row.samples_ns) * per
        p50_sample, p99_sample = p50_p99(row.samples_ns)
        p50 = p50_sample / per
        reference = results.get(row.reference) if row.reference else None
        results[row.key] = Result(
            row.key,
            row.label,
            row.reference,
            calls,
            p50,
            p99_sample / per,
            calls / (sum(row.samples_ns) / 1e9),
            p50 / reference.p50_ns if reference else None,
        )
    return results


def evaluate(results: dict[str, Result], measured: Measured) -> list[Target]:
    """The issue's three targets."""
    cached = results["cached"].p50_vs_reference or 0.0
    uncached = results["uncached"].p50_vs_reference or 0.0
    sync_p99 = p50_p99(measured.single_sync_ns)[1]
    async_p99 = p50_p99(measured.single_async_ns)[1]
    worst = max(*measured.single_sync_ns, *measured.single_async_ns)
    return [
        Target(
            "cached sync get_variable p50 / TTLCache lookup p50",
            f"{cached:.2f}x",
            "<= 3.00x",
            cached <= 3.0,
        ),
        Target(
            "uncached sync get_variable p50 / raw stub GetVariable p50",
            f"{uncached:.2f}x ({(uncached - 1) * 100:+.1f}%)",
            "<= 1.15x",
            uncached <= 1.15,
        ),
        Target(
            "sub-millisecond cached reads: single-call p99",
            f"sync {format_ns(sync_p99)}, async {format_ns(async_p99)} "
            f"over {len(measured.single_sync_ns):,} reads each (max {format_ns(worst)})",
            "< 1,000 µs",
            max(sync_p99, async_p99) < 1_000_000,
        ),
    ]


def method_text(settings: Settings) -> str:
    """How the numbers were taken, in words."""
    rounds = settings.rounds
    return (
        f"{rounds} round{'s' if rounds > 1 else ''}; in each, every group takes its samples "
        f"interleaved (one sample of each row in turn) after {settings.warmup_samples} "
        f"warm-up samples per row; figures pool all rounds and are per call. In-process "
        f"rows: {settings.local_samples} samples per round, each one pass of 100 reads "
        f"(v0..v99) through one bound callable per read, per call = pass / 100 (so p99 is "
        f"of 100-read means). Uncached single reads: {settings.single_samples} calls per "
        f"round, one per sample, reading v0; 100-name rows: {settings.many_samples} calls "
        f"per round. Ratio = p50 / the reference's p50 (the row named in 'vs'). The "
        f"sub-millisecond target times {settings.single_call_reads} cached sync and as many "
        f"async reads per round one call at a time. One varstore server child process "
        f"(--db :memory:) on 127.0.0.1; this process holds one sync and one grpc.aio "
        f"channel, shared by raw stubs and client contexts; every call runs in one asyncio "
        f"event loop."
    )


def markdown(
    results: dict[str, Result],
    targets: list[Target],
    measured: Measured,
    info: dict[str, str],
    settings: Settings,
) -> str:
    """The report: machine, table, method, targets, cache check and drift check."""
    cells = []
    for result in results.values():
        reference = results[result.reference].label if result.reference else "(reference)"
        vs = result.p50_vs_reference
        cells.append(
            (
                result.label,
                f"{result.calls:,}",
                format_ns(result.p50_ns),
                format_ns(result.p99_ns),
                f"{result.calls_per_s:,.0f}",
                reference,
                f"{vs:.2f}x" if vs is not None else "1.00x",
            )
        )
    header = ("operation", "calls", "p50", "p99", "calls/s", "vs", "p50 ratio")
    lines = [machine_line(info), "", markdown_table(header, "lrrrrlr", cells)]
    lines += ["", f"Measured: {method_text(settings)}", "", targets_text(targets)]
    lines += ["", "Cache check (the cached rows were all hits after the 100 warm-up misses):"]
    lines += [
        f"- {name}: hits {stats.get('hits')}, misses {stats.get('misses')}, "
        f"evictions {stats.get('evictions')}, size {stats.get('size')}"
        for name, stats in measured.cache_stats.items()
    ]
    if settings.rounds > 1:
        drift = "; ".join(
            f"{row.label} " + ", ".join(format_ns(p50) for p50 in row.rounds_p50_ns)
            for row in measured.rows
            if row.key in REFERENCES
        )
        lines += ["", f"Drift check, reference p50 round by round: {drift}."]
    return "\n".join(lines)


def run(settings: Settings, as_json: bool) -> int:
    """Start the server, measure, print the report; 1 if a timed cached read missed."""
    info = machine(cachetools=cachetools.__version__)
    with varstore_server(":memory:") as server:
        progress(f"varstore on {server.address}")
        set_up_session(server.address)
        measured = asyncio.run(measure(server.address, settings))
    results = summarize(measured.rows)
    targets = evaluate(results, measured)
    for name, stats in measured.cache_stats.items():
        if stats.get("misses") != VARIABLES or stats.get("evictions") != 0:
            progress(f"{name}: timed reads missed the cache: {stats}")
            return 1
    document = json_document(
        info,
        method_text(settings),
        settings,
        results.values(),
        targets,
        cache_stats=measured.cache_stats,
        reference_p50_ns_by_round={
            row.key: row.rounds_p50_ns for row in measured.rows if row.key in REFERENCES
        },
    )
    print_report(as_json, document, markdown(results, targets, measured, info, settings))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = arguments(__doc__, "a smoke run of a few seconds").parse_args(argv)
    return run(QUICK if args.quick else FULL, args.json)


if __name__ == "__main__":
    sys.exit(main())
