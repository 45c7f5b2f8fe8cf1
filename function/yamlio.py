"""YAML in and out: strict safe loading, deterministic dumping.

PyYAML silently lets a later duplicate key win, which would let a typo in the
inventory hide a node. The loader here refuses duplicates. The C loader and
dumper are used when the system has libyaml.
"""

from __future__ import annotations

from typing import Any

import yaml

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate mapping keys."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:  # noqa: FBT001, FBT002
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            msg = f"duplicate key {key!r} at line {key_node.start_mark.line + 1}"
            raise yaml.constructor.ConstructorError(None, None, msg, key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_strict(text: str) -> Any:
    """Parse one YAML document, refusing duplicate keys."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def load(text: str) -> Any:
    """Parse one YAML document fast with the safe (C when present) loader."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - CSafeLoader or SafeLoader


def dump(data: Any) -> str:
    """Dump data as block YAML, keys in insertion order, unicode kept, no aliases."""
    return yaml.dump(
        data,
        Dumper=_NoAliasDumper,
        default_flow_style=False,
        sort_keys=False,
        allow_unicode=True,
        width=4096,
    )


class _NoAliasDumper(_Dumper):  # type: ignore[misc, valid-type]
    """Never emit anchors or aliases: every value is written out where it is used."""

    def ignore_aliases(self, data: Any) -> bool:  # noqa: ARG002
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # Scripts and files read best as literal blocks; the emitter falls back to a quoted
    # scalar by itself when a block cannot carry the text exactly (e.g. trailing spaces).
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_NoAliasDumper.add_representer(str, _represent_str)
