"""Scheduling on the example homelab, over gRPC: devices as pool resources, explained, sticky."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import pytest

from tests.conftest import (
    applied,
    basic_spec,
    condition,
    desired_ws,
    gpu_spec,
    inventory_cm,
    inventory_data,
    module,
    reconcile,
    status,
    warnings,
    with_inventory,
    with_status,
    xr,
)

VM = "proxmox_virtual_environment_vm"


def coral_spec() -> dict[str, Any]:
    return basic_spec(image="debian-12", memory="4Gi", devices=[{"class": "coral-tpu"}])


def test_gpu_claim_lands_on_still_fawn_with_the_rtx3070_mapping(call):
    rsp = reconcile(call, xr("gpu-worker-1", gpu_spec()))
    got = status(rsp)
    assert got["node"] == "still-fawn"
    assert got["devices"] == [
        {"class": "gpu-nvidia", "node": "still-fawn", "mapping": "rtx3070", "id": "0000:01:00.0"}
    ]
    machine = module(rsp)["resource"][VM]["machine"]
    assert machine["hostpci"] == [
        {"device": "hostpci0", "mapping": "rtx3070", "pcie": True, "rombar": True}
    ]
    assert machine["machine"] == "q35"
    assert "usb" not in machine


def test_coral_claim_lands_on_fun_bedbug_with_the_usb_mapping(call):
    rsp = reconcile(call, xr("frigate", coral_spec()))
    got = status(rsp)
    assert got["node"] == "fun-bedbug"
    machine = module(rsp)["resource"][VM]["machine"]
    assert machine["usb"] == [{"mapping": "coral-usb", "usb3": True}]
    assert "hostpci" not in machine


def place_in_turn(call, machines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reconcile machines one after another, writing each status back like Crossplane."""
    placed: list[dict[str, Any]] = []
    for machine in machines:
        rsp = reconcile(call, machine, [inventory_cm(), *placed, machine])
        placed.append(with_status(machine, rsp))
    return placed


def test_plain_claims_spread_to_the_least_allocated_node(call):
    # Allocated share after placing a small VM (2 vCPU, 4Gi), the larger of CPU and memory:
    #   still-fawn 2/16 = 0.13, pumped-piglet 2/12 = 0.17, fun-bedbug (2+2)/4 = 1.0,
    #   pve (8+2)/8 = 1.25 (OPNsense, MAAS and k3s-vm-pve already run there).
    # Second: still-fawn 4/16 = 0.25 > pumped-piglet 0.17. Third: still-fawn 0.25 < piglet 0.33.
    machines = [xr(f"plain-{i}", basic_spec(), created=f"2026-11-01T10:00:0{i}Z") for i in range(3)]
    placed = place_in_turn(call, machines)
    assert [m["status"]["node"] for m in placed] == ["still-fawn", "pumped-piglet", "still-fawn"]
    assert [m["status"]["vmId"] for m in placed] == [200, 201, 202]
    assert [m["status"]["ip"] for m in placed] == [
        "192.168.4.200",
        "192.168.4.201",
        "192.168.4.202",
    ]


def test_pack_strategy_fills_the_fullest_node_first(call):
    rsp = reconcile(call, xr("packed", basic_spec(placement={"strategy": "pack"})))
    assert status(rsp)["node"] == "pve"


def test_nothing_is_ever_placed_on_chief_horse(call):
    machines = [
        xr(f"fill-{i:02d}", basic_spec(memory="4Gi", cpu=1), created=f"2026-11-01T10:00:{i:02d}Z")
        for i in range(40)
    ]
    placed = place_in_turn(call, machines)
    nodes = [m["status"].get("node") for m in placed]
    assert "chief-horse" not in nodes
    assert nodes.count(None) > 0  # the homelab filled up and said so instead
    vmids = [m["status"]["vmId"] for m in placed if "vmId" in m["status"]]
    assert len(vmids) == len(set(vmids))


