"""Secret markers: placeholders for bootstrap secrets that Terraform fills in at apply time.

The function never sees a secret's value. A template that needs one writes
`{{ secrets.<name> | json }}`, which renders the marker `__FABRIC_SECRET_<name>__`.
Terraform later replaces the marker with `${jsonencode(var.secret_<name>)}`, a JSON
string, which is a valid YAML scalar only if the marker was the WHOLE scalar. The
checks here guarantee that: a marker inside a larger string (or a key) is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from function.errors import FabricError

MARKER_PREFIX = "__FABRIC_SECRET_"
MARKER_SUFFIX = "__"

# A run of name characters after the prefix; the name is the run minus its final "__". A
# name may itself end in "_" (Terraform identifiers allow it): "__FABRIC_SECRET_a___" is "a_".
_RUN = re.compile(r"__FABRIC_SECRET_[A-Za-z0-9_]*")
_WHOLE = re.compile(r"__FABRIC_SECRET_([A-Za-z0-9_]+)__")


def marker(name: str) -> str:
    """The placeholder text for the secret `name`."""
    return f"{MARKER_PREFIX}{name}{MARKER_SUFFIX}"


def markers_in(text: str) -> list[str]:
    """Sorted unique names of the secrets whose markers occur in `text`."""
    names = {whole_marker_name(run.group(0)) for run in _RUN.finditer(text)}
    return sorted(name for name in names if name is not None)


def whole_marker_name(value: str) -> str | None:
    """The secret name if `value` is exactly one marker, else None."""
    match = _WHOLE.fullmatch(value)
    return match.group(1) if match else None


def strings(data: Any, path: str = "") -> Iterator[tuple[str, str, bool]]:
    """Yield (path, text, is_key) for every string key and value in parsed YAML data."""
    if isinstance(data, dict):
        for key, value in data.items():
            child = f"{path}.{key}" if path else str(key)
            if isinstance(key, str):
                yield child, key, True
            yield from strings(value, child)
    elif isinstance(data, list):
        for index, item in enumerate(data):
            yield from strings(item, f"{path}[{index}]")
    elif isinstance(data, str):
        yield path, data, False


def check_whole(data: Any, where: str, allowed: set[str] | frozenset[str]) -> set[str]:
    """Check every marker in `data` is a whole scalar value naming an allowed secret.

    Args:
        data: parsed YAML (dicts, lists, scalars).
        where: what produced the data, for messages (e.g. "template roles/k3s-node").
        allowed: the secret names the producer declared.

    Returns:
        The names of the secrets used.

    Raises:
        FabricError: a marker sits in a key or inside a larger string, or names an
            undeclared secret.
    """
    used: set[str] = set()
    for path, text, is_key in strings(data):
        if MARKER_PREFIX not in text:
            continue
        name = None if is_key else whole_marker_name(text)
        if name is None:
            place = "in a key" if is_key else "inside a larger value"
            msg = (
                f"{where}: {path or 'the document'} holds a secret marker {place}; a secret "
                "must be a whole YAML value (e.g. the whole content of a write_files entry)"
            )
            raise FabricError(msg)
        if name not in allowed:
            declared = ", ".join(sorted(allowed)) or "none"
            msg = (
                f"{where}: {path} uses secret {name}, which it does not declare "
                f"(declared: {declared})"
            )
            raise FabricError(msg)
        used.add(name)
    return used


def check_plain(text: str) -> None:
    """Check every marker in dumped YAML is a plain scalar that ends its line.

    Terraform substitutes the marker text blindly, so it must not sit inside quotes
    or a block scalar; the YAML dumper writes a marker-only string plain, and this
    confirms it did.

    Raises:
        FabricError: a marker is quoted or shares its line with other text.
    """
    for match in _RUN.finditer(text):
        before = text[max(match.start() - 2, 0) : match.start()]
        after = text[match.end() : match.end() + 1]
        whole = whole_marker_name(match.group(0)) is not None
        if not whole or before not in (": ", "- ") or after not in ("\n", ""):
            line = text.count("\n", 0, match.start()) + 1
            msg = f"secret marker {match.group(0)} is not a plain YAML value (line {line})"
            raise FabricError(msg)
