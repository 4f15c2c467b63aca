"""The event registry is complete: every event type has one entry, every entry's body is a
member of ``Event.body`` (and every member has an entry), and an example of every type goes
through the payload model, the fold, the history, the codec both ways, exports and the
summary. Adding an event type anywhere but here fails one of these tests."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from history_model import SessionHistory
from hypothesis import given, settings
from hypothesis import strategies as st

from varstore.api.event_codec import event_from_proto, event_to_proto
from varstore.client.transfer import event_from_json, event_to_json
from varstore.eventstore import schema
from varstore.eventstore.events import RecordedEvent
from varstore.projections import ProjectionError, SessionState, apply_event, replay
from varstore.types import Constraints, RuleViolation, ValidationError
from varstore.types.events import (
    EVENTS,
    PAYLOAD_MODELS,
    SESSION_EVENTS,
    ChangeKind,
    EventSpec,
    EventType,
    checked_payload,
    is_session_event,
    payload_of,
    spec_of,
    summarize,
    touched_variable_ids,
)
from varstore.types.values import INT64_MAX, INT64_MIN, TYPE_NAMES, PyValue
from varstore.v1 import varstore_pb2 as pb

ALL_TYPES = [pytest.param(spec, id=name) for name, spec in EVENTS.items()]
BODY_ONEOF = pb.Event.DESCRIPTOR.oneofs_by_name["body"]
START = datetime(2025, 1, 31, 9, 30, tzinfo=UTC)
#: The examples fold after these two (every example's variable is the registration's).
SETUP = (EventType.SESSION_CREATED, EventType.VARIABLE_REGISTERED)


def recorded(event_type: str, payload: Mapping[str, Any], position: int = 1) -> RecordedEvent:
    return RecordedEvent(
        "s",
        position,
        100 + position,
        event_type,
        payload,
        START + timedelta(seconds=position),
        "tester",
        {"why": "example"},
    )


def example_log(spec: EventSpec) -> list[RecordedEvent]:
    """The setup events up to ``spec``'s type, then an example of it (last)."""
    types = [*SETUP[: SETUP.index(spec.type) + 1]] if spec.type in SETUP else [*SETUP, spec.type]
    return [
        recorded(name, copy.deepcopy(EVENTS[name].example), position)
        for position, name in enumerate(types, start=1)
    ]


# -- the registry against the contract -----------------------------------------------------------


def test_every_event_type_has_exactly_one_registry_entry() -> None:
    assert set(EVENTS) == set(EventType)
    assert all(spec.type == name for name, spec in EVENTS.items())


def test_every_entry_body_is_a_member_of_the_event_body_oneof_named_for_the_type() -> None:
    for name, spec in EVENTS.items():
        member = pb.Event.DESCRIPTOR.fields_by_name.get(spec.body.field)
        assert member is not None, f"{name}: Event has no field {spec.body.field!r}"
        assert member.containing_oneof is BODY_ONEOF, f"{spec.body.field!r} is not in body"
        assert member.message_type is not None
        assert member.message_type.name == name  # "the name of the body's message"


def test_every_member_of_the_event_body_oneof_has_an_entry() -> None:
    assert {field.name for field in BODY_ONEOF.fields} == {s.body.field for s in EVENTS.values()}


def test_unknown_types_are_refused_by_name() -> None:
    with pytest.raises(RuleViolation, match="unknown event type 'Renamed'"):
        spec_of("Renamed")
    assert summarize("Renamed", {}) == "Renamed"
    assert touched_variable_ids("Renamed", {}) == []
    assert not is_session_event("Renamed")


# -- the payload model -------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL_TYPES)
def test_every_example_is_a_valid_payload_in_its_stored_form(spec: EventSpec) -> None:
    assert checked_payload(spec.type, spec.example) == spec.example
    stored = json.dumps(spec.model.model_validate(spec.example).as_json_data())
    assert stored == json.dumps(spec.example)


