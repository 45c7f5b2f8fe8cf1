"""Secrets by reference: the value is in a Secret, never in what the function emits or logs."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import (
    applied,
    basic_spec,
    desired_ws,
    fn_input,
    inventory_cm,
    module,
    reconcile,
    status,
    with_status,
    xr,
)
from tools import xpsim

TOKEN = "K10-secret-value-9f8e7d6c5b4a"
URL = "https://k3s-secret-server.example:6443"


def secret_object() -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "k3s", "namespace": "infra-machines"},
        "data": {
            "token": base64.b64encode(TOKEN.encode()).decode(),
            "url": base64.b64encode(URL.encode()).decode(),
        },
        "stringData": {"token": TOKEN, "url": URL},
    }


def k3s_spec() -> dict:
    spec = basic_spec(image="debian-12", roles=["k3s-node"])
    spec["bootstrap"]["secrets"] = [
        {
            "name": "k3s_token",
            "secretRef": {"namespace": "infra-machines", "name": "k3s", "key": "token"},
        },
        {
            "name": "k3s_url",
            "secretRef": {"namespace": "infra-machines", "name": "k3s", "key": "url"},
        },
    ]
    return spec


@pytest.fixture(scope="module")
def debug_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("fn") / "function.log"
    with xpsim.serve("--insecure", "--debug", log=log) as address:
        yield xpsim.stub(address), log


def test_no_secret_value_in_workspace_status_events_or_logs(debug_server):
    call, log = debug_server
    machine = xr("k3s-1", k3s_spec())
    cluster = [inventory_cm(), secret_object(), machine]
    first = reconcile(call, machine, cluster)
    observed = applied(first, outputs={"ipv4": "192.168.4.200"})
    second = reconcile(call, with_status(machine, first), cluster, observed=observed)
    bad = reconcile(call, xr("k3s-2", {**k3s_spec(), "memory": "lots"}), cluster)
    for rsp in (first, second, bad):
        wire = rsp.SerializeToString()
        for value in (TOKEN, URL):
            assert value.encode() not in wire
            assert base64.b64encode(value.encode()) not in wire
    # The function never even asks for Secrets: only the inventory, the fleet, the Reservations.
    for rsp in (first, second):
        kinds = {sel.kind for sel in rsp.requirements.resources.values()}
        assert kinds == {"ConfigMap", "XMachine", "XContainer", "Reservation"}
    text = log.read_text()
    assert "reconciled" in text  # the log is there, and it is clean
    for value in (TOKEN, URL):
        assert value not in text
    # The reference is there: Terraform reads the value from the Secret at apply time.
    ws = desired_ws(first)
    assert ws["spec"]["forProvider"]["env"] == [
        {
            "name": "TF_VAR_secret_k3s_token",
            "secretKeyRef": {"name": "k3s", "key": "token", "namespace": "infra-machines"},
        },
        {
            "name": "TF_VAR_secret_k3s_url",
            "secretKeyRef": {"name": "k3s", "key": "url", "namespace": "infra-machines"},
        },
    ]
    mod = module(first)
    assert mod["variable"] == {
        "secret_k3s_token": {"type": "string", "sensitive": True},
        "secret_k3s_url": {"type": "string", "sensitive": True},
    }
    data = mod["resource"]["proxmox_virtual_environment_file"]["user_data"]["source_raw"][0]["data"]
    assert "${jsonencode(var.secret_k3s_token)}" in data
    assert "__FABRIC_SECRET_" not in data  # every marker was replaced
    assert status(second)["phase"] == "Running"


def test_user_data_escapes_terraform_templates_from_claim_strings(call):
    key = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFabric x${file("/etc/shadow")}%{ if 1 }y'
    spec = basic_spec()
    spec["bootstrap"]["sshAuthorizedKeys"] = [key]
    rsp = reconcile(call, xr("esc", spec))
    data = module(rsp)["resource"]["proxmox_virtual_environment_file"]["user_data"]["source_raw"][
        0
    ]["data"]
    assert '$${file(\\"/etc/shadow\\")}' in data or '$${file("/etc/shadow")}' in data
    assert "%%{ if 1 }" in data
    # Unescaped template syntax only where Fabric put it (none here: no secrets).
    assert "${" not in data.replace("$${", "")
    assert "%{" not in data.replace("%%{", "")


def test_undeclared_secret_for_a_role_is_refused(call):
    spec = basic_spec(image="debian-12", roles=["k3s-node"])
    rsp = reconcile(call, xr("nosecret", spec))
    assert status(rsp)["phase"] == "Invalid"
    assert "k3s_token" in status(rsp)["message"]
    assert "spec.bootstrap.secrets" in status(rsp)["message"]


def test_secret_in_another_namespace_is_refused_for_a_namespaced_machine(call):
    spec = k3s_spec()
    machine = xr("ns-k3s", spec, namespace="team-b", namespaced=True)
    rsp = reconcile(call, machine, v2=True, inp=fn_input())
    assert status(rsp)["phase"] == "Invalid"
    msg = status(rsp)["message"]
    assert "spec.bootstrap.secrets[0].secretRef.namespace" in msg
    assert "'infra-machines'" in msg
    assert "'team-b'" in msg
    assert json.dumps(desired_ws(rsp)) == "null"
