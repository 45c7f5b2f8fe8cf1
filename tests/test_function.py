"""The function end to end over gRPC: placement, rendering, errors, holding, determinism."""

from __future__ import annotations

import copy
from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import pytest
import yaml

from tests.conftest import (
    KEY,
    basic_spec,
    condition,
    desired_ws,
    fn_input,
    gpu_spec,
    inventory_cm,
    inventory_data,
    messages,
    module,
    reconcile,
    status,
    warnings,
    with_inventory,
    xr,
)
from tools import xpsim

VM = "proxmox_virtual_environment_vm"


def vm(rsp: fnv1.RunFunctionResponse) -> dict[str, Any]:
    return module(rsp)["resource"][VM]["machine"]


@pytest.mark.parametrize("v2", [False, True], ids=["crossplane-1.x", "crossplane-2.x"])
def test_pinned_claim_lands_on_its_node(call, v2):
    machine = xr("web", basic_spec(placement={"node": "pumped-piglet"}))
    rsp = reconcile(call, machine, v2=v2)
    got = status(rsp)
    assert got["phase"] == "Scheduled"
    assert got["node"] == "pumped-piglet"
    assert got["vmId"] == 200
    assert got["ip"] == "192.168.4.200"
    machine_vm = vm(rsp)
    assert machine_vm["node_name"] == "pumped-piglet"
    assert machine_vm["vm_id"] == 200
    # The debian-12 template on pumped-piglet.
    assert machine_vm["clone"] == [
        {"vm_id": 9002, "node_name": "pumped-piglet", "full": True, "retries": 3}
    ]
    assert machine_vm["cpu"] == [{"cores": 2, "type": "host"}]
    assert machine_vm["memory"] == [{"dedicated": 4096}]
    assert machine_vm["disk"][0]["size"] == 32
    cond = condition(rsp, "Scheduled")
    assert cond is not None
    assert cond.status == fnv1.STATUS_CONDITION_TRUE
    assert cond.target == fnv1.TARGET_COMPOSITE_AND_CLAIM


def test_both_requirement_fields_are_declared_identically(call):
    rsp = reconcile(call, xr("web", basic_spec()))
    reqs = rsp.requirements
    assert set(reqs.extra_resources) == {"inventory", "fleet", "containers", "reservations"}
    for name in ("inventory", "fleet", "containers", "reservations"):
        assert reqs.extra_resources[name] == reqs.resources[name]
    inv = reqs.extra_resources["inventory"]
    assert inv.kind == "ConfigMap"
    assert dict(inv.match_labels.labels) == {"fabric.homelab.io/inventory": "homelab"}
    assert reqs.extra_resources["fleet"].kind == "XMachine"
    assert reqs.extra_resources["containers"].kind == "XContainer"


def test_unplaced_claim_is_placed_automatically(call):
    rsp = reconcile(call, xr("web", basic_spec()))
    got = status(rsp)
    # Spread: the least allocated node that has the image; pve carries three unmanaged VMs.
    assert got["node"] in {"pumped-piglet", "still-fawn", "fun-bedbug"}
    assert got["node"] != "chief-horse"
    ws = desired_ws(rsp)
    assert ws is not None
    assert ws["apiVersion"] == "tf.upbound.io/v1beta1"
    assert ws["spec"]["forProvider"]["source"] == "Inline"
    assert ws["spec"]["forProvider"]["inlineFormat"] == "JSON"
    assert ws["spec"]["deletionPolicy"] == "Delete"
    assert (
        ws["metadata"]["annotations"]["crossplane.io/external-name"]
        == "fabric-uid-infra-machines-web"
    )
    assert set(module(rsp)["output"]) == {"vm_id", "node", "ipv4"}
    assert rsp.desired.composite.ready == fnv1.READY_FALSE


def test_orphan_deletion_policy_reaches_the_workspace(call):
    rsp = reconcile(call, xr("keep", basic_spec(deletionPolicy="Orphan")))
    assert desired_ws(rsp)["spec"]["deletionPolicy"] == "Orphan"


