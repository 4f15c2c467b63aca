"""Variables: ``register``, ``get`` (now, ``--at`` a position or ``--as-of`` a time),
``set`` (one, or several at once as ``NAME=VALUE``), ``batch`` (from a JSON file),
``delete``, ``rollback`` and ``list``."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from varstore.client import Client, ValidationError, VariableInfo
from varstore.client.cli.options import Options, client_options, context_for, run
from varstore.client.cli.output import (
    Output,
    cell,
    key_lines,
    show_mapping,
    show_time,
    show_value,
    table,
    variable_data,
)
from varstore.client.cli.values import (
    POSITION,
    RFC3339,
    describe,
    json_value,
    meta_option,
    parse_value,
    split_pair,
)
from varstore.types import TYPE_NAMES, PyValue

__all__ = ["COMMANDS"]


@click.command("register")
@click.argument("session_id", metavar="SESSION")
@click.argument("name")
@click.argument("type_name", metavar="TYPE", type=click.Choice(TYPE_NAMES))
@click.argument("value")
@click.option("--min", "minimum", type=float, help="smallest allowed number")
@click.option("--max", "maximum", type=float, help="largest allowed number")
@click.option("--min-length", type=click.IntRange(min=0), metavar="N", help="shortest string")
@click.option("--max-length", type=click.IntRange(min=0), metavar="N", help="longest string")
@click.option("--pattern", metavar="RE", help="regex a string must fully match")
@click.option(
    "--choice", "choices", multiple=True, metavar="V", help="an allowed value (repeat for each)"
)
@meta_option("metadata of the registration event")
@client_options()
def register(
    session_id: str,
    name: str,
    type_name: str,
    value: str,
    minimum: float | None,
    maximum: float | None,
    min_length: int | None,
    max_length: int | None,
    pattern: str | None,
    choices: tuple[str, ...],
    meta: tuple[tuple[str, str], ...],
) -> None:
    """Register a variable of TYPE (float, integer, boolean, string) with its first VALUE
    (booleans: true/false)."""

    def call(options: Options, client: Client) -> Output:
        constraints: dict[str, Any] = {
            key: limit
            for key, limit in (
                ("min", minimum),
                ("max", maximum),
                ("min_length", min_length),
                ("max_length", max_length),
                ("pattern", pattern),
            )
            if limit is not None
        }
        if choices:
            constraints["choices"] = [parse_value(type_name, choice) for choice in choices]
        initial = parse_value(type_name, value)
        with context_for(client, session_id) as context:
            context.register_variable(name, type_name, initial, constraints or None, dict(meta))
            return variable_output(session_id, describe(context, name))

    run(call)


@click.command("get")
@click.argument("session_id", metavar="SESSION")
@click.argument("name")
@click.option(
    "--at", "at_position", type=POSITION, metavar="POSITION", help="as it stood at this position"
)
@click.option("--as-of", type=RFC3339, metavar="TIME", help="as it stood at this RFC 3339 time")
@client_options()
def get(session_id: str, name: str, at_position: int | None, as_of: datetime | None) -> None:
    """Show a variable (NAME or its id), now or as it stood in the past."""
    if at_position is not None and as_of is not None:
        raise click.UsageError("give --at or --as-of, not both")

    def call(options: Options, client: Client) -> Output:
        with context_for(client, session_id) as context:
            point = at_position if at_position is not None else as_of
            if point is None:
                return variable_output(session_id, describe(context, name))
            return variable_output(session_id, describe(context.at(point), name))

    run(call)


@click.command("set")
@click.argument("session_id", metavar="SESSION")
@click.argument("assignments", metavar="NAME VALUE | NAME=VALUE...", nargs=-1, required=True)
@click.option(
    "--expected-version",
    type=POSITION,
    metavar="N",
    help="only set if the variable is at this version (one variable only)",
)
@meta_option("metadata of the change event")
@client_options()
def set_(
    session_id: str,
    assignments: tuple[str, ...],
    expected_version: int | None,
    meta: tuple[tuple[str, str], ...],
) -> None:
    """Set a variable's VALUE (read as the variable's type); or several at once, as one
    atomic batch: ``varstore set SESSION a=1 b=2``."""
    if len(assignments) == 2 and "=" not in assignments[0]:
        name, value = assignments
        run(lambda _, client: _set_one(client, session_id, name, value, expected_version, meta))
        return
    try:
        pairs = [split_pair(text) for text in assignments]
    except ValueError as problem:
        raise click.UsageError(f"{problem}; give NAME VALUE, or NAME=VALUE pairs") from None
    if expected_version is not None:
        raise click.UsageError("--expected-version goes with one variable: NAME VALUE")
    run(lambda options, client: _set_many(client, session_id, pairs, meta))


@click.command("batch")
@click.argument("session_id", metavar="SESSION")
@click.argument("assignments", metavar="[NAME=VALUE]...", nargs=-1)
@click.option(
    "--file",
    "path",
    metavar="FILE",
    help='a JSON object of the new values, {"name": value, ...} (-: stdin)',
)
@meta_option("metadata of the batch event")
@client_options()
def batch(
    session_id: str,
    assignments: tuple[str, ...],
    path: str | None,
    meta: tuple[tuple[str, str], ...],
) -> None:
    """Set several variables as one atomic batch (one event): all are written or none,
    from a JSON file (--file) and NAME=VALUE pairs."""
    try:
        pairs: list[tuple[str, object]] = [split_pair(text) for text in assignments]
    except ValueError as problem:
        raise click.UsageError(str(problem)) from None
    if path is None and not pairs:
        raise click.UsageError("nothing to set: give --file FILE or NAME=VALUE pairs")

    def call(options: Options, client: Client) -> Output:
        from_file = list(_read_updates(path).items()) if path is not None else []
        return _set_many(client, session_id, [*from_file, *pairs], meta)

    run(call)


def _read_updates(path: str) -> dict[str, object]:
    """The JSON object of a batch file. Raises ValidationError when it is not one."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as problem:
        raise ValidationError(f"{path}: {problem.strerror or problem}") from None
    try:
        updates = json.loads(text)
    except json.JSONDecodeError as problem:
        raise ValidationError(f"{path}: not JSON: {problem}") from None
    if not isinstance(updates, dict) or not updates:
        raise ValidationError(f'{path}: expected a JSON object {{"name": value, ...}}')
    return updates


