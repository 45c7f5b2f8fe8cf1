"""What the packaging tests share: the repository's manifests, and CRD schemas as JSON Schema.

CRD schemas are checked with jsonschema after translating the Kubernetes extensions into the
JSON Schema that has the API server's meaning (pruning + strict field validation reject unknown
fields, list-type set/map reject duplicates, Go regexps anchor `$` at the very end).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema

from function.yamlio import load_strict

ROOT = Path(__file__).resolve().parents[1]
XRD_V1 = ROOT / "xrds" / "xmachine.yaml"
XRD_V2 = ROOT / "xrds" / "v2" / "xmachine-namespaced.yaml"
COMPOSITION_V1 = ROOT / "compositions" / "composition.yaml"
COMPOSITION_V2 = ROOT / "compositions" / "v2" / "composition.yaml"
PROVIDERCONFIG_V1 = ROOT / "compositions" / "providerconfig.yaml"
PROVIDERCONFIG_V2 = ROOT / "compositions" / "v2" / "providerconfig.yaml"
CREDENTIALS_EXAMPLE = ROOT / "compositions" / "proxmox-credentials.example.yaml"
INPUT_CRD = ROOT / "package" / "input" / "fabric.homelab.io_inputs.yaml"
PACKAGE_META = ROOT / "package" / "crossplane.yaml"
DOCKERFILE = ROOT / "Dockerfile"
EXAMPLES = ROOT / "examples"
CLAIMS = sorted((EXAMPLES / "claims").glob("*.yaml"))
XRS = sorted((EXAMPLES / "xrs").glob("*.yaml"))

GROUP = "fabric.homelab.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PLACEHOLDER = "REPLACE-ME"


def load(path: Path) -> Any:
    """Parse one YAML document, refusing duplicate keys (a silent override hides mistakes)."""
    return load_strict(path.read_text(encoding="utf-8"))


def ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


# --- CRD schema -> JSON Schema ------------------------------------------------------------------


def to_jsonschema(node: dict[str, Any]) -> dict[str, Any]:
    """Translate a structural CRD schema into JSON Schema with the API server's semantics."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = to_jsonschema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [to_jsonschema(sub) for sub in value]
        elif key == "pattern":
            # Go's RE2 `$` is the end of the text; Python's also matches before a final newline.
            out[key] = value[:-1] + r"\Z" if value.endswith("$") else value
        elif key == "x-kubernetes-list-type" and value == "set":
            out["uniqueItems"] = True
        elif key == "x-kubernetes-list-map-keys":
            out["uniqueKeys"] = value
        elif key.startswith("x-kubernetes-") or key in ("description", "default"):
            continue
        else:
            out[key] = value
    preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in node and "additionalProperties" not in node and not preserve:
        # Unknown fields are pruned, and kubectl's strict field validation turns that into an
        # error; either way the function never sees them.
        out["additionalProperties"] = False
    return out


def _unique_keys(
    validator: Any, keys: list[str], instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    if not validator.is_type(instance, "array"):
        return
    seen: set[tuple[Any, ...]] = set()
    for item in instance:
        if isinstance(item, dict):
            key = tuple(json.dumps(item.get(k)) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(f"duplicate entry for {keys}: {key}")
            seen.add(key)


KubeValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"uniqueKeys": _unique_keys}
)


def schema_errors(schema: dict[str, Any], instance: Any) -> list[str]:
    """Every error the translated schema finds in instance, as path: message."""
    translated = to_jsonschema(schema)
    KubeValidator.check_schema(translated)
    errors = KubeValidator(translated).iter_errors(instance)
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node under node, with a dotted path ([] for array items)."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}" if path else name)
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")


def at(node: dict[str, Any], path: str) -> dict[str, Any]:
    """The schema node at a dotted path ([] steps into array items)."""
    for part in filter(None, re.split(r"\.|(?=\[\])", path)):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


# --- the XRDs -----------------------------------------------------------------------------------


def xrd_version(path: Path) -> dict[str, Any]:
    versions = load(path)["spec"]["versions"]
    assert len(versions) == 1
    return versions[0]


def xrd_schema(path: Path = XRD_V1) -> dict[str, Any]:
    return xrd_version(path)["schema"]["openAPIV3Schema"]


def spec_schema(path: Path = XRD_V1) -> dict[str, Any]:
    return xrd_schema(path)["properties"]["spec"]


def status_schema(path: Path = XRD_V1) -> dict[str, Any]:
    return xrd_schema(path)["properties"]["status"]


# What Crossplane adds to a legacy XR's spec schema (its own machinery, next to the intent).
LEGACY_XR_SPEC_PROPS: dict[str, Any] = {
    "claimRef": {
        "type": "object",
        "required": ["apiVersion", "kind", "namespace", "name"],
        "properties": {k: {"type": "string"} for k in ("apiVersion", "kind", "namespace", "name")},
    },
    "compositionRef": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}},
    },
    "compositionRevisionRef": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}},
    },
    "compositionUpdatePolicy": {"type": "string", "enum": ["Automatic", "Manual"]},
    "resourceRefs": {"type": "array", "items": {"type": "object"}},
    "writeConnectionSecretToRef": {
        "type": "object",
        "required": ["name", "namespace"],
        "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
    },
}


def xr_spec_schema() -> dict[str, Any]:
    schema = copy.deepcopy(spec_schema())
    schema["properties"].update(copy.deepcopy(LEGACY_XR_SPEC_PROPS))
    return schema


def _unwrap(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        return _unwrap(defs[node["$ref"].rsplit("/", 1)[1]], defs)
    members = [m for m in node.get("anyOf", []) if m.get("type") != "null"]
    if len(members) == 1 and len(node["anyOf"]) == 2:
        return _unwrap(members[0], defs)
    return node


CONSTRAINTS = ("pattern", "minimum", "maximum", "maxItems", "maxLength", "enum")


def compare_with_model(
    model_node: dict[str, Any], crd_node: dict[str, Any], defs: dict[str, Any], path: str
) -> list[str]:
    """Differences between a pydantic JSON schema node and a CRD schema node, recursively."""
    node = _unwrap(model_node, defs)
    problems = [
        f"{path}: {kw} is {crd_node.get(kw)!r} in the CRD, {node[kw]!r} in the model"
        for kw in CONSTRAINTS
        if kw in node and crd_node.get(kw) != node[kw]
    ]
    if "properties" in node:
        crd_props = crd_node.get("properties", {})
        if set(crd_props) != set(node["properties"]):
            problems.append(f"{path}: fields {sorted(crd_props)} != {sorted(node['properties'])}")
        if set(crd_node.get("required", [])) != set(node.get("required", [])):
            problems.append(f"{path}: required {crd_node.get('required')} != {node['required']}")
        for name in set(crd_props) & set(node["properties"]):
            problems += compare_with_model(
                node["properties"][name], crd_props[name], defs, f"{path}.{name}"
            )
    if "items" in node and "items" in crd_node:
        problems += compare_with_model(node["items"], crd_node["items"], defs, f"{path}[]")
    return problems
