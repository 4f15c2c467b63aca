"""Progress of long transfers on stderr: a rich bar (count of total, rate, time left) when
stderr is a terminal; with ``--progress`` elsewhere, a count line every PROGRESS_EVERY
events; otherwise nothing (a pipe or a log file gets no bar)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Final, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["PROGRESS_EVERY", "TransferProgress", "on_terminal"]

#: Without a terminal, ``--progress`` prints a line every this many events.
PROGRESS_EVERY: Final = 1000


def on_terminal() -> bool:
    """Whether stderr is a terminal (then bars are drawn)."""
    return sys.stderr.isatty()


class _Rate(ProgressColumn):
    """``12,345 events/s``."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        elapsed = task.finished_time or task.elapsed
        if speed is None and elapsed:  # too few samples yet: the average so far
            speed = task.completed / elapsed
        text = "? events/s" if speed is None else f"{speed:,.0f} events/s"
        return Text(text, style="progress.data.speed")


class TransferProgress:
    """Called with the count of events so far; a context manager that ends the display.

    ``total``: how many events are expected (None: unknown, the bar pulses).
    ``asked``: ``--progress`` (count lines even when stderr is not a terminal).
    """

    def __init__(self, verb: str, total: int | None, *, asked: bool = False) -> None:
        self.verb = verb
        self.count = 0
        self._lines = asked and not on_terminal()
        self._next = PROGRESS_EVERY
        self._bar: Progress | None = None
        if on_terminal():
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _Rate(),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                console=Console(file=sys.stderr),
            )
            self._task = self._bar.add_task(f"{verb} events", total=total)

    def __enter__(self) -> Self:
        if self._bar is not None:
            self._bar.start()
        return self

    def __call__(self, count: int) -> None:
        self.count = count
        if self._bar is not None:
            self._bar.update(self._task, completed=count)
        elif self._lines and count >= self._next:
            print(f"varstore: {self.verb} {count} events", file=sys.stderr, flush=True)
            self._next = (count // PROGRESS_EVERY + 1) * PROGRESS_EVERY

    def __exit__(
        self,
        kind: type[BaseException] | None,
        problem: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            if kind is None:  # a finished bar shows the total it reached
                self._bar.update(self._task, total=self.count, completed=self.count)
            self._bar.stop()
        elif self._lines and kind is None:
            print(f"varstore: {self.verb} {self.count} events", file=sys.stderr, flush=True)
