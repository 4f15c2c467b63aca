"""The audit page: time to first paint of the session page and the variable page for a
session of 100,000 events, beside references served by the same server in the same run.

What it measures
----------------
One ``python -m varstore.api.cli serve --db <tmp>/web.db --sync normal --listen
127.0.0.1:0 --http 127.0.0.1:0`` child process. The session ``big`` is brought in by ONE
``ImportSession`` call (the client's ``import_session``): a SessionCreated, 10 variables
(``temperature`` float 0..2, ``tokens`` integer, ``enabled`` boolean, ``mode`` string
with choices, ``note`` string, and ``x5..x9`` integers), then updates that cycle through
them, 1 ms apart, up to 100,000 events (``--quick``: 2,000). Each variable then has about
10,000 versions; the variable page plots the newest 5,000 and lists the newest 100.

Debian's Chromium (``/usr/bin/chromium``, headless), driven by Playwright, loads each
page ``--loads`` times (default 9; ``--quick`` 2) in one tab whose HTTP cache is off
(DevTools ``Network.setCacheDisabled``: the page's scripts are fetched every time), as a
reader going from page to page of the site; the loads go in rounds through the four
pages, after one warm-up round that is not counted. For each load it reads Chromium's
paint timing
(``performance.getEntriesByType("paint")``: ``first-paint`` and
``first-contentful-paint``, milliseconds from the navigation's start) and the navigation
timing's ``responseStart - requestStart`` (the server's time to the first byte).

The pages:

- **session page** ``/s/big``: the 10 variables, the newest 50 events of the log, the
  as-of controls;
- **variable page** ``/s/big/v/temperature``: the chart of the newest 5,000 versions
  (uPlot), the newest 100 versions as a table, the diff of the last two;
- references: **static file** ``/static/app.css`` (the server's floor: a file, no query)
  and **sessions page, no match** ``/?q=<nothing>`` (the same templates, CSS and scripts
  with no data).

How to read it
--------------
``vs static`` is the page's first-paint p50 over the static file's. The target is a
first paint under 300 ms (p50) for both pages on this machine. Its 2 cores are shared by
the server, Chromium and this script.

Usage: ``.venv/bin/python bench/bench_web.py [--quick] [--json] [--events N] [--loads N]``
from the repository root. The default run takes about 2 minutes (most of it the
import), ``--quick`` about 30 s on a loaded machine. Progress goes to stderr. Exit status 1 if a page did not
load.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import benchlib
from benchlib import Target
from playwright.sync_api import Browser, Page, sync_playwright

from varstore.client.transfer import event_from_json, import_session
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

CHROMIUM = Path("/usr/bin/chromium")
SESSION = "big"
TARGET_MS = 300.0
#: name, type, initial value, constraints
VARIABLES: list[tuple[str, str, Any, dict[str, Any]]] = [
    ("temperature", "float", 0.7, {"min": 0.0, "max": 2.0}),
    ("tokens", "integer", 256, {"min": 1, "max": 4096}),
    ("enabled", "boolean", True, {}),
    ("mode", "string", "fast", {"choices": ["fast", "slow", "off"]}),
    ("note", "string", "hello", {}),
    *[(f"x{i}", "integer", 0, {}) for i in range(5, 10)],
]
PAGES = [
    ("static file (reference)", "/static/app.css"),
    ("sessions page, no match (reference)", "/?q=no-such-session"),
    ("session page", f"/s/{SESSION}"),
    ("variable page", f"/s/{SESSION}/v/temperature"),
]


@dataclass(frozen=True)
class Settings:
    events: int
    loads: int
    chromium: str


@dataclass(frozen=True)
class Row:
    page: str
    path: str
    loads: int
    first_paint_p50_ms: float
    first_paint_max_ms: float
    first_contentful_paint_p50_ms: float
    server_ms_p50: float
    html_kb: float
    vs_static: float


def _value(name: str, kind: str, step: int) -> Any:
    if kind == "float":
        return round(1.0 + 0.9 * ((step * 37) % 200 - 100) / 100, 3)
    if kind == "integer":
        return (step * 7919) % 4096 + 1 if name == "tokens" else step
    if kind == "boolean":
        return step % 3 != 0
    if name == "mode":
        return ("fast", "slow", "off")[step % 3]
    return f"note {step}: {'abc' * (step % 7)}"


def events(count: int) -> Iterator[pb.Event]:
    """The session's events as an export holds them."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    position = 0

    def event(kind: str, payload: dict[str, Any]) -> pb.Event:
        nonlocal position
        position += 1
        moment = start + timedelta(milliseconds=position)
        return event_from_json(
            {
                "position": position,
                "type": kind,
                "recorded_at": moment.isoformat().replace("+00:00", "Z"),
                "source": "bench",
                "metadata": {"reason": f"step {position}"},
                "payload": payload,
            }
        )

    yield event("SessionCreated", {"metadata": {}, "ttl_seconds": 0})
    ids = []
    for name, kind, initial, constraints in VARIABLES:
        variable_id = f"var_{name}_{position + 1}"
        ids.append((variable_id, name, kind))
        yield event(
            "VariableRegistered",
            {
                "variable_id": variable_id,
                "name": name,
                "type": kind,
                "value": initial,
                "constraints": constraints,
            },
        )
    step = 0
    while position < count:
        variable_id, name, kind = ids[step % len(ids)]
        step += 1
        yield event(
            "VariableUpdated", {"variable_id": variable_id, "value": _value(name, kind, step)}
        )