def test_namespaced_xr_composes_the_namespaced_workspace(call):
    spec = basic_spec()
    spec["bootstrap"]["secrets"] = [
        {"name": "k3s_token", "secretRef": {"namespace": "team-a", "name": "k3s", "key": "token"}}
    ]
    spec["roles"] = ["docker-host"]
    machine = xr("ns-vm", spec, namespace="team-a", namespaced=True)
    rsp = reconcile(call, machine, v2=True)
    ws = desired_ws(rsp)
    assert ws is not None, messages(rsp)
    assert ws["apiVersion"] == "tf.m.upbound.io/v1beta1"
    assert ws["spec"]["providerConfigRef"]["kind"] == "ClusterProviderConfig"
    assert "deletionPolicy" not in ws["spec"]
    env = ws["spec"]["forProvider"]["env"]
    assert env == [
        {"name": "TF_VAR_secret_k3s_token", "secretKeyRef": {"name": "k3s", "key": "token"}}
    ]


BAD_SPECS = [
    ("memory", {"memory": "16GB"}, ["spec.memory", "'16GB'", "Gi"]),
    ("cpu", {"cpu": 0}, ["spec.cpu", "0", "greater than or equal to 1"]),
    ("address", {"network": {"name": "lan", "address": "10.0.0.1"}}, ["spec.network.address"]),
    ("device count", {"devices": [{"class": "gpu", "count": 0}]}, ["spec.devices[0].count"]),
    ("deletion policy", {"deletionPolicy": "Keep"}, ["spec.deletionPolicy", "'Keep'", "Orphan"]),
    ("unknown field", {"gpus": 1}, ["spec.gpus", "unknown field"]),
    (
        "ssh key",
        {"bootstrap": {"sshAuthorizedKeys": ["not a key\nrm -rf /"]}},
        ["sshAuthorizedKeys[0]"],
    ),
    ("unknown image", {"image": "windows"}, ["spec.image", "'windows'", "debian-12", "nixos"]),
    ("unknown class", {"class": "huge"}, ["spec.class", "'huge'", "small", "medium"]),
    ("unknown network", {"network": {"name": "dmz"}}, ["spec.network.name", "'dmz'", "lan"]),
    ("device class", {"devices": [{"class": "fpga"}]}, ["spec.devices[0].class", "'fpga'", "gpu"]),
    ("pin", {"placement": {"node": "nowhere"}}, ["spec.placement.node", "'nowhere'", "still-fawn"]),
    (
        "static outside",
        {"network": {"name": "lan", "address": "10.9.9.9/24"}},
        ["spec.network.address", "10.9.9.9/24", "192.168.4.0/24"],
    ),
    ("flake", {"nix": {"flakeRef": "https://evil; rm -rf /"}}, ["spec.nix.flakeRef"]),
    ("disk", {"disk": "1Gi"}, ["spec.disk", "8Gi or more"]),
]


