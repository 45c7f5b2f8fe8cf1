"""The placement record: what a machine holds for good, and every place it is written.

A machine keeps its node, VMID, devices and address for ever, so the record of them is
written where the next call (any function version) reads it back:

| encoding | written by | read by | carries |
| --- | --- | --- | --- |
| Workspace annotations | `to_annotations` | `from_workspace` | every field |
| XR status | `to_status` | `from_status` | all but snippets and adopted |
| Reservation `spec.placement` | `to_reservation` | `from_reservation` | the same as the status |

The status and the Reservations do not carry the snippets datastore nor the adopted flag:
only the Workspace, the one record of a machine that exists, says those
(tests/unit/test_record.py states it). Writer and reader of each encoding live side by side
here so that a field added to one is seen missing from the other.

Stored values can be edited by hand or be left by another version: the readers trust only
what Fabric could have written (`as_vmid`, `as_cidr`, `text`), and an unreadable record is
None, never an exception.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from function import memo, terraform
from function.model import MAX_VMID, MIN_VMID, Inventory

ANNOTATION_PREFIX = "fabric.homelab.io/"


@dataclass(frozen=True)
class Held:
    """A placement a machine holds for good: node, VMID, devices, static address."""

    node: str
    vmid: int
    devices: tuple[str, ...] = ()  # resource mapping names
    address: str | None = None  # static CIDR address Fabric allocated or the claim set
    network: str | None = None
    # The datastore holding the snippets the VM boots from: its cicustom points there for good,
    # so a later edit of the node's snippetsDatastore must not move them.
    snippets: str | None = None
    # An existing guest a claim adopted: Terraform imported it, Fabric never cloned it, and it
    # must never be rendered as a clone (bpg would replace it).
    adopted: bool = False


# --- reading stored values ------------------------------------------------------------------


def obj(value: Any) -> dict[str, Any]:
    """The value if it is a mapping, else an empty one: stored objects can be malformed."""
    return value if isinstance(value, dict) else {}


def dig(doc: Any, *path: str | int) -> Any:
    """The value at a path of keys and list indexes, or None where the path breaks off."""
    for step in path:
        if isinstance(step, int):
            doc = doc[step] if isinstance(doc, list) and len(doc) > step else None
        else:
            doc = doc.get(step) if isinstance(doc, dict) else None
    return doc


def module_of(ws: dict[str, Any]) -> dict[str, Any]:
    """The Terraform module a Workspace carries, parsed; {} when it has none or a broken one.

    Read-only: one call compares the observed and the desired module for several kinds of
    change, so each text is parsed once and the parsed module shared.
    """
    text = obj(obj(ws.get("spec")).get("forProvider")).get("module")
    return _parsed_module(text) if isinstance(text, str) else {}


@memo.memoize("modules", 64)
def _parsed_module(text: str) -> dict[str, Any]:
    try:
        found = json.loads(text)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def as_vmid(value: Any) -> int | None:
    """A recorded VMID, or None when it is not one Proxmox could have."""
    # struct_to_dict turns integers into floats; a VMID is a whole number in Proxmox's
    # range or nothing (a recorded 0 must not be rendered as vm_id 0).
    number = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = int(value) if float(value).is_integer() else None
    elif isinstance(value, str) and value.isdigit():
        number = int(value)
    return number if number is not None and MIN_VMID <= number <= MAX_VMID else None


def as_cidr(value: Any) -> str | None:
    """A recorded CIDR address, or None when it is not a valid one."""
    # Fabric writes valid addresses; anything else was written by hand and is not trusted
    # to hold an address (one broken status must not break every other machine's call).
    if not isinstance(value, str) or not value:
        return None
    try:
        ipaddress.IPv4Interface(value)
    except ValueError:
        return None
    return value if "/" in value else None


def text(value: Any) -> str | None:
    """A recorded non-empty string, or None."""
    return value if isinstance(value, str) and value else None


# --- the Workspace's annotations ------------------------------------------------------------

# Where, in a module, the user-data snippet's datastore is.
USER_DATA_DATASTORE = (*terraform.USER_DATA_PATH, "datastore_id")


def to_annotations(held: Held) -> dict[str, str]:
    """The placement, as the Workspace annotations the next call reads back (from_workspace)."""
    notes = {
        ANNOTATION_PREFIX + "node": held.node,
        ANNOTATION_PREFIX + "vmid": str(held.vmid),
        ANNOTATION_PREFIX + "devices": ",".join(held.devices),
    }
    if held.address:
        notes[ANNOTATION_PREFIX + "address"] = held.address
    if held.network:
        notes[ANNOTATION_PREFIX + "network"] = held.network
    if held.snippets:
        notes[ANNOTATION_PREFIX + "snippets"] = held.snippets
    if held.adopted:
        notes[ANNOTATION_PREFIX + "adopted"] = "true"
    return notes


def from_workspace(workspace: dict[str, Any]) -> Held | None:
    """Read the placement recorded in the annotations of an observed Workspace."""
    notes = obj(obj(workspace.get("metadata")).get("annotations"))
    node = text(notes.get(ANNOTATION_PREFIX + "node"))
    vmid = as_vmid(notes.get(ANNOTATION_PREFIX + "vmid"))
    if node is None or vmid is None:
        return None
    listed = text(notes.get(ANNOTATION_PREFIX + "devices")) or ""
    devices = tuple(sorted(d for d in listed.split(",") if d))
    address = as_cidr(notes.get(ANNOTATION_PREFIX + "address"))
    network = text(notes.get(ANNOTATION_PREFIX + "network"))
    # Workspaces written before the annotation existed: the module says where the snippets are.
    snippets = text(notes.get(ANNOTATION_PREFIX + "snippets")) or text(
        dig(module_of(workspace), *USER_DATA_DATASTORE)
    )
    adopted = notes.get(ANNOTATION_PREFIX + "adopted") == "true"
    return Held(node, vmid, devices, address, network, snippets, adopted)


# --- the XR status --------------------------------------------------------------------------


def _status_devices(held: Held, inv: Inventory | None) -> list[dict[str, str]]:
    node = inv.node(held.node) if inv else None
    known = {d.mapping: d for d in node.devices} if node else {}
    out = []
    for mapping in sorted(held.devices):
        dev = known.get(mapping)
        entry = {"mapping": mapping, "node": held.node}
        if dev is not None:
            entry["class"] = dev.device_class
            if dev.address:
                entry["id"] = dev.address
        out.append(entry)
    return out


def to_status(held: Held, inv: Inventory | None) -> dict[str, Any]:
    """The placement's fields of the XR status (the claim's printer columns read them).

    The inventory, when there is one, names each device's class and address for people.
    """
    status: dict[str, Any] = {
        "node": held.node,
        "vmId": held.vmid,
        "devices": _status_devices(held, inv),
    }
    if status["devices"]:
        status["deviceSummary"] = ",".join(
            f"{d.get('class', 'device')}:{d['mapping']}" for d in status["devices"]
        )
    if held.address:
        status["address"] = held.address
    if held.network:
        status["network"] = held.network
    return status


def from_status(status: dict[str, Any]) -> Held | None:
    """Read a recorded placement from an XR status, if it has a complete one."""
    node, vmid = status.get("node"), as_vmid(status.get("vmId"))
    if not isinstance(node, str) or not node or vmid is None:
        return None
    listed = status.get("devices")
    entries = listed if isinstance(listed, list) else []
    devices = tuple(sorted(d["mapping"] for d in entries if text(obj(d).get("mapping"))))
    network = status.get("network")
    return Held(node, vmid, devices, as_cidr(status.get("address")), text(network))


# --- a Reservation's spec.placement ---------------------------------------------------------


def to_reservation(held: Held) -> dict[str, Any]:
    """The placement as every Reservation of it carries it (reservations.manifests)."""
    return {
        "node": held.node,
        "vmId": held.vmid,
        "devices": sorted(held.devices),
        **({"address": held.address} if held.address else {}),
        **({"network": held.network} if held.network else {}),
    }


def from_reservation(record: Any) -> Held | None:
    """Read the placement a Reservation records, if it has a complete one."""
    # The same readers as the status: a hand-edited Reservation cannot hold more than a
    # hand-edited status could.
    record = obj(record)
    node, vmid = record.get("node"), as_vmid(record.get("vmId"))
    if not isinstance(node, str) or not node or vmid is None:
        return None
    listed = record.get("devices")
    devices = tuple(sorted(d for d in (listed if isinstance(listed, list) else []) if text(d)))
    return Held(node, vmid, devices, as_cidr(record.get("address")), text(record.get("network")))
