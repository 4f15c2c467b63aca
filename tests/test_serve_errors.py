"""``varstore serve`` refusing to start: one ``varstore: ...`` line on stderr, exit status 1
or 2, no traceback, and no ``.lock`` file left behind, for every ordinary mistake.

Each case runs the installed ``varstore`` console script, as a user would. The processes of
all the cases start at once (one module fixture), since each spends most of its second or
two importing; each test then checks its own case's outcome.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _support import venv_executable
from pki import Pki
from servers import ServerProcess, start_server_process

from varstore.api.config import ConfigError, split_address

TIMEOUT = 300  # all the cases run at once, on a machine that may be busy
PASSWORD = "s3cret-never-shown"


@dataclass(frozen=True)
class Case:
    """A ``varstore serve`` command line and what its one line must say."""

    args: tuple[str, ...]
    says: str
    #: Run without the capabilities that let root read any file (for the unreadable case).
    as_plain_user: bool = False


@dataclass
class Outcome:
    """How a case's process ended."""

    case: Case
    returncode: int
    stdout: str
    stderr: str


@dataclass
class World:
    """What the cases run against: a scratch folder, a port another process holds, and a
    varstore server that holds both a port and a database."""

    folder: Path
    taken_port: int
    server: ServerProcess
    held_db: Path


