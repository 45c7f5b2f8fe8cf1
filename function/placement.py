"""Global, deterministic placement of the fleet, up to and including this machine.

Concurrent reconciles share no lock and no memory. They agree anyway because
each computes the same function of (inventory, fleet): machines that hold a
placement keep it; pending machines are placed one by one in (creationTimestamp,
key) order, each taking the best node, the lowest free VMID and pool address.
Machines after this one cannot change its outcome, so the walk stops there.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from function import memo
from function.allocate import Ledger, NodeUse
from function.demand import Demand, resolve
from function.errors import FabricError
from function.fleet import Member
from function.model import Defaults, Inventory
from function.record import Held
from function.reservations import Thing
from function.scheduler import explain, schedule


@dataclass(frozen=True)
class Placement:
    """Where a machine lives and what it holds (its record), and how this call came by it."""

    record: Held  # what the machine holds for good (record.py writes and reads it)
    fresh: bool  # placed by this call, not read back
    considered: tuple[str, ...] = ()  # nodes that fitted, best first (fresh placements only)

    @property
    def node(self) -> str:
        """The node the guest lives on."""
        return self.record.node

    @property
    def vmid(self) -> int:
        """The guest's VMID."""
        return self.record.vmid

    @property
    def devices(self) -> tuple[str, ...]:
        """The resource mappings the guest holds."""
        return self.record.devices

    @property
    def address(self) -> str | None:
        """The static CIDR address, None for DHCP."""
        return self.record.address

    @property
    def network(self) -> str | None:
        """The inventory network the guest is on."""
        return self.record.network

    @property
    def snippets(self) -> str | None:
        """Where the VM's snippets are (read back; None: not made yet)."""
        return self.record.snippets

    @property
    def adopted(self) -> bool:
        """An existing guest the claim adopted, never cloned by Fabric."""
        return self.record.adopted

    def held(self, snippets: str | None = None) -> Held:
        """The placement as it is recorded for good, with where its snippets went."""
        if snippets is None or snippets == self.record.snippets:
            return self.record
        return dataclasses.replace(self.record, snippets=snippets)

    @classmethod
    def of_held(cls, held: Held) -> Placement:
        """A placement read back from its record (not made by this call)."""
        return cls(held, fresh=False)


@dataclass(frozen=True)
class Outcome:
    """This machine's placement, or why it has none."""

    placement: Placement | None
    unschedulable: str | None = None


class Demands:
    """Each fleet member's resolved demand, resolved once per distinct spec object.

    Resolving a spec scans the inventory's devices, so resolving every member of a
    large fleet on a large inventory dominated placing a machine. Fleet members
    with the same intent share one parsed spec object (fleet.py caches them by intent),
    and resolve() is a pure function of (spec, inventory, defaults), which are
    fixed for the duration of one assign(): the memo returns what resolve() would.
    It is keyed by id(spec); the fleet list keeps every spec alive for the whole
    call, so no id is reused while the memo lives.
    """

    def __init__(self, inv: Inventory, defaults: Defaults) -> None:
        """Resolve against one inventory and its defaults, for one placement walk."""
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


@memo.memoize("interface-ips", 8192)
def _interface_ip(address: str) -> ipaddress.IPv4Address:
    """The IP of a held CIDR address (fleet.py checked it parses), memoized.

    Parsing an interface builds a network object, and every steady-state call
    re-reads the same held addresses of the whole fleet. The cache is bounded and
    its values are immutable.
    """
    return ipaddress.IPv4Interface(address).ip


def hold(ledger: Ledger, key: str, held: Held, demand: Demand | None) -> None:
    """Count a placed machine in the ledger: its size on its node and everything it holds."""
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
    if demand.adopt is not None:
        return _adopt(ledger, key, demand)
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
    held = Held(chosen.node, vmid, chosen.devices, address, demand.network_name)
    placement = Placement(held, fresh=True, considered=verdict.considered)
    hold(ledger, key, placement.held(), demand)
    return Outcome(placement)


