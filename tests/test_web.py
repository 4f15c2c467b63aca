"""The audit page in a real browser: Debian's Chromium, driven by Playwright, against a
real ``varstore serve --http 127.0.0.1:0`` holding recorded sessions.

Each page loads (and is photographed into tests/screenshots/ for the README); the chart
has one point per version; the as-of view equals the gRPC read at that position; a write
through gRPC appears live; paging while writing repeats and skips nothing; the exports
round-trip through ``varstore import``; every string a caller wrote is escaped.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _support import ROOT, assert_succeeded, run, venv_executable
from browser import ensure_chromium, page_server
from playwright.sync_api import Browser, Page, expect, sync_playwright
from servers import ServerProcess, stub_for

from varstore.client import connect
from varstore.types import from_proto
from varstore.v1 import varstore_pb2 as pb

SHOTS = ROOT / "tests" / "screenshots"
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">&amp;'
WIDE = {"width": 1280, "height": 900}

pytestmark = pytest.mark.timeout(240)


def record_sessions(address: str) -> None:
    """The sessions the pages show: numbers with bounds, choices, booleans, strings with
    hostile text, batches, a rollback; a second session and a busy one for paging."""
    with connect(address) as client:
        ctx = client.session(
            "checkout-42", config={"source": "pricing-service", "metadata": {"team": HOSTILE}}
        )
        ctx.register_variable("temperature", "float", 0.7, constraints={"min": 0.0, "max": 2.0})
        ctx.register_variable(
            "mode", "string", "fast", constraints={"choices": ["fast", "slow", "off"]}
        )
        ctx.register_variable("enabled", "boolean", True)
        ctx.register_variable("banner", "string", "Welcome", metadata={"reason": HOSTILE})
        for step, value in enumerate((0.9, 1.4, 1.1, 1.8, 0.4, 0.6, 1.2)):
            ctx.set_variable("temperature", value, metadata={"reason": f"tuning step {step}"})
        ctx.update_variables(
            {"temperature": 1.5, "mode": "slow", "enabled": False}, metadata={"reason": "load shed"}
        )
        ctx.set_variable("banner", "Welcome back " + HOSTILE, metadata={"ticket": "OPS-7"})
        ctx.set_variable("mode", "off")
        ctx.rollback_variable("temperature", 2, metadata={"reason": "revert the spike"})
        ctx.set_variable("enabled", True)
        client.session("checkout-42", config={"source": HOSTILE}).set_variable("enabled", False)
        other = client.session("search-7", config={"source": "ranker"})
        other.register_variable("max_results", "integer", 10, constraints={"min": 1, "max": 50})
        busy = client.session("busy", config={"source": "loader"})
        busy.register_variable("counter", "integer", 0)
        for count in range(1, 120):
            busy.set_variable("counter", count)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    db = tmp_path_factory.mktemp("web") / "log.db"
    with page_server(db, "--sync", "normal") as (server, url):
        record_sessions(server.address)
        yield server, url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = ensure_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(executable), args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=WIDE, accept_downloads=True, timezone_id="UTC")
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def shoot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def history(address: str, session_id: str, name: str) -> list[Any]:
    with connect(address) as client:
        return list(client.session(session_id).history(name))


def grpc_list(address: str, session_id: str, position: int | None) -> dict[str, tuple[str, int]]:
    """name -> (value as the page writes it, version), read over gRPC at ``position``."""
    with stub_for(address) as stub:
        request = pb.ListVariablesRequest(session_id=session_id)
        if position is not None:
            request.at_position = position
        answer = stub.ListVariables(request)
    return {v.name: (shown(from_proto(v.value)), v.version) for v in answer.variables}


def shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def page_variables(page: Page) -> dict[str, tuple[str, int]]:
    rows = page.locator("#variables tbody tr").all()
    table = {}
    for row in rows:
        cells = row.locator("td").all_inner_texts()
        table[cells[0]] = (cells[2], int(cells[3]))
    return table


def log_positions(page: Page) -> list[int]:
    return [
        int(p)
        for p in page.locator("#log tr[data-position]").evaluate_all(
            "rows => rows.map(r => r.dataset.position)"
        )
    ]


# -- each page loads ---------------------------------------------------------------------


def test_the_sessions_page_lists_sessions_last_changed_first(
    served: tuple[ServerProcess, str], page: Page
) -> None:
    _, url = served
    page.goto(url + "/")
    expect(page.get_by_role("heading", name="Sessions")).to_be_visible()
    ids = page.locator("#sessions tbody tr td:first-child").all_inner_texts()
    assert ids == ["busy", "search-7", "checkout-42"]
    shoot(page, "sessions")
    page.get_by_label("Session id contains").fill("check")
    page.get_by_label("Session id contains").press("Enter")
    expect(page.locator("#sessions tbody tr")).to_have_count(1)
    assert "q=check" in page.url


def test_the_session_page_shows_the_variables_and_the_log_as_grpc_does(
    served: tuple[ServerProcess, str], page: Page
) -> None:
    server, url = served
    page.goto(url + "/s/checkout-42")
    served_at = int(page.locator("#served-at").inner_text())
    assert page_variables(page) == grpc_list(server.address, "checkout-42", None)
    positions = log_positions(page)
    assert positions == list(range(served_at, 0, -1))
    shoot(page, "session")
    page.get_by_role("button", name="Check every position").click()
    expect(page.locator("#integrity-result")).to_contain_text(
        f"Positions 1..{served_at}: every one present"
    )


def test_the_log_filters_by_type_variable_and_source(
    served: tuple[ServerProcess, str], page: Page
) -> None:
    _, url = served
    page.goto(url + "/s/checkout-42")
    page.get_by_label("Event type").select_option("BatchApplied")
    page.get_by_role("button", name="Filter").click()
    assert len(log_positions(page)) == 1
    page.goto(url + "/s/checkout-42?variable=banner")
    assert len(log_positions(page)) == 2
    page.goto(url + "/s/checkout-42?source=nobody")
    assert log_positions(page) == []


# -- the variable page ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shot"),
    [("temperature", "variable"), ("mode", "variable-choices"), ("banner", "variable-string")],
)
def test_the_chart_has_one_point_per_version(
    served: tuple[ServerProcess, str], page: Page, name: str, shot: str
) -> None:
    server, url = served
    versions = history(server.address, "checkout-42", name)
    page.goto(f"{url}/s/checkout-42/v/{name}")
    expect(page.locator("#chart[data-points]")).to_have_count(1)
    assert int(page.locator("#chart").get_attribute("data-points") or -1) == len(versions)
    rows = page.locator("#history tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.version)"
    )
    assert [int(v) for v in rows] == [c.version for c in reversed(versions)]
    shoot(page, shot)


def test_the_number_chart_draws_the_bounds(served: tuple[ServerProcess, str], page: Page) -> None:
    _, url = served
    page.goto(url + "/s/checkout-42/v/temperature")
    labels = page.locator("#chart .u-legend .u-label").all_inner_texts()
    assert "min" in labels and "max" in labels
    assert "lower bound 0.0" in (page.locator("#chart").get_attribute("aria-label") or "")


def test_the_variable_page_diffs_shows_the_batch_and_the_rollback_command(
    served: tuple[ServerProcess, str], page: Page
) -> None:
    server, url = served
    page.goto(url + "/s/checkout-42/v/temperature")
    batch_version = next(
        c.version for c in history(server.address, "checkout-42", "temperature") if c.in_batch
    )
    page.locator(f"#history tr[data-version='{batch_version}'] a", has_text="batch").click()
    others = page.locator("#batch-others li").all_inner_texts()
    assert sorted(others) == ["enabled = false", "mode = slow"]
    page.get_by_label("From version").fill("1")
    page.get_by_label("to version", exact=True).fill("2")
    page.get_by_role("button", name="Compare").click()
    expect(page.locator("#diff-result")).to_contain_text("+0.5")
    page.get_by_label("Roll back to version").fill("3")
    page.get_by_role("button", name="Show what it would append").click()
    cli = page.locator("#rollback-cli").inner_text()
    assert cli == (
        f"VARSTORE_SERVER={server.address} varstore rollback checkout-42 temperature --to-version 3"
    )
    expect(page.locator("#rollback-grpcurl")).to_contain_text('"to_version": 3')
    expect(page.locator("#rollback-preview")).to_contain_text("becomes 1.1")
    shoot(page, "variable-diff-rollback")


# -- as of a moment --------------------------------------------------------------------------


def test_the_as_of_view_equals_the_grpc_read_at_that_position(
    served: tuple[ServerProcess, str], page: Page
) -> None:
    server, url = served
    for position in (2, 5, 9, 12, 15):
        page.goto(f"{url}/s/checkout-42?at={position}")
        assert page_variables(page) == grpc_list(server.address, "checkout-42", position)
        assert log_positions(page)[0] == position
    shoot(page, "session-as-of")
    # A moment: the time of version 3, typed in the date-time field, gives its position.
    change = history(server.address, "checkout-42", "temperature")[3]
    page.get_by_label("Date and time (UTC)").fill(
        change.recorded_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:23]
    )
    page.get_by_label("Date and time (UTC)").press("Enter")
    expect(page.locator("#asof-note")).to_be_visible()
    shown_at = int(page.locator("#asof-note strong").inner_text())
    assert shown_at <= change.position + 1  # same millisecond at most one more
    assert page_variables(page) == grpc_list(server.address, "checkout-42", shown_at)
    assert "time=" in page.url


def test_the_slider_sets_the_position_and_the_link_reproduces_the_view(
    served: tuple[ServerProcess, str], page: Page
) -> None:
    _, url = served
    page.goto(url + "/s/checkout-42")
    page.get_by_label("Position slider").focus()
    page.keyboard.press("Home")
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    page.get_by_label("Position", exact=True).press("Enter")
    assert page.url.endswith("?at=4")
    text = page.locator("#variables").inner_text()
    page.goto(page.url)
    assert page.locator("#variables").inner_text() == text


# -- live, paging -----------------------------------------------------------------------------


def test_a_write_through_grpc_appears_live_without_moving_rows(
    served: tuple[ServerProcess, str], page: Page
) -> None:
    server, url = served
    page.goto(url + "/s/search-7")
    before = log_positions(page)
    variable_page = page.context.new_page()
    variable_page.goto(url + "/s/search-7/v/max_results")
    sessions_page = page.context.new_page()
    sessions_page.goto(url + "/")
    page.wait_for_timeout(200)  # the event streams connect
    with connect(server.address) as client:
        client.session("search-7").set_variable("max_results", 20)
        client.session("search-7").set_variable("max_results", 30)
    expect(page.locator("#live")).to_contain_text("2 new changes")
    expect(variable_page.locator("#live")).to_contain_text("2 new changes")
    expect(sessions_page.locator("#live")).to_contain_text("2 new changes")
    assert log_positions(page) == before
    shoot(page, "session-live")
    page.locator("#live a").click()
    assert log_positions(page)[0] == before[0] + 2


def test_paging_while_writing_repeats_and_skips_nothing(
    served: tuple[ServerProcess, str], page: Page
) -> None:
    server, url = served
    page.goto(url + "/s/busy")
    served_at = int(page.locator("#served-at").inner_text())
    stop = threading.Event()

    def write() -> None:
        with connect(server.address) as client:
            ctx = client.session("busy")
            count = 1000
            while not stop.is_set():
                count += 1
                ctx.set_variable("counter", count)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while page.locator("#older").count():
            shown_rows = len(log_positions(page))
            page.locator("#older").click()
            expect(page.locator("#log tr[data-position]")).not_to_have_count(shown_rows)
    finally:
        stop.set()
        writer.join()
    assert log_positions(page) == list(range(served_at, 0, -1))
    expect(page.locator("#live")).to_contain_text("new change")


# -- exports ----------------------------------------------------------------------------------


def test_the_exports_round_trip_through_varstore_import(
    served: tuple[ServerProcess, str], page: Page, tmp_path: Path
) -> None:
    server, url = served
    page.goto(url + "/s/checkout-42")
    with page.expect_download() as download:
        page.locator("#export-jsonl").click()
    served_at = int(page.locator("#served-at").inner_text())
    assert download.value.suggested_filename == f"checkout-42_1-{served_at}.jsonl"
    exported = tmp_path / download.value.suggested_filename
    download.value.save_as(exported)
    imported = run(
        [
            venv_executable("varstore"),
            "import",
            "--server",
            server.address,
            str(exported),
            "--session",
            "checkout-42-copy",
        ]
    )
    assert_succeeded(imported)
    copy = tmp_path / "copy.jsonl"
    assert_succeeded(
        run(
            [
                venv_executable("varstore"),
                "export",
                "--server",
                server.address,
                "checkout-42-copy",
                str(copy),
            ]
        )
    )

    def essence(path: Path) -> list[tuple[Any, ...]]:
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        return [
            (e["position"], e["type"], e["recorded_at"], e["source"], e["metadata"], e["payload"])
            for e in lines
        ]

    assert essence(copy) == essence(exported)

    page.goto(url + "/s/checkout-42/v/temperature")
    with page.expect_download() as download:
        page.locator("#export-csv").click()
    changes = history(server.address, "checkout-42", "temperature")
    assert download.value.suggested_filename == (
        f"checkout-42_temperature_{changes[0].position}-{changes[-1].position}.csv"
    )
    text = Path(download.value.path()).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(int(r["version"]), float(r["value"]), int(r["position"])) for r in rows] == [
        (c.version, c.value, c.position) for c in changes
    ]


# -- escaping, keyboard, phone width -------------------------------------------------------


def test_hostile_strings_are_shown_as_text_never_run(
    served: tuple[ServerProcess, str], page: Page
) -> None:
    _, url = served
    for path in (
        "/s/checkout-42",
        "/s/checkout-42/v/banner",
        "/s/checkout-42/v/banner?a=0&b=1",
        "/s/checkout-42/v/enabled",
    ):
        page.goto(url + path)
        page.wait_for_timeout(100)
        assert page.evaluate("window.__pwned") is None
        assert page.locator("main script:not([type])").count() == 0
        assert page.locator("main img").count() == 0
        expect(page.locator("main").get_by_text(HOSTILE).first).to_be_visible()
    page.goto(url + "/s/checkout-42")
    expect(page.locator("#session-metadata")).to_contain_text(f"team={HOSTILE}")
    shoot(page, "variable-hostile-diff")


def test_the_pages_are_keyboard_usable_and_fit_a_phone(
    browser: Browser, served: tuple[ServerProcess, str]
) -> None:
    _, url = served
    context = browser.new_context(viewport={"width": 390, "height": 844}, timezone_id="UTC")
    phone = context.new_page()
    try:
        phone.goto(url + "/")
        phone.keyboard.press("Tab")  # the skip link
        phone.keyboard.press("Tab")  # "Sessions"
        phone.keyboard.press("Tab")  # the filter's field
        focused = phone.evaluate("document.activeElement.id")
        assert focused == "q"
        phone.keyboard.type("search")
        phone.keyboard.press("Enter")
        phone.wait_for_url("**/?q=search")
        phone.keyboard.press("Tab")
        for _ in range(6):
            if phone.evaluate("document.activeElement.textContent") == "search-7":
                break
            phone.keyboard.press("Tab")
        phone.keyboard.press("Enter")
        phone.wait_for_url("**/s/search-7")
        for path in ("/s/checkout-42", "/s/checkout-42/v/temperature"):
            phone.goto(url + path)
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} is {width}px wide at phone width"
        shoot(phone, "variable-phone")
    finally:
        context.close()


def test_an_unknown_session_is_a_404_page(served: tuple[ServerProcess, str], page: Page) -> None:
    _, url = served
    answer = page.goto(url + "/s/nobody-here")
    assert answer is not None and answer.status == 404
    expect(page.get_by_role("alert")).to_contain_text("nobody-here")
    answer = page.goto(url + "/s/checkout-42?at=99999")
    assert answer is not None and answer.status == 400
