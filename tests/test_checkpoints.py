"""Checkpoints are derived data: start-up from a checkpoint plus the tail of the log
serves exactly what a fold of the whole log serves."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from varstore.api import commands
from varstore.api.store import Store
from varstore.eventstore.sqlite import SQLiteRecorder


def write_some(store: Store, values: list[int]) -> None:
    store.execute("s", commands.CreateSession("s"))
    store.execute("s", commands.RegisterVariable("s", "n", "integer", 0))
    store.execute("t", commands.CreateSession("t"))
    for value in values:
        store.execute("s", commands.SetVariable("s", "n", value))
        store.execute("t", commands.SetVariables("t", {}, atomic=True))


@settings(max_examples=15, deadline=None)
@given(values=st.lists(st.integers(-5, 5), max_size=25), every=st.integers(1, 6))
def test_a_restart_from_a_checkpoint_serves_what_a_full_fold_serves(
    values: list[int], every: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "log.db"
        store = Store(SQLiteRecorder(db), checkpoint_every=every)
        try:
            write_some(store, values)
            before = {sid: store.published(sid) for sid in ("s", "t")}
        finally:
            store.close()
        from_checkpoint = Store(SQLiteRecorder(db))
        try:
            events = 3 + len(values)  # two creations, one registration, one set per value
            has_checkpoint = from_checkpoint.recorder.load_checkpoint() is not None
            assert has_checkpoint == (events >= every)
            assert {sid: from_checkpoint.published(sid) for sid in ("s", "t")} == before
            from_checkpoint.drop_snapshots()
        finally:
            from_checkpoint.close()
        full_fold = Store(SQLiteRecorder(db))
        try:
            assert full_fold.recorder.load_checkpoint() is None
            assert {sid: full_fold.published(sid) for sid in ("s", "t")} == before
        finally:
            full_fold.close()


def test_a_checkpoint_of_another_format_is_ignored(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    store = Store(SQLiteRecorder(db))
    write_some(store, [1, 2, 3])
    before = store.published("s")
    store.close()
    recorder = SQLiteRecorder(db)
    recorder.save_checkpoint(10**6, b'{"format": 999}')
    restarted = Store(recorder)
    try:
        assert restarted.published("s") == before
    finally:
        restarted.close()