@pytest.mark.parametrize(("case", "change", "want"), BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_claim_is_refused_on_the_claim(call, case, change, want):
    spec = basic_spec()
    spec.update(change)
    rsp = reconcile(call, xr("bad", spec))
    got = status(rsp)
    assert got["phase"] == "Invalid", case
    assert desired_ws(rsp) is None
    assert not any(r.severity == fnv1.SEVERITY_FATAL for r in rsp.results)
    claim_warnings = " | ".join(warnings(rsp))
    for fragment in want:
        assert fragment in claim_warnings, f"{case}: want {fragment!r} in {claim_warnings!r}"
        assert fragment in got["message"]
    cond = condition(rsp, "Scheduled")
    assert cond is not None
    assert cond.status == fnv1.STATUS_CONDITION_FALSE
    assert cond.reason == "Invalid"
    assert rsp.desired.composite.ready == fnv1.READY_FALSE


def placed_and_applied(call, machine):
    """Place a machine, then return (xr with status, observed Workspace, first response)."""
    from tests.conftest import applied, with_status

    first = reconcile(call, machine)
    observed = applied(first, outputs={"vm_id": 200, "node": "x", "ipv4": "192.168.4.200"})
    return with_status(machine, first), observed, first


@pytest.mark.parametrize(("case", "change", "want"), BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_edit_holds_the_running_machine(call, case, change, want):
    machine, observed, first = placed_and_applied(call, xr("held", basic_spec()))
    edited = copy.deepcopy(machine)
    edited["spec"].update(change)
    rsp = reconcile(call, edited, observed=observed)
    ws = desired_ws(rsp)
    assert ws is not None, case
    assert ws["spec"] == observed["spec"], case
    assert ws["metadata"]["annotations"] == observed["metadata"]["annotations"]
    got = status(rsp)
    assert got["phase"] == "Held"
    assert got["node"] == status(first)["node"]
    joined = " | ".join(warnings(rsp))
    assert "held as it is" in joined
    assert want[0] in joined
    valid = condition(rsp, "Valid")
    assert valid is not None
    assert valid.status == fnv1.STATUS_CONDITION_FALSE


def broken_inventories() -> list[tuple[str, list[dict[str, Any]], str]]:
    missing: list[dict[str, Any]] = []
    not_yaml = inventory_cm()
    not_yaml["data"]["inventory.yaml"] = "nodes: [\n  - {name: pve"
    invalid = inventory_cm()
    invalid["data"]["inventory.yaml"] = "nodes: []\nvmids: {start: 200, end: 100}\n"
    wrong_key = inventory_cm()
    wrong_key["data"] = {"other.yaml": "x: 1"}
    duplicate = inventory_cm()
    duplicate["data"]["inventory.yaml"] += "vmids: {start: 500, end: 600}\n"
    two = inventory_cm()
    two_b = copy.deepcopy(two)
    two_b["metadata"]["name"] = "second"
    return [
        ("missing", missing, "no ConfigMap found"),
        ("not yaml", [not_yaml], "not valid YAML"),
        ("schema", [invalid], "nodes"),
        ("wrong key", [wrong_key], "has no key 'inventory.yaml'"),
        ("duplicate key", [duplicate], "duplicate key 'vmids'"),
        ("two", [two, two_b], "2 ConfigMaps"),
    ]


@pytest.mark.parametrize(
    ("case", "objects", "want"), broken_inventories(), ids=[c[0] for c in broken_inventories()]
)
def test_broken_inventory_holds_existing_machine(call, case, objects, want):
    machine, observed, _ = placed_and_applied(call, xr("steady", basic_spec()))
    rsp = reconcile(call, machine, [*objects, machine], observed=observed)
    ws = desired_ws(rsp)
    assert ws is not None, case
    assert ws["spec"] == observed["spec"]
    assert any(want in w for w in warnings(rsp)), (case, warnings(rsp))
    assert status(rsp)["phase"] == "Held"


@pytest.mark.parametrize(
    ("case", "objects", "want"), broken_inventories(), ids=[c[0] for c in broken_inventories()]
)
def test_broken_inventory_without_machine_creates_nothing(call, case, objects, want):
    machine = xr("new", basic_spec())
    rsp = reconcile(call, machine, [*objects, machine])
    assert desired_ws(rsp) is None, case
    assert any(want in w for w in warnings(rsp)), (case, warnings(rsp))
    assert not any(r.severity == fnv1.SEVERITY_FATAL for r in rsp.results)


def test_same_request_gives_byte_identical_responses(call, call_fresh):
    machine = xr("same", gpu_spec(roles=["docker-host"]))
    cluster = xpsim.Cluster([inventory_cm(), machine])
    req = xpsim.request(machine, fn_input())
    first = call(req)
    answered = xpsim.answer(req, first, cluster, v2=False)
    one = call(answered).SerializeToString(deterministic=True)
    two = call(answered).SerializeToString(deterministic=True)  # the served memo answers
    # ...and a reconcile afresh, past the memo, gives the very same bytes.
    fresh = call_fresh(answered).SerializeToString(deterministic=True)
    assert one == two == fresh
    assert len(one) > 1000


def test_the_response_memo_is_bounded_and_answers_what_a_reconcile_would(call_inproc, call_fresh):
    from function import fn

    requests = [
        xpsim.request(xr(f"m{i}", basic_spec()), fn_input()) for i in range(fn.MAX_RESPONSES + 8)
    ]
    for req in requests:
        call_inproc(req)
    assert len(fn._RESPONSES) <= fn.MAX_RESPONSES
    for req in requests[-3:]:
        got = call_inproc(req).SerializeToString(deterministic=True)
        assert got == call_fresh(req).SerializeToString(deterministic=True)


def test_the_response_memo_keys_on_content_not_on_the_request_tag(call_inproc, call_fresh):
    # Crossplane's requirement loop sends its second round (the inventory now attached) under
    # the first round's meta.tag unless per-iteration tagging is on: a memo keyed on the tag
    # would answer the second round with the first one's "send me the inventory".
    machine = xr("tagged", basic_spec())
    req = xpsim.request(machine, fn_input())
    req.meta.tag = "one-tag-for-every-round"
    first = call_inproc(req)
    answered = xpsim.answer(req, first, xpsim.Cluster([inventory_cm(), machine]), v2=False)
    answered.meta.tag = req.meta.tag
    second = call_inproc(answered)
    assert status(first)["phase"] == "Pending"
    assert status(second)["phase"] != "Pending"
    got = second.SerializeToString(deterministic=True)
    assert got == call_fresh(answered).SerializeToString(deterministic=True)


def test_first_call_without_requirements_is_not_fatal(call):
    req = xpsim.request(xr("early", basic_spec()), fn_input())
    rsp = call(req)
    assert not any(r.severity == fnv1.SEVERITY_FATAL for r in rsp.results)
    assert desired_ws(rsp) is None
    assert status(rsp)["phase"] == "Pending"


def test_waiting_for_inventory_keeps_existing_workspace(call):
    machine, observed, _ = placed_and_applied(call, xr("wait", basic_spec()))
    req = xpsim.request(machine, fn_input(), {"workspace": observed})
    rsp = call(req)
    assert desired_ws(rsp)["spec"] == observed["spec"]


def test_running_machine_reports_ip_and_ready(call):
    machine, observed, first = placed_and_applied(call, xr("run", basic_spec()))
    rsp = reconcile(call, machine, observed=observed)
    got = status(rsp)
    assert got["phase"] == "Running"
    assert got["ip"] == "192.168.4.200"
    assert rsp.desired.composite.ready == fnv1.READY_TRUE
    # The rendered Workspace is the same as when it was created: no perpetual diff.
    assert desired_ws(rsp)["spec"] == desired_ws(first)["spec"]


def test_bad_function_input_without_machine_is_fatal(call):
    inp = fn_input()
    inp["deletionPolicy"] = "Sometimes"
    rsp = reconcile(call, xr("x", basic_spec()), inp=inp)
    fatal = [r.message for r in rsp.results if r.severity == fnv1.SEVERITY_FATAL]
    assert fatal
    assert "input.deletionPolicy" in fatal[0]


def test_bad_function_input_holds_existing_machine(call):
    machine, observed, _ = placed_and_applied(call, xr("inp", basic_spec()))
    inp = fn_input()
    inp["providerConfigName"] = "Not_Valid"
    rsp = reconcile(call, machine, observed=observed, inp=inp)
    assert desired_ws(rsp)["spec"] == observed["spec"]
    assert any("input.providerConfigName" in m for m in messages(rsp))


def test_admin_key_reaches_user_data_on_an_edited_inventory(call):
    data = inventory_data(inventory_cm())
    data["nodes"] = [n for n in data["nodes"] if n["name"] != "pumped-piglet"]
    for image in [*data["images"].values(), *data["containerImages"].values()]:
        image["templates"].pop("pumped-piglet", None)
    rsp = reconcile(call, xr("k", basic_spec(placement={"node": "pve"})), [with_inventory(data)])
    assert status(rsp)["node"] == "pve"
    assert (
        KEY.split()[1]
        in module(rsp)["resource"]["proxmox_virtual_environment_file"]["user_data"]["source_raw"][
            0
        ]["data"]
    )


def test_bootstrap_and_image_edits_are_reported_and_never_replace_the_vm(call):
    machine, observed, first = placed_and_applied(call, xr("edit", basic_spec()))
    edited = copy.deepcopy(machine)
    edited["spec"]["image"] = "ubuntu-24.04"
    edited["spec"]["roles"] = ["docker-host"]
    rsp = reconcile(call, edited, observed=observed)
    joined = " | ".join(warnings(rsp))
    assert "changed the machine's user-data" in joined
    assert "changed the machine's image" in joined
    assert "takes effect only when the machine is re-created" in joined
    machine_vm = vm(rsp)
    before = vm(first)
    assert machine_vm["vm_id"] == before["vm_id"]
    assert machine_vm["node_name"] == before["node_name"]
    assert "clone" in machine_vm["lifecycle"]["ignore_changes"]
    snippet = module(rsp)["resource"]["proxmox_virtual_environment_file"]["user_data"]
    assert snippet["lifecycle"]["ignore_changes"] == ["source_raw"]
    # An unchanged claim says nothing of the kind.
    again = reconcile(call, machine, observed=observed)
    assert not any("re-created" in w for w in warnings(again))


NETWORKS = [
    # (case, network request, want ip_config ipv4, want vlan_id, want dns servers)
    (
        "pool",
        {"name": "lan"},
        {"address": "192.168.4.200/24", "gateway": "192.168.4.1"},
        None,
        ["192.168.4.1"],
    ),
    (
        "vlan",
        {"name": "k3s-cluster"},
        {"address": "10.40.0.100/24", "gateway": "10.40.0.1"},
        40,
        ["10.40.0.1", "192.168.4.1"],
    ),
    ("dhcp", {"name": "lan", "address": "dhcp"}, {"address": "dhcp"}, None, ["192.168.4.1"]),
    (
        "static",
        {"name": "lan", "address": "192.168.4.60/24"},
        {"address": "192.168.4.60/24", "gateway": "192.168.4.1"},
        None,
        ["192.168.4.1"],
    ),
    ("no cidr", {"name": "iot", "address": "dhcp"}, {"address": "dhcp"}, 20, None),
]


@pytest.mark.parametrize(
    ("case", "network", "want_ipv4", "want_vlan", "want_dns"),
    NETWORKS,
    ids=[n[0] for n in NETWORKS],
)
def test_network_by_name_becomes_nic_ip_config_and_dns(
    call, case, network, want_ipv4, want_vlan, want_dns
):
    rsp = reconcile(call, xr(f"net-{case.replace(' ', '-')}", basic_spec(network=network)))
    machine_vm = vm(rsp)
    init = machine_vm["initialization"][0]
    assert init["ip_config"] == [{"ipv4": [want_ipv4]}], case
    nic = machine_vm["network_device"][0]
    assert nic.get("vlan_id") == want_vlan, case
    assert nic["bridge"] == ("vmbr1" if network["name"] == "iot" else "vmbr0")
    assert (init["dns"][0]["servers"] if "dns" in init else None) == want_dns, case
    ipv4_output = module(rsp)["output"]["ipv4"]["value"]
    if want_ipv4["address"] == "dhcp":
        assert "ipv4_addresses" in ipv4_output  # read from the guest agent
    else:
        assert ipv4_output == want_ipv4["address"].split("/")[0]


def test_auto_address_on_a_network_without_pool_is_refused(call):
    rsp = reconcile(call, xr("iot-auto", basic_spec(network={"name": "iot"})))
    assert status(rsp)["phase"] == "Invalid"
    assert "spec.network.address: 'auto' needs an address pool" in status(rsp)["message"]


SITE_ROLE = """\
os: [debian, ubuntu]
description: mounts the NAS
---
packages: [nfs-common]
mounts:
  - [{{ "nas.homelab.lan:/export" | json }}, /mnt/nas, nfs, "defaults,_netdev", "0", "0"]
"""


def test_site_template_from_the_inventory_is_used_without_rebuilding(call):
    data = inventory_data(inventory_cm())
    data["templates"] = {"roles/nas-client": SITE_ROLE}
    spec = basic_spec(roles=["nas-client", "docker-host"])
    rsp = reconcile(call, xr("nas", spec), [with_inventory(data)])
    assert status(rsp)["phase"] == "Scheduled", messages(rsp)
    user_data = module(rsp)["resource"]["proxmox_virtual_environment_file"]["user_data"]
    doc = yaml.safe_load(user_data["source_raw"][0]["data"])
    assert "nfs-common" in doc["packages"]
    assert "docker.io" in doc["packages"]
    assert doc["mounts"] == [
        ["nas.homelab.lan:/export", "/mnt/nas", "nfs", "defaults,_netdev", "0", "0"]
    ]
    # Without the site template the role is unknown, and the message lists the known ones.
    rsp = reconcile(call, xr("nas", spec))
    assert "unknown role 'nas-client'" in status(rsp)["message"]
    assert "docker-host" in status(rsp)["message"]


def test_a_status_that_disagrees_with_the_workspace_never_moves_the_vm(call):
    # The Workspace lost its placement record; the XR status names another node and VMID
    # (stale, or edited by hand). Rendering from the status would replace the VM: hold it.
    machine, observed, _ = placed_and_applied(call, xr("drift", basic_spec()))
    observed = copy.deepcopy(observed)
    for note in ("fabric.homelab.io/node", "fabric.homelab.io/vmid"):
        del observed["metadata"]["annotations"][note]
    machine["status"].update({"node": "pve", "vmId": 100})
    rsp = reconcile(call, machine, observed=observed)
    assert desired_ws(rsp)["spec"] == observed["spec"]
    assert status(rsp)["phase"] == "Held"
    assert any("carries no Fabric placement" in w for w in warnings(rsp))


def test_a_workspace_crossplane_could_not_apply_is_shown_on_the_claim(call):
    # provider-terraform before v0.19 has no inlineFormat or env: the API server refuses the
    # Workspace, Crossplane says so on the XR's Synced condition (never on the claim), and
    # the function, reading its XR, repeats it where the owner looks.
    refused = (
        'cannot compose resources: cannot apply composed resource "workspace": '
        "failed to create typed patch object: .spec.forProvider.inlineFormat: "
        "field not declared in schema"
    )
    machine = xr(
        "old-provider",
        basic_spec(),
        status={"conditions": [{"type": "Synced", "status": "False", "message": refused}]},
    )
    rsp = reconcile(call, machine)
    provisioned = condition(rsp, "Provisioned")
    assert provisioned is not None
    assert provisioned.reason == "WorkspaceNotApplied"
    assert "inlineFormat" in provisioned.message
    assert "provider-terraform v1.x" in provisioned.message
    assert any("could not apply the Workspace" in w for w in warnings(rsp))
    # And without that condition, nothing of it.
    rsp = reconcile(call, xr("old-provider", basic_spec()))
    assert condition(rsp, "Provisioned").reason == "Pending"


def test_devices_column_says_who_holds_which_device(call):
    # kubectl get machines shows DEVICES from status.deviceSummary: class:mapping.
    gpu = status(reconcile(call, xr("gpu-worker", gpu_spec())))
    assert gpu["deviceSummary"] == "gpu-nvidia:rtx3070"
    assert "deviceSummary" not in status(reconcile(call, xr("plain", basic_spec())))


def test_a_reservation_another_machine_holds_is_not_a_workspace_failure(call):
    # Crossplane marks a Reservation another XR controls as unsynced: that is allocation at
    # work, and the claim must not be told the Workspace cannot be applied.
    lost = {"type": "Synced", "status": "False", "message": "Unsynced resources: reservation-vmid"}
    rsp = reconcile(call, xr("raced", basic_spec(), status={"conditions": [lost]}))
    assert not any("could not apply the Workspace" in w for w in warnings(rsp))
    both = {**lost, "message": "Unsynced resources: reservation-vmid, workspace"}
    rsp = reconcile(call, xr("raced", basic_spec(), status={"conditions": [both]}))
    assert any("could not apply the Workspace" in w for w in warnings(rsp))
