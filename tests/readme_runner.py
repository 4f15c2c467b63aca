"""Runs the README's blocks in order, as a reader would, and records what failed where.

Shell commands run in one bash per section (so ``export`` and ``$?`` behave as in a
terminal), in a scratch directory that looks like a clone (``.venv``, ``tests`` and ``proto``
are links to the real ones), with the test virtualenv's bin first on PATH and every
``VARSTORE_*`` variable of the calling environment removed. A ``varstore serve`` command
shown with its listening line is started in the background on free ports (``--listen``, ``--http`` and ``--metrics`` get port
0); the addresses the README shows in the start-up line under it then stand for the real
ones: they are replaced in commands and Python code, and the real ones are replaced by them
in what is printed. One shown without a listening line (a refusal to start) runs in the
foreground like any other command.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from readme_blocks import Block, Command, Readme, Section
from readme_match import difference, matches
from readme_python import run_python

T = TypeVar("T")

README_ADDRESS = "127.0.0.1:50051"
COMMAND_TIMEOUT = 90.0
SERVER_START_TIMEOUT = 60.0

_SERVE = re.compile(r"(?:^|[\s/])varstore\s+serve\b")
_LISTENING = re.compile(r"listening on (\S+)$")
_LISTEN_FLAG = re.compile(r"--listen(?:=|\s+)(\S+)")
_ADDRESS_FLAGS = re.compile(r"(--(?:listen|http|metrics))(?:=|\s+)(\S+):(\d+)")
_ADDRESS = re.compile(r"(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]|localhost):\d+")


@dataclass
class SectionResult:
    """What happened to one section's blocks."""

    section: Section
    failures: list[tuple[int, str]] = field(default_factory=list)  # (README line, message)
    ran: int = 0  # blocks run to the end
    skipped: list[Block] = field(default_factory=list)  # blocks marked skip
    texts: int = 0  # ``text`` blocks (figures, not examples)
    not_run: str | None = None  # why the section could not run here (a missing tool)
    seconds: float = 0.0  # wall time of the section's blocks


class NotRunnable(Exception):
    """A tool a block needs is missing on this machine (the test skips, or fails in CI)."""


