"""The audit page's views over a real store (no browser): bounded work per request, keyset
paging, the integrity check, the exports' bytes, and one request of each kind over HTTP."""

from __future__ import annotations

import csv
import io
import json
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from servers import in_process_server

from varstore.api.server import RunningServer
from varstore.api.web import WebServer, start_web, views
from varstore.api.web.diff import difference
from varstore.api.web.exports import attachment, history_csv, session_lines
from varstore.client import connect
from varstore.client.transfer import event_from_json


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    with in_process_server() as server:
        with connect(server.address) as client:
            ctx = client.session("s1", config={"source": "loader"})
            ctx.register_variable("n", "integer", 0)
            ctx.register_variable("label", "string", "=SUM(A1)")
            for count in range(1, 200):
                ctx.set_variable("n", count)
            ctx.update_variables({"n": -1, "label": "+x"})
        yield server


@pytest.fixture(scope="module")
def page(running: RunningServer) -> Iterator[WebServer]:
    web = start_web(
        running.store,
        "127.0.0.1:0",
        grpc_address=running.address,
        subscribe=running.store.subscribe,
    )
    yield web
    web.stop()


def test_a_filtered_log_page_reads_at_most_its_budget_and_offers_the_rest(
    running: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "SCAN_EVENTS", 60)
    view = views.session_view(running.store, "s1", log_filter=views.LogFilter(variable="label"))
    # Position 203 (the batch) names "label"; the scan then stops 60 events down.
    assert [row.event.position for row in view.log.rows] == [203]
    assert view.log.scanned == (144, 203)
    assert view.log.older == 144
    further = views.session_view(
        running.store, "s1", before=144, log_filter=views.LogFilter(variable="label")
    )
    assert further.log.scanned == (84, 143) and not further.log.rows


def test_log_pages_follow_each_other_by_position_without_gap_or_repeat(
    running: RunningServer,
) -> None:
    seen: list[int] = []
    before = None
    while True:
        view = views.session_view(running.store, "s1", before=before)
        seen += [row.event.position for row in view.log.rows]
        assert view.log.consecutive
        if not view.log.older:
            break
        before = view.log.older
    assert seen == list(range(203, 0, -1))


def test_the_integrity_check_walks_the_log_in_bounded_steps(
    running: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "INTEGRITY_CHUNK", 50)
    first, steps = 1, 0
    while True:
        chunk = views.check_positions(running.store, "s1", first, 203)
        steps += 1
        assert chunk.gap is None
        if chunk.done:
            break
        first = chunk.last + 1
    assert steps == 5 and chunk.last == 203


def test_the_json_lines_export_is_the_cli_format(running: RunningServer) -> None:
    lines = b"".join(session_lines(running.store, "s1", 1, 203)).decode().splitlines()
    assert len(lines) == 203
    events = [event_from_json(json.loads(line)) for line in lines]
    assert [e.position for e in events] == list(range(1, 204))


def test_the_csv_export_quotes_formulas(running: RunningServer) -> None:
    text = b"".join(history_csv(running.store, "s1", "label")).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["value"] for row in rows] == ["'=SUM(A1)", "'+x"]
    assert [row["in_batch"] for row in rows] == ["false", "true"]


def test_a_file_name_carries_the_session_and_the_positions() -> None:
    header = attachment("a b/é", "x", 3, 9, "csv")
    assert 'filename="a_b___x_3-9.csv"' in header
    assert "filename*=UTF-8''a%20b%2F%C3%A9_x_3-9.csv" in header


def test_a_diff_marks_what_changed() -> None:
    segments, _ = difference("hello world", "hello there world")
    assert [(s.kind, s.text) for s in segments if s.kind != "same"] == [("added", "there ")]
    assert difference(1.5, 1.0)[1] == "-0.5"
    assert difference(True, False) == ([], "changed")


@pytest.mark.parametrize(
    ("path", "status", "kind"),
    [
        ("/", 200, "text/html"),
        ("/s/s1", 200, "text/html"),
        ("/s/s1?at=3", 200, "text/html"),
        ("/s/s1?time=2000-01-01T00:00:00Z", 200, "text/html"),
        ("/s/s1/v/n", 200, "text/html"),
        ("/s/s1/export.jsonl", 200, "application/x-ndjson"),
        ("/s/s1/v/n/history.csv", 200, "text/csv"),
        ("/s/s1/integrity?from=1&end=203", 200, "text/html"),
        ("/s/none", 404, "text/html"),
        ("/s/s1/v/none", 404, "text/html"),
        ("/s/s1?at=-1", 400, "text/html"),
        ("/s/s1?at=100000", 400, "text/html"),
        ("/s/s1?time=yesterday", 400, "text/html"),
        ("/static/vendor/htmx.min.js", 200, "text/javascript"),
    ],
)
def test_each_request_answers_with_its_status(
    page: WebServer, path: str, status: int, kind: str
) -> None:
    try:
        with urllib.request.urlopen(page.url + path, timeout=10) as answer:
            got, content_type = answer.status, answer.headers["Content-Type"]
    except urllib.error.HTTPError as problem:
        got, content_type = problem.code, problem.headers["Content-Type"]
    assert (got, content_type.split(";")[0]) == (status, kind)


def test_an_as_of_before_the_session_shows_no_variables_and_no_log(
    running: RunningServer,
) -> None:
    view = views.session_view(running.store, "s1", datetime(2000, 1, 1, tzinfo=UTC))
    assert (view.position, view.variables, view.log.rows) == (0, None, ())
    view = views.session_view(running.store, "s1", 3)
    assert view.variables is not None
    assert [v.name for v in view.variables] == ["label", "n"]
    assert [row.event.position for row in view.log.rows] == [3, 2, 1]


def test_stopping_ends_open_event_streams_at_once(running: RunningServer) -> None:
    import time

    web = start_web(
        running.store,
        "127.0.0.1:0",
        grpc_address=running.address,
        subscribe=running.store.subscribe,
    )
    stream = urllib.request.urlopen(web.url + "/s/s1/live?after=1", timeout=10)
    assert stream.readline() == b"retry: 2000\n"
    assert stream.readline() == b"\n"
    assert stream.readline().startswith(b"data: ")  # 202 events after position 1
    began = time.monotonic()
    web.stop()
    assert time.monotonic() - began < 4
    assert stream.read() in (b"", b"\n")
    stream.close()
