"""The README is a test: every example block in it runs, in order, and what it shows is checked.

The harness reads README.md itself (tests/readme_blocks.py), so the README cannot drift
from what the code does. Conventions (also told in the README's Development section):

- **Sections.** Each heading starts a section; one test per section with examples
  (``test_readme_section[L35-a-two-minute-tour]``). The whole README runs once, top to
  bottom, in one scratch directory, against the servers its blocks start; each section
  makes its own sessions, so a section's failure is its own.
- **Shell blocks** (````` ```sh ````` or ````` ```console `````): a line starting with ``$ ``
  is a command (it goes on over the next lines while it ends with ``\\``, leaves a quote
  open, or opens a here-document); the lines after it, up to the next ``$ ``, are its
  output (stdout and stderr), compared after normalisation (tests/readme_match.py): times, uuids, hex ids and durations
  become placeholders; a line of only ``...`` matches any lines, ``...`` inside a line any
  text; when both sides start with JSON they are compared as JSON (``"..."`` matches any
  value, a ``"...": "..."`` member allows other members), any text after it as text. No
  output shown means none printed; ``$ echo $?`` shows an exit status. The
  commands of one section share one bash (``export`` and ``$?`` work); PATH starts with the
  test virtualenv's bin (as after ``. .venv/bin/activate``), and ``.venv``, ``tests`` and
  ``proto`` are links to the checkout's.
- **The server.** A ``varstore serve`` command shown with its listening line starts in the
  background on free ports (``--listen``, ``--http``, ``--metrics``); the addresses its
  start-up line shows in the README (``127.0.0.1:50051``) stand for the real ones
  everywhere after (commands, Python code, ``VARSTORE_SERVER``; the real addresses are
  written back as the README's in what is printed). One shown without a listening line (a
  refusal to start) runs in the foreground like any command.
- **Python blocks** (````` ```python `````) run in this process, each in a fresh namespace,
  in the scratch directory; an expression statement followed by ``# -> EXPECTED`` is checked
  (``print(...)``: what it printed; any other expression: its ``repr``), with the same
  matching as shell output.
- **Node**: the README's own ``npm ci`` in tests/node installs the locked packages, and
  ``node`` runs the real node; without node or npm the section skips (fails in CI).
- **Not run**: a block just below ``<!-- doctest: skip: REASON -->`` (the two install
  commands at the top, Docker, pipx from the network, PostgreSQL clusters...) is listed
  with its reason at the end of the run; ````` ```text ````` blocks are figures, not
  examples. Any other block (an indented one, or a fence with another or no language) fails
  ``test_every_readme_block_is_run_or_marked``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _support import ROOT, skip_or_fail
from readme_blocks import read_readme
from readme_runner import NotRunnable, ReadmeRunner, SectionResult

README = ROOT / "README.md"

_readme = read_readme(README)


def _prepare_node() -> None:
    """Say why the Node example cannot run here, if node or npm is missing."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        raise NotRunnable(f"{' and '.join(missing)} not installed")


