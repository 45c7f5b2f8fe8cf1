"""Faults, over real gRPC: a broken inventory, a missing answer, odd Workspaces, Terraform failing.

Each test runs the function in its own process and talks to it the way Crossplane does. The
rule under every fault (invariant 1 of docs/invariants.md): a machine that has a Workspace
keeps it exactly, or at the same node and VMID, and the claim says why; a machine without one
gets nothing and is told why; nothing is FATAL unless the request as a whole is refused, and
no call fails at the gRPC level.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import grpc
import pytest

from tests.conftest import (
    applied,
    basic_spec,
    condition,
    desired_ws,
    fn_input,
    gpu_spec,
    inventory_cm,
    inventory_data,
    reconcile,
    status,
    warnings,
    with_inventory,
    with_status,
    xr,
)
from tools import xpsim

NODE = "fabric.homelab.io/node"
VMID = "fabric.homelab.io/vmid"


def fatal(rsp: fnv1.RunFunctionResponse) -> list[str]:
    return [r.message for r in rsp.results if r.severity == fnv1.SEVERITY_FATAL]


def placed(call, spec: dict[str, Any] | None = None, name: str = "steady"):
    """A machine placed and applied: (XR with its status, observed Workspace, first response)."""
    machine = xr(name, spec or gpu_spec())
    first = reconcile(call, machine)
    assert desired_ws(first) is not None, first.results
    observed = applied(first, outputs={"vm_id": 200, "node": "still-fawn", "ipv4": "192.168.4.200"})
    return with_status(machine, first), observed, first


def assert_held(rsp: fnv1.RunFunctionResponse, observed: dict[str, Any], first) -> None:
    """The observed Workspace is in the response unchanged, and the claim keeps its place."""
    assert not fatal(rsp), fatal(rsp)
    ws = desired_ws(rsp)
    assert ws is not None, "the Workspace was dropped"
    assert ws["spec"] == observed["spec"], "the Workspace spec changed"
    assert ws["metadata"]["annotations"] == observed["metadata"]["annotations"]
    got, was = status(rsp), status(first)
    assert got["phase"] == "Held", got
    for field in ("node", "vmId", "address"):
        assert got.get(field) == was.get(field), f"{field}: got {got.get(field)}, want {was[field]}"
    # The device records lose their class and PCI id when the inventory is unreadable: the
    # mapping, what the machine holds, stays.
    mappings = [[d["mapping"] for d in s.get("devices", [])] for s in (got, was)]
    assert mappings[0] == mappings[1], f"devices: got {mappings[0]}, want {mappings[1]}"


# --- the inventory --------------------------------------------------------------------------


def without_still_fawn() -> list[dict[str, Any]]:
    data = inventory_data(inventory_cm())
    data["nodes"] = [n for n in data["nodes"] if n["name"] != "still-fawn"]
    for image in [*data["images"].values(), *data["containerImages"].values()]:
        image["templates"].pop("still-fawn")
    return [with_inventory(data)]


def broken_text(text: str) -> list[dict[str, Any]]:
    cm = inventory_cm()
    cm["data"]["inventory.yaml"] = text
    return [cm]


INVENTORY_FAULTS = [
    (
        "missing",
        [],
        "inventory: no ConfigMap found with labels fabric.homelab.io/inventory=homelab",
    ),
    ("unreadable YAML", broken_text("nodes: [\n  - {name: pve"), "is not valid YAML"),
    (
        "schema-invalid",
        broken_text("nodes: [{name: pve, cpu: many}]\nvmids: {start: 200, end: 399}\n"),
        "nodes[0].cpu: 'many' is invalid",
    ),
    (
        "node in use removed",
        without_still_fawn(),
        "the inventory no longer lists node still-fawn",
    ),
]


@pytest.mark.parametrize(
    ("case", "objects", "want"), INVENTORY_FAULTS, ids=[c[0] for c in INVENTORY_FAULTS]
)
def test_inventory_fault_holds_the_running_machine_and_says_why(call, case, objects, want):
    machine, observed, first = placed(call)
    rsp = reconcile(call, machine, [*objects, machine], observed=observed)
    assert_held(rsp, observed, first)
    claim = " | ".join(warnings(rsp))
    assert want in claim, f"{case}: want {want!r} on the claim, got {claim!r}"
    valid = condition(rsp, "Valid")
    assert valid is not None
    assert valid.status == fnv1.STATUS_CONDITION_FALSE
    assert valid.message.startswith("held as it is: "), valid.message
    assert "inventory" in valid.message, valid.message
    assert valid.target == fnv1.TARGET_COMPOSITE_AND_CLAIM


@pytest.mark.parametrize(
    ("case", "objects", "want"),
    INVENTORY_FAULTS[:3],
    ids=[c[0] for c in INVENTORY_FAULTS[:3]],
)
def test_inventory_fault_creates_nothing_and_says_why(call, case, objects, want):
    machine = xr("new", basic_spec())
    rsp = reconcile(call, machine, [*objects, machine])
    assert desired_ws(rsp) is None, case
    assert not fatal(rsp), fatal(rsp)
    got = status(rsp)
    assert got["phase"] == "Pending"
    assert want in got["message"], f"{case}: want {want!r} in {got['message']!r}"
    assert any(want in w for w in warnings(rsp))
    scheduled = condition(rsp, "Scheduled")
    assert scheduled is not None
    assert scheduled.status == fnv1.STATUS_CONDITION_FALSE
    assert scheduled.reason in {"InventoryUnavailable", "InventoryInvalid"}
    assert rsp.desired.composite.ready == fnv1.READY_FALSE


def test_a_node_removed_under_a_gpu_machine_does_not_free_its_gpu(call):
    # The machine on still-fawn is held; a new GPU claim must not be placed anywhere else with
    # that GPU's mapping (it is gone from the inventory) nor be handed the machine's VMID.
    machine, _, first = placed(call)
    newcomer = xr("newcomer", basic_spec(), created="2026-11-02T10:00:00Z")
    rsp = reconcile(call, newcomer, [*without_still_fawn(), machine, newcomer])
    got = status(rsp)
    assert got["phase"] == "Scheduled", got
    assert got["node"] != "still-fawn"
    assert got["vmId"] != status(first)["vmId"]
    assert got["address"] != status(first)["address"]


# --- requirements Crossplane does not answer ------------------------------------------------


def converge_partly(call, req, objects, *, v2: bool, unanswered: set[str]):
    """Crossplane's loop, except that some requirements never get an answer."""
    cluster = xpsim.Cluster(objects)
    rsp = call(req)
    for _ in range(xpsim.MAX_CALLS - 1):
        if fatal(rsp):
            break
        nxt = xpsim.answer(req, rsp, cluster, v2=v2)
        target = nxt.required_resources if v2 else nxt.extra_resources
        for name in unanswered:
            del target[name]
        again = call(nxt)
        same = again.requirements == rsp.requirements
        req, rsp = nxt, again
        if same:
            break
    return rsp


