"""The Homelab composite: one place to see the fleet, computed by the code that places machines.

A `Homelab` XR (xrds/homelab.yaml) runs through the same function and the same requirements as
every XMachine (inventory, fleet, reservations). It composes nothing: its status is the fleet
view, nodes and what is allocated on them, every passthrough device and who holds it, VMIDs,
address pools, and the machines still pending with the explanation their claims show.

Nothing here decides anything of its own: the ledger is filled by placement's own holding code
from the same members a machine's reconcile builds (fleet records, confirmed by the Reservation
table), and each pending machine's explanation is placement.assign's outcome for it, called as
that machine's reconcile calls it. So the view cannot disagree with the machines.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from function import backups, fleet, pipeline, reservations, workspace
from function.allocate import Ledger
from function.demand import resolve
from function.errors import FabricError
from function.model import FunctionInput, Inventory
from function.outcome import FleetPhase, Reason, Refusal
from function.placement import Demands, adopted_guests, assign, hold  # what machines place with
from function.requirements import Answer
from function.scheduler import quantity

KIND = "Homelab"
GROUP = "fabric.homelab.io"
# Classes the FREE-GPUS column counts.
GPU_CLASSES = frozenset({"gpu", "gpu-nvidia", "gpu-amd"})
# Pending machines listed (each costs one walk of the fleet); the count covers them all.
MAX_PENDING = 20
INVENTORY_HOLDER = "reserved in the inventory"


def is_homelab(xr: dict[str, Any]) -> bool:
    """Whether the observed composite is a Homelab (anything else is a machine)."""
    api_version = str(xr.get("apiVersion") or "")
    return xr.get("kind") == KIND and api_version.split("/", 1)[0] == GROUP


@dataclass(frozen=True)
class View:
    """What to respond for a Homelab: its status, and whether it is complete."""

    status: dict[str, Any]
    ready: bool
    waiting: bool  # for Crossplane to answer a requirement (routine, not a warning)
    # The backups Workspace (function/backups.py): desired, or the observed one held as it is.
    backups: dict[str, Any] | None = None


def view(
    fn_input: FunctionInput,
    inventory: Answer,
    xrs: fleet.Fleet | None,
    table: reservations.Table | None,
    *,
    homelab: dict[str, Any] | None = None,
    observed_backups: dict[str, Any] | None = None,
) -> View:
    """The fleet view, or why it cannot be computed yet (the backups Workspace then held)."""
    held = None if observed_backups is None else workspace.held_copy(observed_backups)
    try:
        inv = pipeline.parse_inventory(inventory, fn_input)
    except Refusal as refusal:
        return _not_yet(refusal.reason, refusal.message, held)
    if xrs is None:
        return _not_yet(Reason.WAITING_FOR_FLEET, "waiting for Crossplane to list the fleet", held)
    if table is None:
        message = "waiting for Crossplane to list the reservations"
        return _not_yet(Reason.WAITING_FOR_RESERVATIONS, message, held)
    members = _members(xrs, table)
    found = backups.jobs(inv, members)
    status = _status(inv, fn_input, table, members)
    if inv.backups.jobs or inv.backups.storages:
        status["backups"] = backups.status(found)
    desired = backups.manifest(inv, fn_input, found, homelab or {})
    return View(status, ready=True, waiting=False, backups=desired)


def _not_yet(reason: Reason, message: str, held: dict[str, Any] | None = None) -> View:
    return View(
        {"phase": FleetPhase.PENDING.value, "message": message},
        ready=False,
        waiting=reason.waiting,
        backups=held,
    )


def _members(xrs: fleet.Fleet, table: reservations.Table) -> list[fleet.Member]:
    """Every machine as every other machine's reconcile sees it (pipeline._place)."""
    return [m if m.held is not None else _confirmed(m, table) for m in xrs.ordered()]


def _confirmed(member: fleet.Member, table: reservations.Table) -> fleet.Member:
    held = table.confirmed(member.key)
    return member if held is None else dataclasses.replace(member, held=held)


def _ledger(
    inv: Inventory, fn_input: FunctionInput, members: list[fleet.Member], table: reservations.Table
) -> Ledger:
    """What is held: the inventory's own, the Reservations, every placed machine (as assign)."""
    demands = Demands(inv, fn_input.defaults)
    ledger = Ledger.from_inventory(inv, adopted_guests(members, demands))
    for thing, holder in table.holder.items():
        ledger.hold_thing(thing.kind, thing.value, holder)
    for member in sorted((m for m in members if m.held is not None), key=lambda m: m.order):
        if member.held is not None:
            hold(ledger, member.key, member.held, demands.of(member))
    return ledger