def test_pin_to_chief_horse_is_refused_with_its_reason(call):
    rsp = reconcile(call, xr("ha", basic_spec(placement={"node": "chief-horse"})))
    got = status(rsp)
    assert got["phase"] == "Unschedulable"
    assert got["message"].startswith("0/5 nodes can host infra-machines/ha: ")
    assert "chief-horse: not schedulable (haos-host)" in got["message"]
    assert (
        "fun-bedbug, pumped-piglet, pve, still-fawn: not the pinned node "
        "(spec.placement.node=chief-horse)" in got["message"]
    )
    cond = condition(rsp, "Scheduled")
    assert cond is not None
    assert cond.reason == "Unschedulable"
    assert rsp.desired.composite.ready == fnv1.READY_FALSE
    assert rsp.meta.ttl.seconds == 30


def test_second_gpu_claim_names_the_holder_until_it_is_deleted(call):
    first = xr("gpu-worker-1", gpu_spec(), created="2026-11-01T10:00:00Z")
    placed = place_in_turn(call, [first])
    second = xr("gpu-worker-2", gpu_spec(), created="2026-11-01T11:00:00Z")
    rsp = reconcile(call, second, [inventory_cm(), *placed, second])
    want = (
        "0/5 nodes can host infra-machines/gpu-worker-2: "
        "chief-horse: not schedulable (haos-host); "
        "fun-bedbug: needs 16Gi, 10Gi free; "
        "pumped-piglet: no free device of class gpu; "
        "pve: needs 16Gi, 12Gi free; "
        "still-fawn: gpu rtx3070 is held by infra-machines/gpu-worker-1"
    )
    assert status(rsp)["message"] == want
    assert want in warnings(rsp)
    assert desired_ws(rsp) is None
    # The first machine is deleted: its GPU is free again and the second one gets it.
    rsp = reconcile(call, second, [inventory_cm(), second])
    assert status(rsp)["node"] == "still-fawn"
    assert status(rsp)["devices"][0]["mapping"] == "rtx3070"


@pytest.mark.parametrize("order", list(itertools.permutations([0, 1, 2])))
def test_pending_gpu_claims_agree_on_one_winner_in_any_order(call, order):
    # Three pending GPU claims, none with a status yet: each reconcile computes the whole
    # fleet's placement in (creationTimestamp, key) order, so all agree the oldest wins.
    machines = [
        xr("gpu-b", gpu_spec(), created="2026-11-01T10:00:00Z"),
        xr("gpu-a", gpu_spec(), created="2026-11-01T10:00:00Z"),
        xr("gpu-c", gpu_spec(), created="2026-11-01T09:00:00Z"),
    ]
    winners = set()
    for index in order:
        rsp = reconcile(call, machines[index], [inventory_cm(), *machines])
        if status(rsp).get("devices"):
            winners.add(machines[index]["metadata"]["labels"]["crossplane.io/claim-name"])
    assert winners == {"gpu-c"}


def test_interleaved_reconciles_agree_on_vmids_and_addresses(call):
    machines = [xr(f"vm-{i}", basic_spec(), created=f"2026-11-01T10:00:0{i}Z") for i in range(4)]
    # Reconcile in reverse, each seeing the others still pending: same answers as in order.
    seen = {}
    for machine in reversed(machines):
        rsp = reconcile(call, machine, [inventory_cm(), *machines])
        seen[machine["metadata"]["name"]] = (status(rsp)["vmId"], status(rsp)["address"])
    in_order = place_in_turn(call, machines)
    for machine in in_order:
        assert seen[machine["metadata"]["name"]] == (
            machine["status"]["vmId"],
            machine["status"]["address"],
        )
    assert len({v for v, _ in seen.values()}) == 4
    assert len({a for _, a in seen.values()}) == 4


def test_static_address_conflict_names_the_holder(call):
    static = {"name": "lan", "address": "192.168.4.60/24"}
    first = xr("cam-1", basic_spec(network=static), created="2026-11-01T10:00:00Z")
    placed = place_in_turn(call, [first])
    second = xr("cam-2", basic_spec(network=static), created="2026-11-01T11:00:00Z")
    rsp = reconcile(call, second, [inventory_cm(), *placed, second])
    assert status(rsp)["phase"] == "Unschedulable"
    assert "192.168.4.60/24 is held by infra-machines/cam-1" in status(rsp)["message"]


