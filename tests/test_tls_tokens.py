"""TLS, mTLS and bearer tokens through real servers, with certificates the tests make
(tests/pki.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from pki import ADMIN, Pki, serving, tls
from servers import start_server_process

from varstore.api.auth import Tokens
from varstore.api.config import Security
from varstore.api.server import RunningServer
from varstore.client import (
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    aconnect,
    connect,
)
from varstore.types import to_proto
from varstore.v1 import varstore_pb2 as pb
from varstore.v1 import varstore_pb2_grpc as pb_grpc

# -- servers and stubs -------------------------------------------------------------------------


@contextmanager
def stub(
    address: str, credentials: grpc.ChannelCredentials | None
) -> Iterator[pb_grpc.VariableStoreStub]:
    channel = (
        grpc.secure_channel(address, credentials)
        if credentials is not None
        else grpc.insecure_channel(address)
    )
    try:
        yield pb_grpc.VariableStoreStub(channel)
    finally:
        channel.close()


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


#: One attempt: a refused handshake is UNAVAILABLE, which the client would otherwise retry
#: until its retry deadline (60 s) passed, to raise the same error.
ONE_ATTEMPT = {"retry": False}


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code()  # type: ignore[no-any-return]


# -- TLS and mTLS ------------------------------------------------------------------------------


def test_a_tls_server_serves_a_client_that_trusts_its_ca(pki: Pki) -> None:
    with (
        serving(Security(tls=tls(pki))) as running,
        connect(running.address, root_certificates=pki.ca) as client,
    ):
        ctx = client.session("over-tls")
        ctx.register_variable("t", "float", 0.5)
        assert ctx.get_variable("t", bypass_cache=True) == 0.5


def test_a_tls_server_refuses_a_plain_client_and_one_that_trusts_another_ca(pki: Pki) -> None:
    with serving(Security(tls=tls(pki))) as running:
        with stub(running.address, None) as plain:
            assert code_of(lambda: plain.ListSessions(pb.ListSessionsRequest(), timeout=5)) == (
                grpc.StatusCode.UNAVAILABLE
            )
        with (
            connect(running.address, ONE_ATTEMPT, root_certificates=pki.other_ca) as client,
            pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            client.list_sessions()


def test_mtls_needs_a_client_certificate_and_records_its_subject_as_the_source(pki: Pki) -> None:
    with serving(Security(tls=tls(pki, mtls=True))) as running:
        # Refused for want of a certificate: the same CA, with one, is served below.
        with (
            connect(running.address, ONE_ATTEMPT, root_certificates=pki.ca) as anonymous,
            pytest.raises(Unavailable),
        ):
            anonymous.list_sessions()
        with connect(
            running.address,
            {"source": "alice's script"},
            root_certificates=pki.ca,
            certificate_chain=pki.client_cert,
            private_key=pki.client_key,
        ) as client:
            ctx = client.session("mtls")
            ctx.register_variable("n", "integer", 1)
            ctx.set_variable("n", 2)
        [event] = running.store.recorder.read_session("mtls", 3, 3)
        assert event.source.startswith("cert:")
        assert "CN=alice" in event.source
        assert event.source.endswith("(alice's script)")


async def test_the_async_client_speaks_tls_with_a_token(pki: Pki) -> None:
    with serving(Security(tls=tls(pki), admin_token=ADMIN)) as running:
        async with aconnect(running.address, root_certificates=pki.ca, token=ADMIN) as client:
            ctx = await client.create_session("async-tls")
            await ctx.register_variable("x", "string", "hi")
            assert await ctx.get_variable("x", bypass_cache=True) == "hi"


# -- tokens ------------------------------------------------------------------------------------


@pytest.fixture
def token_server() -> Iterator[RunningServer]:
    with serving(Security(admin_token=ADMIN)) as running:
        yield running


def create(stub_: pb_grpc.VariableStoreStub, session_id: str) -> pb.CreateSessionResponse:
    answer: pb.CreateSessionResponse = stub_.CreateSession(
        pb.CreateSessionRequest(session_id=session_id, source="alice"), metadata=bearer(ADMIN)
    )
    return answer


def test_calls_without_a_valid_token_are_unauthenticated(token_server: RunningServer) -> None:
    with stub(token_server.address, None) as s:
        request = pb.ListSessionsRequest()
        assert code_of(lambda: s.ListSessions(request)) == grpc.StatusCode.UNAUTHENTICATED
        for wrong in ("nope", ADMIN + "x", "vst1.cw.1.AAAA", "vst1.!!.x.y"):
            call = lambda w=wrong: s.ListSessions(request, metadata=bearer(w))
            assert code_of(call) == (grpc.StatusCode.UNAUTHENTICATED), wrong
        # What the server is stays open: a client learns there that it needs a token.
        info = s.GetServerInfo(pb.GetServerInfoRequest())
        assert info.requires_token


def test_the_admin_token_does_everything_and_is_recorded_as_admin_with_the_label(
    token_server: RunningServer,
) -> None:
    with stub(token_server.address, None) as s:
        created = create(s, "a")
        assert created.session_token.startswith("vst1.")
        listed = s.ListSessions(pb.ListSessionsRequest(), metadata=bearer(ADMIN))
        assert [session.id for session in listed.sessions] == ["a"]
    [event] = token_server.store.recorder.read_session("a")
    assert event.source == "admin (alice)"


def test_a_session_token_grants_its_session_only_and_learns_nothing_of_others(
    token_server: RunningServer,
) -> None:
    with stub(token_server.address, None) as s:
        mine = create(s, "mine").session_token
        create(s, "theirs")
        own = bearer(mine)
        s.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id="mine", name="n", type="integer", initial_value=to_proto(1)
            ),
            metadata=own,
        )
        got = s.GetVariable(
            pb.GetVariableRequest(session_id="mine", variable_identifier="n"), metadata=own
        )
        assert got.variable.value.integer_value == 1
        assert got.variable.source == "session:mine"
        answers = []
        for other in ("theirs", "never-existed"):
            with pytest.raises(grpc.RpcError) as caught:
                s.GetSession(pb.GetSessionRequest(session_id=other), metadata=own)
            answers.append((caught.value.code(), caught.value.details()))
        # The same answer for a session that exists and one that does not.
        assert answers[0] == answers[1]
        assert answers[0][0] == grpc.StatusCode.PERMISSION_DENIED
        for admin_only in (
            lambda: s.ListSessions(pb.ListSessionsRequest(), metadata=own),
            lambda: s.CreateSession(pb.CreateSessionRequest(session_id="new"), metadata=own),
            lambda: s.ForkSession(pb.ForkSessionRequest(session_id="mine"), metadata=own),
        ):
            assert code_of(admin_only) == grpc.StatusCode.PERMISSION_DENIED


def test_a_session_created_again_gets_a_new_token_and_the_old_one_is_refused(
    token_server: RunningServer,
) -> None:
    with stub(token_server.address, None) as s:
        old = create(s, "again").session_token
        s.DeleteSession(pb.DeleteSessionRequest(session_id="again"), metadata=bearer(old))
        new = create(s, "again").session_token
        assert new != old
        request = pb.GetSessionRequest(session_id="again")
        assert code_of(lambda: s.GetSession(request, metadata=bearer(old))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert s.GetSession(request, metadata=bearer(new)).session.id == "again"


def test_fork_and_import_answer_with_the_new_sessions_token(token_server: RunningServer) -> None:
    with stub(token_server.address, None) as s:
        create(s, "origin")
        forked = s.ForkSession(
            pb.ForkSessionRequest(session_id="origin", new_session_id="copy"),
            metadata=bearer(ADMIN),
        )
        assert forked.session_token
        got = s.GetSession(
            pb.GetSessionRequest(session_id="copy"), metadata=bearer(forked.session_token)
        )
        assert got.session.id == "copy"


def test_the_python_client_and_session_tokens(token_server: RunningServer) -> None:
    with connect(token_server.address) as anonymous, pytest.raises(Unauthenticated):
        anonymous.list_sessions()
    with stub(token_server.address, None) as s:
        token = create(s, "py").session_token
    with connect(token_server.address, token=token) as client:
        ctx = client.session("py")
        ctx.register_variable("x", "integer", 7)
        assert ctx.get_variable("x") == 7
        with pytest.raises(PermissionDenied):
            client.list_sessions()
        with pytest.raises(PermissionDenied):
            client.session("someone-else", {"create_session": False}).get_variable("x")


def test_the_python_client_hands_over_the_token_of_each_session_it_makes(
    token_server: RunningServer, tmp_path: Path
) -> None:
    with connect(token_server.address, token=ADMIN) as admin:
        made = admin.create_session("handed")
        made.register_variable("x", "integer", 1)
        forked = admin.fork_session("handed", new_session_id="handed-fork")
        admin.export_session("handed", tmp_path / "handed.jsonl")
        imported = admin.import_session(tmp_path / "handed.jsonl", session_id="handed-copy")
        assert admin.session("handed").session_token == ""  # only the making answer has one
    tokens = {ctx.session_id: ctx.session_token for ctx in (made, forked, imported)}
    assert all(tokens.values()) and len(set(tokens.values())) == 3
    for session_id, token in tokens.items():
        with connect(token_server.address, token=token) as client:
            assert client.session(session_id).get_variable("x") == 1
            other = next(sid for sid in tokens if sid != session_id)
            with pytest.raises(PermissionDenied):
                client.session(other, {"create_session": False}).get_variable("x")


def test_tokens_from_one_secret_agree_and_from_another_do_not() -> None:
    first, second = (
        Tokens(ADMIN, b"shared-secret-0123456789"),
        Tokens("x" * 20, b"shared-secret-0123456789"),
    )
    token = first.issue("s", 1)
    assert second.identify(token) == first.identify(token)
    assert Tokens(ADMIN, b"another-secret-0123456789").identify(token) is None
    assert first.identify(first.issue("s", 2)) != first.identify(token)


def test_a_client_never_sends_a_token_in_clear_beyond_loopback() -> None:
    with pytest.raises(ValueError, match="without TLS"):
        connect("192.0.2.1:50051", token=ADMIN)


# -- the serve command -------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "varstore.api.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_serve_without_tls_refuses_a_non_loopback_address_in_one_line(tmp_path: Path) -> None:
    result = run_cli("serve", "--db", ":memory:", "--listen", "0.0.0.0:0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "refusing to listen on 0.0.0.0:0 without TLS" in lines[0]
    assert "--insecure" in lines[0]


def test_serve_says_it_listens_on_loopback_only_without_tls(tmp_path: Path) -> None:
    server = start_server_process(":memory:")
    try:
        [line] = [line for line in server.output if "listening on" in line]
        assert "no TLS, no tokens; loopback only" in line
    finally:
        server.terminate()


def test_the_cli_talks_to_a_tls_server_with_tokens_and_a_restart_keeps_session_tokens(
    tmp_path: Path, pki: Pki
) -> None:
    for name, data in (
        ("ca.pem", pki.ca),
        ("cert.pem", pki.server_cert),
        ("key.pem", pki.server_key),
    ):
        (tmp_path / name).write_bytes(data)
    (tmp_path / "admin").write_text(ADMIN + "\n")
    (tmp_path / "secret").write_text("a-secret-shared-by-servers-0123")
    flags = (
        "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"),
        "--admin-token-file", str(tmp_path / "admin"),
        "--token-secret-file", str(tmp_path / "secret"),
    )  # fmt: skip
    db = tmp_path / "log.db"
    server = start_server_process(db, *flags)
    try:
        assert any("TLS, tokens" in line for line in server.output)
        ca = ("--server", server.address, "--ca-file", str(tmp_path / "ca.pem"))
        refused = run_cli("session", "list", *ca)
        assert refused.returncode == 1
        assert "token" in refused.stderr.lower()
        made = run_cli(
            "session", "create", "cli-made", *ca, "--token-file", str(tmp_path / "admin")
        )
        assert made.returncode == 0, made.stderr
        [token_line] = [line for line in made.stdout.splitlines() if "session_token" in line]
        session_token = token_line.split()[-1]
        as_session = run_cli(
            "get", "cli-made", "nothing", *ca, env={"VARSTORE_TOKEN": session_token}
        )
        assert "not found" in as_session.stderr  # the session's own token reaches it
        other = run_cli("session", "list", *ca, env={"VARSTORE_TOKEN": session_token})
        assert other.returncode == 1 and "needs the admin token" in other.stderr
        listed = run_cli("session", "list", *ca, env={"VARSTORE_TOKEN": ADMIN})
        assert "cli-made" in listed.stdout
        with stub(server.address, grpc.ssl_channel_credentials(pki.ca)) as s:
            token = s.ForkSession(
                pb.ForkSessionRequest(session_id="cli-made", new_session_id="kept"),
                metadata=bearer(ADMIN),
            ).session_token
    finally:
        server.terminate()
    server = start_server_process(db, *flags)
    try:
        with stub(server.address, grpc.ssl_channel_credentials(pki.ca)) as s:
            got = s.GetSession(pb.GetSessionRequest(session_id="kept"), metadata=bearer(token))
            assert got.session.id == "kept"
    finally:
        server.terminate()