def test_the_schema_module_re_exports_the_registry_models() -> None:
    assert schema.PAYLOAD_MODELS == PAYLOAD_MODELS
    assert {name: spec.model for name, spec in EVENTS.items()} == PAYLOAD_MODELS
    assert schema.VariableUpdated is EVENTS[EventType.VARIABLE_UPDATED].model


@pytest.mark.parametrize("spec", ALL_TYPES)
def test_payload_keys_come_from_the_model(spec: EventSpec) -> None:
    assert spec.required_keys <= spec.payload_keys == set(spec.model.model_fields)
    assert spec.required_keys <= set(spec.example)


def test_stored_payloads_keep_their_bytes() -> None:
    """The JSON the log already holds is what the models write (no schema change)."""
    made = schema.VariableUpdated(variable_id="var_t_2", value=1.0).as_json_data()
    assert json.dumps(made) == '{"variable_id": "var_t_2", "value": 1.0}'
    rollback = schema.VariableUpdated(variable_id="var_t_2", value=1, rollback_to_version=0)
    assert json.dumps(rollback.as_json_data()) == (
        '{"variable_id": "var_t_2", "value": 1, "rollback_to_version": 0}'
    )
    registered = schema.VariableRegistered(
        variable_id="var_t_2", name="t", type="float", value=0.5, constraints={"max": 2.0}
    )
    assert json.dumps(registered.as_json_data()) == (
        '{"variable_id": "var_t_2", "name": "t", "type": "float", "value": 0.5, '
        '"constraints": {"max": 2.0}}'
    )
    assert json.dumps(schema.SessionCreated().as_json_data()) == (
        '{"metadata": {}, "ttl_seconds": 0}'
    )


def test_a_registration_with_constraints_that_make_no_sense_is_refused() -> None:
    payload = {**EVENTS[EventType.VARIABLE_REGISTERED].example, "constraints": {"min_length": 1}}
    with pytest.raises(RuleViolation, match="constraints: constraint 'min_length' applies"):
        checked_payload(EventType.VARIABLE_REGISTERED, payload)


# -- the fold and the history ------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL_TYPES)
def test_the_fold_applies_an_example_of_every_type(spec: EventSpec) -> None:
    log = example_log(spec)
    before = replay(log[:-1])
    live_before = set(before.variables) if before is not None else set()
    state = replay(log)
    assert isinstance(state, SessionState)
    assert state.position == len(log)
    if spec.every_live_variable:
        assert live_before and not state.variables
    for variable_id, value in spec.changes(spec.example):
        if spec.history is ChangeKind.DELETED:
            assert variable_id not in state.variables
        else:
            assert state.variables[variable_id].value == value


def test_the_fold_refuses_an_unknown_type() -> None:
    state = replay(example_log(EVENTS[EventType.SESSION_CREATED]))
    with pytest.raises(ProjectionError, match="unknown event type 'Renamed'"):
        apply_event(state, recorded("Renamed", {}, 2))


@pytest.mark.parametrize("spec", ALL_TYPES)
def test_the_history_records_an_example_of_every_type_by_its_kind(spec: EventSpec) -> None:
    log = example_log(spec)
    before = replay(log[:-1])
    live = list(before.variables) if before is not None else []
    history = SessionHistory()
    for event in log:
        history.apply(event)
    last = log[-1]
    touched = touched_variable_ids(spec.type, spec.example, live=lambda: live)
    made = [c for v in history.ids_for("var_t_2") for c in history.changes_at(v, last.position)]
    if spec.history is None:
        assert made == []
        return
    assert touched and [c.variable_id for c in made] == touched
    for change in made:
        assert change.kind == spec.change_kind(spec.example)
        assert change.in_batch == spec.in_batch
        assert (change.source, change.metadata) == (last.source, last.metadata)


def test_a_rollback_is_its_own_history_kind() -> None:
    spec = EVENTS[EventType.VARIABLE_UPDATED]
    payload = {**spec.example, "rollback_to_version": 0}
    assert spec.change_kind(payload) is ChangeKind.ROLLED_BACK
    history = SessionHistory()
    for event in [*example_log(spec)[:-1], recorded(spec.type, payload, 3)]:
        history.apply(event)
    assert history.changes("var_t_2")[-1].kind == "rolled_back"


