"""Session states as JSON, for checkpoints: start-up loads the latest checkpoint and
folds only the events after it. The encoding is private to this server version: a
checkpoint it cannot read is ignored (the log is folded from the start instead)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from varstore.projections.state import SessionState, VariableState
from varstore.types import Constraints

__all__ = ["CHECKPOINT_FORMAT", "decode_sessions", "encode_sessions"]

#: Bumped whenever the encoding changes; other formats are ignored, not misread.
CHECKPOINT_FORMAT = 1


def _variable(variable: VariableState) -> dict[str, Any]:
    return {
        "id": variable.id,
        "name": variable.name,
        "type": variable.type,
        "value": variable.value,
        "constraints": variable.constraints.to_dict(),
        "metadata": dict(variable.metadata),
        "source": variable.source,
        "version": variable.version,
        "created_at": variable.created_at.isoformat(),
        "updated_at": variable.updated_at.isoformat(),
        "position": variable.position,
        "created_position": variable.created_position,
    }


def encode_sessions(sessions: Mapping[str, SessionState]) -> bytes:
    """Every session's state (deleted ones included) as compact JSON."""
    return json.dumps(
        {
            "format": CHECKPOINT_FORMAT,
            "sessions": [
                {
                    "session_id": state.session_id,
                    "metadata": dict(state.metadata),
                    "ttl_seconds": state.ttl_seconds,
                    "created_at": state.created_at.isoformat(),
                    "updated_at": state.updated_at.isoformat(),
                    "position": state.position,
                    "deleted": state.deleted,
                    "variables": [_variable(v) for v in state.variables.values()],
                }
                for state in sessions.values()
            ],
        },
        separators=(",", ":"),
        allow_nan=False,
    ).encode()


def decode_sessions(data: bytes) -> dict[str, SessionState] | None:
    """The states a checkpoint holds, or None if it is of another format."""
    document = json.loads(data)
    if document.get("format") != CHECKPOINT_FORMAT:
        return None
    sessions: dict[str, SessionState] = {}
    for raw in document["sessions"]:
        variables = {
            v["id"]: VariableState(
                id=v["id"],
                name=v["name"],
                type=v["type"],
                value=v["value"],
                constraints=Constraints.trusted(v["constraints"]),
                metadata=v["metadata"],
                source=v["source"],
                version=v["version"],
                created_at=datetime.fromisoformat(v["created_at"]),
                updated_at=datetime.fromisoformat(v["updated_at"]),
                position=v["position"],
                created_position=v["created_position"],
            )
            for v in raw["variables"]
        }
        sessions[raw["session_id"]] = SessionState(
            session_id=raw["session_id"],
            metadata=raw["metadata"],
            ttl_seconds=raw["ttl_seconds"],
            created_at=datetime.fromisoformat(raw["created_at"]),
            updated_at=datetime.fromisoformat(raw["updated_at"]),
            position=raw["position"],
            variables=variables,
            names={v.name: v.id for v in variables.values()},
            deleted=raw["deleted"],
        )
    return sessions