def _cases(world: World, key: Pki) -> dict[str, Case]:
    folder = world.folder
    memory = ("--db", ":memory:")
    loopback = ("--listen", "127.0.0.1:0")
    text = _write(folder / "notes.txt", b"not a database\n")
    cert = _write(folder / "server.pem", key.server_cert)
    server_key = _write(folder / "server.key", key.server_key)
    client_key = _write(folder / "client.key", key.client_key)
    foreign = folder / "other-program.db"
    with _sqlite(foreign) as conn:
        conn.execute("CREATE TABLE things (id INTEGER)")
    unreadable = _write(folder / "unreadable.db", b"")
    unreadable.chmod(0)
    (folder / "a-directory").mkdir()
    return {
        "port taken by another process": Case(
            (*memory, "--listen", f"127.0.0.1:{world.taken_port}"),
            f"cannot listen on 127.0.0.1:{world.taken_port}: the port is taken",
        ),
        "port taken by another varstore": Case(
            (*memory, "--listen", world.server.address),
            f"cannot listen on {world.server.address}: the port is taken",
        ),
        "port taken, with a database file": Case(
            ("--db", str(folder / "fresh.db"), "--listen", f"127.0.0.1:{world.taken_port}"),
            f"cannot listen on 127.0.0.1:{world.taken_port}: the port is taken",
        ),
        "port too large": Case(
            (*memory, "--listen", "127.0.0.1:99999"), "the port must be from 0 to 65535"
        ),
        "port 65536": Case(
            (*memory, "--listen", "127.0.0.1:65536"), "the port must be from 0 to 65535"
        ),
        "negative port": Case((*memory, "--listen", "127.0.0.1:-1"), "must be HOST:PORT"),
        "no port": Case((*memory, "--listen", "127.0.0.1:"), "must be HOST:PORT"),
        "no colon": Case((*memory, "--listen", "localhost"), "must be HOST:PORT"),
        "IPv6 without brackets": Case((*memory, "--listen", "::1:5000"), "goes in brackets"),
        "unclosed bracket": Case((*memory, "--listen", "[::1:5000"), "goes in brackets"),
        "IPv4 out of range": Case(
            (*memory, "--listen", "999.1.1.1:5000"), "'999.1.1.1' is not an IP address"
        ),
        "host name with a space": Case(
            (*memory, "--listen", "my host:5000"), "'my host' is not an IP address"
        ),
        "host that does not resolve": Case(
            (*memory, "--listen", "no-such-host.invalid:5000", "--insecure"),
            "cannot resolve no-such-host.invalid",
        ),
        "address not of this machine": Case(
            # TEST-NET-1 (RFC 5737): never a local address
            (*memory, "--listen", "192.0.2.1:5000", "--insecure"),
            "not an address of this machine",
        ),
        "database held by another server": Case(
            ("--db", str(world.held_db), *loopback),
            f"database {world.held_db} is in use by another varstore process",
        ),
        "--db is a directory": Case(
            ("--db", str(folder / "a-directory"), *loopback), "is a directory"
        ),
        "--db is a text file": Case(("--db", str(text), *loopback), "file is not a database"),
        "--db is another program's SQLite database": Case(
            ("--db", str(foreign), *loopback), "an SQLite database of another program"
        ),
        "--db in a missing directory": Case(
            ("--db", str(folder / "missing" / "x.db"), *loopback),
            f"{folder / 'missing'} does not exist",
        ),
        "--db under a file": Case(
            ("--db", str(text / "x.db"), *loopback), f"{text} is not a directory"
        ),
        "--db unreadable": Case(
            ("--db", str(unreadable), *loopback),
            "cannot open database",
            as_plain_user=True,
        ),
        "TLS files that are not PEM": Case(
            (*memory, *loopback, "--tls-cert", str(text), "--tls-key", str(text)),
            "must be a PEM certificate chain",
        ),
        "TLS key of another certificate": Case(
            (*memory, *loopback, "--tls-cert", str(cert), "--tls-key", str(client_key)),
            "is not the private key of --tls-cert",
        ),
        "TLS client CA that is not PEM": Case(
            (
                *memory,
                *loopback,
                "--tls-cert",
                str(cert),
                "--tls-key",
                str(server_key),
                "--tls-client-ca",
                str(text),
            ),
            "must hold PEM CA certificates",
        ),
        "TLS certificate file missing": Case(
            (*memory, *loopback, "--tls-cert", str(folder / "no.pem"), "--tls-key", str(text)),
            "cannot read --tls-cert",
        ),
        "--metrics not HOST:PORT": Case(
            (*memory, *loopback, "--metrics", "bogus"), "--metrics must be HOST:PORT"
        ),
        "--metrics port too large": Case(
            (*memory, *loopback, "--metrics", "127.0.0.1:70000"), "from 0 to 65535"
        ),
        "--metrics port taken": Case(
            (*memory, *loopback, "--metrics", f"127.0.0.1:{world.taken_port}"),
            f"cannot serve --metrics on 127.0.0.1:{world.taken_port}",
        ),
        "PostgreSQL that cannot be reached": Case(
            ("--db", f"postgresql://varstore:{PASSWORD}@127.0.0.1:1/logs", *loopback),
            "cannot connect to PostgreSQL at 127.0.0.1:1, database logs: Connection refused",
        ),
    }


