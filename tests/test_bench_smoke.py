"""Every benchmark under bench/ still runs end to end: ``--quick``, as a user runs it.

Each script runs in a subprocess from the repository root (``python bench/<script>.py
--quick``) and must exit 0 and print its machine line and its markdown table, with the
README's columns and one row per measured operation. Together they take about 25 s.
Timings are not checked here; they are the benchmarks' own business. ``bench_grpc.py``
measures etcd's Put beside varstore's writes: etcd 3.4 (Debian's ``etcd-server``) is
installed with apt-get when it is missing and the tests run as root (as CI does).
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from _support import assert_succeeded, run, skip_or_fail

#: Seconds one quick run may take on a loaded machine (they take 2 to 10 s).
TIMEOUT = 120

HAS_EVENTSOURCING = importlib.util.find_spec("eventsourcing") is not None

#: The scripts that start an etcd server as their reference.
NEEDS_ETCD = {"bench_grpc.py"}
#: Seconds apt-get may take to install etcd-server.
APT_TIMEOUT = 300


def ensure_etcd() -> None:
    """etcd on the PATH, installed from Debian's ``etcd-server`` package if missing (as
    root, under a file lock so that two pytest processes do not run apt-get at once)."""
    if shutil.which("etcd") or os.environ.get("ETCD"):
        return
    apt_get = shutil.which("apt-get")
    if apt_get is None or os.geteuid() != 0:
        skip_or_fail("etcd is not installed (apt-get install etcd-server) and cannot be here")
    lock_path = Path(tempfile.gettempdir()) / "varstore-tests-apt.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if shutil.which("etcd"):
            return
        quiet = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = [apt_get, "install", "-y", "-q", "--no-install-recommends", "etcd-server"]
        done = subprocess.run(install, capture_output=True, text=True, env=quiet, check=False)
        if done.returncode != 0:  # a fresh machine may not have the package lists yet
            update = [apt_get, "update", "-q"]
            subprocess.run(update, capture_output=True, env=quiet, timeout=APT_TIMEOUT, check=False)
            done = subprocess.run(
                install, capture_output=True, text=True, env=quiet, timeout=APT_TIMEOUT, check=False
            )
    if not shutil.which("etcd"):
        skip_or_fail(
            f"apt-get could not install etcd-server: {done.stdout[-500:]}{done.stderr[-500:]}"
        )


def table(output: str, header: str) -> list[str]:
    """The rows of the markdown table whose header line is ``header``."""
    lines = output.splitlines()
    assert header in lines, f"no table headed {header!r} in:\n{output}"
    start = lines.index(header)
    columns = header.count("|") - 1
    rule = lines[start + 1]
    assert rule.startswith("|---") and rule.count("|") - 1 == columns, rule
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        assert line.count("|") - 1 == columns, f"{line!r} does not have {columns} cells"
        rows.append(line)
    return rows


CASES = [
    pytest.param(
        "bench_grpc.py",
        "| operation | calls | p50 µs | p99 µs | seq calls/s | 16-client calls/s | p50 / echo "
        "| 16c / echo | server CPU µs/call seq | server CPU µs/call 16c |",
        [
            "| echo (empty call) |",
            "| echo on grpc.aio (empty call) |",
            "| GetVariable |",
            "| SetVariables(100, atomic) |",
            "| etcd Put |",
            (
                "| durable write vs references | 1c p50 µs | 1c calls/s | 8c calls/s "
                "| 16c calls/s | 16c / echo 16c | 16c / etcd Put 8c | server CPU µs/call 1c "
                "| server CPU µs/call 16c | writes per fsync 8c / 16c |"
            ),
            "SetVariable 16-client throughput / etcd Put 8-client throughput",
        ],
        9,
        id="grpc",
    ),
    pytest.param(
        "bench_client.py",
        "| operation | calls | p50 | p99 | calls/s | vs | p50 ratio |",
        ["| cachetools.TTLCache lookup |", "| raw stub GetVariable (sync) |"],
        12,
        id="client",
    ),
    pytest.param(
        "bench_log.py",
        "| what | varstore | reference | ratio |",
        [
            "| replay from SQLite (events/s) |",
            "eventsourcing SQLite" if HAS_EVENTSOURCING else "The reference column is empty",
        ],
        7,
        id="log-with-eventsourcing" if HAS_EVENTSOURCING else "log-without-eventsourcing",
    ),
    pytest.param(
        "bench_watch.py",
        "| system | watchers | writes/s | vs 0 | write p50 ms | write p99 ms | lag p50 ms "
        "| lag p99 ms | lag max ms | deliveries/s | delivered/expected |",
        ["| varstore | 0 |", "| varstore | 100 |", "| etcd | 0 |", "| etcd | 100 |"],
        8,
        id="watch",
    ),
    pytest.param(
        "bench_cluster.py",
        "| operation | SQLite 1c p50 µs | PG 1 server 1c p50 µs | PG 2 servers 1c p50 µs "
        "| SQLite 16c calls/s | PG 1 server 16c calls/s | PG 2 servers 16c calls/s "
        "| PG 2 servers, a session each 16c calls/s | PG 1 server / SQLite 16c "
        "| PG 2 servers / SQLite 16c | PG 2 servers, a session each / SQLite 16c |",
        [
            "| GetVariable |",
            "| SetVariable |",
            "| UPDATE one counter row + INSERT 1 row per transaction | 16 |",
            "| server B (writes through A) |",
            "kill to next success ms",
        ],
        2,
        id="cluster",
    ),
    pytest.param(
        "bench_sizes.py",
        "| variables | write p50 µs | write p99 µs | write vs 10 | read p50 µs | read p99 µs "
        "| read vs 10 | server CPU µs/write | server CPU µs/read |",
        ["| 10 |", "| 10,000 |", "SetVariable p50 in a 10,000-variable session"],
        3,
        id="sizes",
    ),
    pytest.param(
        "bench_big.py",
        "| writes | calls | p50 µs | p99 µs | p99.9 µs | max µs | operation s |",
        [
            "| without (reference) |",
            "| while checkpoints are taken |",
            "| first past read after a restart (GetVariable at a position) |",
            "first past read of a 20,000-event session after a restart",
        ],
        4,
        id="big",
    ),
]


@pytest.mark.timeout(TIMEOUT + 30)
@pytest.mark.parametrize(("script", "header", "expected", "rows"), CASES)
def test_benchmark_runs_quick_and_prints_its_table(
    script: str, header: str, expected: list[str], rows: int
) -> None:
    if script in NEEDS_ETCD:
        ensure_etcd()
    result = run([sys.executable, f"bench/{script}", "--quick"], timeout=TIMEOUT)
    assert_succeeded(result)
    assert "Machine: date " in result.stdout
    assert len(table(result.stdout, header)) == rows
    for text in expected:
        assert text in result.stdout


@pytest.mark.timeout(TIMEOUT + APT_TIMEOUT)
def test_etcdlib_self_check_puts_reads_and_watches() -> None:
    ensure_etcd()
    result = run([sys.executable, "bench/etcdlib.py"], timeout=TIMEOUT)
    assert_succeeded(result)
    assert "put, get and watch ok" in result.stdout
