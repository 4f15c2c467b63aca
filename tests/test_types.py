"""varstore.types: value coercion, the value codec, constraints, and errors <-> gRPC statuses."""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from varstore.types import errors
from varstore.types.constraints import MAX_PATTERN_LENGTH, Constraints, UncheckablePattern
from varstore.types.errors import (
    DeadlineExceeded,
    InternalError,
    NotFound,
    ValidationError,
    VarstoreError,
    VersionConflict,
    error_class_for,
)
from varstore.types.status import DOMAIN, error_from_rpc_error, status_for
from varstore.types.values import (
    INT64_MAX,
    INT64_MIN,
    TYPE_NAMES,
    PyValue,
    RuleViolation,
    coerce,
    from_proto,
    to_proto,
)
from varstore.v1 import varstore_pb2 as pb

# -- strategies ---------------------------------------------------------------------------

EXACT = 2**53  # every integer n with |n| <= 2**53 is exactly a double
int64s = st.integers(INT64_MIN, INT64_MAX)
exact_ints = st.integers(-EXACT, EXACT)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
fractional_floats = finite_floats.filter(lambda f: not f.is_integer())
integral_floats_in_int64 = int64s.map(float).filter(lambda f: f < 2.0**63)

VALID_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "float": finite_floats,
    "integer": int64s,
    "string": st.text(),
    "boolean": st.booleans(),
}
any_valid_value: st.SearchStrategy[PyValue] = st.one_of(*VALID_VALUES.values())


def _same(a: object, b: object) -> bool:
    """Equal, of the same type, and (for floats) of the same sign, so -0.0 is not 0.0."""
    if type(a) is not type(b) or a != b:
        return False
    if isinstance(a, float) and isinstance(b, float):
        return math.copysign(1.0, a) == math.copysign(1.0, b)
    return True


# -- coercion: float ----------------------------------------------------------------------


@given(exact_ints)
def test_float_widens_an_int_exactly_below_two_to_the_53(n: int) -> None:
    value = coerce("float", n)
    assert isinstance(value, float)
    assert int(value) == n


@given(finite_floats)
def test_float_accepts_every_finite_float_unchanged(f: float) -> None:
    assert _same(coerce("float", f), f)


@pytest.mark.parametrize(
    "bad",
    [math.nan, math.inf, -math.inf, True, False, "1.5", "", None, b"1", [1.0], 2**1024],
    ids=repr,
)
def test_float_rejects_nan_infinities_bools_strings_and_other_types(bad: object) -> None:
    with pytest.raises(RuleViolation):
        coerce("float", bad)


# -- coercion: integer --------------------------------------------------------------------


@given(int64s)
def test_integer_accepts_the_whole_int64_range_unchanged(n: int) -> None:
    assert _same(coerce("integer", n), n)


@given(integral_floats_in_int64)
def test_integer_narrows_an_integral_float_in_range(f: float) -> None:
    value = coerce("integer", f)
    assert type(value) is int
    assert value == f


@given(fractional_floats)
def test_integer_rejects_every_fractional_float(f: float) -> None:
    with pytest.raises(RuleViolation, match="not a whole number"):
        coerce("integer", f)


@pytest.mark.parametrize(
    "bad",
    [True, False, 2**63, -(2**63) - 1, 2.0**63, -(2.0**64), math.nan, math.inf, "1", None],
    ids=repr,
)
def test_integer_rejects_bools_out_of_range_numbers_and_other_types(bad: object) -> None:
    with pytest.raises(RuleViolation):
        coerce("integer", bad)


def test_integer_accepts_both_ends_of_the_int64_range() -> None:
    assert coerce("integer", INT64_MIN) == -(2**63)
    assert coerce("integer", INT64_MAX) == 2**63 - 1
    assert coerce("integer", -(2.0**63)) == INT64_MIN


# -- coercion: string and boolean ---------------------------------------------------------


@given(st.text())
def test_string_accepts_every_str_unchanged(s: str) -> None:
    assert _same(coerce("string", s), s)