class Shell:
    """One bash that commands are fed to, each answered with its output and exit status."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
        """Run ``command`` (stdin from /dev/null, stderr into stdout); its status and output."""
        marker = f"__readme_done_{uuid.uuid4().hex}__"
        script = (
            f"{{ {command}\n}} </dev/null 2>&1\n"
            f"__readme_status=$?; printf '\\n{marker} %d\\n' $__readme_status; "
            "(exit $__readme_status)\n"
        )
        assert self.process.stdin is not None
        self.process.stdin.write(script)
        self.process.stdin.flush()
        output: list[str] = []
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                self.close()
                raise TimeoutError(
                    f"no end after {timeout:.0f} s; output so far:\n{''.join(output)}"
                ) from None
            if line is None:
                raise RuntimeError(f"the shell exited; output:\n{''.join(output)}")
            if line.startswith(marker):
                status = int(line.split()[1])
                text = "".join(output)
                return status, text.removesuffix("\n")
            output.append(line)

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@dataclass
class BackgroundServer:
    """A ``varstore serve`` the README started, and everything it printed."""

    process: subprocess.Popen[str]
    lines: list[str]
    address: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_background_server(command: str, cwd: Path, env: dict[str, str]) -> BackgroundServer:
    """Start ``command`` (a ``varstore serve``) on free ports (``--listen``, ``--http`` and
    ``--metrics`` keep their host, with port 0); wait for its listening line."""
    if not _LISTEN_FLAG.search(command):
        env = {**env, "VARSTORE_LISTEN": "127.0.0.1:0"}
    command = _ADDRESS_FLAGS.sub(r"\1 \2:0", command)
    process = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=cwd,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            listening = _LISTENING.search(line.strip())
            if listening and not found:
                found.append(listening.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(SERVER_START_TIMEOUT) or not found:
        if process.poll() is None:
            process.kill()
        raise RuntimeError("the server printed no listening line:\n" + "\n".join(lines))
    return BackgroundServer(process, lines, found[0])


def _link_tests(tests: Path, into: Path) -> None:
    """``into`` as the repository's tests/ folder: a link to each entry, but a copy of the
    Node project without its node_modules, so the README's ``npm ci`` installs into a
    folder of its own (the Node tests install into the repository's, maybe at once)."""
    into.mkdir()
    for entry in tests.iterdir():
        if entry.name == "node":
            shutil.copytree(
                entry, into / "node", ignore=shutil.ignore_patterns("node_modules", ".*")
            )
        else:
            (into / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())


class ReadmeRunner:
    """Runs every section of a README, in order, in one scratch directory."""

    def __init__(
        self, readme: Readme, workdir: Path, repo: Path, prepare_node: Callable[[], None]
    ) -> None:
        self.readme = readme
        self.workdir = workdir
        self.prepare_node = prepare_node
        self.addresses: dict[str, str] = {}  # the README's address -> the real one
        self.servers: list[BackgroundServer] = []
        for name, target in ((".venv", Path(sys.prefix)), ("proto", repo / "proto")):
            (workdir / name).symlink_to(target, target_is_directory=True)
        _link_tests(repo / "tests", workdir / "tests")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VARSTORE_")}
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.env.pop("PYTHONPATH", None)

    # What stands for what ---------------------------------------------------------------

    def forward(self, text: str) -> str:
        """The README's text with its addresses replaced by the real servers'."""
        for shown, real in self.addresses.items():
            text = text.replace(shown, real)
        return text

    def back(self, text: str) -> str:
        """Output with the real servers' addresses replaced by the README's."""
        for shown, real in self.addresses.items():
            text = text.replace(real, shown)
        return text

    def shell_env(self) -> dict[str, str]:
        env = dict(self.env)
        if README_ADDRESS in self.addresses:
            env["VARSTORE_SERVER"] = self.addresses[README_ADDRESS]
        return env

    # Running ------------------------------------------------------------------------------

    def run(self) -> list[SectionResult]:
        results = []
        for section in self.readme.sections:
            started = time.monotonic()
            result = self._run_section(section)
            result.seconds = time.monotonic() - started
            results.append(result)
        return results

    def close(self) -> None:
        for server in self.servers:
            server.stop()

    def _run_section(self, section: Section) -> SectionResult:
        result = SectionResult(section)
        shell: Shell | None = None
        try:
            for block in section.blocks:
                if block.skip is not None:
                    result.skipped.append(block)
                    continue
                if block.kind == "text":
                    result.texts += 1
                    continue
                if block.kind == "unknown":
                    how = "say how it runs (sh, python or text) or mark it doctest: skip"
                    result.failures.append((block.line, f"a ```{block.info} block: {how}"))
                    return result
                if block.kind == "python":
                    outcome = self._with_env(partial(run_python, block, self.forward, self.back))
                    if outcome.failure is not None:
                        line, message = outcome.failure
                        if outcome.output:
                            message += "\nprinted:\n" + outcome.output
                        result.failures.append((line, message))
                        return result
                    result.ran += 1
                    continue
                if shell is None:
                    shell = Shell(self.workdir, self.shell_env())
                failure = self._run_shell_block(block, shell)
                if failure is not None:
                    result.failures.append(failure)
                    return result
                result.ran += 1
        except NotRunnable as missing:
            result.not_run = str(missing)
        finally:
            if shell is not None:
                shell.close()
        return result

    def _with_env(self, call: Callable[[], T]) -> T:
        """Run ``call`` in the scratch directory with the shell's VARSTORE_* environment."""
        saved_cwd = Path.cwd()
        saved_env = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.shell_env())
        os.chdir(self.workdir)
        try:
            return call()
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)

    def _run_shell_block(self, block: Block, shell: Shell) -> tuple[int, str] | None:
        try:
            commands = block.commands()
        except ValueError as bad:
            return block.line, str(bad)
        if not commands:
            return block.line, "a shell block with no '$ ' command"
        for command in commands:
            failure = self._run_command(command, shell)
            if failure is not None:
                return failure
        return None

    def _run_command(self, command: Command, shell: Shell) -> tuple[int, str] | None:
        expected = "\n".join(command.expected)
        if _SERVE.search(command.text) and any(_LISTENING.search(x) for x in command.expected):
            return self._start_server(command, expected)
        if {"node", "npm"} & set(shlex.split(command.text, comments=True)):
            self.prepare_node()
        try:
            status, output = shell.run(self.forward(command.text))
        except (TimeoutError, RuntimeError) as stuck:
            return command.line, f"`{_first_line(command.text)}`: {stuck}"
        output = self.back(output)
        if not matches(expected, output):
            return command.line, (
                f"`{_first_line(command.text)}` (exit {status}) printed something else:\n"
                + difference(expected, output)
            )
        return None

    def _start_server(self, command: Command, expected: str) -> tuple[int, str] | None:
        shown = _LISTENING.search(command.expected[-1]) if command.expected else None
        flag = _LISTEN_FLAG.search(command.text)
        readme_address = shown.group(1) if shown else flag.group(1) if flag else README_ADDRESS
        try:
            server = start_background_server(command.text, self.workdir, self.env)
        except RuntimeError as failed:
            return command.line, f"`{_first_line(command.text)}`: {failed}"
        self.servers.append(server)
        self.addresses[readme_address] = server.address
        if shown:  # the start-up line's other addresses (audit page, metrics), in order
            real_line = next((line for line in server.lines if _LISTENING.search(line)), "")
            shown_addresses = _ADDRESS.findall(command.expected[-1])
            pairs = zip(shown_addresses, _ADDRESS.findall(real_line), strict=False)
            self.addresses.update(dict(pairs))
        printed = self.back("\n".join(server.lines))
        if not matches(expected, printed):
            return command.line, "the server printed something else:\n" + difference(
                expected, printed
            )
        return None


def _first_line(command: str) -> str:
    first = command.splitlines()[0]
    return first + (" ..." if "\n" in command else "")
