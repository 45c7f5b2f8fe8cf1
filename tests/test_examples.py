"""The examples parse with the XRD and the models, and name what the example inventory has."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from function import model
from function.yamlio import load_strict
from tests.crd import (
    API_VERSION,
    CLAIMS,
    EXAMPLES,
    PACKAGE_META,
    PLACEHOLDER,
    XRS,
    ids,
    load,
    schema_errors,
    spec_schema,
    xr_spec_schema,
)

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
