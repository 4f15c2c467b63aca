"""The past and the present: ``history`` (a variable's versions), ``log`` (a session's
events) and ``watch`` (its changes as they happen, reconnecting by itself)."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import click

from varstore.client import (
    ChangeInfo,
    Client,
    Unavailable,
    VarstoreError,
    WatchInitial,
    WatchProgress,
    WatchUpdate,
)
from varstore.client.cli.options import Options, client_options, context_for, positive_float, run
from varstore.client.cli.output import (
    Output,
    cell,
    change_data,
    emit,
    fail,
    json_ready,
    message,
    show_mapping,
    show_optional,
    show_time,
    show_value,
    table,
    variable_data,
)
from varstore.client.cli.values import POSITION
from varstore.types.events import EventType, summarize, touched_variable_ids

__all__ = ["COMMANDS", "RECONNECT_MAX_DELAY"]

#: Seconds between progress messages while ``watch --timeout`` runs (so it ends on time).
_WATCH_TICK: Final = 0.2

#: The first and the longest pause before ``watch`` opens a lost watch again.
RECONNECT_FIRST_DELAY: Final = 0.5
RECONNECT_MAX_DELAY: Final = 8.0

_COUNT: Final = click.IntRange(min=1)

#: The advice a server's UNAVAILABLE gives a watcher ("; reconnect from position N").
_RECONNECT_ADVICE: Final = re.compile(r";?\s*reconnect from position \d+")


@click.command("history")
@click.argument("session_id", metavar="SESSION")
@click.argument("name")
@click.option("--from-version", type=POSITION, default=0, metavar="N", help="first version")
@click.option("--to-version", type=POSITION, metavar="N", help="last version")
@click.option("--newest-first", is_flag=True, help="newest version first")
@click.option("--limit", type=_COUNT, metavar="N", help="at most N rows")
@client_options()
def history(
    session_id: str,
    name: str,
    from_version: int,
    to_version: int | None,
    newest_first: bool,
    limit: int | None,
) -> None:
    """Every version of a variable (by name: every variable that had the name; by id: one
    lifetime), with its previous value, position, time and source."""

    def call(options: Options, client: Client) -> Output:
        with context_for(client, session_id) as context:
            changes = context.history(
                name, from_version=from_version, to_version=to_version, newest_first=newest_first
            )
        if limit is not None:
            changes = changes[:limit]
        rows = [
            [
                str(c.version),
                _change_kind(c),
                cell(show_optional(c.value, "-")),
                cell(show_optional(c.previous_value, "-")),
                str(c.position),
                show_time(c.recorded_at),
                c.source or "-",
                cell(show_mapping(c.metadata)),
            ]
            for c in changes
        ]
        headers = [
            "VERSION", "KIND", "VALUE", "PREVIOUS", "POSITION", "RECORDED_AT", "SOURCE", "METADATA"
        ]  # fmt: skip
        text = table(headers, rows) if rows else "no changes"
        return Output([change_data(c) for c in changes], text)

    run(call)


def _change_kind(change: ChangeInfo) -> str:
    """The kind, with a rollback's target version and a batch mark: "updated (batch)"."""
    kind = change.kind
    if change.rollback_to_version is not None:
        kind += f" (to v{change.rollback_to_version})"
    if change.in_batch:
        kind += " (batch)"
    return kind


