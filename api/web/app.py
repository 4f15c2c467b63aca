"""The audit page's routes: a Starlette app over the query layer, rendered by Jinja2.

Pages (all read-only, every parameter in the URL so a link reproduces the view):

- ``/``: sessions, last changed first (``q`` filters by id).
- ``/s/{id}``: one session: variables and the log, newest first (``before`` pages by
  position; ``type``, ``variable``, ``source`` filter); ``at`` (a position) or ``time``
  (a moment, UTC) shows the session as it stood then.
- ``/s/{id}/v/{name}``: one variable: history, chart, diff (``a``, ``b``), batch
  (``batch``), rollback preview (``rollback``).
- ``/s/{id}/live``, ``/s/{id}/v/{name}/live``: server-sent events "N new changes".
- ``/s/{id}/integrity``: one step of the whole-log position check (an htmx fragment).
- ``/s/{id}/export.jsonl``, ``/s/{id}/v/{name}/history.csv``: downloads.

The reads run on worker threads (``asyncio.to_thread``; downloads are iterated in
Starlette's thread pool), so a slow one, such as the first read of a big session's history
after a start, holds up no other page or event stream.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from varstore.api import queries
from varstore.api.queries import At, ReadableStore
from varstore.api.web import views
from varstore.api.web.diff import difference
from varstore.api.web.exports import attachment, history_csv, session_lines
from varstore.api.web.live import ANY, LiveFeed
from varstore.types import (
    NotFound,
    OutOfRange,
    PyValue,
    ValidationError,
    VarstoreError,
)

__all__ = ["build_app"]

HERE: Final = Path(__file__).resolve().parent
#: Seconds between keep-alive comments on an idle event stream.
KEEPALIVE: Final = 15.0
#: Least seconds between two notices of one stream.
NOTICE_INTERVAL: Final = 0.25
#: Most new changes a variable's stream counts exactly ("100+" beyond).
COUNT_LIMIT: Final = 100


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["show"] = show
    env.filters["when"] = _when
    env.filters["q"] = lambda text: quote(str(text), safe="")
    return env


def show(value: PyValue | None) -> str:
    """A value as the page writes it (strings as they are; the template escapes them)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if not isinstance(value, float) else repr(value)


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def build_app(store: ReadableStore, grpc_address: str, feed: Callable[[], LiveFeed]) -> Starlette:
    """The app serving ``store``; ``grpc_address`` is shown in the grpcurl commands,
    ``feed`` gives the live feed of the running loop."""
    env = _environment()
    # The style sheets are inlined: a first paint waits for no request after the page's.
    styles = {
        "app_css": (HERE / "static" / "app.css").read_text(),
        "uplot_css": (HERE / "static" / "vendor" / "uPlot.min.css").read_text(),
    }

    def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(grpc_address=grpc_address, **styles, **context)
        return HTMLResponse(html, status_code=status)

    def failure(problem: VarstoreError) -> HTMLResponse:
        status = 404 if isinstance(problem, NotFound) else 400
        if not isinstance(problem, NotFound | ValidationError | OutOfRange):
            status = 503
        return render("error.html", status, message=str(problem))

    async def sessions(request: Request) -> Response:
        contains = request.query_params.get("q", "")[:200]
        seen = feed().events_seen
        rows, matched, capped = await asyncio.to_thread(views.session_rows, store, contains)
        return render(
            "sessions.html", rows=rows, matched=matched, capped=capped, q=contains, seen=seen
        )

    async def live_sessions(request: Request) -> Response:
        after = _int(request.query_params.get("after", ""), "after") or 0

        async def count() -> tuple[int, int] | None:
            seen = feed().events_seen
            return (0, seen - after) if seen > after else None

        return _event_stream(feed(), ANY, count)

    async def session(request: Request) -> Response:
        sid = request.path_params["sid"]
        params = request.query_params
        try:
            at = _as_of(params.get("at", ""), params.get("time", ""))
            before = _int(params.get("before", ""), "before")
            log_filter = views.LogFilter(
                params.get("type", "")[:100],
                params.get("variable", "")[:400],
                params.get("source", "")[:400],
            )
            view = await asyncio.to_thread(
                partial(views.session_view, store, sid, at, before=before, log_filter=log_filter)
            )
        except VarstoreError as problem:
            return failure(problem)
        keep = {
            k: v for k, v in params.items() if k in ("at", "time", "type", "variable", "source")
        }
        older = (
            f"/s/{quote(sid, safe='')}?" + urlencode({**keep, "before": view.log.older})
            if view.log.older
            else ""
        )
        if request.headers.get("HX-Request") and "before" in params:
            return render("log_rows.html", view=view, older=older)
        return render("session.html", view=view, older=older, time=params.get("time", ""))

    async def variable(request: Request) -> Response:
        sid, name = request.path_params["sid"], request.path_params["name"]
        params = request.query_params
        try:
            a, b = _int(params.get("a", ""), "a"), _int(params.get("b", ""), "b")
            view = await asyncio.to_thread(
                views.variable_view,
                store,
                sid,
                name,
                page_token=params.get("page", "")[:2000],
                diff=(a, b) if a is not None and b is not None else None,
                batch_version=_int(params.get("batch", ""), "batch"),
                rollback_to=_int(params.get("rollback", ""), "rollback"),
            )
        except VarstoreError as problem:
            return failure(problem)
        diff = None
        if view.diff is not None:
            old, new = view.diff
            diff = (old, new, *difference(old.value, new.value))
        commands = None
        if view.rollback is not None and not view.rollback.error:
            commands = _rollback_commands(sid, view.name, view.rollback.to_version, grpc_address)
        return render(
            "variable.html",
            view=view,
            diff=diff,
            diff_error=view.diff_error,
            commands=commands,
            chart_data=_chart_data(view.chart),
        )

    async def integrity(request: Request) -> Response:
        sid = request.path_params["sid"]
        try:
            first = _int(request.query_params.get("from", ""), "from") or 1
            end = _int(request.query_params.get("end", ""), "end") or 0
            chunk = await asyncio.to_thread(views.check_positions, store, sid, first, end)
        except VarstoreError as problem:
            return failure(problem)
        return render("integrity.html", chunk=chunk, sid=sid)

    async def live(request: Request) -> Response:
        sid = request.path_params["sid"]
        name = request.path_params.get("name")
        after = _int(request.query_params.get("after", ""), "after") or 0

        def count() -> tuple[int, int] | None:
            first = queries.read_events(store, sid, backwards=True, page_size=1)
            if first.position <= after:
                return None
            if name is None:
                return first.position, first.position - after
            page = queries.variable_history(
                store, sid, name, newest_first=True, page_size=COUNT_LIMIT + 1
            )
            return first.position, sum(1 for c in page.items if c.position > after)

        return _event_stream(feed(), sid, partial(asyncio.to_thread, count))

    async def export_session(request: Request) -> Response:
        sid = request.path_params["sid"]
        try:
            last = queries.read_events(store, sid, backwards=True, page_size=1).position
            first = max(1, _int(request.query_params.get("from", ""), "from") or 1)
            upto = _int(request.query_params.get("to", ""), "to")
            last = min(last, upto) if upto is not None else last
        except VarstoreError as problem:
            return failure(problem)
        return StreamingResponse(
            session_lines(store, sid, first, last),
            media_type="application/x-ndjson; charset=utf-8",
            headers={"Content-Disposition": attachment(sid, "", first, last, "jsonl")},
        )

    async def export_history(request: Request) -> Response:
        sid, name = request.path_params["sid"], request.path_params["name"]
        try:
            newest, oldest = await asyncio.to_thread(
                lambda: (
                    queries.variable_history(store, sid, name, newest_first=True, page_size=1),
                    queries.variable_history(store, sid, name, page_size=1),
                )
            )
        except VarstoreError as problem:
            return failure(problem)
        first = oldest.items[0].position if oldest.items else 0
        last = newest.items[0].position if newest.items else 0
        return StreamingResponse(
            history_csv(store, sid, name),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": attachment(sid, name, first, last, "csv")},
        )

    routes = [
        Route("/", sessions),
        Route("/live", live_sessions),
        Route("/s/{sid}", session),
        Route("/s/{sid}/live", live),
        Route("/s/{sid}/integrity", integrity),
        Route("/s/{sid}/export.jsonl", export_session),
        Route("/s/{sid}/v/{name}", variable),
        Route("/s/{sid}/v/{name}/live", live),
        Route("/s/{sid}/v/{name}/history.csv", export_history),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes)