@pytest.mark.parametrize("bad", [b"text", 1, 1.5, True, None, ["a"]], ids=repr)
def test_string_rejects_everything_but_str(bad: object) -> None:
    with pytest.raises(RuleViolation, match="expected a string"):
        coerce("string", bad)


@pytest.mark.parametrize("flag", [True, False])
def test_boolean_accepts_true_and_false(flag: bool) -> None:
    assert coerce("boolean", flag) is flag


@pytest.mark.parametrize("bad", [0, 1, 0.0, 1.0, "true", "false", "", None], ids=repr)
def test_boolean_rejects_numbers_strings_and_none(bad: object) -> None:
    with pytest.raises(RuleViolation, match="expected a boolean"):
        coerce("boolean", bad)


def test_an_unknown_type_name_is_rejected_naming_the_known_ones() -> None:
    with pytest.raises(RuleViolation, match="unknown type 'colour'") as caught:
        coerce("colour", 1)
    assert all(name in str(caught.value) for name in TYPE_NAMES)


# -- the value codec ----------------------------------------------------------------------


@given(any_valid_value)
def test_to_proto_then_from_proto_gives_back_every_valid_value(value: PyValue) -> None:
    assert _same(from_proto(to_proto(value)), value)


@given(any_valid_value)
def test_a_value_survives_serialising_its_message(value: PyValue) -> None:
    wire = to_proto(value).SerializeToString()
    assert _same(from_proto(pb.Value.FromString(wire)), value)


@given(st.data())
@pytest.mark.parametrize("type_name", TYPE_NAMES)
def test_a_coerced_value_is_sent_in_the_field_of_its_type(
    type_name: str, data: st.DataObject
) -> None:
    value = coerce(type_name, data.draw(VALID_VALUES[type_name]))
    assert to_proto(value).WhichOneof("kind") == f"{type_name}_value"


def test_a_bool_is_sent_as_a_boolean_not_an_integer() -> None:
    assert to_proto(True).WhichOneof("kind") == "boolean_value"
    assert from_proto(to_proto(True)) is True


def test_from_proto_gives_none_for_a_value_with_nothing_set() -> None:
    assert from_proto(pb.Value()) is None


@pytest.mark.parametrize(
    "bad", [math.nan, math.inf, 2**63, -(2**63) - 1, None, b"x", [1], {"a": 1}], ids=repr
)
def test_to_proto_rejects_values_no_variable_can_hold(bad: object) -> None:
    with pytest.raises(RuleViolation):
        to_proto(bad)


def test_a_string_that_coerce_accepts_can_always_be_sent() -> None:
    # "\ud800" (a lone surrogate) cannot be encoded as UTF-8: coerce must refuse it, or
    # to_proto would raise UnicodeEncodeError later.
    try:
        value = coerce("string", "\ud800")
    except RuleViolation:
        return
    to_proto(value)


# -- Constraints.for_type: rules must make sense --------------------------------------------


@pytest.mark.parametrize("type_name", ["float", "integer"])
def test_for_type_rejects_min_above_max(type_name: str) -> None:
    with pytest.raises(RuleViolation, match="minimum 5 is above maximum 1"):
        Constraints.for_type(type_name, {"min": 5, "max": 1})


@pytest.mark.parametrize("type_name", ["float", "integer"])
def test_for_type_accepts_min_equal_to_max(type_name: str) -> None:
    assert Constraints.for_type(type_name, {"min": 3, "max": 3}) == Constraints(min=3, max=3)


