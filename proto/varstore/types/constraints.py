"""Constraints: what they mean, which types they apply to, and how a value is checked.

Patterns are RE2 regular expressions (google-re2): matching takes time linear in the
value's length whatever the pattern, so no pattern can make a write slow (Python's ``re``
backtracks: ``(a+)+$`` against ``"a" * 30 + "!"`` takes minutes). RE2 is Python's syntax
without backreferences and look-around (and ``\\Z`` is spelled ``\\z``); a pattern RE2
cannot compile is refused when the rule is made. A pattern in an older log that only
Python's ``re`` understood still folds (replay never compiles it), but no value can be
checked against it: :meth:`Constraints.check` raises :class:`UncheckablePattern`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import re2

from varstore.types.values import PyValue, RuleViolation, coerce, describe, from_proto, to_proto
from varstore.v1 import varstore_pb2 as pb

__all__ = ["MAX_PATTERN_LENGTH", "Constraints", "UncheckablePattern"]

#: Largest min_length or max_length (the message field is a uint32).
MAX_LENGTH = 2**32 - 1

#: Longest accepted regular expression, in characters.
MAX_PATTERN_LENGTH = 1000

_NUMERIC = ("float", "integer")


class UncheckablePattern(RuleViolation):
    """A pattern kept in the log (written by an older server) that RE2 cannot compile: a
    value cannot be checked against it, so no value can be accepted."""


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is an answer, not a line on stderr
    return options


_OPTIONS = _options()


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> Any:
    """``pattern`` compiled by RE2 (cached), or RuleViolation saying why it cannot be."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as bad:
        reason = bad.args[0] if bad.args else bad
        text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
        raise RuleViolation(f"pattern {pattern!r} is not a valid RE2 regex: {text}") from None