REQUIREMENTS = {"inventory", "fleet", "containers", "reservations"}
UNANSWERED = [
    ("fleet, 1.x", {"fleet"}, False, "WaitingForFleet"),
    ("fleet, 2.x", {"fleet"}, True, "WaitingForFleet"),
    ("containers, 2.x", {"containers"}, True, "WaitingForFleet"),
    ("inventory, 2.x", {"inventory"}, True, "WaitingForInventory"),
    ("reservations, 1.x", {"reservations"}, False, "WaitingForReservations"),
]


@pytest.mark.parametrize(
    ("case", "unanswered", "v2", "reason"), UNANSWERED, ids=[c[0] for c in UNANSWERED]
)
def test_unanswered_requirement_places_nothing_and_is_not_fatal(call, case, unanswered, v2, reason):
    machine = xr("early", basic_spec())
    req = xpsim.request(machine, fn_input())
    rsp = converge_partly(call, req, [inventory_cm(), machine], v2=v2, unanswered=unanswered)
    assert not fatal(rsp), fatal(rsp)
    assert desired_ws(rsp) is None, case
    got = status(rsp)
    assert got["phase"] == "Pending", got
    assert "node" not in got
    scheduled = condition(rsp, "Scheduled")
    assert scheduled is not None
    assert scheduled.reason == reason
    assert rsp.desired.composite.ready == fnv1.READY_FALSE
    # The function asked for all again: Crossplane will answer on a later reconcile.
    assert set(rsp.requirements.extra_resources) == REQUIREMENTS


@pytest.mark.parametrize(
    ("case", "unanswered", "v2", "reason"), UNANSWERED, ids=[c[0] for c in UNANSWERED]
)
def test_unanswered_requirement_keeps_the_observed_workspace(call, case, unanswered, v2, reason):
    machine, observed, first = placed(call)
    req = xpsim.request(machine, fn_input(), {"workspace": observed})
    rsp = converge_partly(call, req, [inventory_cm(), machine], v2=v2, unanswered=unanswered)
    assert_held(rsp, observed, first)
    assert reason.removeprefix("WaitingFor").lower() in " ".join(warnings(rsp))


