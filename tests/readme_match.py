"""Does what a command printed match what the README shows under it?

Both sides are normalised first (times, uuids, hex ids and durations become placeholders,
trailing spaces and blank lines go). Then, when both start with JSON (one document or
several, as grpcurl streams and JSON Lines print them), the documents are compared as JSON:
a ``"..."`` string matches any value, ``...`` inside a string any text, a ``"...": "..."``
member lets an object have other members, and a ``"..."`` last item lets a list go on; any
text after the JSON (grpcurl's error when ``-max-time`` ends a stream) is compared as text.
Otherwise they are compared line by line: a line that is only ``...`` matches any number of
lines (none included), and ``...`` inside a line matches any text within that line.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

ELLIPSIS = "..."

_TIME = re.compile(r"\b\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?")
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_HEX_ID = re.compile(r"\b[0-9a-f]{32}\b")
_DURATION = re.compile(r"(?<![\w.])\d+(?:\.\d+)? ?(?:ns|µs|us|ms|s)\b")


def normalise(text: str) -> str:
    """Placeholders for what changes from run to run; no trailing spaces or blank lines.

    A time keeps its zone suffix (``Z`` or ``+00:00``), so a change of format still shows.
    """
    text = _TIME.sub("<TIME>", text)
    text = _UUID.sub("<UUID>", text)
    text = _HEX_ID.sub("<ID>", text)
    text = _DURATION.sub("<DURATION>", text)
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines)


def json_documents(text: str) -> tuple[list[Any], str] | None:
    """The JSON documents ``text`` starts with, one after another, and the text after them
    (grpcurl ends a stream cut by ``-max-time`` with an error); None if it starts otherwise."""
    decoder = json.JSONDecoder()
    documents: list[Any] = []
    index = 0
    text = text.strip()
    while index < len(text) and text[index] in "{[":
        try:
            document, index = decoder.raw_decode(text, index)
        except ValueError:
            break
        documents.append(document)
        while index < len(text) and text[index].isspace():
            index += 1
    if not documents:
        return None
    return documents, text[index:]


def _json_matches(expected: Any, actual: Any) -> bool:
    if expected == ELLIPSIS:
        return True
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return False
        open_ended = expected.get(ELLIPSIS) == ELLIPSIS
        keys = [key for key in expected if key != ELLIPSIS]
        if not open_ended and set(keys) != set(actual):
            return False
        return all(key in actual and _json_matches(expected[key], actual[key]) for key in keys)
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return False
        if expected and expected[-1] == ELLIPSIS:
            head = expected[:-1]
            return len(actual) >= len(head) and all(
                _json_matches(e, a) for e, a in zip(head, actual, strict=False)
            )
        return len(expected) == len(actual) and all(
            _json_matches(e, a) for e, a in zip(expected, actual, strict=True)
        )
    if isinstance(expected, str) and isinstance(actual, str):
        return _line_pattern(expected).fullmatch(actual) is not None
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    return bool(expected == actual)


def _line_pattern(line: str) -> re.Pattern[str]:
    parts = [re.escape(part) for part in line.split(ELLIPSIS)]
    return re.compile(".*?".join(parts))


def _text_matches(expected: str, actual: str) -> bool:
    pattern = ""
    for line in expected.splitlines():
        if line.strip() == ELLIPSIS:
            pattern += r"(?:[^\n]*\n)*?"
        else:
            parts = [re.escape(part) for part in line.split(ELLIPSIS)]
            pattern += "[^\n]*?".join(parts) + r"\n"
    return re.fullmatch(pattern, actual + "\n" if actual else "") is not None


def matches(expected: str, actual: str) -> bool:
    """True when ``actual`` (what ran) matches ``expected`` (what the README shows)."""
    want, got = normalise(expected), normalise(actual)
    want_json, got_json = json_documents(want), json_documents(got)
    if want_json is not None and got_json is not None:
        (want_docs, want_rest), (got_docs, got_rest) = want_json, got_json
        return (
            len(want_docs) == len(got_docs)
            and all(_json_matches(e, a) for e, a in zip(want_docs, got_docs, strict=True))
            and _text_matches(want_rest, got_rest)
        )
    return _text_matches(want, got)


def difference(expected: str, actual: str) -> str:
    """A readable account of a mismatch: where it is, what was expected, what came."""
    want, got = normalise(expected), normalise(actual)
    want_json, got_json = json_documents(want), json_documents(got)
    if want_json is not None and got_json is not None:
        where = _json_mismatch(want_json[0], got_json[0]) or "the text after the JSON"
        return (
            f"JSON differs at {where}\nexpected (normalised):\n{_indent(want)}\n"
            f"actual (normalised):\n{_indent(got)}"
        )
    diff = difflib.unified_diff(
        want.splitlines(), got.splitlines(), "README", "actual", lineterm="", n=2
    )
    return (
        f"expected (normalised):\n{_indent(want or '(no output)')}\n"
        f"actual (normalised):\n{_indent(got or '(no output)')}\n"
        f"diff:\n{_indent(chr(10).join(diff))}"
    )


def _json_mismatch(expected: Any, actual: Any, path: str = "$") -> str | None:
    """The path of the first place ``actual`` does not match ``expected`` (None: it does)."""
    if _json_matches(expected, actual):
        return None
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual) and not (expected and expected[-1] == ELLIPSIS):
            return f"{path} ({len(expected)} items shown, {len(actual)} came)"
        for index, (e, a) in enumerate(zip(expected, actual, strict=False)):
            if e != ELLIPSIS and (found := _json_mismatch(e, a, f"{path}[{index}]")):
                return found
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key, value in expected.items():
            if key == ELLIPSIS:
                continue
            if key not in actual:
                return f"{path}.{key} (missing)"
            if found := _json_mismatch(value, actual[key], f"{path}.{key}"):
                return found
        extra = sorted(set(actual) - set(expected))
        if extra and expected.get(ELLIPSIS) != ELLIPSIS:
            return f'{path} (not shown: {", ".join(extra)}; add "...": "..." to allow)'
    return f"{path} ({json.dumps(expected)} shown, {json.dumps(actual)} came)"


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
