"""Global, deterministic placement of the fleet, up to and including this machine.

Concurrent reconciles share no lock and no memory. They agree anyway because
each computes the same function of (inventory, fleet): machines that hold a
placement keep it; pending machines are placed one by one in (creationTimestamp,
key) order, each taking the best node, the lowest free VMID and pool address.
Machines after this one cannot change its outcome, so the walk stops there.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from function.allocate import Ledger
from function.demand import Demand, resolve
from function.errors import FabricError
from function.fleet import Held, Member
from function.model import Defaults, Inventory
from function.scheduler import explain, schedule


@dataclass(frozen=True)
class Placement:
    """Where a machine lives and what it holds."""

    node: str
    vmid: int
    devices: tuple[str, ...]
    address: str | None  # static CIDR address, None for DHCP
    network: str | None
    fresh: bool  # placed by this call, not read back
    considered: tuple[str, ...] = ()  # nodes that fitted, best first (fresh placements only)

    def held(self) -> Held:
        """The placement as it is recorded for good."""
        return Held(self.node, self.vmid, self.devices, self.address, self.network)


@dataclass(frozen=True)
class Outcome:
    """This machine's placement, or why it has none."""

    placement: Placement | None
    unschedulable: str | None = None


def _demand_of(member: Member, inv: Inventory, defaults: Defaults) -> Demand | None:
    if member.spec is None:
        return None
    try:
        return resolve(member.spec, inv, defaults)
    except FabricError:
        return None


def _hold(ledger: Ledger, key: str, held: Held, demand: Demand | None) -> None:
    ledger.take_node(held.node, demand.cpu if demand else 0, demand.memory_mib if demand else 0)
    ledger.vmid_holder.setdefault(held.vmid, key)
    for mapping in held.devices:
        ledger.device_holder.setdefault(mapping, key)
    if held.address:
        ip = ipaddress.IPv4Interface(held.address).ip
        ledger.address_holder.setdefault(ip, key)
    if demand is not None and demand.spread_group is not None:
        ledger.group_members.setdefault((demand.spread_group, held.node), key)


def _address(ledger: Ledger, key: str, demand: Demand) -> tuple[str | None, str | None]:
    """The address for a new placement, or why there is none."""
    if demand.network is None or demand.address == "dhcp":
        return None, None
    if demand.address == "auto":
        found = ledger.next_address(demand.network)
        if found is None:
            return None, f"network {demand.network_name} has no free address in its pool"
        return str(found), None
    ip = ipaddress.IPv4Interface(demand.address).ip
    holder = ledger.address_holder.get(ip)
    if holder is not None and holder != key:
        return None, f"spec.network.address: {demand.address} is held by {holder}"
    return demand.address, None


def _place(ledger: Ledger, key: str, demand: Demand) -> Outcome:
    nodes = ledger.inv.nodes
    verdict = schedule(nodes, demand, ledger, key)
    if verdict.chosen is None:
        return Outcome(None, explain(key, len(nodes), verdict.reasons))
    vmid = ledger.next_vmid()
    if vmid is None:
        inv = ledger.inv
        return Outcome(None, f"no free VMID left in {inv.vmids.start}-{inv.vmids.end}")
    address, why = _address(ledger, key, demand)
    if why is not None:
        return Outcome(None, why)
    chosen = verdict.chosen
    placement = Placement(
        chosen.node,
        vmid,
        chosen.devices,
        address,
        demand.network_name,
        fresh=True,
        considered=verdict.considered,
    )
    _hold(ledger, key, placement.held(), demand)
    return Outcome(placement)


def assign(
    inv: Inventory, defaults: Defaults, fleet: list[Member], me: Member, my_demand: Demand
) -> Outcome:
    """Place the fleet in global order and return this machine's outcome."""
    ledger = Ledger.from_inventory(inv)
    for member in fleet:
        if member.held is not None:
            demand = my_demand if member.key == me.key else _demand_of(member, inv, defaults)
            _hold(ledger, member.key, member.held, demand)
    if me.held is not None:
        h = me.held
        return Outcome(Placement(h.node, h.vmid, h.devices, h.address, h.network, fresh=False))
    pending = sorted((m for m in fleet if m.held is None), key=lambda m: m.order)
    for member in pending:
        if member.key == me.key:
            return _place(ledger, me.key, my_demand)
        demand = _demand_of(member, inv, defaults)
        if demand is not None:
            _place(ledger, member.key, demand)
    return _place(ledger, me.key, my_demand)