# --- an observed Workspace of an unexpected shape -------------------------------------------


def reshaped(observed: dict[str, Any], change: str) -> dict[str, Any]:
    out = copy.deepcopy(observed)
    notes = out["metadata"]["annotations"]
    if change == "no annotations":
        del out["metadata"]["annotations"]
    elif change == "no vmid annotation":
        del notes[VMID]
    elif change == "vmid not a number":
        notes[VMID] = "two hundred"
    elif change == "vmid zero":
        notes[VMID] = "0"
    elif change == "spec missing":
        del out["spec"]
    elif change == "module not JSON":
        out["spec"]["forProvider"]["module"] = "resource {"
    elif change == "status a string":
        out["status"] = "garbage"
    elif change == "conditions junk":
        out["status"]["conditions"] = ["Ready", 3, {"type": None}]
    elif change == "metadata a list":
        out["metadata"] = ["x", 1]
    elif change == "no apiVersion and kind":
        del out["apiVersion"], out["kind"]
    return out


# held: the observed spec comes back unchanged; same place: rendered again for the node and
# VMID the Workspace records. These are the only two safe answers (invariant 1). The last two
# columns: what the claim is told without and with the placement in the XR status.
NO_PLACEMENT = "the observed Workspace carries no Fabric placement; it is held unchanged"
ODD_WORKSPACES = [
    ("no annotations", "held", NO_PLACEMENT, ""),
    ("no vmid annotation", "held", NO_PLACEMENT, ""),
    ("vmid not a number", "held", NO_PLACEMENT, ""),
    ("vmid zero", "held", NO_PLACEMENT, ""),
    ("spec missing", "same place", "", ""),
    ("module not JSON", "same place", "", ""),
    ("status a string", "same place", "", ""),
    ("conditions junk", "held", "", ""),
    ("metadata a list", "held", NO_PLACEMENT, ""),
    ("no apiVersion and kind", "held", "", ""),
]


@pytest.mark.parametrize(
    ("change", "want", "says", "says_with_status"),
    ODD_WORKSPACES,
    ids=[c[0] for c in ODD_WORKSPACES],
)
@pytest.mark.parametrize("xr_status", [False, True], ids=["no XR status", "XR status"])
def test_odd_workspace_is_kept(call, change, want, says, says_with_status, xr_status):
    machine, observed, _ = placed(call)
    if not xr_status:
        machine = {k: v for k, v in machine.items() if k != "status"}
    odd = reshaped(observed, change)
    try:
        rsp = reconcile(call, machine, observed=odd)
    except grpc.RpcError as err:
        pytest.fail(f"{change}: RunFunction failed: {err.code()} {err.details()}")
    assert not fatal(rsp), fatal(rsp)
    ws = desired_ws(rsp)
    assert ws is not None, f"{change}: the Workspace was dropped"
    if want == "held":
        assert ws["spec"] == odd["spec"], f"{change}: the spec changed"
    else:
        notes = ws["metadata"]["annotations"]
        assert (notes[NODE], notes[VMID]) == ("still-fawn", "200"), notes
        module = json.loads(ws["spec"]["forProvider"]["module"])
        vm = module["resource"]["proxmox_virtual_environment_vm"]["machine"]
        assert (vm["node_name"], vm["vm_id"]) == ("still-fawn", 200)
    told = says_with_status if xr_status else says
    if told:
        claim = " | ".join(warnings(rsp))
        assert told in claim, f"{change}: want {told!r} on the claim, got {claim!r}"


# --- Terraform failing or stuck -------------------------------------------------------------

SUMMARY = (
    "error creating VM: received an HTTP 500 response - Reason: unable to find configuration "
    "file for VM 200 on node 'still-fawn'"
)
TERRAFORM_ERRORS = [
    ("short", f"apply failed: Error: {SUMMARY}"),
    (
        # provider-terraform's own wrapping: a summary, then the whole stderr gzipped in base64.
        "provider-terraform",
        (
            "update failed: cannot apply Terraform configuration: Terraform encountered an "
            f"error. Summary: {SUMMARY}. To see the full error run: echo "
            f'"H4sIAAAAAAAA/{"x2Vb" * 600}" | base64 -d | gunzip'
        ),
    ),
]


