"""Reading what people type: values of a variable's type, ``KEY=VALUE`` pairs, positions and
times; and finding a variable's whole record by name or id."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, Protocol, TypeVar

import click

from varstore.client import ValidationError, VariableInfo, VarstoreError
from varstore.types import TYPE_NAMES, PyValue

__all__ = [
    "POSITION",
    "RFC3339",
    "describe",
    "json_value",
    "meta_option",
    "parse_value",
    "split_pair",
]

F = TypeVar("F", bound=Callable[..., Any])

#: A log position: a whole number, 0 or more.
POSITION: Final = click.IntRange(min=0)

_BOOLEANS: Final = {"true": True, "false": False}


def parse_value(type_name: str, text: str) -> PyValue:
    """``text`` from the command line as a value of ``type_name``.

    Floats and integers as Python writes them, booleans as ``true``/``false`` (any case),
    strings as given.

    Raises:
        ValidationError: ``text`` is not a value of that type (or the type is unknown).
    """
    try:
        if type_name == "float":
            return float(text)
        if type_name == "integer":
            return int(text)
    except ValueError:
        article = "an" if type_name == "integer" else "a"
        raise ValidationError(f"{text!r} is not {article} {type_name}") from None
    if type_name == "boolean":
        try:
            return _BOOLEANS[text.strip().lower()]
        except KeyError:
            raise ValidationError(f"{text!r} is not a boolean; use true or false") from None
    if type_name == "string":
        return text
    raise ValidationError(f"unknown type {type_name!r}; expected one of {', '.join(TYPE_NAMES)}")


def json_value(type_name: str, name: str, value: object) -> PyValue:
    """A JSON value of a batch file as a value of ``type_name`` (a whole number is a float
    for a float variable; nothing else is converted).

    Raises:
        ValidationError: the value is not of that type.
    """
    if isinstance(value, str) and type_name != "string":
        return parse_value(type_name, value)
    checks: dict[str, Callable[[object], bool]] = {
        "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "string": lambda v: isinstance(v, str),
    }
    check = checks.get(type_name)
    if check is None or not check(value):
        raise ValidationError(f"{name}: {value!r} is not a {type_name}")
    if type_name == "float":
        return float(value)  # type: ignore[arg-type]
    return value  # type: ignore[return-value]


def split_pair(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as ``(KEY, VALUE)``. Raises ValueError without ``=`` or a key."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key, value


class _KeyValue(click.ParamType[tuple[str, str]]):
    name = "KEY=VALUE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            return split_pair(value)
        except ValueError as problem:
            self.fail(str(problem), param, ctx)


def meta_option(what: str) -> Callable[[F], F]:
    """``--meta KEY=VALUE`` (repeatable): ``what`` the metadata goes with."""
    return click.option(
        "--meta",
        type=_KeyValue(),
        multiple=True,
        metavar="KEY=VALUE",
        help=f"{what} (repeat for each key)",
    )


class _Moment(click.ParamType[datetime]):
    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an RFC 3339 time (e.g. 2026-12-01T18:00:00Z)", param, ctx)
        if moment.tzinfo is None:
            self.fail(f"{value!r} has no time zone: end it with Z or +HH:MM", param, ctx)
        return moment


#: An RFC 3339 time with its zone: ``2026-12-01T18:00:00Z``.
RFC3339: Final = _Moment()


class Readable(Protocol):
    """What :func:`describe` reads through: a session context, or a view of its past."""

    def list_variables(self, pattern: str | None = None) -> list[VariableInfo]: ...

    def get_variable(self, name: str) -> Any: ...


def describe(reader: Readable, identifier: str) -> VariableInfo:
    """The full record of a variable named (or identified by) ``identifier``.

    Raises SessionNotFound or VariableNotFound as the server words them.
    """
    for info in reader.list_variables(_literal_glob(identifier)):
        if info.name == identifier:
            return info
    # Not a name: an id, or nothing (then the server's VariableNotFound says so).
    reader.get_variable(identifier)
    for info in reader.list_variables():
        if info.id == identifier:
            return info
    # Deleted in between: ask once more for the server's own words.
    reader.get_variable(identifier)
    raise VarstoreError(f"variable {identifier!r} changed while it was being read; try again")


def _literal_glob(name: str) -> str:
    """A glob pattern that matches exactly ``name``."""
    return re.sub(r"([*?\[])", r"[\1]", name)