def _event_stream(
    the_feed: LiveFeed,
    followed: str,
    count: Callable[[], Awaitable[tuple[int, int] | None]],
) -> StreamingResponse:
    """Server-sent events: ``{"position", "new", "more"}`` whenever ``count`` (called on
    each commit of ``followed``) has something new; a keep-alive comment when idle."""

    async def stream() -> AsyncIterator[str]:
        sent = (0, 0)
        with the_feed.follow(followed) as woken:
            yield "retry: 2000\n\n"
            while not the_feed.closed:
                woken.clear()
                try:
                    now = await count()
                except VarstoreError:
                    return
                if now is not None and now != sent and now[1] > 0:
                    sent = now
                    data = {"position": now[0], "new": now[1], "more": now[1] > COUNT_LIMIT}
                    yield f"data: {json.dumps(data)}\n\n"
                    await asyncio.sleep(NOTICE_INTERVAL)  # a busy session: few notices
                try:
                    await asyncio.wait_for(woken.wait(), KEEPALIVE)
                except TimeoutError:
                    yield ": keep-alive\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _int(text: str, what: str) -> int | None:
    if not text:
        return None
    try:
        number = int(text)
    except ValueError:
        raise ValidationError(f"{what} must be a whole number, not {text[:40]!r}") from None
    if number < 0:
        raise ValidationError(f"{what} must be 0 or more, not {number}")
    return number


