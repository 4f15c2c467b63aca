"""The wheel must hold every package, each under ``varstore.``, and each typed.

There is no varstore/ folder: ``[tool.setuptools.package-dir]`` maps root folders to
``varstore.*`` names, and setuptools does not recurse into mapped folders, so every
sub-package must be listed in ``[tool.setuptools] packages`` by hand. An editable install
still finds an unlisted one, so only these tests notice before the wheel is broken.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from _support import ROOT


def _setuptools_config() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        config: dict[str, Any] = tomllib.load(file)["tool"]["setuptools"]
    return config


def _package_dirs() -> dict[str, Path]:
    return {name: ROOT / folder for name, folder in _setuptools_config()["package-dir"].items()}


def _listed_packages() -> list[str]:
    packages: list[str] = _setuptools_config()["packages"]
    return packages


def _packages_on_disk() -> set[str]:
    found = set()
    for name, base in _package_dirs().items():
        found.add(name)
        for init in base.rglob("__init__.py"):
            relative = init.parent.relative_to(base).parts
            if relative:
                found.add(".".join((name, *relative)))
    return found


def test_every_mapped_folder_exists() -> None:
    missing = {name: str(path) for name, path in _package_dirs().items() if not path.is_dir()}
    assert not missing, f"package-dir maps to folders that do not exist: {missing}"


def test_every_subpackage_on_disk_is_listed_and_no_listed_package_is_stale() -> None:
    listed, found = set(_listed_packages()), _packages_on_disk()
    assert found == listed, (
        "[tool.setuptools] packages in pyproject.toml is out of date; "
        f"missing: {sorted(found - listed)}, stale: {sorted(listed - found)}"
    )


def test_no_package_is_listed_twice() -> None:
    listed = _listed_packages()
    duplicates = sorted({name for name in listed if listed.count(name) > 1})
    assert not duplicates, f"listed more than once: {duplicates}"


def test_every_installed_name_is_under_the_varstore_namespace() -> None:
    config = _setuptools_config()
    names = [*config["packages"], *config["package-dir"], *config.get("py-modules", [])]
    # The one exception: the pytest plugin's entry module, top-level so that pytest loads it
    # without importing the varstore namespace (see pytest_varstore.py).
    outside = sorted({n for n in names if not n.startswith("varstore.")} - {"pytest_varstore"})
    assert not outside, (
        f"these would be installed outside the varstore namespace: {outside} "
        "(a top-level api, client, proto, eventstore, projections or tests must never be)"
    )


def test_no_root_folder_is_installed_as_a_top_level_package() -> None:
    config = _setuptools_config()
    assert "" not in config["package-dir"], "package-dir maps the repo root itself"
    assert "packages" in config, (
        "packages must be listed: automatic discovery would take root folders"
    )
    top_level = {"api", "client", "proto", "eventstore", "projections", "tests", "v1", "types"}
    leaked = sorted(name for name in config["packages"] if name.split(".")[0] in top_level)
    assert not leaked, f"top-level packages would be installed: {leaked}"


def test_every_mapped_folder_has_a_py_typed_marker() -> None:
    untyped = sorted(
        f"{name} ({path.relative_to(ROOT)})"
        for name, path in _package_dirs().items()
        if not (path / "py.typed").is_file()
    )
    assert not untyped, f"without py.typed, mypy ignores the installed package: {untyped}"
