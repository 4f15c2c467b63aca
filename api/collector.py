"""The garbage collector paused while a big structure is built.

Building a million-event index makes millions of long-lived objects; with the collector on,
each full collection on the way scans all of them again (a 200,000-event history index
built 35% slower, and the share grows with the size). The collector is paused for the build
and resumed when the last concurrent build ends; what the other threads made meanwhile is
collected then.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collector_paused"]

_lock = threading.Lock()
_builds = 0
_was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause automatic garbage collection for the ``with`` block (nesting and concurrent
    blocks are counted: it resumes, if it was on, when the last one ends)."""
    global _builds, _was_enabled
    with _lock:
        if _builds == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _builds += 1
    try:
        yield
    finally:
        with _lock:
            _builds -= 1
            if _builds == 0 and _was_enabled:
                gc.enable()
