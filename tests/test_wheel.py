"""The built wheel, installed as users install it (not editable), into a fresh virtualenv
with the newest pytest: the pytest plugin it registers never disturbs a project that does
not use it (``pytest -W error`` passes, no varstore module is imported), and its fixtures
work in a project that does.

CI installs varstore in editable mode, where pytest sees the distribution differently, so
only a real wheel shows what a user's test runs meet. One virtualenv serves the module
(building it is most of the time; pip's cache makes later runs quicker).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from _support import ROOT, skip_or_fail

#: Seconds building the wheel or installing it (with its dependencies) may take.
INSTALL_TIMEOUT = 600
#: What a source tree copy leaves out: caches, the editable build, installed tools.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
    "node_modules", ".node", "*.db", "*.db-wal", "*.db-shm", "*.lock",
)  # fmt: skip


@dataclass(frozen=True)
class Installed:
    """A virtualenv holding the wheel: its python, and the folder to make projects in."""

    python: Path
    projects: Path

    def pytest(self, project: Path, *flags: str) -> subprocess.CompletedProcess[str]:
        """``python -m pytest -W error FLAGS`` in ``project``, as its developer runs it."""
        environment = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")
        }
        return subprocess.run(
            [str(self.python), "-m", "pytest", "-W", "error", "-p", "no:cacheprovider", *flags],
            cwd=project,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


def _run(command: list[str | Path], cwd: Path, what: str) -> None:
    try:
        result = subprocess.run(
            [str(part) for part in command],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        skip_or_fail(f"{what} took more than {INSTALL_TIMEOUT} s")
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        skip_or_fail(f"{what} failed (exit {result.returncode}): {' / '.join(output[-5:])}")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    # Build from a copy, so that the build leaves nothing in the working tree.
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    wheels = work / "wheels"
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--no-deps", "--wheel-dir", wheels, source], work, "building the wheel")
    (wheel,) = wheels.glob("varstore-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", venv], work, "creating a virtualenv")
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", wheel], work, "installing the wheel")
    _run([python, "-m", "pip", "install", "-U", "pytest"], work, "installing the newest pytest")
    projects = work / "projects"
    projects.mkdir()
    return Installed(python, projects)


def _project(installed: Installed, name: str, files: dict[str, str]) -> Path:
    folder = installed.projects / name
    folder.mkdir()
    for path, text in files.items():
        (folder / path).write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


def test_the_wheel_installs_the_plugin_and_not_an_editable_link(installed: Installed) -> None:
    shown = subprocess.run(
        [str(installed.python), "-I", "-m", "pip", "show", "--files", "varstore"],
        cwd=installed.projects,  # not the repository, whose varstore.egg-info pip would read
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "pytest_varstore.py" in shown
    assert "varstore/testing/__init__.py" in shown
    assert "__editable__" not in shown
    metadata = subprocess.run(
        [str(installed.python), "-I", "-c", _PRINT_LICENSE],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert metadata[0] == "Apache-2.0"
    assert any(name.endswith("licenses/LICENSE") for name in metadata[1:]), metadata


_PRINT_LICENSE = """
from importlib.metadata import distribution
varstore = distribution("varstore")
print(varstore.metadata["License-Expression"])
print(*(str(f) for f in varstore.files or () if "licenses" in str(f)))
"""


def test_a_project_that_does_not_use_varstore_is_not_disturbed(installed: Installed) -> None:
    project = _project(
        installed,
        "unrelated",
        {
            "pyproject.toml": """
                [tool.pytest.ini_options]
                filterwarnings = ["error"]
            """,
            "test_arithmetic.py": """
                import sys


                def test_addition():
                    assert 1 + 1 == 2


                def test_varstore_is_loaded_as_a_plugin_but_imports_nothing(pytestconfig):
                    assert pytestconfig.pluginmanager.has_plugin("varstore")
                    loaded = [m for m in sys.modules if m == "varstore" or m.startswith("varstore.")]
                    assert loaded == []
            """,
        },
    )
    result = installed.pytest(project)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "2 passed" in output, output
    assert "Warning" not in output, output
    # And with the plugin turned off, as the reporter tried first.
    off = installed.pytest(project, "-p", "no:varstore", "-k", "addition")
    assert off.returncode == 0, off.stdout + off.stderr
    assert "Warning" not in off.stdout + off.stderr


def test_the_fixtures_work_from_the_wheel(installed: Installed) -> None:
    project = _project(
        installed,
        "user",
        {
            "test_agent.py": """
                def test_a_fresh_session(varstore_server, varstore_session):
                    host, _, port = varstore_server.address.rpartition(":")
                    assert host == "127.0.0.1" and int(port) > 0
                    varstore_session.register_variable("temperature", "float", 0.5)
                    assert varstore_session.get_variable("temperature") == 0.5
            """,
        },
    )
    result = installed.pytest(project)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 passed" in output, output
