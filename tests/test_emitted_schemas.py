"""What the function emits, checked against the schemas of the tools that consume it.

- Every attribute of the Terraform module exists in the real schema of the pinned bpg/proxmox
  provider (`terraform providers schema -json` of the binary `make tools` builds), with the
  right type; an object-typed attribute (network_device) carries every field of its object.
- Every Workspace's spec validates against the spec schema of provider-terraform's real
  Workspace CRDs (../shared/reference/provider-terraform), for many more claims than the
  examples; the real CLI's `beta validate` of the examples is tests/test_real_validate.py.

Which attributes would replace the VM is no longer a hand-kept list: real plans against a prior
state show it (tests/test_real_terraform.py).
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml

from function import terraform
from tests.conftest import (
    basic_spec,
    desired_ws,
    gpu_spec,
    module,
    reconcile,
    require_reference,
    require_tool,
    xr,
)
from tools import realtools, tfharness, xpsim

WORKSPACE_CRDS = {
    "tf.upbound.io/v1beta1": "tf.upbound.io_workspaces.yaml",
    "tf.m.upbound.io/v1beta1": "tf.m.upbound.io_workspaces.yaml",
}


@pytest.fixture(scope="session")
def bpg(tmp_path_factory) -> dict[str, Any]:
    """The pinned provider's resource schemas."""
    require_tool("terraform")
    require_tool("terraform-provider-proxmox")
    schema = tfharness.provider_schema(tmp_path_factory.mktemp("bpg-schema"))
    return schema["resource_schemas"]


SCALARS: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
}


def type_ok(cty: Any, value: Any) -> bool:
    """Whether a JSON value fits a Terraform (cty) type, as Terraform converts it."""
    if value is None:
        return True
    if isinstance(cty, str):
        return bool(SCALARS[cty](value))
    kind, inner = cty
    if kind in {"list", "set"}:
        return isinstance(value, list) and all(type_ok(inner, v) for v in value)
    if kind == "map":
        return isinstance(value, dict) and all(type_ok(inner, v) for v in value.values())
    # An object: Terraform requires every attribute of it (no optional attributes here).
    return (
        isinstance(value, dict)
        and value.keys() == inner.keys()
        and all(type_ok(inner[k], v) for k, v in value.items())
    )


def check_block(block: dict[str, Any], body: dict[str, Any], where: str) -> None:
    """Every key of a resource body (or nested block) against its schema block."""
    for key, value in body.items():
        path = f"{where}.{key}"
        if key in block.get("attributes", {}):
            cty = block["attributes"][key]["type"]
            assert type_ok(cty, value), f"{path}: {value!r} is not {cty}"
        elif key in block.get("block_types", {}):
            assert isinstance(value, list), f"{path}: a block is a list of objects in JSON"
            for item in value:
                check_block(block["block_types"][key]["block"], item, path)
        else:
            msg = f"{path} is not a bpg attribute"
            raise AssertionError(msg)


def check_module(bpg: dict[str, Any], mod: dict[str, Any]) -> None:
    for resource_type, resources in mod["resource"].items():
        assert resource_type in bpg, resource_type
        for name, body in resources.items():
            # lifecycle is a Terraform meta-argument, not a provider attribute.
            attrs = {k: v for k, v in body.items() if k != "lifecycle"}
            check_block(bpg[resource_type]["block"], attrs, f"{resource_type}.{name}")


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


def test_every_module_attribute_is_in_the_bpg_schema(bpg, responses):
    for name, rsp in responses:
        assert desired_ws(rsp) is not None, name
        check_module(bpg, module(rsp))


def test_the_schema_check_catches_an_unknown_attribute(bpg, responses):
    _, rsp = responses[0]
    mod = module(rsp)
    mod["resource"]["proxmox_virtual_environment_vm"]["machine"]["cpu"][0]["sockets_count"] = 2
    with pytest.raises(AssertionError, match=r"cpu\.sockets_count is not a bpg attribute"):
        check_module(bpg, mod)


def test_the_schema_check_catches_an_incomplete_object(bpg, responses):
    # What ea6a21b emitted: network_device as if it were a block with optional fields.
    _, rsp = responses[0]
    mod = module(rsp)
    vm = mod["resource"]["proxmox_virtual_environment_vm"]["machine"]
    vm["network_device"] = [{"bridge": "vmbr0", "model": "virtio"}]
    with pytest.raises(AssertionError, match="network_device"):
        check_module(bpg, mod)


def test_network_device_fields_are_the_providers(bpg):
    # function/terraform.py lists the object's fields because JSON needs all of them.
    cty = bpg["proxmox_virtual_environment_vm"]["block"]["attributes"]["network_device"]["type"]
    assert cty[0] == "list"
    assert cty[1][0] == "object"
    assert set(terraform.NETWORK_DEVICE_FIELDS) == cty[1][1].keys()


def crd_schema(api_version: str) -> dict[str, Any]:
    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    path = require_reference(
        realtools.REFERENCE / "provider-terraform" / WORKSPACE_CRDS[api_version]
    )
    crd = yaml.safe_load(path.read_text())
    version = api_version.split("/")[1]
    schema = next(v["schema"] for v in crd["spec"]["versions"] if v["name"] == version)
    return clean(schema["openAPIV3Schema"]["properties"]["spec"])


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
