"""Global, deterministic placement of the fleet, up to and including this machine.

Concurrent reconciles share no lock and no memory. They agree anyway because
each computes the same function of (inventory, fleet): machines that hold a
placement keep it; pending machines are placed one by one in (creationTimestamp,
key) order, each taking the best node, the lowest free VMID and pool address.
Machines after this one cannot change its outcome, so the walk stops there.
"""

from __future__ import annotations

import functools
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


class _Demands:
    """Each fleet member's resolved demand, resolved once per distinct spec object.

    Resolving a spec scans the inventory's devices, so resolving every member of a
    large fleet on a large inventory dominated placing a machine. Fleet members
    with the same intent share one parsed spec object (fleet.records caches them),
    and resolve() is a pure function of (spec, inventory, defaults), which are
    fixed for the duration of one assign(): the memo returns what resolve() would.
    It is keyed by id(spec); the fleet list keeps every spec alive for the whole
    call, so no id is reused while the memo lives.
    """

    def __init__(self, inv: Inventory, defaults: Defaults) -> None:
        self._inv = inv
        self._defaults = defaults
        self._memo: dict[int, Demand | None] = {}

    def of(self, member: Member) -> Demand | None:
        """The member's demand, or None when its spec is invalid or does not resolve."""
        if member.spec is None:
            return None
        key = id(member.spec)
        if key not in self._memo:
            try:
                self._memo[key] = resolve(member.spec, self._inv, self._defaults)
            except FabricError:
                self._memo[key] = None
        return self._memo[key]


def _interface_ip(address: str) -> ipaddress.IPv4Address:
    """The IP of a held CIDR address (text from an XR status or Workspace annotation)."""
    if isinstance(address, str):
        return _cached_interface_ip(address)
    # Not text (a malformed status): no cache, so it fails exactly as it always did.
    return ipaddress.IPv4Interface(address).ip


@functools.lru_cache(maxsize=8192)
def _cached_interface_ip(address: str) -> ipaddress.IPv4Address:
    """The IP of a CIDR address, memoized.

    Parsing an interface builds a network object, and every steady-state call
    re-reads the same held addresses of the whole fleet. A bad address raises
    exactly as before (lru_cache does not cache exceptions); the cache is bounded
    and its values are immutable.
    """
    return ipaddress.IPv4Interface(address).ip


def _hold(ledger: Ledger, key: str, held: Held, demand: Demand | None) -> None:
    ledger.take_node(held.node, demand.cpu if demand else 0, demand.memory_mib if demand else 0)
    ledger.vmid_holder.setdefault(held.vmid, key)
    for mapping in held.devices:
        ledger.device_holder.setdefault(mapping, key)
    if held.address:
        ledger.address_holder.setdefault(_interface_ip(held.address), key)
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
    if me.held is not None:
        # Sticky: a placed machine keeps its placement whatever the rest of the fleet holds,
        # so its outcome needs no ledger. Building one from every other member anyway was
        # most of a steady-state call with a large fleet.
        h = me.held
        return Outcome(Placement(h.node, h.vmid, h.devices, h.address, h.network, fresh=False))
    ledger = Ledger.from_inventory(inv)
    demands = _Demands(inv, defaults)
    for member in fleet:
        if member.held is not None:
            demand = my_demand if member.key == me.key else demands.of(member)
            _hold(ledger, member.key, member.held, demand)
    pending = sorted((m for m in fleet if m.held is None), key=lambda m: m.order)
    for member in pending:
        if member.key == me.key:
            return _place(ledger, me.key, my_demand)
        demand = demands.of(member)
        if demand is not None:
            _place(ledger, member.key, demand)
    return _place(ledger, me.key, my_demand)
