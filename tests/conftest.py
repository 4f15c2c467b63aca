"""Shared fixtures: real servers on free loopback ports and stubs to reach them."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from pki import pki  # noqa: F401 - the certificates fixture (tests/pki.py), for every module
from servers import in_process_server, stub_for

from varstore.api.server import RunningServer
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

_session_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    """A real gRPC server in this process (memory log), shared by a test module."""
    with in_process_server() as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[pb_grpc.VariableStoreStub]:
    """A generated stub on a real channel to :func:`server`."""
    with stub_for(server.address) as made:
        yield made


@pytest.fixture
def session_id(stub: pb_grpc.VariableStoreStub) -> str:
    """A new, empty session on :func:`server`."""
    name = f"test_{next(_session_numbers)}"
    stub.CreateSession(pb.CreateSessionRequest(session_id=name))
    return name


#: Test files that share the one local PostgreSQL server: they run in one pytest-xdist
#: worker, one after another (tests/test_cluster.py restarts that server).
_POSTGRES_FILES = frozenset({"test_cluster.py", "test_client_cluster.py", "test_postgres.py"})
#: Test files that run ``npm ci`` in tests/node (the README's Node example among them): one
#: worker, one after another, so no two installs share node_modules at once.
_NPM_FILES = frozenset({"test_readme.py", "test_node_client.py", "test_contract_files.py"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group the tests for pytest-xdist (``--dist loadgroup``): each file's tests stay in one
    worker (its module fixtures are made once), and every test that touches PostgreSQL,
    in any file, joins the one ``postgresql`` group, so a restart of the server never
    meets another worker's connection; the files that install into tests/node share the
    ``npm`` group."""
    for item in items:
        file_name = item.path.name
        touches_postgres = file_name in _POSTGRES_FILES or any(
            word in item.nodeid for word in ("postgres", "cluster")
        )
        if file_name in _NPM_FILES:  # first: a README section may name PostgreSQL
            group = "npm"
        elif touches_postgres:
            group = "postgresql"
        else:
            group = file_name
        item.add_marker(pytest.mark.xdist_group(group))