def _adopt(ledger: Ledger, key: str, demand: Demand) -> Outcome:
    """An existing guest's placement: where it is and what it holds, unless another has it.

    Never scheduled: the guest runs where it runs, even on a node closed to new machines or
    past its capacity (it counts there all the same).
    """
    adopt = demand.adopt
    assert adopt is not None
    holder = ledger.vmid_holder.get(adopt.vmid)
    if holder is not None and holder != key:
        return Outcome(None, f"spec.adopt.vmid: {adopt.vmid} is held by {holder}")
    for mapping in adopt.devices:
        holder = ledger.device_holder.get(mapping)
        if holder is not None and holder != key:
            return Outcome(None, f"spec.adopt.devices: {mapping} is held by {holder}")
    address, why = _address(ledger, key, demand)
    if why is not None:
        return Outcome(None, why)
    devices = tuple(sorted(adopt.devices))
    held = Held(adopt.node, adopt.vmid, devices, address, demand.network_name, adopted=True)
    placement = Placement(held, fresh=True)
    hold(ledger, key, placement.held(), demand)
    return Outcome(placement)


def adopted_guests(fleet: list[Member], demands: Demands) -> frozenset[tuple[int, str]]:
    """(VMID, node) of the guests the fleet's valid claims adopt (see Ledger.from_inventory).

    Only valid ones: a refused claim holds nothing, and must not free what the inventory holds.
    """
    return frozenset(
        (m.spec.adopt.vmid, m.spec.adopt.node)
        for m in fleet
        if m.spec is not None and m.spec.adopt is not None and demands.of(m) is not None
    )


def assign(
    inv: Inventory,
    defaults: Defaults,
    fleet: list[Member],
    me: Member,
    my_demand: Demand,
    *,
    reserved: Mapping[Thing, str] | None = None,
) -> Outcome:
    """Place the fleet in global order and return this machine's outcome.

    `reserved`: what other machines hold by Reservation (reservations.py); nobody is given it.
    """
    if me.held is not None:
        # Sticky: a placed machine keeps its placement whatever the rest of the fleet holds,
        # so its outcome needs no ledger. Building one from every other member anyway was
        # most of a steady-state call with a large fleet.
        return Outcome(Placement.of_held(me.held))
    demands = Demands(inv, defaults)
    ledger = Ledger.from_inventory(inv, adopted_guests(fleet, demands))
    for thing, holder in (reserved or {}).items():
        ledger.hold_thing(thing.kind, thing.value, holder)
    held = sorted((m for m in fleet if m.held is not None), key=lambda m: m.order)
    for member in held:
        if member.held is not None:  # always, by the filter above; said for the type checker
            hold(ledger, member.key, member.held, demands.of(member))
    later = _LaterUse(held, demands)
    pending = sorted((m for m in fleet if m.held is None), key=lambda m: m.order)
    for member in pending:
        ledger.later = later.after(member.order)
        if member.key == me.key:
            return _place(ledger, me.key, my_demand)
        demand = demands.of(member)
        if demand is not None:
            _place(ledger, member.key, demand)
    ledger.later = later.after(me.order)
    return _place(ledger, me.key, my_demand)


class _LaterUse:
    """Per node, the size of the held machines that come after a point of the global order.

    Pending machines are visited in order, so the point only moves forward: machines
    drop out of the sums one by one, and the whole walk costs O(held + pending).
    """

    def __init__(self, held: list[Member], demands: Demands) -> None:
        self._held = [(m.order, m.held.node, demands.of(m)) for m in held if m.held]
        self._next = 0
        self._use: dict[str, NodeUse] = {}
        for _, node, demand in self._held:
            use = self._use.setdefault(node, NodeUse())
            use.cpu += demand.cpu if demand else 0
            use.memory_mib += demand.memory_mib if demand else 0

    def after(self, order: tuple[str, str]) -> dict[str, NodeUse]:
        """The sums for held machines ordered after `order` (which never decreases)."""
        while self._next < len(self._held) and self._held[self._next][0] <= order:
            _, node, demand = self._held[self._next]
            use = self._use[node]
            use.cpu -= demand.cpu if demand else 0
            use.memory_mib -= demand.memory_mib if demand else 0
            self._next += 1
        return self._use
