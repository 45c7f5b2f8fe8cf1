"""Allocation (function/allocate.py Ledger): the lowest free VMID and address; who holds what."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest

from function.allocate import Ledger
from tests.unit.build import BASE, inventory

CORAL_HELD_BY_113 = [
    BASE["nodes"][0],
    {
        **BASE["nodes"][1],
        "devices": [
            BASE["nodes"][1]["devices"][0],
            {**BASE["nodes"][1]["devices"][1], "heldBy": "113 frigate"},
        ],
    },
    BASE["nodes"][2],
]
NODE_OF_113 = BASE["nodes"][1]["name"]  # where the device heldBy names 113 is
UNMANAGED_100 = [{"vmid": 100, "name": "old", "node": "a", "cpu": 2, "memory": "2Gi"}]


@dataclass(frozen=True)
class Case:
    reason: str
    inv: dict[str, Any]  # inventory fields replaced
    want: dict[str, Any]  # vmid, address, devices (mapping -> holder), a_use (cpu, MiB)
    adopted: frozenset[tuple[int, str]] = frozenset()  # (VMID, node) adopted by valid claims
    things: list[tuple[str, str, str]] = field(default_factory=list)  # held by Reservation


def allocated(ledger: Ledger) -> dict[str, Any]:
    address = ledger.next_address(ledger.inv.networks["lan"])
    return {
        "vmid": ledger.next_vmid(),
        "address": str(address) if address else None,
        "devices": dict(ledger.device_holder),
        "a_use": (ledger.nodes["a"].cpu, ledger.nodes["a"].memory_mib),
    }


FREE = {"vmid": 100, "address": "10.0.0.2/24", "devices": {}, "a_use": (0, 0)}

CASES = [
    Case("an empty inventory range: the lowest VMID; the pool's lowest past the gateway", {}, FREE),
    Case("reserved VMIDs are skipped", {"reservedVmids": [100, 101]}, {**FREE, "vmid": 102}),
    Case(
        "an unmanaged guest holds its VMID and its share of the node",
        {"unmanaged": UNMANAGED_100},
        {**FREE, "vmid": 101, "a_use": (2, 2048)},
    ),
    Case(
        "an adopted VMID supersedes the unmanaged entry: its claim counts it instead",
        {"unmanaged": UNMANAGED_100},
        FREE,
        adopted=frozenset({(100, "a")}),
    ),
    Case(
        "no VMID left in the range (reserved ones and Reservations)",
        {"reservedVmids": [100, 101]},
        {**FREE, "vmid": None},
        things=[("vmid", str(n), "ns/x") for n in (102, 103, 104)],
    ),
    Case(
        "reserved addresses are skipped",
        {
            "networks": {
                "lan": {**BASE["networks"]["lan"], "reserved": ["10.0.0.2", "10.0.0.3"]},
            }
        },
        {**FREE, "address": "10.0.0.4/24"},
    ),
    Case(
        "a Reservation another machine holds is taken: VMID, address, device",
        {},
        {
            "vmid": 101,
            "address": "10.0.0.3/24",
            "devices": {"gpu0": "ns/x"},
            "a_use": (0, 0),
        },
        things=[("vmid", "100", "ns/x"), ("ipv4", "10.0.0.2", "ns/x"), ("device", "gpu0", "ns/x")],
    ),
    Case(
        "malformed Reservation values are ignored",
        {},
        FREE,
        things=[("vmid", "abc", "ns/x"), ("ipv4", "10.0.0", "ns/x"), ("disk", "d0", "ns/x")],
    ),
    Case(
        "a full pool gives no address",
        {},
        {**FREE, "vmid": 100, "address": None},
        things=[("ipv4", f"10.0.0.{n}", "ns/x") for n in (2, 3, 4)],
    ),
    Case(
        "heldBy marks a device held by an unmanaged guest",
        {"nodes": CORAL_HELD_BY_113},
        {**FREE, "devices": {"coral0": "unmanaged guest 113 frigate"}},
    ),
    Case(
        "heldBy naming an adopted VMID first no longer counts",
        {"nodes": CORAL_HELD_BY_113},
        FREE,
        adopted=frozenset({(113, NODE_OF_113)}),
    ),
    Case(
        "a claim adopting the VMID on another node does not free the unmanaged entry",
        {"unmanaged": UNMANAGED_100},
        {**FREE, "vmid": 101, "a_use": (2, 2048)},
        adopted=frozenset({(100, "c")}),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.reason for c in CASES])
def test_ledger(case: Case) -> None:
    ledger = Ledger.from_inventory(inventory(**copy.deepcopy(case.inv)), case.adopted)
    for kind, value, holder in case.things:
        ledger.hold_thing(kind, value, holder)
    assert allocated(ledger) == case.want, case.reason


def test_a_cursor_never_hands_out_a_held_value_twice() -> None:
    ledger = Ledger.from_inventory(inventory())
    lan = ledger.inv.networks["lan"]
    got = []
    for key in ("ns/1", "ns/2", "ns/3"):
        vmid, address = ledger.next_vmid(), ledger.next_address(lan)
        assert vmid is not None
        assert address is not None
        ledger.vmid_holder[vmid] = ledger.address_holder[address.ip] = key
        got.append((vmid, str(address)))
    assert got == [(100, "10.0.0.2/24"), (101, "10.0.0.3/24"), (102, "10.0.0.4/24")]