CASE_NAMES = [
    "port taken by another process",
    "port taken by another varstore",
    "port taken, with a database file",
    "port too large",
    "port 65536",
    "negative port",
    "no port",
    "no colon",
    "IPv6 without brackets",
    "unclosed bracket",
    "IPv4 out of range",
    "host name with a space",
    "host that does not resolve",
    "address not of this machine",
    "database held by another server",
    "--db is a directory",
    "--db is a text file",
    "--db is another program's SQLite database",
    "--db in a missing directory",
    "--db under a file",
    "--db unreadable",
    "TLS files that are not PEM",
    "TLS key of another certificate",
    "TLS client CA that is not PEM",
    "TLS certificate file missing",
    "--metrics not HOST:PORT",
    "--metrics port too large",
    "--metrics port taken",
    "PostgreSQL that cannot be reached",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("serve-errors")
    folder.chmod(0o755)
    held_db = folder / "held.db"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        server = start_server_process(held_db)
        try:
            yield World(folder, holder.getsockname()[1], server, held_db)
        finally:
            server.terminate()


@pytest.fixture(scope="module")
def outcomes(world: World, pki: Pki) -> dict[str, Outcome]:
    """Every case's outcome, the processes run side by side."""
    cases = _cases(world, pki)
    assert sorted(cases) == sorted(CASE_NAMES)
    before = set(world.folder.iterdir())
    running = {name: _start(case, world.folder) for name, case in cases.items()}
    results: dict[str, Outcome] = {}
    for name, process in running.items():
        try:
            stdout, stderr = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        results[name] = Outcome(cases[name], process.returncode, stdout, stderr)
    left = {p.name for p in set(world.folder.iterdir()) - before}
    assert not {n for n in left if n.endswith(".lock")}, f"lock files left behind: {left}"
    return results


@pytest.mark.parametrize("name", CASE_NAMES)
def test_a_failed_start_is_one_line(name: str, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[name]
    lines = outcome.stderr.splitlines()
    shown = f"exit {outcome.returncode}\nstdout: {outcome.stdout!r}\nstderr: {outcome.stderr!r}"
    assert outcome.returncode in (1, 2), shown
    assert len(lines) == 1, shown
    assert lines[0].startswith("varstore: "), shown
    assert outcome.case.says in lines[0], shown
    assert "Traceback" not in outcome.stdout + outcome.stderr, shown
    assert "listening on" not in outcome.stdout, shown
    assert PASSWORD not in outcome.stdout + outcome.stderr


def test_a_failed_start_leaves_no_lock_and_creates_no_directory(
    world: World, outcomes: dict[str, Outcome]
) -> None:
    folder = world.folder
    assert not (folder / "missing").exists()
    strays = {p.name for p in folder.glob("*.lock")} - {f"{world.held_db.name}.lock"}
    assert not strays
    assert Path(f"{world.held_db}.lock").exists(), "the running server's lock was taken away"
    assert not (folder / "a-directory.lock").exists()
    assert not (folder / "notes.txt.lock").exists()


def test_the_database_lock_file_lives_as_long_as_its_server(tmp_path: Path) -> None:
    db = tmp_path / "varstore.db"
    server = start_server_process(db)
    assert Path(f"{db}.lock").exists()
    assert server.terminate() == 0
    assert not Path(f"{db}.lock").exists()
    again = start_server_process(db)  # and the database opens again
    assert again.terminate() == 0


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("127.0.0.1:65535", ("127.0.0.1", 65535)),
        (":50051", ("127.0.0.1", 50051)),
        ("[::1]:50051", ("::1", 50051)),
        ("localhost:8080", ("localhost", 8080)),
        ("db-1.example.internal:1", ("db-1.example.internal", 1)),
    ],
)
def test_split_address_accepts_ports_0_to_65535(address: str, expected: tuple[str, int]) -> None:
    assert split_address(address) == expected


@pytest.mark.parametrize("address", ["127.0.0.1:65536", "1.2.3:80", "-bad-:80", "[1.2.3.4]:80"])
def test_split_address_refuses_the_malformed(address: str) -> None:
    with pytest.raises(ConfigError):
        split_address(address)


def _start(case: Case, folder: Path) -> subprocess.Popen[str]:
    command = [str(venv_executable("varstore")), "serve", *case.args]
    if case.as_plain_user:
        command = [sys.executable, "-c", _WITHOUT_ROOT_FILE_ACCESS, *command]
    return subprocess.Popen(
        command,
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("VARSTORE_")},
    )


#: Runs the command in its arguments without the Linux capabilities by which root reads and
#: writes any file whatever its mode (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH: dropped from the
#: bounding set, so the exec'd program never has them): a file of mode 000 is then unreadable
#: to root as to anyone (CI runs as root). For another user it changes nothing.
_WITHOUT_ROOT_FILE_ACCESS = """
import ctypes, os, sys
if os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")
os.execv(sys.argv[1], sys.argv[1:])
"""


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _sqlite(path: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))