def _set_one(
    client: Client,
    session_id: str,
    name: str,
    text: str,
    expected_version: int | None,
    meta: Sequence[tuple[str, str]],
) -> Output:
    with context_for(client, session_id) as context:
        current = describe(context, name)
        value = parse_value(current.type, text)
        version = context.set_variable(name, value, dict(meta) or None, expected_version)
    data = {
        "session_id": session_id,
        "name": current.name,
        "type": current.type,
        "value": value,
        "previous_value": current.value,
        "version": version,
    }
    pairs = [(key, str(data[key])) for key in ("session_id", "name", "type")]
    pairs += [
        ("value", show_value(value)),
        ("previous_value", show_value(current.value)),
        ("version", str(version)),
    ]
    return Output(data, key_lines(pairs))


def _set_many(
    client: Client,
    session_id: str,
    pairs: Sequence[tuple[str, object]],
    meta: Sequence[tuple[str, str]],
) -> Output:
    """One atomic SetVariables call; each value read as its variable's type."""
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValidationError("a variable is named twice in the batch")
    with context_for(client, session_id) as context:
        before = _by_identifier(context.list_variables())
        updates: dict[str, PyValue] = {}
        for name, given in pairs:
            known = before.get(name)
            if known is None:  # the server's own words for a variable it does not have
                context.get_variable(name, bypass_cache=True)
                raise ValidationError(f"variable {name!r} is not in session {session_id!r}")
            updates[name] = (
                parse_value(known.type, given)
                if isinstance(given, str)
                else json_value(known.type, name, given)
            )
        context.update_variables(updates, dict(meta) or None, atomic=True)
        after = _by_identifier(context.list_variables())
    changed: list[dict[str, Any]] = [
        {
            "name": before[name].name,
            "type": before[name].type,
            "value": value,
            "previous_value": before[name].value,
            "version": after[name].version if name in after else None,
        }
        for name, value in updates.items()
    ]
    rows = [
        [
            c["name"],
            c["type"],
            cell(show_value(c["value"])),
            cell(show_value(c["previous_value"])),
            str(c["version"]),
        ]
        for c in changed
    ]
    text = table(["NAME", "TYPE", "VALUE", "PREVIOUS", "VERSION"], rows)
    return Output({"session_id": session_id, "updated": changed}, text)


