"""The Composition, the function's Input CRD, the function package and the ProviderConfigs.

Data that Crossplane and provider-terraform read; nothing in the function imports them. The
Input CRD accepts what FunctionInput accepts, with the same defaults.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pydantic
import pytest

from function import model
from tests.crd import (
    API_VERSION,
    COMPOSITION_V1,
    COMPOSITION_V2,
    CREDENTIALS_EXAMPLE,
    EXAMPLES,
    GROUP,
    INPUT_CRD,
    PACKAGE_META,
    PLACEHOLDER,
    PROVIDERCONFIG_V1,
    PROVIDERCONFIG_V2,
    ROOT,
    VERSION,
    XRD_V1,
    compare_with_model,
    load,
    schema_errors,
)

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
