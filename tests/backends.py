"""Every recorder backend the tests run on, in one place: the recorder contract suite and
the stateful model of the store are parametrised over ``BACKENDS``, so a backend joins
both by adding one entry here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from varstore.eventstore import MemoryRecorder, Recorder, SQLiteRecorder

__all__ = ["BACKENDS"]

#: A fresh, empty recorder of each backend, made in a directory of its own.
BACKENDS: dict[str, Callable[[Path], Recorder]] = {
    "memory": lambda directory: MemoryRecorder(),
    "sqlite": lambda directory: SQLiteRecorder(directory / "events.db"),
}