@pytest.fixture(scope="module")
def readme_results(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> dict[str, SectionResult]:
    """Every section of the README, run once, in order; results by section slug."""
    runner = ReadmeRunner(_readme, tmp_path_factory.mktemp("readme"), ROOT, _prepare_node)
    try:
        results = runner.run()
    finally:
        runner.close()
    request.config.pluginmanager.register(_Summary(results), "readme-summary")
    return {result.section.slug: result for result in results}


class _Summary:
    """Counts the blocks run and lists the ones marked skip, with their reasons, at the end."""

    def __init__(self, results: list[SectionResult]) -> None:
        self.results = results

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        ran = sum(r.ran for r in self.results)
        skipped = [block for r in self.results for block in r.skipped]
        texts = sum(r.texts for r in self.results)
        seconds = sum(r.seconds for r in self.results)
        terminalreporter.write_sep(
            "-",
            f"README: {ran} blocks run in {seconds:.1f} s, {len(skipped)} marked skip, "
            f"{texts} text figures",
        )
        slowest = sorted(self.results, key=lambda r: r.seconds, reverse=True)[:3]
        terminalreporter.write_line(
            "slowest sections: " + ", ".join(f"{r.section.slug} {r.seconds:.1f} s" for r in slowest)
        )
        for block in skipped:
            terminalreporter.write_line(f"skipped README line {block.line}: {block.skip}")


def _section_ids() -> list[str]:
    return [section.slug for section in _readme.sections]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("slug", _section_ids())
def test_readme_section(slug: str, readme_results: dict[str, SectionResult]) -> None:
    result = readme_results[slug]
    if result.not_run is not None:
        skip_or_fail(f"README section {result.section.title!r} cannot run here: {result.not_run}")
    if result.failures:
        line, message = result.failures[0]
        pytest.fail(f"README.md line {line} ({result.section.title}):\n{message}", pytrace=False)


def test_every_readme_block_is_run_or_marked() -> None:
    problems = list(_readme.problems)
    for block in _readme.blocks:
        if block.skip is None and block.kind == "unknown":
            problems.append(
                f"README line {block.line}: a ```{block.info} block is neither run (sh, python) "
                "nor marked (text, or <!-- doctest: skip: REASON -->)"
            )
    assert not problems, "\n".join(problems)


def test_the_readme_starts_a_server_before_its_first_runnable_example() -> None:
    runnable = [b for b in _readme.blocks if b.skip is None and b.kind in ("shell", "python")]
    assert runnable, "the README has no runnable example"
    first = runnable[0]
    assert first.kind == "shell" and "varstore serve" in first.commands()[0].text, (
        f"README line {first.line}: the first example that runs should start the server"
    )


def test_the_harness_sees_the_conventions_it_documents(tmp_path: Path) -> None:
    """A small README with each kind of block: parsed, run and matched as documented."""
    sample = tmp_path / "README.md"
    sample.write_text(
        "# t\n\n"
        "<!-- doctest: skip: needs docker -->\n\n"
        "```sh\ndocker run x\n```\n\n"
        "## s\n\n"
        '```console\n$ echo \'{"a": 1,\n  "b": [1, 2]}\'\n{"b": [1, "..."], "...": "..."}\n'
        "$ printf 'one\\ntwo\\nthree\\n'\none\n...\n$ false\n$ echo $?\n1\n"
        '$ export GREETING=hi\n$ cat <<EOF\n{"at": "2020-01-01T00:00:00Z"}\n$GREETING in 12 ms\nEOF\n'
        '{"at": "2026-12-01T18:00:00.123Z"}\nhi in 3 ms\n```\n\n'
        "```python\nx = [1, 2]\nx  # -> [1, ...]\nprint(len(x))  # -> 2\n```\n\n"
        "```text\nnot run\n```\n",
        encoding="utf-8",
    )
    parsed = read_readme(sample)
    assert not parsed.problems
    assert [b.skip for b in parsed.blocks] == ["needs docker", None, None, None]
    work = tmp_path / "work"
    work.mkdir()
    runner = ReadmeRunner(parsed, work, ROOT, lambda: None)
    try:
        results = runner.run()
    finally:
        runner.close()
    assert [(r.ran, len(r.skipped), r.texts, r.failures) for r in results] == [
        (0, 1, 0, []),
        (2, 0, 1, []),
    ]


def test_the_harness_reports_the_readme_line_that_failed(tmp_path: Path) -> None:
    sample = tmp_path / "README.md"
    sample.write_text(
        "## s\n\n```sh\n$ echo one\ntwo\n```\n\n## p\n\n```python\nx = 1\nx + 1  # -> 3\n```\n",
        encoding="utf-8",
    )
    work = tmp_path / "work"
    work.mkdir()
    runner = ReadmeRunner(read_readme(sample), work, ROOT, lambda: None)
    try:
        shell, python = runner.run()
    finally:
        runner.close()
    assert shell.failures[0][0] == 4 and "two" in shell.failures[0][1]
    assert python.failures[0][0] == 12 and "3" in python.failures[0][1]


def test_the_harness_refuses_blocks_it_cannot_run_unless_marked(tmp_path: Path) -> None:
    sample = tmp_path / "README.md"
    sample.write_text(
        "## s\n\nText:\n\n    varstore get x y\n\n```js\nconsole.log(1)\n```\n",
        encoding="utf-8",
    )
    parsed = read_readme(sample)
    assert [p.split(":")[0] for p in parsed.problems] == ["README line 5"]
    work = tmp_path / "work"
    work.mkdir()
    runner = ReadmeRunner(parsed, work, ROOT, lambda: None)
    try:
        (result,) = runner.run()
    finally:
        runner.close()
    assert result.failures[0][0] == 7 and "```js" in result.failures[0][1]


def _help(*args: str) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "varstore"), *args, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def test_every_flag_of_varstore_serve_is_in_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    flags = sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", _help("serve"))) - {"--help"})
    assert flags, "varstore serve --help lists no flags"
    assert [flag for flag in flags if flag not in text] == []


def test_every_command_of_varstore_is_in_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    listing = _help().split("Commands:", 1)[1]
    commands = [line.split()[0] for line in listing.splitlines() if line.strip()]
    assert commands, "varstore --help lists no commands"
    assert [c for c in commands if f"varstore {c}" not in text and f"`{c} " not in text] == []