@click.command("log")
@click.argument("session_id", metavar="SESSION")
@click.option(
    "--from", "from_position", type=POSITION, default=0, metavar="N", help="first position"
)
@click.option("--to", "to_position", type=POSITION, metavar="N", help="last position")
@click.option("--backwards", is_flag=True, help="newest event first")
@click.option("--limit", type=_COUNT, metavar="N", help="at most N events")
@client_options()
def log(
    session_id: str,
    from_position: int,
    to_position: int | None,
    backwards: bool,
    limit: int | None,
) -> None:
    """A session's log (deleted sessions' too), one row per event; --json prints JSON Lines
    in the export format. A range that starts past the log's end is an error."""
    if to_position is not None and to_position < from_position:
        raise click.UsageError(f"--to {to_position} is before --from {from_position}")

    def call(options: Options, client: Client) -> Output:
        context = context_for(client, session_id)
        events = context.read_events(from_position, to_position, backwards=backwards, limit=limit)
        if not events and from_position > 1:
            last = context.read_events(backwards=True, limit=1)
            end = last[0]["position"] if last else 0
            if from_position > end:
                raise VarstoreError(
                    f"--from {from_position} is past the end of the log of session "
                    f"{session_id!r} (its last position is {end})"
                )
        if options.json:
            return Output(events, "", json_lines=True)
        names = _variable_names(client, session_id, events)
        rows = [
            [
                str(event["position"]),
                event["type"],
                show_time(datetime.fromisoformat(event["recorded_at"])),
                event["source"] or "-",
                cell(summarize(event["type"], event["payload"], names, show_value)),
            ]
            for event in events
        ]
        headers = ["POSITION", "TYPE", "RECORDED_AT", "SOURCE", "SUMMARY"]
        return Output(None, table(headers, rows) if rows else "no events")

    run(call)


def _variable_names(
    client: Client, session_id: str, events: Sequence[Mapping[str, Any]]
) -> dict[str, str]:
    """Variable id -> name for the variables ``events`` (export-format dicts) touch: from
    their registrations, else the live variables, else each one's history (the id stands
    in when all fail)."""
    names = {
        event["payload"]["variable_id"]: event["payload"]["name"]
        for event in events
        if event["type"] == EventType.VARIABLE_REGISTERED
    }
    unknown = {
        variable_id
        for event in events
        for variable_id in touched_variable_ids(event["type"], event["payload"])
    } - names.keys()
    if not unknown:
        return names
    with context_for(client, session_id) as context:
        with contextlib.suppress(VarstoreError):  # a deleted session's log can still be read
            names.update((v.id, v.name) for v in context.list_variables() if v.id in unknown)
        for variable_id in sorted(unknown - names.keys()):
            try:
                first = context.history(variable_id, to_version=0)
            except VarstoreError:
                continue
            if first:
                names[variable_id] = first[0].name
    return names


@click.command("watch")
@click.argument("session_id", metavar="SESSION")
@click.option(
    "--from",
    "from_position",
    type=POSITION,
    metavar="N",
    help="print the events after this position (0: the whole log; default: from now)",
)
@click.option(
    "--var", "variables", multiple=True, metavar="NAME", help="only this variable (repeatable)"
)
@click.option("--initial", is_flag=True, help="first print the variables' values at the start")
@click.option("--count", type=_COUNT, metavar="N", help="stop after N updates")
@click.option(
    "--timeout",
    "watch_timeout",
    type=positive_float,
    metavar="SECONDS",
    help="stop after this long (an error if --count updates did not arrive by then)",
)
@click.option("-v", "--verbose", is_flag=True, help="also print progress (caught up) lines")
@client_options(timeout=False)
def watch(
    session_id: str,
    from_position: int | None,
    variables: tuple[str, ...],
    initial: bool,
    count: int | None,
    watch_timeout: float | None,
    verbose: bool,
) -> None:
    """Print one line per update as it arrives (--json: one JSON object a line) until
    --count updates, --timeout seconds, or Ctrl-C (exit 0). When the server goes away the
    watch opens again by itself from the last position it printed."""
    watcher = _Watcher(session_id, variables, initial, count, watch_timeout, verbose)
    run(lambda options, client: watcher.run(options, client, from_position), interrupt_code=0)


