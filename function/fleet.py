"""The fleet: every XMachine, who it is, when it came, what it holds.

Placement is a deterministic function of (inventory, fleet), so each reconcile
rebuilds the same picture from the XMachines Crossplane hands us: machines that
hold a placement (recorded in their status, or for this machine in its observed
Workspace) keep it; the rest are pending and are placed in (creationTimestamp,
key) order.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import pydantic

from function.model import MachineSpec, intent

CLAIM_NAME = "crossplane.io/claim-name"
CLAIM_NAMESPACE = "crossplane.io/claim-namespace"
ANNOTATION_PREFIX = "fabric.homelab.io/"


@dataclass(frozen=True)
class Held:
    """A placement a machine holds for good: node, VMID, devices, static address."""

    node: str
    vmid: int
    devices: tuple[str, ...] = ()  # resource mapping names
    address: str | None = None  # static CIDR address Fabric allocated or the claim set
    network: str | None = None


@dataclass(frozen=True)
class Member:
    """One machine of the fleet, as seen by this reconcile."""

    key: str  # claim namespace/name, or the XR name (namespace/name for a namespaced XR)
    created: str  # creationTimestamp; RFC 3339 in UTC sorts as text
    spec: MachineSpec | None  # None when the spec does not validate: it cannot be placed
    held: Held | None

    @property
    def order(self) -> tuple[str, str]:
        """The global order in which pending machines are placed."""
        return (self.created, self.key)


def machine_key(xr: dict[str, Any]) -> str:
    """The name users know a machine by: the claim's namespace/name when there is a claim."""
    meta = xr.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(CLAIM_NAME) and labels.get(CLAIM_NAMESPACE):
        return f"{labels[CLAIM_NAMESPACE]}/{labels[CLAIM_NAME]}"
    claim_ref = (xr.get("spec") or {}).get("claimRef") or {}
    if claim_ref.get("name") and claim_ref.get("namespace"):
        return f"{claim_ref['namespace']}/{claim_ref['name']}"
    if meta.get("namespace"):
        return f"{meta['namespace']}/{meta.get('name', '')}"
    return str(meta.get("name", ""))


def _as_int(value: Any) -> int | None:
    # struct_to_dict turns integers into floats; a VMID is a whole number or nothing.
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def held_from_status(status: dict[str, Any]) -> Held | None:
    """Read a recorded placement from an XR status, if it has a complete one."""
    node, vmid = status.get("node"), _as_int(status.get("vmId"))
    if not isinstance(node, str) or not node or vmid is None:
        return None
    devices = tuple(
        sorted(
            str(d["mapping"])
            for d in status.get("devices") or []
            if isinstance(d, dict) and d.get("mapping")
        )
    )
    address = status.get("address") or None
    network = status.get("network") or None
    return Held(node, vmid, devices, address, network)


def held_from_workspace(workspace: dict[str, Any]) -> Held | None:
    """Read the placement recorded in the annotations of an observed Workspace."""
    notes = (workspace.get("metadata") or {}).get("annotations") or {}
    node = notes.get(ANNOTATION_PREFIX + "node")
    vmid = _as_int(notes.get(ANNOTATION_PREFIX + "vmid"))
    if not node or vmid is None:
        return None
    devices = tuple(sorted(d for d in notes.get(ANNOTATION_PREFIX + "devices", "").split(",") if d))
    address = notes.get(ANNOTATION_PREFIX + "address") or None
    network = notes.get(ANNOTATION_PREFIX + "network") or None
    return Held(node, vmid, devices, address, network)


def parse_spec(xr: dict[str, Any]) -> MachineSpec | None:
    """Parse an XR's spec, or None when it does not validate (the owner sees why itself)."""
    with contextlib.suppress(pydantic.ValidationError, TypeError, ValueError):
        return MachineSpec.model_validate(intent(xr.get("spec") or {}))
    return None


def member(xr: dict[str, Any]) -> Member:
    """Build a fleet member from an XMachine as Crossplane returned it."""
    meta = xr.get("metadata") or {}
    status = xr.get("status") or {}
    return Member(
        key=machine_key(xr),
        created=str(meta.get("creationTimestamp") or ""),
        spec=parse_spec(xr),
        held=held_from_status(status) if isinstance(status, dict) else None,
    )


def build(xrs: list[dict[str, Any]], me: Member) -> list[Member]:
    """The fleet as a list, this machine's own view of itself replacing its fleet copy."""
    others = {}
    for xr in xrs:
        if not isinstance(xr, dict):
            continue
        m = member(xr)
        if m.key and m.key != me.key:
            others[m.key] = m
    return [*sorted(others.values(), key=lambda m: m.order), me]