def _by_identifier(variables: Sequence[VariableInfo]) -> Mapping[str, VariableInfo]:
    """Each variable under its name and its id."""
    found = {v.id: v for v in variables}
    found.update({v.name: v for v in variables})
    return found


@click.command("delete")
@click.argument("session_id", metavar="SESSION")
@click.argument("name")
@client_options()
def delete(session_id: str, name: str) -> None:
    """Delete a variable (NAME or its id); its history stays."""

    def call(options: Options, client: Client) -> Output:
        with context_for(client, session_id) as context:
            gone = describe(context, name)
            context.delete_variable(name)
        data = {"session_id": session_id, "name": gone.name, "id": gone.id, "deleted": True}
        return Output(data, f"deleted variable {gone.name} ({gone.id}) from {session_id}")

    run(call)


@click.command("rollback")
@click.argument("session_id", metavar="SESSION")
@click.argument("name")
@click.option(
    "--to-version",
    type=POSITION,
    required=True,
    metavar="K",
    help="the earlier version whose value the variable gets back",
)
@click.option(
    "--expected-version", type=POSITION, metavar="N", help="only if the variable is at version N"
)
@meta_option("metadata of the rollback event")
@client_options()
def rollback(
    session_id: str,
    name: str,
    to_version: int,
    expected_version: int | None,
    meta: tuple[tuple[str, str], ...],
) -> None:
    """Give a variable an earlier version's value, as a new version (nothing is erased)."""

    def call(options: Options, client: Client) -> Output:
        with context_for(client, session_id) as context:
            context.rollback_variable(name, to_version, dict(meta) or None, expected_version)
            return variable_output(session_id, describe(context, name))

    run(call)


@click.command("list")
@click.argument("session_id", metavar="SESSION")
@click.argument("pattern", required=False)
@client_options()
def list_(session_id: str, pattern: str | None) -> None:
    """List a session's variables (optionally those whose names match a glob, e.g. 'llm_*')."""

    def call(options: Options, client: Client) -> Output:
        with context_for(client, session_id) as context:
            variables = context.list_variables(pattern)
        rows = [
            [
                v.name,
                v.type,
                cell(show_value(v.value)),
                str(v.version),
                v.source,
                show_time(v.updated_at),
            ]
            for v in variables
        ]
        headers = ["NAME", "TYPE", "VALUE", "VERSION", "SOURCE", "UPDATED_AT"]
        text = table(headers, rows) if rows else "no variables"
        return Output([variable_data(v) for v in variables], text)

    run(call)


def variable_output(session_id: str, variable: VariableInfo) -> Output:
    """A variable's whole record as ``key: value`` lines, or its JSON object."""
    text = key_lines(
        [
            ("session_id", session_id),
            ("name", variable.name),
            ("id", variable.id),
            ("type", variable.type),
            ("value", show_value(variable.value)),
            ("version", str(variable.version)),
            ("constraints", json.dumps(variable.constraints) if variable.constraints else "-"),
            ("metadata", show_mapping(variable.metadata)),
            ("source", variable.source),
            ("created_at", show_time(variable.created_at)),
            ("updated_at", show_time(variable.updated_at)),
        ]
    )
    return Output({"session_id": session_id, **variable_data(variable)}, text)


#: The variable commands, as the top-level group adds them.
COMMANDS = (register, get, set_, batch, delete, rollback, list_)
