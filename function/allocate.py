"""The ledger of what is taken, and allocation of VMIDs and addresses from it.

The ledger is rebuilt on every call from the inventory and the fleet; nothing is
remembered between calls. Allocation always takes the lowest free VMID or pool
address, so two reconciles that see the same fleet hand out the same values.
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass, field

from function import reservations
from function.model import Inventory, Network, Node


@dataclass
class NodeUse:
    """What is allocated on one node."""

    cpu: int = 0
    memory_mib: int = 0


def _names_adopted(held_by: str, node: str, adopted: frozenset[tuple[int, str]]) -> bool:
    """Whether a device's heldBy text ("113 frigate") names a guest adopted on its node."""
    first = held_by.split(maxsplit=1)[0] if held_by.strip() else ""
    return first.isdigit() and (int(first), node) in adopted


@dataclass
class Ledger:
    """Everything held by someone: node capacity, devices, VMIDs, addresses, spread groups."""

    inv: Inventory
    nodes: dict[str, NodeUse] = field(default_factory=dict)
    device_holder: dict[str, str] = field(default_factory=dict)  # mapping -> machine key
    vmid_holder: dict[int, str] = field(default_factory=dict)
    address_holder: dict[ipaddress.IPv4Address, str] = field(default_factory=dict)
    group_members: dict[tuple[str, str], str] = field(default_factory=dict)  # (group, node) -> key
    # Usage of held machines that come LATER in the global order than the machine being
    # placed. Filters count it (it is real), scores do not: an earlier machine must rank
    # nodes the same whether or not a later one has landed yet, or two reconciles that saw
    # the fleet at different moments would place it differently (see placement.assign).
    later: dict[str, NodeUse] = field(default_factory=dict)
    _next_vmid: int = 0
    # Allocation cursors per pool (pool start, end, gateway): every address below a cursor is
    # held or is the gateway. Holds only ever add, so a cursor never moves back, and placing a
    # whole fleet walks each pool once instead of once per machine.
    _next_address: dict[tuple[int, int, int], int] = field(default_factory=dict)
    # The inventory's nodes by name. The scheduler asks for a node's capacity once per node per
    # machine; Inventory.node() is a linear scan, which made placing a fleet O(nodes^2) per
    # machine. Node names are unique (the inventory validates it), so the index finds the same
    # node the scan would.
    _node_index: dict[str, Node] = field(default_factory=dict)

    @classmethod
    def from_inventory(
        cls, inv: Inventory, adopted: frozenset[tuple[int, str]] = frozenset()
    ) -> Ledger:
        """A ledger holding what the inventory itself reserves.

        `adopted`: (VMID, node) of the guests valid claims adopt. Such a guest is a member of
        the fleet now, counted and holding its devices through its claim, so the inventory's
        `unmanaged` entry for it and the `heldBy` marks naming it ("113 frigate") on its node
        no longer count. An entry on another node still does: the claim is wrong about where
        the guest is, and is refused for a VMID held by that entry.
        """
        ledger = cls(inv, nodes={n.name: NodeUse() for n in inv.nodes})
        ledger._node_index = {n.name: n for n in inv.nodes}
        ledger._next_vmid = inv.vmids.start
        for vmid in inv.reserved_vmids:
            ledger.vmid_holder[vmid] = "reserved in the inventory"
        for node in inv.nodes:
            for device in node.devices:
                if device.held_by and not _names_adopted(device.held_by, node.name, adopted):
                    ledger.device_holder[device.mapping] = f"unmanaged guest {device.held_by}"
        for guest in inv.unmanaged:
            if (guest.vmid, guest.node) in adopted:
                continue
            ledger.vmid_holder[guest.vmid] = f"unmanaged {guest.kind} {guest.name}"
            use = ledger.nodes[guest.node]
            use.cpu += guest.cpu
            use.memory_mib += guest.memory_mib
        for image in inv.images.values():
            for vmid in image.templates.values():
                ledger.vmid_holder.setdefault(vmid, "an image template")
        for net in inv.networks.values():
            for address in net.reserved:
                ledger.address_holder[address] = "reserved in the inventory"
        return ledger

    def hold_thing(self, kind: str, value: str, holder: str) -> None:
        """Hold a VMID, an IPv4 address or a device mapping for a machine (its Reservation)."""
        if kind == reservations.VMID and value.isdigit():
            self.vmid_holder.setdefault(int(value), holder)
        elif kind == reservations.IPV4:
            with contextlib.suppress(ValueError):
                self.address_holder.setdefault(ipaddress.IPv4Address(value), holder)
        elif kind == reservations.DEVICE:
            self.device_holder.setdefault(value, holder)

    def take_node(self, node: str, cpu: int, memory_mib: int) -> None:
        """Count a machine's size against a node (unknown nodes are kept as they are)."""
        use = self.nodes.setdefault(node, NodeUse())
        use.cpu += cpu
        use.memory_mib += memory_mib

    def node(self, name: str) -> Node | None:
        """The inventory's node of that name (what Inventory.node returns), in O(1)."""
        return self._node_index.get(name)

    def free_memory_mib(self, node_name: str) -> int:
        """Memory left on a node for new machines."""
        node = self.node(node_name)
        if node is None:
            return 0
        capacity = int(node.memory * self.inv.overcommit.memory) - node.reserved_mib
        return capacity - self.nodes[node_name].memory_mib

    def free_cpu(self, node_name: str) -> int:
        """VCPUs left on a node within the CPU overcommit ratio."""
        node = self.node(node_name)
        if node is None:
            return 0
        return int(node.cpu * self.inv.overcommit.cpu) - self.nodes[node_name].cpu

    def next_vmid(self) -> int | None:
        """The lowest VMID in the inventory's range that nobody holds."""
        vmid = self._next_vmid
        while vmid <= self.inv.vmids.end and vmid in self.vmid_holder:
            vmid += 1
        # Everything below the cursor is taken; holds only ever add, so it never moves back.
        self._next_vmid = vmid
        return vmid if vmid <= self.inv.vmids.end else None

    def next_address(self, network: Network) -> ipaddress.IPv4Interface | None:
        """The lowest free address of a network's pool, with the network's prefix."""
        if network.pool is None or network.cidr is None:
            return None
        gateway = int(network.gateway) if network.gateway is not None else -1
        start, end = int(network.pool.start), int(network.pool.end)
        cursor = (start, end, gateway)
        number = self._next_address.get(cursor, start)
        while number <= end and (
            number == gateway or ipaddress.IPv4Address(number) in self.address_holder
        ):
            number += 1
        # The cursor stays ON the address found: it is not held until the caller holds it.
        self._next_address[cursor] = number
        if number > end:
            return None
        return ipaddress.IPv4Interface((number, network.cidr.prefixlen))
