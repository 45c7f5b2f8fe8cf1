"""Small hand-built inventories and claims for the unit tables (no gRPC, no example homelab)."""

from __future__ import annotations

import copy
from typing import Any

from function.demand import Demand, resolve
from function.fleet import Member
from function.model import Defaults, Inventory, MachineSpec
from function.record import Held

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDunitunitunitunitunitunitunitunitunitunitun unit"

# Three nodes: `a` small, `b` large with a GPU, `c` closed. One image on a and b.
BASE: dict[str, Any] = {
    "nodes": [
        {"name": "a", "cpu": 4, "memory": "8Gi", "storage": ["local"]},
        {
            "name": "b",
            "cpu": 16,
            "memory": "64Gi",
            "storage": ["local", "fast"],
            "devices": [
                {"mapping": "gpu0", "class": "gpu-nvidia", "bus": "pci"},
                {"mapping": "coral0", "class": "coral-tpu", "bus": "usb"},
            ],
        },
        {
            "name": "c",
            "cpu": 16,
            "memory": "64Gi",
            "storage": ["local"],
            "schedulable": False,
            "reason": "maintenance",
        },
    ],
    "deviceClasses": {"gpu": {"matches": ["gpu-nvidia"]}},
    "images": {"deb": {"os": "debian", "templates": {"a": 9000, "b": 9001}}},
    "networks": {
        "lan": {
            "bridge": "vmbr0",
            "cidr": "10.0.0.0/24",
            "gateway": "10.0.0.1",
            "pool": {"start": "10.0.0.1", "end": "10.0.0.4"},
        }
    },
    "vmids": {"start": 100, "end": 104},
}


def inventory(**changes: Any) -> Inventory:
    """The base inventory with top-level fields replaced."""
    data = copy.deepcopy(BASE)
    data.update(changes)
    return Inventory.model_validate(data)


def spec(**extra: Any) -> MachineSpec:
    """A 1-vCPU, 1Gi claim of image deb (extra fields as the claim spells them)."""
    data: dict[str, Any] = {
        "cpu": 1,
        "memory": "1Gi",
        "disk": "10Gi",
        "image": "deb",
        "bootstrap": {"adminUser": "admin", "sshAuthorizedKeys": [KEY]},
    }
    data.update(extra)
    return MachineSpec.model_validate(data)


def demand(inv: Inventory, **extra: Any) -> Demand:
    """The resolved demand of spec(**extra) on this inventory."""
    return resolve(spec(**extra), inv, Defaults())


def member(key: str, created: str, held: Held | None = None, **extra: Any) -> Member:
    """A fleet member; `extra` are its claim's spec fields."""
    return Member(key=key, created=created, spec=spec(**extra), held=held, is_container=False)


def adoption(node: str, vmid: int, devices: tuple[str, ...] = ()) -> MachineSpec:
    """A claim adopting an existing guest, and nothing else."""
    return MachineSpec.model_validate(
        {
            "cpu": 1,
            "memory": "1Gi",
            "adopt": {"node": node, "vmid": vmid, "devices": list(devices)},
        }
    )