def sticky_setup(call):
    machine = xr("sticky", gpu_spec(), created="2026-11-01T10:00:00Z")
    first = reconcile(call, machine)
    observed = applied(first, outputs={"ipv4": "192.168.4.200"})
    return with_status(machine, first), observed, first


def assert_kept(rsp, first):
    got, was = status(rsp), status(first)
    for field in ("node", "vmId", "devices", "address"):
        assert got[field] == was[field], field
    ws, ws_first = desired_ws(rsp), desired_ws(first)
    assert ws is not None
    for attr in ("node_name", "vm_id", "hostpci", "clone"):
        got_vm = module(rsp)["resource"][VM]["machine"]
        assert got_vm.get(attr) == module(first)["resource"][VM]["machine"].get(attr), attr
    assert ws["metadata"]["annotations"] == ws_first["metadata"]["annotations"]


def test_placed_machine_keeps_its_place_when_others_come_and_go(call):
    machine, observed, first = sticky_setup(call)
    older = xr("older", gpu_spec(), created="2026-10-01T10:00:00Z")  # older, wants the GPU
    others = [xr(f"o-{i}", basic_spec(), created=f"2026-10-0{i + 1}T10:00:00Z") for i in range(3)]
    rsp = reconcile(call, machine, [inventory_cm(), older, *others, machine], observed=observed)
    assert_kept(rsp, first)


def test_placed_machine_keeps_its_place_when_inventory_is_edited(call):
    machine, observed, first = sticky_setup(call)
    data = inventory_data(inventory_cm())
    fawn = next(n for n in data["nodes"] if n["name"] == "still-fawn")
    fawn["memory"] = "8Gi"  # no longer fits 16Gi
    data["vmids"] = {"start": 300, "end": 399}  # range moved away from its VMID
    data["classes"]["small"]["cpu"] = 1
    rsp = reconcile(call, machine, [with_inventory(data), machine], observed=observed)
    assert_kept(rsp, first)


def test_inventory_losing_a_held_device_holds_the_machine(call):
    machine, observed, _ = sticky_setup(call)
    data = inventory_data(inventory_cm())
    fawn = next(n for n in data["nodes"] if n["name"] == "still-fawn")
    fawn["devices"] = []
    rsp = reconcile(call, machine, [with_inventory(data), machine], observed=observed)
    assert desired_ws(rsp)["spec"] == observed["spec"]
    assert any("no longer lists device rtx3070" in w for w in warnings(rsp))


def test_claim_edit_that_would_move_the_machine_is_reported_not_done(call):
    machine, observed, first = sticky_setup(call)
    edited = copy.deepcopy(machine)
    edited["spec"]["placement"] = {"node": "pumped-piglet"}
    edited["spec"]["devices"] = []
    edited["spec"]["memory"] = "24Gi"  # in-place change: applied
    rsp = reconcile(call, edited, observed=observed)
    assert_kept(rsp, first)
    joined = " | ".join(warnings(rsp))
    assert "spec.placement.node is pumped-piglet but the machine lives on still-fawn" in joined
    assert "spec.devices asks for 0 device(s); the machine holds 1" in joined
    assert module(rsp)["resource"][VM]["machine"]["memory"] == [{"dedicated": 24576}]


def test_device_held_by_an_unmanaged_guest_is_not_given_away(call):
    data = inventory_data(inventory_cm())
    bedbug = next(n for n in data["nodes"] if n["name"] == "fun-bedbug")
    bedbug["devices"][0]["heldBy"] = "113 frigate"
    rsp = reconcile(call, xr("frigate-vm", coral_spec()), [with_inventory(data)])
    assert status(rsp)["phase"] == "Unschedulable"
    assert (
        "fun-bedbug: coral-tpu coral-usb is held by unmanaged guest 113 frigate"
        in (status(rsp)["message"])
    )
