"""What the client commands print, in one place: JSON or text, timestamps, one-line errors.

Every timestamp in JSON is RFC 3339 in UTC with ``Z`` (:func:`rfc3339`, the export
format's); text shows seconds (:func:`show_time`). A closed stdout (``varstore log s |
head``) ends the command quietly (:func:`quiet_stdout`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from varstore.client import ChangeInfo, SessionInfo, ValidationError, VariableInfo, VarstoreError
from varstore.types import PyValue

__all__ = [
    "Output",
    "cell",
    "change_data",
    "emit",
    "fail",
    "json_line",
    "json_ready",
    "key_lines",
    "message",
    "print_output",
    "quiet_stdout",
    "rfc3339",
    "session_data",
    "show_mapping",
    "show_optional",
    "show_time",
    "show_value",
    "table",
    "variable_data",
]

#: Widest value shown in a table cell (``get`` shows values whole).
_CELL_WIDTH: Final = 60


@dataclasses.dataclass(frozen=True, slots=True)
class Output:
    """What a command prints: ``data`` with ``--json``, else ``text`` (no final newline).

    ``json_lines``: ``data`` is a list printed one compact JSON object a line.
    ``printed``: the command printed as it went; nothing is left to print.
    ``exit_code``: the command's exit code once it is printed (``health``: 1 when not
    serving).
    """

    data: Any
    text: str
    json_lines: bool = False
    printed: bool = False
    exit_code: int = 0


def print_output(output: Output, as_json: bool) -> None:
    """Print ``output`` on stdout as the ``--json`` flag asks."""
    if output.printed:
        pass
    elif as_json and output.json_lines:
        for item in output.data:
            print(json_line(item))
    elif as_json:
        print(json.dumps(json_ready(output.data), indent=2, ensure_ascii=False))
    elif output.text:
        print(output.text)
    sys.stdout.flush()


def emit(as_json: bool, data: Mapping[str, Any], line: str) -> None:
    """One line now: ``data`` as compact JSON, or ``line`` (for commands that stream)."""
    print(json_line(data) if as_json else line, flush=True)


def json_line(data: Any) -> str:
    """``data`` as one compact line of JSON (the JSON Lines of exports)."""
    return json.dumps(json_ready(data), ensure_ascii=False, separators=(",", ":"))


def json_ready(data: Any) -> Any:
    """``data`` with every datetime, however deep, as :func:`rfc3339` text."""
    if isinstance(data, datetime):
        return rfc3339(data)
    if isinstance(data, Mapping):
        return {key: json_ready(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [json_ready(item) for item in data]
    return data


def rfc3339(moment: datetime) -> str:
    """``2026-12-01T18:00:00.123456Z``: UTC, microseconds, ``Z`` (as in exports)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    text = moment.astimezone(UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


def show_time(moment: datetime | None) -> str:
    """A time as people read it: ``2026-12-01T18:00:00Z`` (``-`` for none)."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- errors ----------------------------------------------------------------------------------


def fail(text: str) -> None:
    """``varstore: TEXT`` on stderr, on one line."""
    print(f"varstore: {' '.join(text.split())}", file=sys.stderr, flush=True)


def message(problem: VarstoreError) -> str:
    """The error as one line (its violations added when the message alone is vague)."""
    text = str(problem) or type(problem).__name__
    if isinstance(problem, ValidationError) and problem.violations:
        details = "; ".join(
            f"{field}: {why}" for field, why in problem.violations.items() if why not in text
        )
        if details:
            text = f"{text} ({details})"
    return " ".join(text.split())


def quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - nothing better to do
        pass


# -- text ------------------------------------------------------------------------------------


def show_value(value: PyValue) -> str:
    """A value as people read it: true/false, 0.7, 1.0, 3, or the string itself."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float | int):
        return repr(value)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


def show_optional(value: PyValue | None, absent: str) -> str:
    """:func:`show_value`, or ``absent`` for no value."""
    return absent if value is None else show_value(value)


def show_mapping(mapping: Mapping[str, str]) -> str:
    """``a=1,b=2`` (``-`` when empty)."""
    return ",".join(f"{key}={value}" for key, value in sorted(mapping.items())) or "-"


def cell(text: str) -> str:
    """``text`` cut to a table cell's width."""
    return text if len(text) <= _CELL_WIDTH else text[: _CELL_WIDTH - 3] + "..."


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, headers first."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    )


def key_lines(pairs: Sequence[tuple[str, str]]) -> str:
    """``key: value`` lines, the values aligned."""
    width = max(len(key) for key, _ in pairs) + 1
    return "\n".join(f"{key + ':':<{width}} {value}".rstrip() for key, value in pairs)


# -- records ---------------------------------------------------------------------------------


def variable_data(variable: VariableInfo) -> dict[str, Any]:
    """A variable as a JSON object."""
    data: dict[str, Any] = json_ready(dataclasses.asdict(variable))
    return data


def change_data(change: ChangeInfo) -> dict[str, Any]:
    """One version of a variable as a JSON object."""
    data: dict[str, Any] = json_ready(dataclasses.asdict(change))
    return data


def session_data(session: SessionInfo) -> dict[str, Any]:
    """A session as a JSON object (``session_token`` only when the server issued one)."""
    data: dict[str, Any] = json_ready(dataclasses.asdict(session))
    if not session.session_token:  # only the answer that made a session carries one
        del data["session_token"]
    return data