def _as_of(position: str, moment: str) -> At:
    """The as-of a URL asks for: a position, else a moment (no zone: UTC), else now."""
    if position:
        return _int(position, "at")
    if not moment:
        return None
    try:
        parsed = datetime.fromisoformat(moment.strip())
    except ValueError:
        raise ValidationError(
            f"time must be a date and time such as 2025-01-31T09:30:00Z, not {moment[:40]!r}"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _chart_data(chart: views.Chart) -> dict[str, Any]:
    values: list[Any] = list(chart.values)
    if chart.kind == "lanes":
        lanes = {label: index for index, label in enumerate(chart.lanes)}
        values = [lanes.get(_lane(value)) for value in chart.values]
    # Compact: times as whole milliseconds after the first (a 5,000-point chart is
    # parsed before the first paint).
    start = chart.times[0] if chart.times else 0.0
    return {
        "kind": chart.kind,
        "start": start,
        "ms": [round((moment - start) * 1000) for moment in chart.times],
        "values": values if chart.kind != "strip" else [],
        "lanes": list(chart.lanes),
        "low": chart.low,
        "high": chart.high,
    }


def _lane(value: PyValue | None) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _rollback_commands(
    session_id: str, name: str, version: int, grpc_address: str
) -> tuple[str, str]:
    cli = f"VARSTORE_SERVER={shlex.quote(grpc_address)} " + shlex.join(
        ["varstore", "rollback", session_id, name, "--to-version", str(version)]
    )
    body = json.dumps(
        {"session_id": session_id, "variable_identifier": name, "to_version": version},
        ensure_ascii=False,
    )
    grpcurl = shlex.join(
        [
            "grpcurl",
            "-plaintext",
            "-d",
            body,
            grpc_address,
            "varstore.v1.VariableStore/RollbackVariable",
        ]
    )
    return cli, grpcurl