@dataclass(frozen=True, slots=True)
class Constraints:
    """The rules a variable's values must follow; ``None`` (or no choices) means no rule."""

    min: float | None = None
    max: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    choices: tuple[PyValue, ...] = ()

    # -- construction -------------------------------------------------------------------

    @classmethod
    def for_type(cls, type_name: str, raw: Mapping[str, Any]) -> Constraints:
        """Constraints for a variable of ``type_name`` from plain data, checked for sense.

        Raises :class:`RuleViolation` for a rule that does not apply to the type, min above
        max, a bad regular expression or a choice of the wrong type.
        """
        unknown = set(raw) - {"min", "max", "min_length", "max_length", "pattern", "choices"}
        if unknown:
            raise RuleViolation(f"unknown constraint {min(unknown)!r}")
        pattern = raw.get("pattern")
        if pattern is not None and not isinstance(pattern, str):
            raise RuleViolation(f"constraint 'pattern' must be a string, not {describe(pattern)}")
        choices = raw.get("choices") or ()
        if not isinstance(choices, list | tuple):
            raise RuleViolation(f"constraint 'choices' must be a list, not {describe(choices)}")
        found = cls(
            min=_number(raw.get("min"), "min"),
            max=_number(raw.get("max"), "max"),
            min_length=_length(raw.get("min_length"), "min_length"),
            max_length=_length(raw.get("max_length"), "max_length"),
            pattern=pattern,
            choices=tuple(_choice(type_name, c) for c in choices),
        )
        found._check_sense(type_name)
        return found

    @staticmethod
    def data_from_proto(message: pb.Constraints) -> dict[str, Any]:
        """The plain data a ``Constraints`` message holds (unset fields left out), ready for
        :meth:`for_type` (which refuses a choice with no value)."""
        raw: dict[str, Any] = {
            field: getattr(message, field)
            for field in ("min", "max", "min_length", "max_length", "pattern")
            if message.HasField(field)
        }
        # A choice with no value stays None here, so for_type refuses it with the other
        # rules (after the caller has checked, say, that the session exists).
        choices = [from_proto(choice) for choice in message.choices]
        if choices:
            raw["choices"] = choices
        return raw

    @classmethod
    def from_proto(cls, type_name: str, message: pb.Constraints) -> Constraints:
        """Constraints from their message, checked as :meth:`for_type` does."""
        return cls.for_type(type_name, cls.data_from_proto(message))

    @classmethod
    def trusted(cls, data: Mapping[str, Any]) -> Constraints:
        """Constraints from :meth:`to_dict` output that was checked when first made
        (the event log's copy); skips the checks for speed on replay."""
        if not data:
            return _NONE
        return cls(**{**data, "choices": tuple(data.get("choices", ()))})

    def _check_sense(self, type_name: str) -> None:
        numeric_rules = [n for n in ("min", "max") if getattr(self, n) is not None]
        string_rules = [
            n for n in ("min_length", "max_length", "pattern") if getattr(self, n) is not None
        ]
        if numeric_rules and type_name not in _NUMERIC:
            raise RuleViolation(
                f"constraint {numeric_rules[0]!r} applies to float and integer variables, "
                f"not {type_name}"
            )
        if string_rules and type_name != "string":
            raise RuleViolation(
                f"constraint {string_rules[0]!r} applies to string variables, not {type_name}"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise RuleViolation(
                f"minimum {describe(self.min)} is above maximum {describe(self.max)}"
            )
        if (
            self.min_length is not None
            and self.max_length is not None
            and self.min_length > self.max_length
        ):
            raise RuleViolation(
                f"minimum length {self.min_length} is above maximum length {self.max_length}"
            )
        if self.pattern is not None:
            if len(self.pattern) > MAX_PATTERN_LENGTH:
                raise RuleViolation(
                    f"pattern is {len(self.pattern)} characters long; "
                    f"the limit is {MAX_PATTERN_LENGTH}"
                )
            _compiled(self.pattern)

    # -- checking -------------------------------------------------------------------------

    def check(self, value: PyValue) -> None:
        """Raise :class:`RuleViolation` unless ``value`` (already of the type) is allowed."""
        if self.choices and value not in self.choices:
            shown = ", ".join(describe(c) for c in self.choices)
            raise RuleViolation(f"value {describe(value)} is not one of the choices: {shown}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if self.min is not None and value < self.min:
                raise RuleViolation(
                    f"value {describe(value)} is below minimum {describe(self.min)}"
                )
            if self.max is not None and value > self.max:
                raise RuleViolation(
                    f"value {describe(value)} is above maximum {describe(self.max)}"
                )
        elif isinstance(value, str):
            length = len(value)
            if self.min_length is not None and length < self.min_length:
                raise RuleViolation(f"length {length} is below minimum length {self.min_length}")
            if self.max_length is not None and length > self.max_length:
                raise RuleViolation(f"length {length} is above maximum length {self.max_length}")
            if self.pattern is not None and _matcher(self.pattern).fullmatch(value) is None:
                raise RuleViolation(
                    f"value {describe(value)} does not match pattern {self.pattern!r}"
                )

    # -- forms ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data holding only the rules that are set."""
        data: dict[str, Any] = {
            name: getattr(self, name)
            for name in ("min", "max", "min_length", "max_length", "pattern")
            if getattr(self, name) is not None
        }
        if self.choices:
            data["choices"] = list(self.choices)
        return data

    def to_proto(self) -> pb.Constraints:
        """The ``Constraints`` message for these rules."""
        message = pb.Constraints(choices=[to_proto(c) for c in self.choices])
        for name in ("min", "max", "min_length", "max_length", "pattern"):
            value = getattr(self, name)
            if value is not None:
                setattr(message, name, value)
        return message


def _matcher(pattern: str) -> Any:
    """The compiled ``pattern`` of a rule already made (maybe by an older server)."""
    try:
        return _compiled(pattern)
    except RuleViolation as problem:
        raise UncheckablePattern(
            f"{problem}; it was accepted by an older server (Python regex), but values can "
            "no longer be checked against it: delete the variable and register it again "
            "with an RE2 pattern"
        ) from None


def _choice(type_name: str, value: object) -> PyValue:
    if value is None:
        raise RuleViolation("a choice is not valid: it has no value set")
    try:
        return coerce(type_name, value)
    except RuleViolation as problem:
        raise RuleViolation(f"choice {describe(value)} is not valid: {problem}") from None


_NONE = Constraints()


def _number(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleViolation(f"constraint {name!r} must be a number, not {describe(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise RuleViolation(f"constraint {name!r} is too large: {value}") from None
    if not math.isfinite(number):
        raise RuleViolation(f"constraint {name!r} must be a finite number, not {number}")
    return number


def _length(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LENGTH:
        raise RuleViolation(
            f"constraint {name!r} must be a whole number from 0 to {MAX_LENGTH}, not {value!r}"
        )
    return value