def test_for_type_rejects_min_length_above_max_length() -> None:
    with pytest.raises(RuleViolation, match="minimum length 4 is above maximum length 2"):
        Constraints.for_type("string", {"min_length": 4, "max_length": 2})


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param("[a", id="unclosed-class"),
        pytest.param("(", id="unclosed-group"),
        pytest.param("a**", id="repeated-repeat"),
        pytest.param(r"(a)\1", id="backreference"),
        pytest.param("(?=a)a", id="lookahead"),
        pytest.param("(?<!a)b", id="lookbehind"),
        pytest.param(r"a\Z", id="python-end-anchor"),
        pytest.param("a{1001}", id="repeat-over-1000"),
        pytest.param("((a{100}){100}){100}", id="nested-repeat-too-large"),
    ],
)
def test_for_type_rejects_a_pattern_that_re2_cannot_compile(pattern: str) -> None:
    with pytest.raises(RuleViolation, match="is not a valid RE2 regex"):
        Constraints.for_type("string", {"pattern": pattern})


@pytest.mark.parametrize(
    ("pattern", "value"),
    [
        pytest.param("(a+)+$", "a" * 100_000 + "!", id="nested-quantifier"),
        pytest.param("(a|aa)+$", "a" * 100_000 + "!", id="overlapping-alternation"),
        pytest.param("(.*a){20}", "a" * 10_000, id="many-wildcards"),
        pytest.param("(x+x+)+y", "x" * 100_000, id="exponential-in-python"),
    ],
)
def test_checking_a_value_against_a_backtracking_pattern_takes_linear_time(
    pattern: str, value: str
) -> None:
    # Python's re takes longer than the age of the universe on each of these; RE2 answers
    # in milliseconds (the test's own timeout is the bound).
    rules = Constraints.for_type("string", {"pattern": pattern})
    with pytest.raises(RuleViolation, match="does not match pattern"):
        rules.check(value[:-1] + "!" if value.endswith("a") else value + "!")


def test_a_pattern_from_an_older_log_that_re2_cannot_compile_checks_no_value() -> None:
    # trusted() is how replay builds rules, so the old log still folds.
    rules = Constraints.trusted({"pattern": r"(a)\1"})
    assert rules.pattern == r"(a)\1"
    with pytest.raises(UncheckablePattern, match="register it again with an RE2 pattern"):
        rules.check("aa")
    assert isinstance(UncheckablePattern("x"), RuleViolation)


def test_for_type_rejects_a_pattern_longer_than_the_limit() -> None:
    Constraints.for_type("string", {"pattern": "a" * MAX_PATTERN_LENGTH})
    with pytest.raises(RuleViolation, match="the limit is"):
        Constraints.for_type("string", {"pattern": "a" * (MAX_PATTERN_LENGTH + 1)})


@pytest.mark.parametrize("rule", ["min", "max"])
@pytest.mark.parametrize("type_name", ["string", "boolean"])
def test_for_type_rejects_numeric_rules_on_strings_and_booleans(type_name: str, rule: str) -> None:
    with pytest.raises(RuleViolation, match=f"constraint '{rule}' applies to float and integer"):
        Constraints.for_type(type_name, {rule: 1})


@pytest.mark.parametrize(
    ("rule", "setting"), [("min_length", 1), ("max_length", 1), ("pattern", "a+")]
)
@pytest.mark.parametrize("type_name", ["float", "integer", "boolean"])
def test_for_type_rejects_string_rules_on_numbers_and_booleans(
    type_name: str, rule: str, setting: object
) -> None:
    with pytest.raises(RuleViolation, match=f"constraint '{rule}' applies to string variables"):
        Constraints.for_type(type_name, {rule: setting})


@pytest.mark.parametrize("key", ["maximum", "regex", "Min", ""])
def test_for_type_rejects_unknown_keys(key: str) -> None:
    with pytest.raises(RuleViolation, match=f"unknown constraint '{key}'"):
        Constraints.for_type("integer", {"min": 0, key: 1})


@pytest.mark.parametrize(
    ("type_name", "choice"),
    [
        ("integer", "1"),
        ("integer", 1.5),
        ("integer", True),
        ("integer", 2**63),
        ("float", "1.0"),
        ("float", math.nan),
        ("float", False),
        ("string", 1),
        ("string", None),
        ("boolean", 1),
        ("boolean", "true"),
    ],
    ids=repr,
)
def test_for_type_rejects_a_choice_of_the_wrong_type(type_name: str, choice: object) -> None:
    with pytest.raises(RuleViolation, match="is not valid"):
        Constraints.for_type(type_name, {"choices": [choice]})


