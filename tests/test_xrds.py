"""The XRDs agree with the models and with each other.

The XRD schema accepts exactly what MachineSpec (ContainerSpec for the XContainer XRDs) accepts:
same fields, enums, patterns and bounds; the status schema takes what the function writes; the
namespaced v2 XRDs are twins of the legacy ones; the printer columns point at status fields.
"""

from __future__ import annotations

import re
from typing import Any

import pydantic
import pytest

from function import model
from function.outcome import Phase
from tests.crd import (
    GROUP,
    ROOT,
    VERSION,
    XRD_V1,
    XRD_V2,
    at,
    compare_with_model,
    load,
    schema_errors,
    spec_schema,
    status_schema,
    walk,
    xrd_schema,
    xrd_version,
)


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
