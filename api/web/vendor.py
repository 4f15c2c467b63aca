"""Copy the audit page's front-end files from ``node_modules`` into ``static/vendor``.

Run after ``npm ci`` in this folder (``package.json`` and ``package-lock.json`` pin the
versions)::

    npm ci --prefix api/web && python api/web/vendor.py

The copies are committed, so the page needs no network at run time; ``MANIFEST.json``
records each file's package, locked version and integrity, and its own sha512, and
tests/test_web_vendor.py checks the copies against a fresh ``npm ci`` of the lock.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Final

__all__ = ["FILES", "HERE", "VENDOR", "file_digest", "vendor"]

HERE: Final = Path(__file__).resolve().parent
VENDOR: Final = HERE / "static" / "vendor"

#: (package, path inside the package, name in static/vendor)
FILES: Final = (
    ("htmx.org", "dist/htmx.min.js", "htmx.min.js"),
    ("htmx.org", "LICENSE", "htmx.LICENSE"),
    ("uplot", "dist/uPlot.iife.min.js", "uPlot.iife.min.js"),
    ("uplot", "dist/uPlot.min.css", "uPlot.min.css"),
    ("uplot", "LICENSE", "uPlot.LICENSE"),
)


def file_digest(path: Path) -> str:
    """``sha512-<base64>``, the form npm's ``integrity`` fields use."""
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def vendor(modules: Path = HERE / "node_modules") -> list[dict[str, str]]:
    """Copy :data:`FILES` from ``modules`` and write ``MANIFEST.json``; returns its entries."""
    lock = json.loads((HERE / "package-lock.json").read_text())["packages"]
    VENDOR.mkdir(parents=True, exist_ok=True)
    entries = []
    for package, inside, name in FILES:
        locked = lock[f"node_modules/{package}"]
        target = VENDOR / name
        shutil.copyfile(modules / package / inside, target)
        entries.append(
            {
                "file": name,
                "package": package,
                "version": locked["version"],
                "integrity": locked["integrity"],
                "source": inside,
                "sha512": file_digest(target),
            }
        )
    (VENDOR / "MANIFEST.json").write_text(json.dumps(entries, indent=2) + "\n")
    return entries


if __name__ == "__main__":
    for entry in vendor(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "node_modules"):
        print(f"{entry['file']}: {entry['package']}@{entry['version']}")