def test_for_type_converts_choices_to_the_variable_type() -> None:
    assert Constraints.for_type("float", {"choices": [1, 2.5]}).choices == (1.0, 2.5)
    assert Constraints.for_type("integer", {"choices": [1.0, 2]}).choices == (1, 2)
    assert all(type(c) is float for c in Constraints.for_type("float", {"choices": [1]}).choices)


@pytest.mark.parametrize("bound", ["5", True, math.nan, -math.inf, [1]], ids=repr)
def test_for_type_rejects_bounds_that_are_not_finite_numbers(bound: object) -> None:
    with pytest.raises(RuleViolation, match="constraint 'min' must be"):
        Constraints.for_type("float", {"min": bound})


@pytest.mark.parametrize("length", [-1, True, 1.0, "3"], ids=repr)
def test_for_type_rejects_lengths_that_are_not_whole_numbers_from_zero(length: object) -> None:
    with pytest.raises(RuleViolation, match="constraint 'max_length' must be a whole number"):
        Constraints.for_type("string", {"max_length": length})


def test_for_type_treats_none_and_empty_choices_as_no_rule() -> None:
    raw: dict[str, Any] = {"min": None, "max": None, "choices": []}
    assert Constraints.for_type("integer", raw) == Constraints()


@pytest.mark.parametrize(
    ("type_name", "raw"),
    [
        ("string", {"pattern": 5}),  # TypeError: object of type 'int' has no len()
        ("string", {"choices": 5}),  # TypeError: 'int' object is not iterable
        ("float", {"min": 2**1024}),  # OverflowError: int too large to convert to float
    ],
    ids=["pattern-not-a-string", "choices-not-a-list", "min-too-large-for-a-double"],
)
def test_for_type_reports_every_malformed_rule_as_a_rule_violation(
    type_name: str, raw: Mapping[str, Any]
) -> None:
    with pytest.raises(RuleViolation):
        Constraints.for_type(type_name, raw)


def test_for_type_rejects_choices_given_as_one_string() -> None:
    with pytest.raises(RuleViolation):
        Constraints.for_type("string", {"choices": "abc"})  # not ('a', 'b', 'c')


def test_for_type_rejects_a_length_the_message_cannot_hold() -> None:
    # Constraints.min_length/max_length are uint32 on the wire; for_type accepts 2**32 and
    # to_proto then raises ValueError("Value out of range: 4294967296").
    with pytest.raises(RuleViolation):
        Constraints.for_type("string", {"max_length": 2**32})


# -- Constraints.check ----------------------------------------------------------------------


def test_check_says_a_value_is_above_maximum_in_the_seed_wording() -> None:
    with pytest.raises(RuleViolation) as caught:
        Constraints.for_type("integer", {"max": 100}).check(150)
    assert str(caught.value) == "value 150 is above maximum 100"


def test_check_says_a_value_is_below_minimum_in_the_seed_wording() -> None:
    with pytest.raises(RuleViolation) as caught:
        Constraints.for_type("integer", {"min": 0}).check(-1)
    assert str(caught.value) == "value -1 is below minimum 0"


def test_check_shows_float_bounds_and_values_as_written() -> None:
    with pytest.raises(RuleViolation) as caught:
        Constraints.for_type("float", {"max": 2.5}).check(3.75)
    assert str(caught.value) == "value 3.75 is above maximum 2.5"


@given(int64s, exact_ints, exact_ints)
def test_check_accepts_an_integer_exactly_when_it_is_within_the_bounds(
    value: int, low: int, high: int
) -> None:
    low, high = sorted((low, high))
    rules = Constraints.for_type("integer", {"min": low, "max": high})
    assert _passes(rules, value) == (low <= value <= high)


