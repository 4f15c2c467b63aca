"""The varstore pytest plugin (entry point ``pytest11: varstore``; ``-p no:varstore`` turns it
off): the ``varstore_server``, ``varstore_client``, ``varstore_session`` and
``varstore_replay`` fixtures, documented in :mod:`varstore.testing`.

A top-level module, not part of the ``varstore`` namespace package, and it imports nothing
of varstore until a fixture is used: pytest loads it into every test run of every project
in the environment, and a run that uses no fixture must not import varstore's packages.
(Being a top-level module in the wheel also tells pytest which module to rewrite asserts
in: without one, pytest would take the sub-packages' names without the ``varstore.``
prefix, ``types`` among them, and warn that the standard library's ``types`` is already
imported.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from varstore.client import Client, SessionContext
    from varstore.testing import Replay, VarstoreServer

__all__ = ["varstore_client", "varstore_replay", "varstore_server", "varstore_session"]


@pytest.fixture(scope="session")
def varstore_server() -> Iterator[VarstoreServer]:
    """A varstore server in this process (memory log, free loopback port) for the run."""
    from varstore.testing import start_varstore_server

    server = start_varstore_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def varstore_client(varstore_server: VarstoreServer) -> Iterator[Client]:
    """A client on ``varstore_server``, closed after the test."""
    with varstore_server.connect() as client:
        yield client


@pytest.fixture
def varstore_session(varstore_client: Client) -> SessionContext:
    """A fresh sync SessionContext on a new, empty session of ``varstore_server``."""
    from varstore.testing import new_session

    return new_session(varstore_client)


@pytest.fixture
def varstore_replay(varstore_client: Client, request: pytest.FixtureRequest) -> Replay:
    """A function: an export's path (and optionally a position) to a sync SessionContext
    on a new session rebuilt from it, on ``varstore_server``."""
    from varstore.testing import replayer

    return replayer(varstore_client, request.path.parent)