class _Watcher:
    """One ``watch`` command: prints what the streams deliver and reopens lost ones."""

    def __init__(
        self,
        session_id: str,
        variables: Sequence[str],
        initial: bool,
        count: int | None,
        watch_timeout: float | None,
        verbose: bool,
    ) -> None:
        self.session_id = session_id
        self.variables = list(variables) or None
        self.initial = initial
        self.count = count
        self.watch_timeout = watch_timeout
        self.verbose = verbose
        self.deadline = None if watch_timeout is None else time.monotonic() + watch_timeout
        self.updates = 0
        self.position = 0
        self.caught_up = -1  # the position of the last progress line printed

    def run(self, options: Options, client: Client, start: int | None) -> Output:
        if start is None:  # from now (and an unknown session is an error before watching)
            start = client.get_session(self.session_id).position
        self.position = start
        delay = RECONNECT_FIRST_DELAY
        while not self._done():
            try:
                self._follow(options, client)
            except Unavailable as problem:
                why = _RECONNECT_ADVICE.sub("", message(problem))  # this does just that
                fail(
                    f"lost the watch on {options.server} ({why}); reconnecting from position "
                    f"{self.position}"
                )
                client = self._reconnect(options, client, delay)
                delay = RECONNECT_FIRST_DELAY
                continue
            break
        if self.count is not None and self.updates < self.count:
            if self._timed_out():
                raise VarstoreError(
                    f"timed out after {self.watch_timeout:g} s with {self.updates} of "
                    f"{self.count} updates"
                )
            raise VarstoreError(f"the watch ended after {self.updates} of {self.count} updates")
        return Output(None, "", printed=True)

    def _follow(self, options: Options, client: Client) -> None:
        """Print the items of one stream until it ends or the command is done."""
        left = None if self.deadline is None else max(self.deadline - time.monotonic(), 0.001)
        with context_for(client, self.session_id) as context:
            stream = context.watch(
                from_position=self.position,
                variables=self.variables,
                include_initial=self.initial,
                progress_interval=_WATCH_TICK if self.deadline is not None else None,
                timeout=None if left is None else left + 10,  # a backstop: _done ends it
            )
            with stream:
                for item in stream:
                    self._print(item, options.json)
                    self.position = max(self.position, item.position)
                    if self._done():
                        return

    def _print(self, item: Any, as_json: bool) -> None:
        if isinstance(item, WatchUpdate):
            self.updates += 1
            emit(as_json, _update_data(item), _update_line(item))
        elif isinstance(item, WatchInitial):
            self.initial = False  # printed once, not again after a reconnection
            _emit_initial(as_json, item)
        elif isinstance(item, WatchProgress) and self.verbose and item.position != self.caught_up:
            self.caught_up = item.position
            data = {"kind": "progress", "position": item.position}
            emit(as_json, data, f"{item.position}  (caught up)")

    def _reconnect(self, options: Options, client: Client, delay: float) -> Client:
        """A new client once a server answers again (pauses doubling up to the most)."""
        client.close()
        while True:
            if self._timed_out():
                raise VarstoreError(f"timed out after {self.watch_timeout:g} s while reconnecting")
            time.sleep(delay if self.deadline is None else min(delay, self._left()))
            delay = min(delay * 2, RECONNECT_MAX_DELAY)
            fresh = options.connect()
            try:
                fresh.get_session(self.session_id)
            except Unavailable:
                fresh.close()
                continue
            except BaseException:
                fresh.close()
                raise
            return fresh

    def _left(self) -> float:
        return 0.0 if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)

    def _timed_out(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _done(self) -> bool:
        return (self.count is not None and self.updates >= self.count) or self._timed_out()


def _update_data(update: WatchUpdate) -> dict[str, Any]:
    return {"kind": "update", **json_ready(dataclasses.asdict(update))}


def _update_line(update: WatchUpdate) -> str:
    """``5  t: 0.7 -> 0.9  cli``; a batch's changes on one line, marked."""
    parts = []
    for change in update.changes:
        previous = show_optional(change.previous_value, "-")
        value = show_optional(change.value, "(deleted)")
        text = f"{change.name}: {previous} -> {value}"
        if change.rollback_to_version is not None:
            text += f" (rollback to v{change.rollback_to_version})"
        parts.append(text)
    what = ", ".join(parts) if parts else update.type
    if update.type == "BatchApplied":
        what += " (batch)"
    return f"{update.position}  {what}  {update.source or '-'}"


def _emit_initial(as_json: bool, initial: WatchInitial) -> None:
    """The state at the start: one JSON object, or a line per variable after a heading."""
    variables = [variable_data(v) for v in initial.variables]
    data = {"kind": "initial", "position": initial.position, "variables": variables}
    emit(as_json, data, f"{initial.position}  initial: {len(variables)} variables")
    if not as_json:
        for variable in initial.variables:
            print(f"{initial.position}  {variable.name} = {show_value(variable.value)}")
        sys.stdout.flush()


#: The history commands, as the top-level group adds them.
COMMANDS = (history, log, watch)
