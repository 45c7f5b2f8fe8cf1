"""Day-2 safety, shown by real plans: no event makes Terraform destroy or replace a VM.

For each example machine: the function renders its Workspace; real Terraform 1.5.5 with the
pinned bpg/proxmox plans its creation; tools/tfharness.py turns that plan into the state
Terraform holds after the apply (computed attributes filled as Proxmox fills them). Then an
event happens (a claim edit, an inventory edit, drift in Proxmox, seen in the state), the
function reconciles again with the applied Workspace observed, exactly as Crossplane calls it,
and Terraform plans the new module against the prior state, without refresh (a refresh would
ask Proxmox). Each event has the action set it must give; a delete or a replacement of the VM
or of the snippets it boots from is never one of them.

What an in-place update does to the running guest is decided per attribute (README, "What a
claim edit does to a running guest"): CPU and memory are written to the configuration and wait
for the next restart (reboot_after_update = false), which the claim announces.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import (
    applied,
    desired_ws,
    inventory_cm,
    inventory_data,
    reconcile,
    require_tool,
    warnings,
    with_inventory,
    with_status,
)
from tools import realtools, tfharness, xpsim

ROOT = realtools.ROOT
PROVIDERCONFIG = yaml.safe_load((ROOT / "compositions" / "providerconfig.yaml").read_text())
VM = "proxmox_virtual_environment_vm.machine"
FILES = ("proxmox_virtual_environment_file.user_data", "proxmox_virtual_environment_file.meta_data")
NOOP = ("no-op",)
UPDATE = ("update",)

Edit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Event:
    """Something that happens to a running machine, and the plan it must give."""

    name: str
    example: str
    vm: tuple[str, ...]  # the VM's planned actions
    claim: Edit | None = None  # edits the XR's spec
    inventory: Edit | None = None  # edits the inventory document
    drift: Edit | None = None  # edits the VM's attributes in the prior state
    changed: frozenset[str] = field(default_factory=frozenset)  # VM attributes an update touches
    announced: str | None = None  # a warning the claim must show


def _set(path: str, value: Any) -> Edit:
    """An edit setting a /-separated path (list indexes as numbers) to a value."""

    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        for key in parents:
            doc = doc[int(key)] if key.isdigit() else doc.setdefault(key, {})
        doc[int(last) if last.isdigit() else last] = value

    return edit


def _nodes(edit: Callable[[dict[str, Any]], None]) -> Edit:
    def each(inv: dict[str, Any]) -> None:
        for node in inv["nodes"].values() if isinstance(inv["nodes"], dict) else inv["nodes"]:
            edit(node)

    return each


EVENTS = [
    # --- claim edits -----------------------------------------------------------------------
    Event("nothing changed", "gpu-worker", NOOP),
    Event(
        "cpu up",
        "gpu-worker",
        UPDATE,
        claim=_set("cpu", 12),
        changed=frozenset({"cpu"}),
        announced="restarts",
    ),
    Event(
        "memory up",
        "gpu-worker",
        UPDATE,
        claim=_set("memory", "24Gi"),
        changed=frozenset({"memory"}),
        announced="restarts",
    ),
    Event(
        "disk grow", "gpu-worker", UPDATE, claim=_set("disk", "150Gi"), changed=frozenset({"disk"})
    ),
    Event(
        "disk shrink attempt", "gpu-worker", NOOP, claim=_set("disk", "50Gi"), announced="shrink"
    ),
    Event(
        "roles",
        "gpu-worker",
        UPDATE,
        claim=_set("roles", ["k3s-node"]),
        changed=frozenset({"tags"}),
        announced="re-created",
    ),
    Event("image", "gpu-worker", NOOP, claim=_set("image", "debian-12"), announced="re-created"),
    Event(
        "ssh keys",
        "gpu-worker",
        NOOP,
        claim=_set(
            "bootstrap/sshAuthorizedKeys", ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOther x@y"]
        ),
        announced="re-created",
    ),
    Event(
        "admin user",
        "gpu-worker",
        NOOP,
        claim=_set("bootstrap/adminUser", "ops"),
        announced="re-created",
    ),
    Event(
        "flakeRef",
        "nixos",
        NOOP,
        claim=_set("nix/flakeRef", "git+https://git.example/fabric?ref=next#nixos-builder"),
        announced="re-created",
    ),
    Event(
        "static address",
        "frigate",
        NOOP,
        claim=_set("network/address", "192.168.4.61/24"),
        announced="keeps it until it is re-created",
    ),
    Event(
        "storage pool",
        "gpu-worker",
        NOOP,
        claim=_set("storage", {"pool": "local"}),
        announced="re-created",
    ),
    Event("deletionPolicy", "gpu-worker", NOOP, claim=_set("deletionPolicy", "Orphan")),
    Event(
        "powerState Stopped",
        "gpu-worker",
        UPDATE,
        claim=_set("powerState", "Stopped"),
        changed=frozenset({"started", "on_boot"}),
        announced="shuts the machine down",
    ),
    Event(
        "protection on",
        "gpu-worker",
        UPDATE,
        claim=_set("protection", True),
        changed=frozenset({"protection"}),
    ),
    Event(
        "a device added",
        "basic",
        NOOP,
        claim=_set("devices", [{"class": "gpu", "count": 1}]),
    ),
    # --- inventory edits -------------------------------------------------------------------
    Event(
        "a node's snippets datastore",
        "gpu-worker",
        NOOP,
        inventory=_nodes(_set("snippetsDatastore", "cephfs")),
    ),
    Event(
        "a network's DNS servers",
        "gpu-worker",
        UPDATE,
        inventory=_set("networks/k3s-cluster/dns/servers", ["10.40.0.2"]),
        changed=frozenset({"initialization"}),
    ),
    Event(
        "a network's gateway",
        "gpu-worker",
        UPDATE,
        inventory=_set("networks/k3s-cluster/gateway", "10.40.0.254"),
        changed=frozenset({"initialization"}),
    ),
    Event(
        "a network's VLAN",
        "gpu-worker",
        UPDATE,
        inventory=_set("networks/k3s-cluster/vlan", 41),
        changed=frozenset({"network_device"}),
    ),
    Event(
        "an image's template map",
        "gpu-worker",
        NOOP,
        inventory=_set("images/ubuntu-24.04/templates/still-fawn", 9111),
    ),
    Event("node labels", "gpu-worker", NOOP, inventory=_nodes(_set("labels", {"rack": "b"}))),
    Event(
        "an image's boot disk corrected",
        "gpu-worker",
        NOOP,
        inventory=_set("images/ubuntu-24.04/bootDisk", {"interface": "scsi0", "size": "4Gi"}),
    ),
    # --- drift in Proxmox --------------------------------------------------------------------
    Event(
        "migrated to another node (HA or by hand)",
        "gpu-worker",
        NOOP,
        drift=_set("node_name", "pve"),
    ),
    Event(
        "stopped in the Proxmox UI",
        "gpu-worker",
        UPDATE,
        drift=_set("started", False),
        changed=frozenset({"started"}),
    ),
    Event("the agent not answering", "nixos", NOOP, drift=_set("ipv4_addresses", [])),
    Event(
        "stopped in the Proxmox UI, and the claim says Stopped",
        "gpu-worker",
        UPDATE,
        claim=_set("powerState", "Stopped"),
        drift=_set("started", False),
        changed=frozenset({"on_boot"}),
        announced="shuts the machine down",
    ),
    Event(
        "the template grew a larger disk",
        "gpu-worker",
        NOOP,
        inventory=_set("images/ubuntu-24.04/minDisk", "120Gi"),
    ),
]


@dataclass
class Base:
    """An example machine after its first apply: XR with status, Workspace, Terraform state."""

    xr: dict[str, Any]
    observed: dict[str, Any]
    state: dict[str, Any]


_BASES: dict[str, Base] = {}


def fleet() -> list[dict[str, Any]]:
    return [xpsim.load_yaml(p) for p in sorted((ROOT / "examples" / "xrs").glob("*.yaml"))]


def workdir(ws: dict[str, Any], where: Path) -> tfharness.Workdir:
    require_tool("terraform")
    require_tool("terraform-provider-proxmox")
    wd = tfharness.lay_out(ws, PROVIDERCONFIG, where)
    wd.init()
    return wd


def plan_for(ws: dict[str, Any], where: Path, prior: dict[str, Any]) -> dict[str, Any]:
    return workdir(ws, where).plan(prior)


def base(call: Any, example: str, tmp: Path) -> Base:
    if example not in _BASES:
        xr = xpsim.load_yaml(ROOT / "examples" / "xrs" / f"{example}.yaml")
        rsp = reconcile(call, xr, [inventory_cm(), *fleet()])
        ws = desired_ws(rsp)
        assert ws is not None
        state = workdir(ws, tmp / f"base-{example}").state_after_apply()
        _BASES[example] = Base(with_status(xr, rsp), applied(rsp), state)
    return _BASES[example]


def vm_attributes(state: dict[str, Any]) -> dict[str, Any]:
    vm = next(r for r in state["resources"] if r["type"] == "proxmox_virtual_environment_vm")
    return vm["instances"][0]["attributes"]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.name)
def test_event_plans_no_replacement(event, call, tmp_path):
    start = base(call, event.example, tmp_path)
    xr = copy.deepcopy(start.xr)
    if event.claim:
        event.claim(xr["spec"])
    inv = inventory_data(inventory_cm())
    if event.inventory:
        event.inventory(inv)
    others = [m for m in fleet() if m["metadata"]["name"] != xr["metadata"]["name"]]
    rsp = reconcile(call, xr, [with_inventory(inv), *others, xr], observed=start.observed)
    ws = desired_ws(rsp)
    assert ws is not None, "nothing lost: the Workspace stays in the desired state"
    prior = copy.deepcopy(start.state)
    if event.drift:
        event.drift(vm_attributes(prior))
    plan = plan_for(ws, tmp_path / "event", prior)
    acts = tfharness.actions(plan)
    assert tuple(acts[VM]) == event.vm, json.dumps(plan["resource_changes"], indent=1)[:4000]
    for snippet in FILES:
        assert tuple(acts[snippet]) == NOOP, (snippet, acts[snippet])
    change = next(rc["change"] for rc in plan["resource_changes"] if rc["address"] == VM)
    assert not change.get("replace_paths"), change.get("replace_paths")
    if event.vm == UPDATE:
        touched = tfharness.changed_attributes(change)
        assert touched == set(event.changed), touched
        # Whatever the update, bpg must not reboot the guest for it.
        assert change["after"]["reboot_after_update"] is False
    if event.announced:
        assert any(event.announced in w for w in warnings(rsp)), warnings(rsp)


def test_the_prior_state_is_what_the_module_says(call, tmp_path):
    # The harness itself: the state after apply, planned again with no event, changes nothing;
    # and a state that disagrees with the module is seen (the check is not blind).
    start = base(call, "gpu-worker", tmp_path)
    prior = copy.deepcopy(start.state)
    vm_attributes(prior)["cpu"][0]["cores"] = 1
    xr = start.xr
    rsp = reconcile(call, xr, [inventory_cm(), *fleet()], observed=start.observed)
    plan = plan_for(desired_ws(rsp), tmp_path / "drift", prior)
    assert tfharness.actions(plan)[VM] == ["update"]


def test_dhcp_address_skips_interfaces_without_ipv4(call, tmp_path):
    # bpg lists one entry per interface, [] for one without IPv4 (a veth of Docker or k3s):
    # the machine's address must still be found, wherever the empty lists are.
    start = base(call, "nixos", tmp_path)
    rsp = reconcile(call, start.xr, [inventory_cm(), *fleet()], observed=start.observed)
    ws = desired_ws(rsp)
    for seen in ([["127.0.0.1"], ["192.168.4.77"], []], [["127.0.0.1"], [], ["192.168.4.77"]]):
        prior = copy.deepcopy(start.state)
        vm_attributes(prior)["ipv4_addresses"] = seen
        plan = plan_for(ws, tmp_path / f"dhcp-{len(seen)}-{seen[1] == []}", prior)
        assert plan["planned_values"]["outputs"]["ipv4"]["value"] == "192.168.4.77", seen


def test_a_claim_below_the_template_disk_is_refused_before_any_clone(call):
    # bpg would fail after cloning ("lower than current size") and taint the VM: a
    # destroy and re-clone loop. The template's disk size is known, so refuse first.
    xr = xpsim.load_yaml(ROOT / "examples" / "xrs" / "gpu-worker.yaml")
    xr["spec"]["disk"] = "32Gi"
    inv = inventory_data(inventory_cm())
    inv["images"]["ubuntu-24.04"]["bootDisk"]["size"] = "40Gi"
    rsp = reconcile(call, xr, [with_inventory(inv), *fleet()])
    assert desired_ws(rsp) is None
    assert any("spec.disk: 32Gi" in w and "accepted: 40Gi or more" in w for w in warnings(rsp))


@pytest.mark.parametrize(("example", "disk"), [("nixos", "virtio0"), ("basic", "scsi0")])
def test_the_vm_boots_from_its_templates_disk(example, disk, call, tmp_path):
    # The module resizes the template's own boot disk and boots from it; the real plan of a
    # new machine has exactly one disk, in that slot.
    start = base(call, example, tmp_path)
    vm = vm_attributes(start.state)
    assert [d["interface"] for d in vm["disk"]] == [disk]
    assert vm["boot_order"] == [disk]


def test_one_template_vmid_on_several_nodes_is_refused(call):
    # A template on shared storage listed for every node would be cloned on the wrong node.
    inv = inventory_data(inventory_cm())
    inv["images"]["debian-12"]["templates"]["still-fawn"] = 9000
    xr = xpsim.load_yaml(ROOT / "examples" / "xrs" / "basic.yaml")
    rsp = reconcile(call, xr, [with_inventory(inv), *fleet()])
    assert desired_ws(rsp) is None
    said = " ".join(warnings(rsp))
    assert "images.debian-12.templates.still-fawn: template VMID 9000" in said, said
    assert "accepted: each node's own template VMID" in said
