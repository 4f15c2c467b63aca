"""Type names and the value codec: Python values to ``varstore.v1.Value`` and back,
and the coercion rules every variable type applies to an incoming value."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from varstore.v1 import varstore_pb2 as pb

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "TYPE_NAMES",
    "PyValue",
    "RuleViolation",
    "coerce",
    "describe",
    "from_proto",
    "kind_of",
    "to_proto",
]

#: A variable value as Python sees it.
PyValue = float | int | str | bool

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


class RuleViolation(ValueError):
    """A value or constraint breaks a type rule; the message says which, in plain English."""


def describe(value: object) -> str:
    """A value as messages show it: 150, 2.5, 'text', true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return repr(shown)
    return repr(value)


def kind_of(value: object) -> str:
    """The type name a Python value would naturally have ("float", "integer"...)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def _as_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleViolation(f"expected a float, got {kind_of(value)} {describe(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise RuleViolation(f"value {value} is too large for a float") from None
    if not math.isfinite(number):
        raise RuleViolation(f"value {number} is not a finite number")
    return number


def _as_integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleViolation(f"expected an integer, got {kind_of(value)} {describe(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise RuleViolation(f"value {value!r} is not a whole number")
        value = int(value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise RuleViolation(f"value {value} is outside the 64-bit integer range")
    return value


def _as_string(value: object) -> str:
    if not isinstance(value, str):
        raise RuleViolation(f"expected a string, got {kind_of(value)} {describe(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RuleViolation("string is not valid Unicode (it holds a lone surrogate)") from None
    return value


def _as_boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise RuleViolation(f"expected a boolean, got {kind_of(value)} {describe(value)}")
    return value


_COERCERS: Final[dict[str, Callable[[object], PyValue]]] = {
    "float": _as_float,
    "integer": _as_integer,
    "string": _as_string,
    "boolean": _as_boolean,
}

#: The type names a variable can have.
TYPE_NAMES: Final = tuple(_COERCERS)


def coerce(type_name: str, value: object) -> PyValue:
    """``value`` as a value of ``type_name``, or :class:`RuleViolation`.

    Integers widen to float; integral floats narrow to integer; nothing else converts.
    """
    try:
        coercer = _COERCERS[type_name]
    except KeyError:
        raise RuleViolation(
            f"unknown type {type_name!r}; expected one of {', '.join(TYPE_NAMES)}"
        ) from None
    return coercer(value)


def from_proto(value: pb.Value) -> PyValue | None:
    """The Python value a ``Value`` message holds, or None when none is set."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    result: PyValue = getattr(value, kind)
    return result


def to_proto(value: object) -> pb.Value:
    """A ``Value`` message holding ``value`` (bool, int, float or str)."""
    if isinstance(value, bool):
        return pb.Value(boolean_value=value)
    if isinstance(value, int):
        return pb.Value(integer_value=_as_integer(value))
    if isinstance(value, float):
        return pb.Value(float_value=_as_float(value))
    if isinstance(value, str):
        return pb.Value(string_value=value)
    raise RuleViolation(
        f"values of Python type {type(value).__name__} are not supported; "
        f"use bool, int, float or str"
    )
