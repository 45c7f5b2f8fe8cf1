"""Reservations: the compare-and-swap that makes allocation race-free without a lock.

The function is stateless, and two reconciles can see different fleets (Crossplane writes an
XR's status after composing; others read it from a cache). Kubernetes names are unique, and
Crossplane refuses to apply a composed resource that another XR controls (the API server
rejects a second controller reference as Invalid; Crossplane marks that resource unsynced and
goes on, composite/composition_functions.go in v1.20 and v2.0). So each machine composes one
small cluster-scoped Reservation per thing it holds, named after the thing: `vmid-202`,
`ipv4-10-40-0-100`, `device-rtx3070`. Whoever's apply lands first holds it.

A machine emits its Workspace only once every Reservation of its placement is observed as its
own composed resource; until then it only reserves. Every machine reads the table of all
Reservations (a required resource) and leaves what others hold alone. A refused claim reserves
nothing, and a deleted machine's Reservations go with it (Crossplane garbage-collects them).

Namespaced (Crossplane v2) XRs can compose only in their own namespace, where names are not
unique across the cluster: they do not reserve (README, Limits).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from function import model, record
from function.record import Held, obj

# The Reservations every machine composes, and reads back as the table of who holds what.
API_VERSION = model.API_VERSION
KIND = "Reservation"
LABEL = "fabric.homelab.io/reservation"
# Composed resource names (the function's keys in desired/observed) start with this.
PREFIX = "reservation-"
VMID, IPV4, DEVICE = "vmid", "ipv4", "device"


@dataclass(frozen=True)
class Thing:
    """One thing a machine holds: a VMID, an IPv4 address or a device mapping."""

    kind: str
    value: str

    @property
    def object_name(self) -> str:
        """The Reservation's name: unique per thing, a valid Kubernetes name."""
        return f"{self.kind}-{_dns(self.value)}"

    @property
    def resource_name(self) -> str:
        """The composed resource name, stable while the machine holds the thing."""
        return PREFIX + (self.kind if self.kind != DEVICE else f"{DEVICE}-{_dns(self.value)}")


def _dns(value: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", value.lower()).strip("-")


def things(held: Held) -> list[Thing]:
    """What a placement holds, each reserved on its own."""
    out = [Thing(VMID, str(held.vmid))]
    if held.address:
        out.append(Thing(IPV4, str(ipaddress.IPv4Interface(held.address).ip)))
    out += [Thing(DEVICE, mapping) for mapping in sorted(held.devices)]
    return out


def manifests(machine_key: str, held: Held) -> dict[str, dict[str, Any]]:
    """The desired Reservations of a placement, by composed resource name.

    Each carries the whole placement, so the table tells where a machine is placed even
    before its status says so.
    """
    return {
        thing.resource_name: {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": thing.object_name, "labels": {LABEL: thing.kind}},
            "spec": {
                "machine": machine_key,
                "resource": thing.kind,
                "value": thing.value,
                "placement": record.to_reservation(held),
            },
        }
        for thing in things(held)
    }


def _held_of(reservation: dict[str, Any]) -> tuple[str, Held] | None:
    spec = obj(reservation.get("spec"))
    machine, held = spec.get("machine"), record.from_reservation(spec.get("placement"))
    if not isinstance(machine, str) or held is None:
        return None
    return machine, held


@dataclass(frozen=True)
class Table:
    """Every Reservation in the cluster, as the (possibly lagging) cache shows it."""

    holder: dict[Thing, str]  # thing -> machine key
    placements: dict[str, Held]  # machine key -> the placement its VMID reservation records

    @classmethod
    def of(cls, objects: list[dict[str, Any]]) -> Table:
        """Read Reservations as Crossplane returned them; malformed ones are skipped."""
        holder: dict[Thing, str] = {}
        placements: dict[str, Held] = {}
        for reservation in sorted(objects, key=lambda r: str(obj(r.get("metadata")).get("name"))):
            spec = obj(reservation.get("spec"))
            kind, value, machine = spec.get("resource"), spec.get("value"), spec.get("machine")
            if not all(isinstance(v, str) for v in (kind, value, machine)):
                continue
            holder.setdefault(Thing(str(kind), str(value)), str(machine))
            found = _held_of(reservation)
            if found is not None and kind == VMID:
                placements.setdefault(*found)
        return cls(holder, placements)

    def confirmed(self, key: str) -> Held | None:
        """A machine's placement when the table shows it holding every thing of it."""
        held = self.placements.get(key)
        if held is None or any(self.holder.get(t) != key for t in things(held)):
            return None
        return held

    def taken_from(self, key: str, held: Held) -> list[Thing]:
        """The things of a placement that the table shows held by another machine."""
        return [t for t in things(held) if self.holder.get(t, key) != key]


def own(observed: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """This machine's observed Reservations, by composed resource name."""
    return {name: body for name, body in observed.items() if name.startswith(PREFIX)}


def all_observed(held: Held, observed: dict[str, dict[str, Any]]) -> bool:
    """Whether every Reservation of a placement is observed as this machine's own."""
    mine = {obj(body.get("metadata")).get("name") for body in own(observed).values()}
    return all(t.object_name in mine for t in things(held))
