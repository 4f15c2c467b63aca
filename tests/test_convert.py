"""Responses built from cached parts keep each variable's own types."""

from __future__ import annotations

from servers import in_process_server, stub_for

from varstore.types import from_proto, to_proto
from varstore.v1 import varstore_pb2 as pb


def test_choices_equal_in_python_keep_their_own_type_in_every_answer() -> None:
    # 0 == 0.0 == False in Python: a cache keyed on equal constraints once answered a
    # float variable's choices with the integer variable's message (found by the model).
    with in_process_server() as running, stub_for(running.address) as stub:
        stub.CreateSession(pb.CreateSessionRequest(session_id="s"))
        for name, type_name, zero in (
            ("i", "integer", 0),
            ("f", "float", 0.0),
            ("b", "boolean", False),
        ):
            stub.RegisterVariable(
                pb.RegisterVariableRequest(
                    session_id="s",
                    name=name,
                    type=type_name,
                    initial_value=to_proto(zero),
                    constraints=pb.Constraints(choices=[to_proto(zero)]),
                )
            )
        for name, kind in (("i", int), ("f", float), ("b", bool)):
            variable = stub.GetVariable(
                pb.GetVariableRequest(session_id="s", variable_identifier=name)
            ).variable
            [choice] = variable.constraints.choices
            assert type(from_proto(choice)) is kind, name
