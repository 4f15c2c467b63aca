"""The audit page's front-end files are the locked npm packages' own files, vendored into
the package (no CDN, no network at run time), and the page refuses to be exposed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from _support import NPM_TIMEOUT, ROOT, run, skip_or_fail, venv_executable

from varstore.api.config import ConfigError, check_http_exposure

WEB = ROOT / "api" / "web"
VENDOR = WEB / "static" / "vendor"


def _digest(path: Path) -> str:
    import base64
    import hashlib

    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def _manifest() -> list[dict[str, str]]:
    entries: list[dict[str, str]] = json.loads((VENDOR / "MANIFEST.json").read_text())
    return entries


def _npm() -> str:
    found = shutil.which("npm")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "npm"]):
            subprocess.run(command, check=False, capture_output=True, timeout=900)
        found = shutil.which("npm")
    if found is None:
        skip_or_fail("npm is not installed")
    return found


def test_the_vendored_files_are_the_ones_the_manifest_names_at_the_locked_versions() -> None:
    lock = json.loads((WEB / "package-lock.json").read_text())["packages"]
    wanted = json.loads((WEB / "package.json").read_text())["dependencies"]
    for entry in _manifest():
        locked = lock[f"node_modules/{entry['package']}"]
        assert entry["version"] == locked["version"] == wanted[entry["package"]]
        assert entry["integrity"] == locked["integrity"]
        assert _digest(VENDOR / entry["file"]) == entry["sha512"], entry["file"]
    shipped = {path.name for path in VENDOR.iterdir()} - {"MANIFEST.json"}
    assert shipped == {entry["file"] for entry in _manifest()}


def test_the_vendored_files_equal_a_fresh_npm_ci_of_the_lock(tmp_path: Path) -> None:
    """``npm ci`` checks each package's tarball against the lock's ``integrity``; the
    vendored files must then be byte for byte the files it unpacked."""
    npm = _npm()
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(WEB / name, tmp_path / name)
    done = subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        skip_or_fail(f"npm ci failed: {done.stderr.strip()[-300:]}")
    for entry in _manifest():
        unpacked = tmp_path / "node_modules" / entry["package"] / entry["source"]
        assert _digest(unpacked) == entry["sha512"], entry["file"]


def test_the_pages_load_nothing_from_another_host() -> None:
    for source in [*(WEB / "templates").glob("*.html"), *(WEB / "static").glob("*.*")]:
        text = source.read_text()
        assert not re.findall(r"(?:src|href)=[\"']?(?:https?:)?//", text), source
        assert "url(http" not in text and "fetch(" not in text, source


@pytest.mark.parametrize("address", ["0.0.0.0:8080", "[::]:8080", "example.org:80"])
def test_the_page_is_refused_beyond_loopback_without_insecure(address: str) -> None:
    with pytest.raises(ConfigError, match="--insecure"):
        check_http_exposure(address, insecure=False)
    check_http_exposure(address, insecure=True)
    check_http_exposure("127.0.0.1:0", insecure=False)


def test_serve_refuses_an_exposed_page_in_one_line() -> None:
    done = run(
        [venv_executable("varstore"), "serve", "--db", ":memory:", "--http", "0.0.0.0:0"],
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout.startswith("varstore: cannot start: refusing to serve the audit page")
    assert "Traceback" not in done.stdout


def test_serve_refuses_a_taken_page_port_in_one_line() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = run(
            [
                venv_executable("varstore"),
                "serve",
                "--db",
                ":memory:",
                "--listen",
                "127.0.0.1:0",
                "--http",
                f"127.0.0.1:{port}",
            ],
            timeout=60,
        )
    assert done.returncode == 2, done.stdout
    assert f"cannot serve the audit page on 127.0.0.1:{port}" in done.stdout
    assert "Traceback" not in done.stdout


def test_the_wheel_ships_every_template_and_static_file() -> None:
    """The page's files are package data: each one matches a pattern in pyproject.toml."""
    import fnmatch
    import tomllib

    with (ROOT / "pyproject.toml").open("rb") as file:
        patterns = tomllib.load(file)["tool"]["setuptools"]["package-data"]["varstore.api.web"]
    files = [
        path.relative_to(WEB).as_posix()
        for folder in ("templates", "static")
        for path in (WEB / folder).rglob("*")
        if path.is_file()
    ]
    assert files
    unshipped = [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)]
    assert not unshipped, f"add to [tool.setuptools.package-data]: {unshipped}"
