"""Placement (function/placement.py assign): sticky, in global order, adoption and its conflicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from function.demand import resolve
from function.fleet import Member
from function.model import Defaults
from function.placement import Outcome, Placement, assign
from function.record import Held
from tests.unit.build import adoption, inventory, member, spec

LAN = {"network": {"name": "lan"}}
T1, T2, T3 = "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z", "2026-01-01T00:00:03Z"
MAINTENANCE = "c: not schedulable (maintenance)"


@dataclass(frozen=True)
class Case:
    reason: str
    me: Member  # this machine (its spec is what it asks for)
    want: Outcome
    others: list[Member] = field(default_factory=list)
    inv: dict[str, Any] = field(default_factory=dict)


def adopting(key: str, node: str, vmid: int, *devices: str, held: Held | None = None) -> Member:
    spec = adoption(node, vmid, devices)
    return Member(key=key, created=T2, spec=spec, held=held, is_container=False)


def fresh(node: str, vmid: int, address: str | None = None, **more: Any) -> Outcome:
    considered = more.pop("considered", ())
    held = Held(node, vmid, more.pop("devices", ()), address, "lan" if address else None, **more)
    return Outcome(Placement(held, fresh=True, considered=considered))


CASES = [
    Case(
        "sticky: a machine that holds a placement keeps it, whatever the others hold",
        member("ns/me", T2, Held("a", 104, ("gpu0",), "10.0.0.4/24", "lan", "local"), **LAN),
        Outcome(Placement(Held("a", 104, ("gpu0",), "10.0.0.4/24", "lan", "local"), fresh=False)),
        others=[member("ns/x", T1, Held("a", 104, ("gpu0",), "10.0.0.4/24", "lan"))],
    ),
    Case(
        "the first machine: the lowest VMID and pool address, the best node",
        member("ns/me", T2, **LAN),
        fresh("b", 100, "10.0.0.2/24", considered=("b", "a")),
    ),
    Case(
        "an earlier pending machine is placed first and takes the lowest values",
        member("ns/me", T2, **LAN),
        fresh("b", 101, "10.0.0.3/24", considered=("b", "a")),
        others=[member("ns/early", T1, **LAN)],
    ),
    Case(
        "same creation time: the key breaks the tie",
        member("ns/b", T2, **LAN),
        fresh("b", 101, "10.0.0.3/24", considered=("b", "a")),
        others=[member("ns/a", T2, **LAN)],
    ),
    Case(
        "a later pending machine cannot change this one's outcome",
        member("ns/me", T2, **LAN),
        fresh("b", 100, "10.0.0.2/24", considered=("b", "a")),
        others=[member("ns/late", T3, **LAN)],
    ),
    Case(
        "held machines hold their VMID, address and devices",
        member("ns/me", T2, devices=[{"class": "gpu"}]),
        Outcome(
            None,
            "0/3 nodes can host ns/me: a: no free device of class gpu; "
            f"b: gpu gpu0 is held by ns/x; {MAINTENANCE}",
        ),
        others=[member("ns/x", T3, Held("b", 100, ("gpu0",), "10.0.0.2/24", "lan"))],
    ),
    Case(
        "adoption: the guest stays where it is, even on a closed node, outside the range",
        adopting("ns/me", "c", 150),
        Outcome(Placement(Held("c", 150, adopted=True), fresh=True)),
    ),
    Case(
        "adoption of an unmanaged guest: its inventory entry no longer holds the VMID",
        adopting("ns/me", "a", 150),
        Outcome(Placement(Held("a", 150, adopted=True), fresh=True)),
        inv={"unmanaged": [{"vmid": 150, "name": "old", "node": "a"}]},
    ),
    Case(
        "adoption conflict: the VMID is another machine's",
        adopting("ns/me", "a", 100),
        Outcome(None, "spec.adopt.vmid: 100 is held by ns/x"),
        others=[member("ns/x", T1, Held("b", 100))],
    ),
    Case(
        "adoption conflict: a device is another machine's",
        adopting("ns/me", "b", 150, "gpu0"),
        Outcome(None, "spec.adopt.devices: gpu0 is held by ns/x"),
        others=[member("ns/x", T1, Held("b", 100, ("gpu0",)))],
    ),
    Case(
        "adoption conflict: the device is marked heldBy another guest",
        adopting("ns/me", "b", 150, "coral0"),
        Outcome(None, "spec.adopt.devices: coral0 is held by unmanaged guest 113 frigate"),
        inv={
            "nodes": [
                {"name": "a", "cpu": 4, "memory": "8Gi", "storage": ["local"]},
                {
                    "name": "b",
                    "cpu": 4,
                    "memory": "8Gi",
                    "storage": ["local"],
                    "devices": [
                        {
                            "mapping": "coral0",
                            "class": "coral-tpu",
                            "bus": "usb",
                            "heldBy": "113 frigate",
                        }
                    ],
                },
            ]
        },
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.reason for c in CASES])
def test_assign(case: Case) -> None:
    inv = inventory(**case.inv)
    demand = resolve(case.me.spec or spec(), inv, Defaults())
    got = assign(inv, Defaults(), [*case.others, case.me], case.me, demand)
    assert got == case.want, case.reason