@given(finite_floats, finite_floats, finite_floats)
def test_check_accepts_a_float_exactly_when_it_is_within_the_bounds(
    value: float, low: float, high: float
) -> None:
    low, high = sorted((low, high))
    rules = Constraints.for_type("float", {"min": low, "max": high})
    assert _passes(rules, value) == (low <= value <= high)


@given(int64s, exact_ints)
def test_check_with_only_a_minimum_or_only_a_maximum_leaves_the_other_side_open(
    value: int, bound: int
) -> None:
    assert _passes(Constraints.for_type("integer", {"min": bound}), value) == (value >= bound)
    assert _passes(Constraints.for_type("integer", {"max": bound}), value) == (value <= bound)


def test_integer_bounds_are_doubles_as_the_contract_documents() -> None:
    # min/max are doubles on the wire: exact up to 2**53, rounded beyond (documented in
    # varstore.proto). 2**53 + 1 as a bound becomes 2**53, so 2**53 + 1 itself is refused.
    Constraints.for_type("integer", {"max": 2**53}).check(2**53)
    with pytest.raises(RuleViolation, match="above maximum 9007199254740992"):
        Constraints.for_type("integer", {"max": 2**53 + 1}).check(2**53 + 1)


def test_pattern_must_match_the_whole_string() -> None:
    rules = Constraints.for_type("string", {"pattern": "a+"})
    rules.check("aaa")
    for partial in ("aab", "baa", "", "a\n"):
        with pytest.raises(RuleViolation, match="does not match pattern 'a\\+'"):
            rules.check(partial)


def test_lengths_count_code_points_and_are_inclusive() -> None:
    rules = Constraints.for_type("string", {"min_length": 2, "max_length": 3})
    for fine in ("ab", "abc", "éé", "🙂🙂🙂"):
        rules.check(fine)
    with pytest.raises(RuleViolation, match="length 1 is below minimum length 2"):
        rules.check("é")
    with pytest.raises(RuleViolation, match="length 4 is above maximum length 3"):
        rules.check("🙂🙂🙂🙂")


@pytest.mark.parametrize(
    ("type_name", "choices", "allowed", "refused"),
    [
        ("integer", [1, 2, 3], 2, 4),
        ("float", [0.5, 1], 1.0, 0.25),
        ("string", ["red", "green"], "red", "Red"),
        ("boolean", [True], True, False),
    ],
)
def test_choices_allow_only_the_listed_values(
    type_name: str, choices: list[PyValue], allowed: PyValue, refused: PyValue
) -> None:
    rules = Constraints.for_type(type_name, {"choices": choices})
    rules.check(allowed)
    with pytest.raises(RuleViolation, match="is not one of the choices"):
        rules.check(refused)


@given(any_valid_value)
def test_no_constraints_allow_every_value(value: PyValue) -> None:
    Constraints().check(value)


def _passes(rules: Constraints, value: PyValue) -> bool:
    try:
        rules.check(value)
    except RuleViolation:
        return False
    return True


# -- Constraints: forms and round trips -----------------------------------------------------

PATTERNS = ["a+", "[a-z]{2,8}", r"\d+(\.\d+)?", "(?i)yes|no", ".*"]


@st.composite
def constraints_for(draw: st.DrawFn, type_name: str) -> Constraints:
    """Valid constraints for ``type_name``, made through for_type."""
    raw: dict[str, Any] = {}
    if type_name in ("float", "integer"):
        bounds = finite_floats if type_name == "float" else exact_ints
        low, high = sorted((draw(bounds), draw(bounds)))
        raw["min"] = draw(st.sampled_from([None, low]))
        raw["max"] = draw(st.sampled_from([None, high]))
    if type_name == "string":
        uint32 = st.integers(0, 2**32 - 1)
        lengths = sorted((draw(uint32), draw(uint32)))
        raw["min_length"] = draw(st.sampled_from([None, lengths[0]]))
        raw["max_length"] = draw(st.sampled_from([None, lengths[1]]))
        raw["pattern"] = draw(st.sampled_from([None, *PATTERNS]))
    raw["choices"] = draw(st.lists(VALID_VALUES[type_name], max_size=4))
    return Constraints.for_type(type_name, raw)


