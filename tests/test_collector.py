"""The collector paused during index builds: resumed by the last build, never turned on by one."""

from __future__ import annotations

import gc
import threading

from varstore.api.collector import collector_paused


def test_the_collector_is_paused_for_the_block_and_resumed_after() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_concurrent_builds_resume_it_only_when_the_last_one_ends() -> None:
    first_inside, release_first = threading.Event(), threading.Event()

    def long_build() -> None:
        with collector_paused():
            first_inside.set()
            release_first.wait(10)

    builder = threading.Thread(target=long_build)
    builder.start()
    assert first_inside.wait(10)
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled(), "a build still runs: the collector stays paused"
    release_first.set()
    builder.join(10)
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_it_resumes_when_the_build_raises() -> None:
    try:
        with collector_paused():
            raise ValueError("a failed build")
    except ValueError:
        pass
    assert gc.isenabled()