@pytest.mark.parametrize(
    ("case", "message"), TERRAFORM_ERRORS, ids=[c[0] for c in TERRAFORM_ERRORS]
)
def test_terraform_failure_is_shown_on_the_claim(call, case, message):
    machine, observed, first = placed(call)
    synced = {"type": "Synced", "status": "False", "reason": "ReconcileError", "message": message}
    failing = applied(first, ready=False, synced=synced)
    rsp = reconcile(call, machine, observed=failing)
    provisioned = condition(rsp, "Provisioned")
    assert provisioned is not None
    assert provisioned.status == fnv1.STATUS_CONDITION_FALSE
    assert provisioned.reason == "ApplyFailed"
    assert provisioned.target == fnv1.TARGET_COMPOSITE_AND_CLAIM
    assert SUMMARY in provisioned.message, provisioned.message
    assert len(provisioned.message) <= 1024, "clipped to what a person reads"
    shown = [w for w in warnings(rsp) if SUMMARY in w]
    assert shown, f"no warning on the claim carries the provider's error: {warnings(rsp)}"
    assert rsp.desired.composite.ready == fnv1.READY_FALSE
    assert status(rsp)["phase"] == "Provisioning"
    # Terraform failing is no reason to touch the Workspace: it is rendered as before.
    assert desired_ws(rsp)["spec"] == observed["spec"]


def test_stuck_workspace_says_since_when_and_why(call):
    machine, _, first = placed(call)
    stuck = applied(first, ready=False)
    stuck["status"]["conditions"][0] = {
        "type": "Ready",
        "status": "False",
        "reason": "Creating",
        "message": "terraform apply is running",
        "lastTransitionTime": "2026-10-01T08:00:00Z",
    }
    rsp = reconcile(call, machine, observed=stuck)
    provisioned = condition(rsp, "Provisioned")
    assert provisioned is not None
    assert provisioned.status == fnv1.STATUS_CONDITION_FALSE
    for want in ("2026-10-01T08:00:00Z", "terraform apply is running"):
        assert want in provisioned.message, f"want {want!r} in {provisioned.message!r}"
    assert rsp.desired.composite.ready == fnv1.READY_FALSE
    assert status(rsp)["phase"] == "Provisioning"


# --- requests too large ---------------------------------------------------------------------


def test_fleet_over_the_limit_is_refused_naming_the_limit(call):
    machine = xr("crowd", basic_spec())
    crowd = [xr(f"m-{i}", {"class": "small"}) for i in range(5001)]
    rsp = reconcile(call, machine, [inventory_cm(), *crowd, machine])
    want = "fleet has 5002 machines; the limit is 5000"
    assert fatal(rsp) == [want], rsp.results
    assert desired_ws(rsp) is None


def test_fleet_over_the_limit_holds_the_running_machine(call):
    machine, observed, _ = placed(call)
    crowd = [xr(f"m-{i}", {"class": "small"}) for i in range(5001)]
    rsp = reconcile(call, machine, [inventory_cm(), *crowd, machine], observed=observed)
    assert not fatal(rsp)
    assert desired_ws(rsp)["spec"] == observed["spec"]
    assert any("the limit is 5000" in w for w in warnings(rsp)), warnings(rsp)


def test_inventory_over_one_mebibyte_is_refused_naming_the_limit(call):
    cm = inventory_cm()
    cm["data"]["inventory.yaml"] += "#" + "x" * (1 << 20) + "\n"
    machine = xr("big-inventory", basic_spec())
    rsp = reconcile(call, machine, [cm, machine])
    assert desired_ws(rsp) is None
    assert not fatal(rsp)
    want = "key inventory.yaml is over 1048576 bytes"
    assert want in status(rsp)["message"]
    assert any(want in w for w in warnings(rsp))


def test_request_over_eight_mebibytes_is_refused_naming_the_limit(call):
    machine = xr("bloated", basic_spec())
    machine["metadata"]["annotations"] = {"note": "x" * (9 << 20)}
    rsp = call(xpsim.request(machine, fn_input()))
    got = fatal(rsp)
    assert len(got) == 1, rsp.results
    assert got[0].endswith("bytes; the limit is 8388608"), got


def test_request_over_the_grpc_limit_is_refused_and_the_function_keeps_serving(call):
    machine = xr("enormous", basic_spec())
    machine["metadata"]["annotations"] = {"note": "x" * (17 << 20)}
    with pytest.raises(grpc.RpcError) as err:
        call(xpsim.request(machine, fn_input()))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    rsp = reconcile(call, xr("after", basic_spec()))
    assert status(rsp)["phase"] == "Scheduled"