# -- the watch's questions -----------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL_TYPES)
def test_touched_variables_are_the_payload_s_or_every_live_one(spec: EventSpec) -> None:
    found = touched_variable_ids(spec.type, spec.example, live=lambda: ["var_a_2", "var_b_3"])
    if spec.every_live_variable:
        assert found == ["var_a_2", "var_b_3"]
    else:
        assert found == list(dict.fromkeys(v for v, _ in spec.changes(spec.example)))


def test_a_batch_touches_each_variable_once_in_its_order() -> None:
    payload = {
        "updates": [
            {"variable_id": "b", "value": 1},
            {"variable_id": "a", "value": 2},
            {"variable_id": "b", "value": 3},
        ]
    }
    assert touched_variable_ids(EventType.BATCH_APPLIED, payload) == ["b", "a"]


def test_session_events_are_the_session_s_own() -> None:
    assert {
        EventType.SESSION_CREATED,
        EventType.SESSION_DELETED,
        EventType.SESSION_FORKED,
    } == SESSION_EVENTS
    assert all(is_session_event(name) == spec.session_event for name, spec in EVENTS.items())


# -- the codec, exports and the summary ----------------------------------------------------------


@pytest.mark.parametrize("spec", ALL_TYPES)
def test_an_example_of_every_type_round_trips_through_the_codec(spec: EventSpec) -> None:
    event = recorded(spec.type, copy.deepcopy(spec.example), 3)
    message = event_to_proto(event)
    assert message.WhichOneof("body") == spec.body.field
    assert payload_of(message) == spec.example
    back = event_from_proto(message)
    assert (back.type, back.payload, back.recorded_at) == (
        spec.type,
        spec.example,
        START + timedelta(seconds=3),
    )
    assert (back.source, back.metadata) == (event.source, event.metadata)


@pytest.mark.parametrize("spec", ALL_TYPES)
def test_an_example_of_every_type_round_trips_through_an_export_line(spec: EventSpec) -> None:
    message = event_to_proto(recorded(spec.type, copy.deepcopy(spec.example), 3))
    line = json.dumps(event_to_json(message))
    assert json.loads(line)["payload"] == spec.example
    assert event_from_json(json.loads(line)) == message


@pytest.mark.parametrize("spec", ALL_TYPES)
def test_a_body_that_is_not_the_type_s_is_refused(spec: EventSpec) -> None:
    message = event_to_proto(recorded(spec.type, copy.deepcopy(spec.example), 3))
    other = next(s for s in EVENTS.values() if s.body.field != spec.body.field)
    message.type = other.type
    with pytest.raises(ValidationError, match=f"not {other.body.field}"):
        event_from_proto(message)


@pytest.mark.parametrize("spec", ALL_TYPES)
def test_every_type_has_its_own_one_line_summary(spec: EventSpec) -> None:
    text = summarize(spec.type, spec.example, {"var_t_2": "t"})
    assert text and "\n" not in text
    assert text != spec.type  # not the fallback for unknown types


def test_summaries_read_as_the_log_command_shows_them() -> None:
    def show(value: PyValue) -> str:
        return repr(value)

    names = {"var_t_2": "t"}
    cases = {
        EventType.SESSION_CREATED: "session created (ttl 3600s, team=a)",
        EventType.SESSION_DELETED: "session deleted (expired)",
        EventType.SESSION_FORKED: "forked from origin at position 2",
        EventType.VARIABLE_REGISTERED: "t: float = 0.5 (var_t_2)",
        EventType.VARIABLE_UPDATED: "t = 0.7 (var_t_2)",
        EventType.BATCH_APPLIED: "batch: t=0.9",
        EventType.VARIABLE_DELETED: "deleted t (var_t_2)",
    }
    assert set(cases) == set(EVENTS)
    for name, line in cases.items():
        assert summarize(name, EVENTS[name].example, names, show) == line
    rollback = {"variable_id": "var_x_3", "value": 1, "rollback_to_version": 0}
    assert summarize(EventType.VARIABLE_UPDATED, rollback, names, show) == (
        "var_x_3 = 1 (var_x_3, rollback to v0)"
    )


