"""The files a user expects beside the code: the LICENSE that pyproject.toml declares, a
CHANGELOG in the Keep a Changelog shape, and a Dockerfile that runs the server.

These machines cannot pull a base image, so the Dockerfile is not built here: the test reads
it (entry point, exposed port, volume, the files the build needs not ignored) and runs its
command line through the real ``varstore serve``.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

from _support import ROOT
from servers import start_server_process

APACHE_2_0_FIRST_LINES = ("Apache License", "Version 2.0, January 2004")


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as ``(KEYWORD, arguments)``, continuations joined."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def _only(keyword: str) -> str:
    matching = [rest for kw, rest in _instructions() if kw == keyword]
    assert len(matching) == 1, f"the Dockerfile has {len(matching)} {keyword} instructions"
    return matching[0]


def _exec_form(keyword: str) -> list[str]:
    """An instruction in exec (JSON) form, so no shell stands between docker and varstore."""
    value = json.loads(_only(keyword))
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), value
    return value


def _command_flags() -> dict[str, str | None]:
    """The default CMD's flags: ``--flag value`` pairs, and lone flags with None."""
    args = _exec_form("CMD")
    flags: dict[str, str | None] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            following = args[i + 1] if i + 1 < len(args) else "--"
            flags[arg] = None if following.startswith("--") else following
    return flags


def test_the_image_runs_varstore_serve_on_a_slim_python() -> None:
    assert re.fullmatch(r"python:3\.1[1-9]-slim", _only("FROM")), _only("FROM")
    install = " ".join(rest for kw, rest in _instructions() if kw == "RUN")
    assert re.search(r"pip install (--no-cache-dir )?\S+", install), install
    assert "-e " not in install, "the image installs varstore, not an editable link"
    assert _exec_form("ENTRYPOINT") == ["varstore", "serve"]
    assert _only("USER") not in ("root", "0"), "the server does not run as root"


def test_the_exposed_port_is_the_one_it_listens_on() -> None:
    listen = _command_flags()["--listen"]
    assert listen is not None
    host, _, port = listen.rpartition(":")
    assert host == "0.0.0.0", "in a container only 0.0.0.0 is reached by a published port"
    assert _only("EXPOSE").split() == [port] == ["50051"]


def test_the_log_is_in_the_volume() -> None:
    (volume,) = json.loads(_only("VOLUME"))
    db = _command_flags()["--db"]
    assert db is not None
    assert Path(db).parent == Path(volume), f"--db {db} is not in the volume {volume}"


def test_the_default_command_starts_the_real_server(tmp_path: Path) -> None:
    """The CMD's flags, with the log in tmp_path and port 0 for the image's fixed ones."""
    flags = _command_flags()
    assert "--insecure" in flags or "--tls-cert" in flags, (
        "0.0.0.0 without TLS needs --insecure: the server would refuse to start"
    )
    rest = [
        part
        for flag, value in flags.items()
        if flag not in ("--db", "--listen")
        for part in (flag, *(() if value is None else (value,)))
    ]
    server = start_server_process(tmp_path / "varstore.db", *rest, "--listen", "0.0.0.0:0")
    try:
        assert any("INSECURE" in line for line in server.output), server.output
    finally:
        assert server.terminate() == 0


def test_the_build_context_keeps_what_pip_install_needs() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    needed = ["pyproject.toml", config["project"]["readme"], *config["project"]["license-files"]]
    needed += [*config["tool"]["setuptools"]["package-dir"].values()]
    needed += [f"{name}.py" for name in config["tool"]["setuptools"].get("py-modules", [])]
    for path in needed:
        ignored = [p for p in patterns if fnmatch.fnmatch(path, p.removeprefix("**/"))]
        assert not ignored, f".dockerignore leaves out {path}, which the build needs"
    for heavy in (".git", ".venv"):
        assert heavy in patterns, f".dockerignore should leave out {heavy}"


def test_the_license_is_apache_2_0_as_pyproject_declares() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    lines = [line.strip() for line in (ROOT / "LICENSE").read_text().splitlines() if line.strip()]
    assert tuple(lines[:2]) == APACHE_2_0_FIRST_LINES
    assert "END OF TERMS AND CONDITIONS" in lines


def test_the_changelog_keeps_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    versions = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.MULTILINE)
    assert versions, "no '## [version] - date' sections"
    assert versions[0] == ("Unreleased", ""), "the first section is [Unreleased]"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    released = {name: date for name, date in versions[1:]}
    assert project["version"] in released, f"no section for {project['version']}"
    assert all(released.values()), "every released version has a date"
    kinds = set(re.findall(r"^### (\w+)$", text, re.MULTILINE))
    assert kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, kinds
    assert "keepachangelog.com" in text