typed_constraints = st.sampled_from(TYPE_NAMES).flatmap(
    lambda t: st.tuples(st.just(t), constraints_for(t))
)


@given(typed_constraints)
def test_constraints_survive_to_proto_and_from_proto(typed: tuple[str, Constraints]) -> None:
    type_name, rules = typed
    assert Constraints.from_proto(type_name, rules.to_proto()) == rules


@given(typed_constraints)
def test_a_constraints_message_survives_from_proto_and_to_proto(
    typed: tuple[str, Constraints],
) -> None:
    type_name, rules = typed
    wire = rules.to_proto().SerializeToString()
    message = pb.Constraints.FromString(wire)
    assert Constraints.from_proto(type_name, message).to_proto() == message


@given(typed_constraints)
def test_constraints_survive_to_dict_and_trusted_even_through_json(
    typed: tuple[str, Constraints],
) -> None:
    _, rules = typed
    assert Constraints.trusted(rules.to_dict()) == rules
    assert Constraints.trusted(json.loads(json.dumps(rules.to_dict()))) == rules


def test_to_dict_holds_only_the_rules_that_are_set() -> None:
    assert Constraints().to_dict() == {}
    assert Constraints.for_type("integer", {"max": 3, "choices": [1]}).to_dict() == {
        "max": 3.0,
        "choices": [1],
    }
    assert Constraints.trusted({}) == Constraints()


def test_to_proto_leaves_unset_rules_unset() -> None:
    message = Constraints.for_type("string", {"pattern": "a+"}).to_proto()
    assert [field.name for field, _ in message.ListFields()] == ["pattern"]


def test_from_proto_checks_the_rules_for_sense() -> None:
    with pytest.raises(RuleViolation, match="above maximum"):
        Constraints.from_proto("float", pb.Constraints(min=2, max=1))
    with pytest.raises(RuleViolation, match="applies to string variables"):
        Constraints.from_proto("integer", pb.Constraints(pattern="a"))
    with pytest.raises(RuleViolation, match="is not valid"):
        Constraints.from_proto("string", pb.Constraints(choices=[pb.Value(integer_value=1)]))


def test_from_proto_rejects_a_choice_with_no_value_set() -> None:
    with pytest.raises(RuleViolation, match="has no value set"):
        Constraints.from_proto("integer", pb.Constraints(choices=[pb.Value()]))


def test_from_proto_sees_a_zero_bound_that_is_set() -> None:
    assert Constraints.from_proto("integer", pb.Constraints(min=0)) == Constraints(min=0)


# -- errors -------------------------------------------------------------------------------

ERROR_CLASSES: list[type[VarstoreError]] = sorted(
    (
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, VarstoreError) and obj.__module__ == errors.__name__
    ),
    key=lambda cls: cls.__name__,
)


def test_the_error_catalogue_is_found() -> None:
    assert {cls.__name__ for cls in ERROR_CLASSES} >= {
        "VarstoreError",
        "ValidationError",
        "NotFound",
        "SessionNotFound",
        "VariableNotFound",
        "AlreadyExists",
        "VersionConflict",
        "OutOfRange",
        "LimitExceeded",
        "Unavailable",
    }


def test_every_error_class_has_its_own_reason() -> None:
    reasons = [cls.reason for cls in ERROR_CLASSES]
    assert len(set(reasons)) == len(reasons), reasons


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_error_class_for_finds_each_class_by_its_code_and_reason(
    cls: type[VarstoreError],
) -> None:
    assert error_class_for(cls.grpc_code, cls.reason) is cls


def test_error_class_for_falls_back_on_the_code_then_on_varstore_error() -> None:
    assert error_class_for(grpc.StatusCode.NOT_FOUND, "SOMETHING_NEW") is NotFound
    assert error_class_for(grpc.StatusCode.DATA_LOSS) is VarstoreError
    assert error_class_for(grpc.StatusCode.UNKNOWN) is VarstoreError