def explain_pending(
    inv: Inventory,
    fn_input: FunctionInput,
    members: list[fleet.Member],
    member: fleet.Member,
    table: reservations.Table,
) -> str:
    """What the pending machine's own claim shows: why it is refused or unschedulable."""
    if member.spec is None:
        return "the claim is invalid; the machine's status says why"
    try:
        demand = resolve(member.spec, inv, fn_input.defaults)
    except FabricError as err:
        return str(err)
    if demand.pin is not None and inv.node(demand.pin) is None:
        known = ", ".join(n.name for n in inv.nodes)
        return f"spec.placement.node: {demand.pin!r} is not a node; accepted: {known}"
    taken = {t: k for t, k in table.holder.items() if k != member.key}
    outcome = assign(inv, fn_input.defaults, members, member, demand, reserved=taken)
    if outcome.placement is None:
        return outcome.unschedulable or ""
    where = outcome.placement
    return f"being placed on node {where.node}, VMID {where.vmid}"


def _status(
    inv: Inventory,
    fn_input: FunctionInput,
    table: reservations.Table,
    members: list[fleet.Member],
) -> dict[str, Any]:
    ledger = _ledger(inv, fn_input, members, table)
    placed = [m for m in members if m.held is not None]
    pending = [m for m in members if m.held is None]
    nodes = _nodes(inv, ledger, placed)
    devices = _devices(inv, ledger)
    free_mib = sum(n["memoryFreeMiB"] for n in nodes if n["schedulable"])
    schedulable = {n.name for n in inv.nodes if n.schedulable}
    free_gpus = sum(
        1
        for d in devices
        if d["class"] in GPU_CLASSES and not d["holder"] and d["node"] in schedulable
    )
    return {
        "phase": FleetPhase.READY.value,
        "summary": {
            "nodes": len(inv.nodes),
            "schedulableNodes": len(schedulable),
            "machines": sum(1 for m in members if not m.is_container),
            "containers": sum(1 for m in members if m.is_container),
            "placed": len(placed),
            "pending": len(pending),
            "freeMemoryMiB": free_mib,
            "freeMemory": quantity(max(free_mib, 0)),
            "freeGpus": free_gpus,
        },
        "nodes": nodes,
        "devices": devices,
        "vmids": _vmids(inv, ledger),
        "networks": _networks(inv, ledger),
        "pending": [
            {"machine": m.key, "message": explain_pending(inv, fn_input, members, m, table)}
            for m in pending[:MAX_PENDING]
        ],
    }


def _nodes(inv: Inventory, ledger: Ledger, placed: list[fleet.Member]) -> list[dict[str, Any]]:
    out = []
    for node in inv.nodes:
        use = ledger.nodes[node.name]
        here = [m for m in placed if m.held is not None and m.held.node == node.name]
        capacity_mib = int(node.memory * inv.overcommit.memory) - node.reserved_mib
        entry: dict[str, Any] = {
            "name": node.name,
            "schedulable": node.schedulable,
            "cpuAllocated": use.cpu,
            "cpuCapacity": int(node.cpu * inv.overcommit.cpu),
            "memoryAllocatedMiB": use.memory_mib,
            "memoryCapacityMiB": capacity_mib,
            "memoryFreeMiB": ledger.free_memory_mib(node.name),
            "memoryFree": quantity(max(ledger.free_memory_mib(node.name), 0)),
            "machines": sum(1 for m in here if not m.is_container),
            "containers": sum(1 for m in here if m.is_container),
        }
        if not node.schedulable and node.reason:
            entry["reason"] = node.reason
        out.append(entry)
    return out


def _devices(inv: Inventory, ledger: Ledger) -> list[dict[str, Any]]:
    out = []
    for node in inv.nodes:
        for device in node.devices:
            entry = {
                "node": node.name,
                "mapping": device.mapping,
                "class": device.device_class,
                "holder": ledger.device_holder.get(device.mapping, ""),
            }
            if device.model:
                entry["model"] = device.model
            out.append(entry)
    return out


def _vmids(inv: Inventory, ledger: Ledger) -> dict[str, Any]:
    start, end = inv.vmids.start, inv.vmids.end
    used = sum(1 for vmid in ledger.vmid_holder if start <= vmid <= end)
    return {"range": f"{start}-{end}", "used": used, "free": end - start + 1 - used}


def _networks(inv: Inventory, ledger: Ledger) -> list[dict[str, Any]]:
    out = []
    for name, net in sorted(inv.networks.items()):
        entry: dict[str, Any] = {"name": name, "used": 0, "free": 0}
        if net.cidr is not None:
            entry["cidr"] = str(net.cidr)
            entry["used"] = sum(
                1
                for address, holder in ledger.address_holder.items()
                if address in net.cidr and holder != INVENTORY_HOLDER
            )
        if net.pool is not None:
            start, end = int(net.pool.start), int(net.pool.end)
            entry["pool"] = f"{net.pool.start}-{net.pool.end}"
            taken = {int(a) for a in ledger.address_holder if start <= int(a) <= end}
            if net.gateway is not None and start <= int(net.gateway) <= end:
                taken.add(int(net.gateway))
            entry["free"] = end - start + 1 - len(taken)
        out.append(entry)
    return out
