"""bench/bench_web.py still runs end to end (``--quick``, as a user runs it), in Debian's
Chromium, and prints its machine line, its table (a row per page) and its targets.
Timings are not checked here; they are the benchmark's own business."""

from __future__ import annotations

import sys

import pytest
from _support import assert_succeeded, run
from browser import ensure_chromium
from test_bench_smoke import table

HEADER = (
    "| page | first paint p50 ms | first paint max ms | first contentful paint p50 ms "
    "| server ms p50 | HTML KB | vs static |"
)


@pytest.mark.timeout(300)
def test_the_web_benchmark_runs_quick_and_prints_its_table() -> None:
    ensure_chromium()
    result = run([sys.executable, "bench/bench_web.py", "--quick"], timeout=240)
    assert_succeeded(result)
    assert "Machine: date " in result.stdout
    rows = table(result.stdout, HEADER)
    assert [row.split("`")[1] for row in rows] == [
        "/static/app.css",
        "/?q=no-such-session",
        "/s/big",
        "/s/big/v/temperature",
    ]
    assert "first paint p50, session page" in result.stdout