def test_errors_read_as_their_message_even_when_they_are_key_errors() -> None:
    assert str(NotFound("session 's1' not found")) == "session 's1' not found"
    assert isinstance(NotFound("x"), KeyError)
    assert isinstance(ValidationError("x"), ValueError)


def test_version_conflict_reads_expected_and_current_from_its_info() -> None:
    conflict = VersionConflict("stale", info={"expected_version": "3", "current_version": "5"})
    assert (conflict.expected, conflict.current) == (3, 5)
    by_position = VersionConflict(
        "stale", info={"expected_position": "-1", "current_position": "7"}
    )
    assert (by_position.expected, by_position.current) == (-1, 7)
    assert (VersionConflict("stale").expected, VersionConflict("stale").current) == (None, None)
    assert VersionConflict("stale", info={"expected_version": "x"}).expected is None


@pytest.mark.parametrize("text", ["--5", "²"])
def test_version_conflict_gives_none_for_info_that_is_not_a_number(text: str) -> None:
    # "--5" and "²" pass `text.lstrip("-").isdigit()`, then int(text) raises ValueError.
    assert VersionConflict("stale", info={"expected_version": text}).expected is None


# -- errors <-> gRPC statuses -------------------------------------------------------------


class FakeRpcError(grpc.RpcError):
    """What a client sees for a failed call: the status the server sent, unchanged."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str | None:
        return self._status.details

    # grpc-stubs types this as tuple[_Metadatum, ...]; calls really give (key, value) pairs.
    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:  # type: ignore[override]
        return tuple(self._status.trailing_metadata)


def _round_trip(error: VarstoreError) -> VarstoreError:
    return error_from_rpc_error(FakeRpcError(status_for(error)))


texts = st.text(min_size=1)
string_maps = st.dictionaries(st.text(), st.text(), max_size=4)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
@given(message=texts, info=string_maps, violations=string_maps)
def test_every_error_survives_status_for_and_error_from_rpc_error(
    cls: type[VarstoreError], message: str, info: dict[str, str], violations: dict[str, str]
) -> None:
    if issubclass(cls, ValidationError):
        sent: VarstoreError = cls(message, info=info, violations=violations)
    else:
        sent = cls(message, info=info)
    received = _round_trip(sent)
    assert type(received) is cls
    assert (received.message, received.info) == (message, info)
    if isinstance(sent, ValidationError):
        assert isinstance(received, ValidationError)
        assert received.violations == violations


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_status_for_uses_the_class_code_and_an_error_info_in_the_varstore_domain(
    cls: type[VarstoreError],
) -> None:
    status = status_for(cls("boom", info={"k": "v"}))
    assert status.code is cls.grpc_code
    assert status.details == "boom"
    assert [key for key, _ in status.trailing_metadata] == ["grpc-status-details-bin"]
    assert DOMAIN == "varstore.v1"


def test_a_version_conflict_keeps_its_expected_and_current_versions() -> None:
    sent = VersionConflict("stale", info={"expected_version": "2", "current_version": "4"})
    received = _round_trip(sent)
    assert isinstance(received, VersionConflict)
    assert (received.expected, received.current) == (2, 4)


class _PlainStatus(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details, self.trailing_metadata = code, details, ()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.INVALID_ARGUMENT, ValidationError),
        (grpc.StatusCode.ABORTED, VersionConflict),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.UNKNOWN, VarstoreError),
        (grpc.StatusCode.DATA_LOSS, VarstoreError),
    ],
)
def test_a_status_without_details_maps_by_its_code_alone(
    code: grpc.StatusCode, expected: type[VarstoreError]
) -> None:
    received = error_from_rpc_error(FakeRpcError(_PlainStatus(code, "went wrong")))
    assert type(received) is expected
    assert (received.message, received.info) == ("went wrong", {})
