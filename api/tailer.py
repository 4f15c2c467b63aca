"""The tailer: keeps this server's projector caught up with a log other servers write.

It reads what the log holds after the projector's global position (``Projector.catch_up``,
the door every recorded event goes through) whenever one of these comes first:

* a **notice** of another writer's commit (PostgreSQL's LISTEN/NOTIFY: one per committed
  group), the fast path; a notice at or below what is applied (our own commit) is ignored;
* a **nudge**: a reader asked for a position this server has not applied yet;
* the **poll interval**, the fallback when notices are lost or late.

After the notices' connection is re-established (a restarted database, a terminated
backend) it reads the log in full, since notices sent meanwhile are lost. A log that cannot
be read is tried again at the next wake-up; the served states stay where they were (a
reader's ``min_position`` then says how far behind they are).

Two threads: one blocks on the notices and only sets a flag; the other does the reading, so
a nudge never waits for a notice to arrive.
"""

from __future__ import annotations

import logging
import threading

from varstore.api.projector import Projector
from varstore.eventstore import LogNotices, RecorderError

__all__ = ["POLL_INTERVAL", "Tailer"]

log = logging.getLogger(__name__)

#: Default seconds between two reads of the log when no notice comes.
POLL_INTERVAL = 1.0
#: Longest wait for a notice before the listening thread checks whether to stop.
_LISTEN_SLICE = 0.5


class Tailer:
    """Feeds other writers' events into ``projector``; :meth:`start` it, :meth:`close` it."""

    def __init__(
        self, projector: Projector, notices: LogNotices | None, poll_interval: float = POLL_INTERVAL
    ) -> None:
        self._projector = projector
        self._notices = notices
        self._poll_interval = poll_interval
        self._due = threading.Event()
        self._stop = threading.Event()
        self._failing = False
        self._threads = [threading.Thread(target=self._read, name="varstore-tailer", daemon=True)]
        if notices is not None:
            self._threads.append(
                threading.Thread(target=self._listen, name="varstore-notices", daemon=True)
            )
        #: Reads of the log, and those that found new events (for tests and metrics).
        self.reads = 0
        self.catch_ups = 0

    def start(self) -> None:
        """Start following the log."""
        for thread in self._threads:
            thread.start()

    def nudge(self) -> None:
        """Read the log now (a reader waits for a position not applied yet)."""
        self._due.set()

    def close(self, timeout: float = 2.0) -> None:
        """Stop following the log. Idempotent."""
        self._stop.set()
        self._due.set()
        if self._notices is not None:
            self._notices.close()
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout)

    def _listen(self) -> None:
        assert self._notices is not None
        while not self._stop.is_set():
            try:
                announced = self._notices.wait(_LISTEN_SLICE)
            except RecorderError as problem:
                if not self._stop.is_set():
                    log.warning("not listening for other servers' commits: %s", problem)
                    self._stop.wait(_LISTEN_SLICE)
                continue
            if announced is not None and (
                announced == 0 or announced > self._projector.global_position
            ):
                self._due.set()

    def _read(self) -> None:
        while not self._stop.is_set():
            self._due.wait(self._poll_interval)
            self._due.clear()
            if self._stop.is_set():
                return
            self.reads += 1
            try:
                if self._projector.catch_up():
                    self.catch_ups += 1
            except RecorderError as problem:
                if not self._failing:
                    log.warning("cannot read the log to follow other servers: %s", problem)
                self._failing = True
                continue
            except Exception:  # a bug in a fold: keep following, the next read retries
                log.exception("following the log failed")
                continue
            if self._failing:
                log.warning("following the log again")
                self._failing = False
