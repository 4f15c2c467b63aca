"""The README read as the doc-test harness sees it: sections, their example blocks, commands.

What counts as what (the conventions are described in full at the top of test_readme.py):

- a *section* is the text under one heading (``#`` to ``####``) up to the next heading;
- a *block* is a fenced code block (````` ``` ````` or ``~~~``) and its info string says how it
  runs: ``sh``/``console`` (a shell session), ``python``, or ``text`` (a figure, not an example);
- ``<!-- doctest: skip: REASON -->`` just above a block (blank lines between are allowed) says
  it is not run in CI, and why;
- an indented code block is a mistake the harness reports (it cannot say how to run it).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

SHELL_INFOS = frozenset({"sh", "console", "shell", "bash"})
PYTHON_INFOS = frozenset({"python", "py"})
TEXT_INFOS = frozenset({"text"})

_HEADING = re.compile(r"^(#{1,4})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*doctest:\s*(?P<body>.*?)\s*-->\s*$")
_HEREDOC = re.compile(r"<<-?\s*['\"]?([A-Za-z_]\w*)['\"]?")
_SKIP = re.compile(r"^skip:\s*(?P<reason>\S.*)$")


@dataclass(frozen=True)
class Command:
    """One ``$ `` command of a shell block and the output shown under it."""

    line: int  # README line of the ``$ `` line
    text: str  # the command, continuation lines joined with newlines, without ``$ ``
    expected: tuple[str, ...]  # the lines shown under it, trailing blank lines dropped


@dataclass(frozen=True)
class Block:
    """One fenced code block."""

    line: int  # README line of the opening fence
    info: str  # the info string's first word, lower case ("" when none)
    lines: tuple[str, ...]  # the content, fence indentation removed
    skip: str | None = None  # the reason given by a skip directive

    @property
    def first_line(self) -> int:
        """README line of the block's first content line."""
        return self.line + 1

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    @property
    def kind(self) -> str:
        """ "shell", "python", "text" or "unknown"."""
        if self.info in SHELL_INFOS:
            return "shell"
        if self.info in PYTHON_INFOS:
            return "python"
        if self.info in TEXT_INFOS:
            return "text"
        return "unknown"

    def commands(self) -> list[Command]:
        """The ``$ `` commands of a shell block, each with its shown output.

        A command goes on over the next lines while it ends with a backslash or leaves a
        quote open (a JSON body over several lines), and a here-document (``<<'EOF'``) up to
        its closing word. Lines before the first ``$ `` are an
        error (raised as ValueError): a shell block shows commands, not bare text.
        """
        commands: list[Command] = []
        index = 0
        lines = self.lines
        while index < len(lines):
            raw = lines[index]
            if not raw.startswith("$ "):
                if raw.strip() and not commands:
                    raise ValueError(
                        f"README line {self.first_line + index}: a shell block's lines start "
                        "with '$ ' (a command) or follow one (its output)"
                    )
                index += 1
                continue
            start = index
            text = raw[2:]
            while _continues(text) and index + 1 < len(lines):
                index += 1
                text += "\n" + lines[index]
            for word in _HEREDOC.findall(text):
                while index + 1 < len(lines):
                    index += 1
                    text += "\n" + lines[index]
                    if lines[index] == word:
                        break
            index += 1
            output: list[str] = []
            while index < len(lines) and not lines[index].startswith("$ "):
                output.append(lines[index])
                index += 1
            while output and not output[-1].strip():
                output.pop()
            commands.append(Command(self.first_line + start, text, tuple(output)))
        return commands


def _continues(command: str) -> bool:
    """True when ``command`` ends with a backslash or leaves a quote open."""
    if command.rstrip("\n").endswith("\\"):
        return True
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return True
    return False


@dataclass
class Section:
    """The blocks under one heading."""

    title: str
    line: int  # README line of the heading (0: before the first heading)
    blocks: list[Block] = field(default_factory=list)

    @property
    def slug(self) -> str:
        words = re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")
        return f"L{self.line}-{words[:40].rstrip('-')}"


@dataclass(frozen=True)
class Readme:
    """The README split into sections, plus the problems found while reading it."""

    sections: tuple[Section, ...]
    problems: tuple[str, ...]  # indented code blocks, unknown directives, orphan directives

    @property
    def blocks(self) -> list[Block]:
        return [block for section in self.sections for block in section.blocks]


def read_readme(path: Path) -> Readme:
    """Read ``path`` into sections and blocks (see the module docstring)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    sections = [Section("(top)", 0)]
    problems: list[str] = []
    pending_skip: tuple[int, str] | None = None
    previous_blank = True
    in_comment = False
    index = 0
    while index < len(lines):
        line = lines[index]
        number = index + 1
        directive = _DIRECTIVE.match(line)
        if directive:
            skip = _SKIP.match(directive.group("body"))
            if skip is None:
                problems.append(f"README line {number}: unknown doctest directive {line.strip()}")
            else:
                if pending_skip is not None:
                    problems.append(f"README line {pending_skip[0]}: skip directive with no block")
                pending_skip = (number, skip.group("reason"))
            index += 1
            continue
        if in_comment or line.lstrip().startswith("<!--"):
            in_comment = "-->" not in line
            index += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            marker = fence.group("fence")
            indent = len(fence.group("indent"))
            body: list[str] = []
            index += 1
            while index < len(lines) and not _closes(lines[index], marker):
                body.append(
                    lines[index][indent:] if lines[index][:indent].isspace() else lines[index]
                )
                index += 1
            reason = pending_skip[1] if pending_skip else None
            pending_skip = None
            info = fence.group("info").lower()
            sections[-1].blocks.append(Block(number, info, tuple(body), reason))
            index += 1
            previous_blank = False
            continue
        heading = _HEADING.match(line)
        if heading:
            if pending_skip is not None:
                problems.append(f"README line {pending_skip[0]}: skip directive with no block")
                pending_skip = None
            sections.append(Section(heading.group(2), number))
        elif previous_blank and line.startswith(("    ", "\t")):
            problems.append(
                f"README line {number}: an indented code block; fence it with a language "
                "(sh, python or text) so the harness knows how to run it"
            )
            while index + 1 < len(lines) and (
                not lines[index + 1].strip() or lines[index + 1].startswith("    ")
            ):
                index += 1
        previous_blank = not line.strip()
        index += 1
    if pending_skip is not None:
        problems.append(f"README line {pending_skip[0]}: skip directive with no block")
    kept = tuple(section for section in sections if section.blocks)
    return Readme(kept, tuple(problems))


def _closes(line: str, marker: str) -> bool:
    stripped = line.strip()
    return stripped.startswith(marker[0] * len(marker)) and not stripped.strip(marker[0])