def load(page: Page, url: str) -> tuple[float, float, float, int]:
    """One navigation of ``page`` to ``url``: first paint, first contentful paint, server
    ms, bytes."""
    answer = page.goto(url, wait_until="load")
    if answer is None or answer.status != 200:
        raise RuntimeError(f"{url}: {answer.status if answer else 'no answer'}")
    size = len(answer.body())
    timing = page.evaluate(
        """() => new Promise((done) => {
            const read = () => {
                const paints = Object.fromEntries(
                    performance.getEntriesByType("paint").map((e) => [e.name, e.startTime]));
                const nav = performance.getEntriesByType("navigation")[0];
                if (paints["first-paint"] === undefined) { requestAnimationFrame(read); return; }
                done([paints["first-paint"], paints["first-contentful-paint"] ?? -1,
                      nav.responseStart - nav.requestStart]);
            };
            read();
        })"""
    )
    return float(timing[0]), float(timing[1]), float(timing[2]), size


def tab(browser: Browser) -> Page:
    """A tab with its HTTP cache off (every load fetches the page's scripts again)."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.context.new_cdp_session(page).send("Network.setCacheDisabled", {"cacheDisabled": True})
    return page


def main() -> int:
    parser = benchlib.arguments(__doc__, "2,000 events and 2 loads a page")
    parser.add_argument("--events", type=int, default=None, help="events in the session")
    parser.add_argument("--loads", type=int, default=None, help="measured loads per page")
    args = parser.parse_args()
    count = args.events or (2_000 if args.quick else 100_000)
    loads = args.loads or (2 if args.quick else 9)
    if not CHROMIUM.exists():
        print(
            "bench_web: /usr/bin/chromium is missing (apt-get install -y chromium)", file=sys.stderr
        )
        return 1
    settings = Settings(count, loads, str(CHROMIUM))
    info = benchlib.machine()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            "-m",
            "varstore.api.cli",
            "serve",
            "--db",
            f"{tmp}/web.db",
            "--sync",
            "normal",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ]
        with benchlib.child_server("varstore", command) as child:
            line = next(text for text in child.output if "audit page on" in text)
            base = line.split("audit page on ", 1)[1].split("/", 3)[:3]
            site = "/".join(base)
            benchlib.progress(f"importing {count:,} events into {SESSION!r} ...")
            began = time.perf_counter()
            channel = benchlib.open_channel(child.address)
            try:
                import_session(pb_grpc.VariableStoreStub(channel), events(count), SESSION)
            finally:
                channel.close()
            benchlib.progress(f"imported in {time.perf_counter() - began:.1f} s")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
                )
                try:
                    page = tab(browser)
                    measured: dict[str, list[tuple[float, float, float, int]]] = {
                        name: [] for name, _ in PAGES
                    }
                    for _, path in PAGES:  # warm-up, not counted
                        load(page, site + path)
                    # Rounds through every page, so a burst of load elsewhere on the
                    # machine hits them all alike.
                    for round_ in range(loads):
                        for name, path in PAGES:
                            measured[name].append(load(page, site + path))
                        benchlib.progress(f"round {round_ + 1}/{loads} done")
                finally:
                    browser.close()
    static = statistics.median(m[0] for m in measured[PAGES[0][0]])
    for name, path in PAGES:
        samples = measured[name]
        paint = statistics.median(s[0] for s in samples)
        rows.append(
            Row(
                name,
                path,
                len(samples),
                round(paint, 1),
                round(max(s[0] for s in samples), 1),
                round(statistics.median(s[1] for s in samples), 1),
                round(statistics.median(s[2] for s in samples), 1),
                round(samples[0][3] / 1024, 1),
                round(paint / static, 2),
            )
        )
    targets = [
        Target(
            f"first paint p50, {row.page}, {count:,} events",
            f"{row.first_paint_p50_ms:.0f} ms",
            f"< {TARGET_MS:.0f} ms",
            row.first_paint_p50_ms < TARGET_MS,
        )
        for row in rows
        if "reference" not in row.page
    ]
    table = benchlib.markdown_table(
        [
            "page",
            "first paint p50 ms",
            "first paint max ms",
            "first contentful paint p50 ms",
            "server ms p50",
            "HTML KB",
            "vs static",
        ],
        "lrrrrrr",
        (
            [
                f"{row.page} `{row.path}`",
                f"{row.first_paint_p50_ms:.0f}",
                f"{row.first_paint_max_ms:.0f}",
                f"{row.first_contentful_paint_p50_ms:.0f}",
                f"{row.server_ms_p50:.1f}",
                f"{row.html_kb:.1f}",
                f"{row.vs_static:.2f}x",
            ]
            for row in rows
        ),
    )
    markdown = "\n\n".join(
        [
            benchlib.machine_line(info),
            (
                f"Session of {count:,} events; {loads} loads a page in one tab, HTTP cache "
                f"off (Chromium {CHROMIUM})."
            ),
            table,
            benchlib.targets_text(targets),
        ]
    )
    document = benchlib.json_document(info, "bench_web", settings, rows, targets)
    benchlib.print_report(args.json, document, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
