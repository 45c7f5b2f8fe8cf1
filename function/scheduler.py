"""Choosing a node: filters, then scores, and an explanation when nothing fits.

Each filter returns None when a node passes or the reason it fails, with numbers
and, for a held device, the machine that holds it. The first failing filter is a
node's reason. When no node passes, every node and its reason go into one
message: the opposite of "No valid host was found".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from function.allocate import Ledger
from function.demand import Demand, DeviceDemand
from function.model import Node


@dataclass(frozen=True)
class Candidate:
    """A node that fits, with the devices it would give the machine."""

    node: str
    devices: tuple[str, ...]  # mapping names, in request order


@dataclass(frozen=True)
class Verdict:
    """The outcome of scheduling one machine: a candidate, or why not, node by node."""

    chosen: Candidate | None
    reasons: dict[str, str]  # node -> first failing reason (only when nothing fits)
    considered: tuple[str, ...] = ()  # nodes that fit, best first


def quantity(mib: int) -> str:
    """Format MiB as a Kubernetes quantity: whole Gi when it divides, else Mi.

    Above 10Gi the Mi are dropped (rounded down: what is free is never overstated).
    """
    if mib >= 1024 and mib % 1024 == 0:
        return f"{mib // 1024}Gi"
    if mib > 10 * 1024:
        return f"{mib // 1024}Gi"
    return f"{mib}Mi"


# --- filters ----------------------------------------------------------------------------------

Filter = Callable[[Node, Demand, Ledger, str], "str | None"]


def _schedulable(node: Node, _demand: Demand, _ledger: Ledger, _key: str) -> str | None:
    if node.schedulable:
        return None
    return f"not schedulable ({node.reason})" if node.reason else "not schedulable"


def _pinned(node: Node, demand: Demand, _ledger: Ledger, _key: str) -> str | None:
    if demand.pin is None or demand.pin == node.name:
        return None
    return f"not the pinned node (spec.placement.node={demand.pin})"


def _image(node: Node, demand: Demand, _ledger: Ledger, _key: str) -> str | None:
    if demand.image is None or node.name in demand.image.templates:
        return None  # (an adopted guest has no image, and is never scheduled: placement.adopt)
    return f"no template of image {demand.image_name}"


def _storage(node: Node, demand: Demand, _ledger: Ledger, _key: str) -> str | None:
    if demand.pool is None or demand.pool in node.storage:
        return None
    return f"no storage pool {demand.pool}"


def _spread(node: Node, demand: Demand, ledger: Ledger, _key: str) -> str | None:
    if demand.spread_group is None:
        return None
    holder = ledger.group_members.get((demand.spread_group, node.name))
    if holder is None:
        return None
    return f"already hosts {holder} of spread group {demand.spread_group}"


def _cpu(node: Node, demand: Demand, ledger: Ledger, _key: str) -> str | None:
    free = ledger.free_cpu(node.name)
    if demand.cpu <= free:
        return None
    return f"needs {demand.cpu} vCPU, {max(free, 0)} free"


def _memory(node: Node, demand: Demand, ledger: Ledger, _key: str) -> str | None:
    free = ledger.free_memory_mib(node.name)
    if demand.memory_mib <= free:
        return None
    return f"needs {quantity(demand.memory_mib)}, {quantity(max(free, 0))} free"


def _devices(node: Node, demand: Demand, ledger: Ledger, _key: str) -> str | None:
    _, reason = pick_devices(node, demand.devices, ledger)
    return reason


FILTERS: tuple[Filter, ...] = (
    _schedulable,
    _pinned,
    _image,
    _storage,
    _spread,
    _cpu,
    _memory,
    _devices,
)


def pick_devices(
    node: Node, demands: tuple[DeviceDemand, ...], ledger: Ledger
) -> tuple[tuple[str, ...], str | None]:
    """Pick free devices on a node for every request, or say why the node cannot give them."""
    picked: list[str] = []
    for want in demands:
        matching = sorted(
            (d for d in node.devices if d.device_class in want.classes), key=lambda d: d.mapping
        )
        free = [
            d.mapping
            for d in matching
            if d.mapping not in ledger.device_holder and d.mapping not in picked
        ]
        if len(free) >= want.count:
            picked.extend(free[: want.count])
            continue
        if not matching:
            return (), f"no free device of class {want.requested}"
        held = [d.mapping for d in matching if d.mapping in ledger.device_holder]
        if held and not free:
            holders = "; ".join(
                f"{want.requested} {m} is held by {ledger.device_holder[m]}" for m in held[:3]
            )
            return (), holders
        return (), f"needs {want.count} {want.requested}, {len(free)} free"
    return tuple(picked), None


def first_failure(node: Node, demand: Demand, ledger: Ledger, key: str) -> str | None:
    """The first filter a node fails for this demand, or None if it passes them all."""
    for check in FILTERS:
        reason = check(node, demand, ledger, key)
        if reason is not None:
            return reason
    return None


# --- scores -----------------------------------------------------------------------------------


def _allocated_share(node: Node, demand: Demand, ledger: Ledger) -> float:
    """How full the node would be after placing: the larger of its memory and CPU shares."""
    use = ledger.nodes[node.name]
    later = ledger.later.get(node.name)
    memory = use.memory_mib - (later.memory_mib if later else 0)
    cpu = use.cpu - (later.cpu if later else 0)
    memory_capacity = max(node.memory - node.reserved_mib, 1)
    cpu_capacity = max(node.cpu, 1)
    memory_share = (memory + demand.memory_mib) / memory_capacity
    cpu_share = (cpu + demand.cpu) / cpu_capacity
    return max(memory_share, cpu_share)


def _rank(nodes: list[Node], demand: Demand, ledger: Ledger) -> list[Node]:
    # spread: least allocated first; pack: most allocated first. Ties by node name.
    sign = 1.0 if demand.strategy == "spread" else -1.0
    return sorted(nodes, key=lambda n: (sign * _allocated_share(n, demand, ledger), n.name))


def schedule(nodes: list[Node], demand: Demand, ledger: Ledger, key: str) -> Verdict:
    """Filter and score the nodes for one machine."""
    fits: list[Node] = []
    reasons: dict[str, str] = {}
    for node in nodes:
        reason = first_failure(node, demand, ledger, key)
        if reason is None:
            fits.append(node)
        else:
            reasons[node.name] = reason
    if not fits:
        return Verdict(None, reasons)
    ranked = _rank(fits, demand, ledger)
    best = ranked[0]
    devices, _ = pick_devices(best, demand.devices, ledger)
    return Verdict(Candidate(best.name, devices), {}, tuple(n.name for n in ranked))


def explain(key: str, total: int, reasons: dict[str, str]) -> str:
    """One message naming every node and why it cannot host the machine, like reasons grouped."""
    groups: dict[str, list[str]] = {}
    for node in sorted(reasons):
        groups.setdefault(reasons[node], []).append(node)
    parts = [f"{', '.join(nodes)}: {reason}" for reason, nodes in groups.items()]
    return f"0/{total} nodes can host {key}: " + "; ".join(parts)
