"""The ``varstore.testing`` pytest plugin, used as a user would: a test file that only
names the fixtures, run by a separate pytest process with no conftest and no
``-p`` option, so the ``pytest11`` entry point alone must bring the plugin in."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from varstore.api.server import RunningServer
from varstore.client import Client, connect

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[Client]:
    """A client on the module's server (where the "production" session is recorded)."""
    with connect(server.address) as made:
        yield made


@pytest.fixture
def recorded(client: Client, pytester: pytest.Pytester) -> Path:
    """A session recorded on another server, exported as JSON Lines beside the test file."""
    context = client.create_session()
    context.register_variable("temperature", "float", 0.5, constraints={"min": 0, "max": 2})
    context.register_variable("model", "string", "small")  # position 3
    context.set_variable("temperature", 1.0)  # position 4
    context.update_variables({"temperature": 1.5, "model": "big"})  # position 5
    client.delete_session(context.session_id)  # position 6: replays still work
    folder = pytester.path / "sessions"
    folder.mkdir()
    path = folder / "prod.jsonl"
    client.export_session(context.session_id, path)
    return path


def test_the_plugin_is_registered_through_the_entry_point(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("varstore")


def test_the_fixtures_work_with_no_setup(pytester: pytest.Pytester, recorded: Path) -> None:
    pytester.makepyfile(
        test_user=textwrap.dedent(
            """
            import pytest

            from varstore.client import SessionContext, SessionNotFound

            addresses = set()


            def test_a_server_in_this_process(varstore_server):
                host, _, port = varstore_server.address.rpartition(":")
                assert host == "127.0.0.1" and int(port) > 0
                assert varstore_server.store.sessions() is not None
                addresses.add(varstore_server.address)


            def test_a_fresh_session(varstore_session, varstore_server):
                assert isinstance(varstore_session, SessionContext)
                assert varstore_session.list_variables() == []
                varstore_session.register_variable("n", "integer", 1)
                assert varstore_session.set_variable("n", 2) == 1
                state = varstore_server.store.published(varstore_session.session_id)
                assert state.position == 3
                addresses.add(varstore_server.address)


            def test_each_test_gets_its_own_session(varstore_session):
                assert varstore_session.list_variables() == []


            def test_a_replay_of_a_recorded_session(varstore_replay, varstore_server):
                whole = varstore_replay("sessions/prod.jsonl", to_position=5)
                assert isinstance(whole, SessionContext)
                assert whole.get_variable("temperature") == 1.5
                assert whole.get_variable("model") == "big"
                whole.set_variable("temperature", 0.1)  # a replay is a live session
                early = varstore_replay("sessions/prod.jsonl", to_position=4)
                assert early.get_variable("temperature") == 1.0
                assert early.get_variable("model") == "small"
                assert early.session_id != whole.session_id
                named = varstore_replay("sessions/prod.jsonl", 3, session_id="replayed")
                assert named.session_id == "replayed"
                assert named.get_variable("temperature") == 0.5
                addresses.add(varstore_server.address)


            def test_a_replay_of_the_whole_log_ends_deleted(varstore_replay):
                ended = varstore_replay("sessions/prod.jsonl")
                with pytest.raises(SessionNotFound):
                    ended.list_variables()


            def test_one_server_for_the_run():
                assert len(addresses) == 1
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "ignore")
    result.assert_outcomes(passed=6)


def test_the_plugin_can_be_turned_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_off="""
        def test_uses_it(varstore_session):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:varstore", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'varstore_session' not found*"])
