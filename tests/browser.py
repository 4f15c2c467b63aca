"""Debian's Chromium for the browser tests, driven by Playwright (no browser download:
Playwright is pointed at the system binary), and ``varstore serve --http`` to point it at."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _support import skip_or_fail
from servers import ServerProcess, start_server_process

CHROMIUM = Path("/usr/bin/chromium")
#: The page's address on the start-up line.
PAGE = re.compile(r"audit page on (http://\S+?)/[;)]")


def ensure_chromium() -> Path:
    """The system Chromium, installed with apt-get when missing (as root, as CI runs)."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() == 0 and shutil.which("apt-get"):
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            subprocess.run(
                command,
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                timeout=900,
            )
    if not CHROMIUM.exists():
        skip_or_fail("Debian's chromium is not installed (apt-get install -y chromium)")
    return CHROMIUM


@contextmanager
def page_server(db: Path, *extra: str) -> Iterator[tuple[ServerProcess, str]]:
    """``varstore serve --http 127.0.0.1:0`` on ``db``: the process and the page's URL."""
    server = start_server_process(db, "--http", "127.0.0.1:0", *extra)
    try:
        found = PAGE.search(" ".join(server.output))
        assert found, f"no audit page address in {server.output}"
        yield server, found.group(1)
    finally:
        if server.process.poll() is None:
            server.terminate()
