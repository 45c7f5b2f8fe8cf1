"""Turning validation failures into messages a person can act on.

Every rejected input names the field path, the offending value and what would
be accepted (invariant 5, docs/invariants.md). Pydantic's errors carry the path and the value; the
custom validators in the models put the accepted forms into their messages.
"""

from __future__ import annotations

from typing import Any

import pydantic

MAX_VALUE_CHARS = 60


class FabricError(Exception):
    """An input problem the user can fix; its message is shown on the claim."""


def show_value(value: Any) -> str:
    """Render an offending value briefly and safely for a message."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)  # Structs carry every number as a double; whole ones read as ints
    text = repr(value)
    if len(text) > MAX_VALUE_CHARS:
        text = text[: MAX_VALUE_CHARS - 3] + "..."
    return text


def field_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    """Join a pydantic error location into a dotted path such as spec.devices[0].class."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-", "function_")):
            # pydantic puts validator names in the location of union members; meaningless here.
            continue
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def canonical(value: Any) -> Any:
    """The same data with mapping keys sorted, recursively.

    Data from a protobuf Struct comes in map order, which differs between processes;
    validating canonical data makes every message the same wherever it is produced.
    """
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def describe(prefix: str, err: pydantic.ValidationError, limit: int = 5) -> str:
    """Describe every error of a ValidationError, one clause each, field first."""
    clauses = []
    for item in err.errors(include_url=False)[:limit]:
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            clauses.append(f"{field_path(prefix, item['loc'])}: is required")
            continue
        if item["type"] == "extra_forbidden":
            clauses.append(f"{field_path(prefix, item['loc'])}: unknown field")
            continue
        if not item["loc"]:
            # A check of the whole document: its message names the parts; the value is all of it.
            clauses.append(f"{prefix or 'inventory'}: {msg}")
            continue
        value = show_value(item.get("input"))
        clauses.append(f"{field_path(prefix, item['loc'])}: {value} is invalid: {msg}")
    extra = len(err.errors()) - limit
    if extra > 0:
        clauses.append(f"and {extra} more")
    return "; ".join(clauses)
