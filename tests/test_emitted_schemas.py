"""What the function emits, checked against the schemas of the tools that consume it.

- Every attribute of the Terraform module exists in the bpg/proxmox provider schema of every
  version Fabric supports, with the right type (tests/fixtures/bpg_attributes.json).
- Every attribute that would replace the VM or a snippet is either fixed for good (vm_id,
  node_name) or in lifecycle.ignore_changes.
- Every Workspace validates against provider-terraform's Workspace CRD schema
  (tests/fixtures/workspace_crd_spec.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.conftest import (
    basic_spec,
    desired_ws,
    gpu_spec,
    module,
    reconcile,
    xr,
)
from tools import xpsim

FIXTURES = Path(__file__).parent / "fixtures"
BPG = json.loads((FIXTURES / "bpg_attributes.json").read_text())
WORKSPACE = json.loads((FIXTURES / "workspace_crd_spec.json").read_text())
# Replacing attributes Fabric sets once and never changes: the placement is sticky.
STICKY = {"vm_id", "node_name", "content_type", "datastore_id"}
PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
    "list": (list,),
    "map": (dict,),
}


def walk(resource_type: str, attrs: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Every (attribute path, value) in a resource body, blocks entered."""
    found = []
    schema = BPG[resource_type]
    for key, value in attrs.items():
        if not prefix and key == "lifecycle":
            continue  # a Terraform meta-argument, not a provider attribute
        path = f"{prefix}{key}"
        found.append((path, value))
        entry = schema.get(path)
        if entry is not None and entry["kind"] == "block":
            assert isinstance(value, list), f"{path}: a block is a list of objects in JSON"
            for item in value:
                found += walk(resource_type, item, f"{path}.")
    return found


def check_module(mod: dict[str, Any]) -> None:
    for resource_type, resources in mod["resource"].items():
        assert resource_type in BPG, resource_type
        for name, body in resources.items():
            ignored = set(body.get("lifecycle", {}).get("ignore_changes", []))
            for path, value in walk(resource_type, body):
                entry = BPG[resource_type].get(path)
                assert entry is not None, f"{resource_type}.{name}: {path} is not a bpg attribute"
                if entry["kind"] != "block":
                    want = PY_TYPES[entry["type"]]
                    ok = isinstance(value, want) and not (
                        entry["type"] in {"int", "float"} and isinstance(value, bool)
                    )
                    assert ok, f"{path}: {value!r} is not {entry['type']}"
                if entry["forceNew"] and path not in STICKY:
                    top = path.split(".")[0]
                    covered = {top, path, path.replace(".", "[0].", 1)} & ignored
                    assert covered, f"{path} would replace {resource_type}.{name} on change"


def example_xrs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (p.stem, xpsim.load_yaml(p)) for p in sorted((xpsim.ROOT / "examples/xrs").glob("*.yaml"))
    ]


SPECS = [
    ("basic", basic_spec()),
    ("gpu", gpu_spec(roles=["docker-host"])),
    ("dhcp", basic_spec(network={"name": "lan", "address": "dhcp"})),
    ("vlan", basic_spec(network={"name": "k3s-cluster"})),
    ("coral", basic_spec(devices=[{"class": "coral-tpu"}])),
    ("no network", {"class": "small", "image": "debian-12"}),
    ("nixos", basic_spec(image="nixos", disk="32Gi", nix={"flakeRef": "github:me/fleet#vm"})),
]


def rendered() -> list[tuple[str, dict[str, Any], bool]]:
    cases = [(name, xr(f"s-{i}", spec), False) for i, (name, spec) in enumerate(SPECS)]
    cases.append(("namespaced", xr("ns", basic_spec(), namespace="team", namespaced=True), True))
    cases += [(f"example {name}", body, False) for name, body in example_xrs()]
    return cases


@pytest.fixture(scope="module")
def responses(call):
    out = []
    for name, machine, v2 in rendered():
        rsp = reconcile(call, machine, v2=v2)
        out.append((name, rsp))
    return out


def test_every_module_attribute_is_in_the_bpg_schema(responses):
    for name, rsp in responses:
        assert desired_ws(rsp) is not None, name
        check_module(module(rsp))


def test_the_schema_check_catches_an_unknown_attribute(responses):
    _, rsp = responses[0]
    mod = module(rsp)
    mod["resource"]["proxmox_virtual_environment_vm"]["machine"]["cpu"][0]["sockets_count"] = 2
    with pytest.raises(AssertionError, match=r"cpu\.sockets_count is not a bpg attribute"):
        check_module(mod)


def test_the_schema_check_catches_a_replacing_attribute_left_unguarded(responses):
    _, rsp = responses[0]
    mod = module(rsp)
    mod["resource"]["proxmox_virtual_environment_vm"]["machine"]["lifecycle"] = {}
    with pytest.raises(AssertionError, match="would replace"):
        check_module(mod)


def crd_schema(api_version: str) -> dict[str, Any]:
    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    return clean(WORKSPACE[api_version]["spec"])


def test_every_workspace_validates_against_the_crd(responses):
    for name, rsp in responses:
        ws = desired_ws(rsp)
        assert ws is not None, name
        assert ws["kind"] == "Workspace"
        jsonschema.validate(ws["spec"], crd_schema(ws["apiVersion"]))
        assert "module" in ws["spec"]["forProvider"]


def test_the_crd_check_catches_a_bad_workspace(responses):
    _, rsp = responses[0]
    ws = desired_ws(rsp)
    ws["spec"]["forProvider"]["inlineFormat"] = "YAML"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(ws["spec"], crd_schema(ws["apiVersion"]))


def test_no_credential_in_any_workspace(responses):
    for name, rsp in responses:
        text = json.dumps(desired_ws(rsp))
        for word in ("api_token", "PROXMOX_VE", "private_key", "password"):
            assert word not in text, (name, word)
        assert '"provider"' not in desired_ws(rsp)["spec"]["forProvider"]["module"]