# -- any valid payload round-trips -----------------------------------------------------------------

texts = st.text(max_size=12)
floats = st.floats(allow_nan=False, allow_infinity=False)
whole = st.integers(0, INT64_MAX)
VALUES_OF: dict[str, st.SearchStrategy[PyValue]] = {
    "float": floats,
    "integer": st.integers(INT64_MIN, INT64_MAX),
    "string": texts,
    "boolean": st.booleans(),
}
any_value = st.one_of(*VALUES_OF.values())


@st.composite
def registrations(draw: st.DrawFn) -> dict[str, Any]:
    type_name = draw(st.sampled_from(TYPE_NAMES))
    values = VALUES_OF[type_name]
    raw: dict[str, Any] = {}
    if type_name in ("float", "integer"):
        bounds = sorted(draw(st.lists(floats, min_size=2, max_size=2)))
        raw.update(draw(st.sampled_from([{}, {"min": bounds[0]}, {"max": bounds[1]}])))
    if type_name == "string":
        lengths = sorted(draw(st.lists(st.integers(0, 2**32 - 1), min_size=2, max_size=2)))
        raw.update(
            draw(st.sampled_from([{}, {"min_length": lengths[0], "max_length": lengths[1]}]))
        )
        raw.update(draw(st.sampled_from([{}, {"pattern": "[a-z]*"}])))
    raw["choices"] = draw(st.lists(values, max_size=3))
    return {
        "variable_id": draw(texts),
        "name": draw(texts),
        "type": type_name,
        "value": draw(values),
        "constraints": Constraints.for_type(type_name, raw).to_dict(),
    }


def _updated(variable_id: str, value: PyValue, back: int | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"variable_id": variable_id, "value": value}
    if back is not None:
        payload["rollback_to_version"] = back
    return payload


#: A strategy of valid stored payloads for every type (a new type must add one).
PAYLOADS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    EventType.SESSION_CREATED: st.fixed_dictionaries(
        {"metadata": st.dictionaries(texts, texts, max_size=3), "ttl_seconds": whole}
    ),
    EventType.SESSION_DELETED: st.fixed_dictionaries({"reason": texts}),
    EventType.SESSION_FORKED: st.fixed_dictionaries(
        {"origin_session_id": texts, "origin_position": whole}
    ),
    EventType.VARIABLE_REGISTERED: registrations(),
    EventType.VARIABLE_UPDATED: st.builds(_updated, texts, any_value, st.none() | whole),
    EventType.BATCH_APPLIED: st.fixed_dictionaries(
        {
            "updates": st.lists(
                st.fixed_dictionaries({"variable_id": texts, "value": any_value}), max_size=4
            )
        }
    ),
    EventType.VARIABLE_DELETED: st.fixed_dictionaries({"variable_id": texts}),
}


def test_every_type_has_a_payload_strategy() -> None:
    assert set(PAYLOADS) == set(EVENTS)


typed_payloads = st.sampled_from(sorted(PAYLOADS)).flatmap(
    lambda name: st.tuples(st.just(name), PAYLOADS[name])
)


@settings(max_examples=300, deadline=None)
@given(typed_payloads)
def test_any_valid_payload_round_trips_through_the_codec_unchanged(
    typed: tuple[str, dict[str, Any]],
) -> None:
    event_type, payload = typed
    assert checked_payload(event_type, payload) == payload
    message = event_to_proto(recorded(event_type, payload, 5))
    back = event_from_proto(message)
    assert back.type == event_type
    assert back.payload == payload
    assert event_to_proto(recorded(event_type, back.payload, 5)) == message


@settings(max_examples=200, deadline=None)
@given(typed_payloads)
def test_any_valid_payload_round_trips_through_an_export_line_unchanged(
    typed: tuple[str, dict[str, Any]],
) -> None:
    event_type, payload = typed
    message = event_to_proto(recorded(event_type, payload, 5))
    line = json.dumps(event_to_json(message))
    assert event_from_json(json.loads(line)) == message
