"""The write path's shortcuts store exactly what the long way stores.

SetVariable builds its VariableUpdated payload without the pydantic model for plain values,
and the recorders' JSON encoder is built once: both must give the same stored text as
``schema.VariableUpdated(...).as_json_data()`` and ``json.dumps`` with the log's options.
"""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import pytest

from varstore.api.commands import _variable_updated
from varstore.eventstore import schema
from varstore.eventstore.rows import _json, _json_default


@pytest.mark.parametrize("value", [True, False, 0, -(2**63), 2**63 - 1, 1.5, -0.0, "", "é\x00"])
def test_a_plain_update_payload_is_what_the_model_stores(value: object) -> None:
    fast = _variable_updated("v-1", value)  # type: ignore[arg-type]
    slow = schema.VariableUpdated(variable_id="v-1", value=value).as_json_data()
    assert fast == slow
    assert [type(v) for v in fast.values()] == [type(v) for v in slow.values()]


def test_a_value_of_another_type_still_goes_through_the_model() -> None:
    with pytest.raises(ValueError, match="value"):
        _variable_updated("v-1", [1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"variable_id": "v", "value": 1.25},
        {"reason": "deleted", "nested": {"a": [1, 2, None]}},
        MappingProxyType({"k": "v"}),
        {"text": "\u2028 and \x00"},
    ],
)
def test_the_shared_encoder_writes_what_json_dumps_writes(data: Any) -> None:
    expected = json.dumps(data, separators=(",", ":"), allow_nan=False, default=_json_default)
    assert _json(data) == expected


def test_the_shared_encoder_still_refuses_nan() -> None:
    with pytest.raises(ValueError):
        _json({"value": float("nan")})
