"""The scheduler (function/scheduler.py): filters and their reasons, then the scoring order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from function.allocate import Ledger
from function.scheduler import Candidate, Verdict, schedule
from tests.unit.build import demand, inventory

MAINTENANCE = "not schedulable (maintenance)"


@dataclass(frozen=True)
class Case:
    reason: str
    claim: dict[str, Any]  # the claim's spec fields
    want: Verdict
    inv: dict[str, Any] = field(default_factory=dict)  # inventory fields replaced
    devices_held: dict[str, str] = field(default_factory=dict)  # mapping -> holder
    groups: dict[tuple[str, str], str] = field(default_factory=dict)  # (group, node) -> holder


CASES = [
    Case(
        "spread: the least allocated node first; a closed node is never considered",
        {},
        Verdict(Candidate("b", ()), {}, ("b", "a")),
    ),
    Case(
        "pack (the inventory's scoring): the most allocated node first",
        {},
        Verdict(Candidate("a", ()), {}, ("a", "b")),
        inv={"scoring": "pack"},
    ),
    Case(
        "pack asked by the claim wins over the inventory's spread",
        {"placement": {"strategy": "pack"}},
        Verdict(Candidate("a", ()), {}, ("a", "b")),
    ),
    Case(
        "pinned: only that node",
        {"placement": {"node": "a"}},
        Verdict(Candidate("a", ()), {}, ("a",)),
    ),
    Case(
        "a device class through deviceClasses.matches: only the node that has one",
        {"devices": [{"class": "gpu"}]},
        Verdict(Candidate("b", ("gpu0",)), {}, ("b",)),
    ),
    Case(
        "devices are listed in the order the claim asked for them",
        {"devices": [{"class": "gpu"}, {"class": "coral-tpu"}]},
        Verdict(Candidate("b", ("gpu0", "coral0")), {}, ("b",)),
    ),
    Case(
        "a storage pool only one node has",
        {"storage": {"pool": "fast"}},
        Verdict(Candidate("b", ()), {}, ("b",)),
    ),
    Case(
        "nothing fits: each node's first failing filter, with numbers",
        {"memory": "100Gi"},
        Verdict(
            None,
            {"a": "needs 100Gi, 8Gi free", "b": "needs 100Gi, 64Gi free", "c": MAINTENANCE},
        ),
    ),
    Case(
        "CPU within the overcommit ratio (4x): 17 vCPU do not fit 4 cores",
        {"cpu": 17, "placement": {"node": "a"}},
        Verdict(
            None,
            {
                "a": "needs 17 vCPU, 16 free",
                "b": "not the pinned node (spec.placement.node=a)",
                "c": MAINTENANCE,
            },
        ),
    ),
    Case(
        "pinned before devices: the pin is the reason on other nodes",
        {"placement": {"node": "a"}, "devices": [{"class": "gpu"}]},
        Verdict(
            None,
            {
                "a": "no free device of class gpu",
                "b": "not the pinned node (spec.placement.node=a)",
                "c": MAINTENANCE,
            },
        ),
    ),
    Case(
        "a held device names its holder",
        {"devices": [{"class": "gpu"}]},
        Verdict(
            None,
            {
                "a": "no free device of class gpu",
                "b": "gpu gpu0 is held by ns/other",
                "c": MAINTENANCE,
            },
        ),
        devices_held={"gpu0": "ns/other"},
    ),
    Case(
        "more devices than the node has",
        {"devices": [{"class": "gpu", "count": 2}]},
        Verdict(
            None,
            {"a": "no free device of class gpu", "b": "needs 2 gpu, 1 free", "c": MAINTENANCE},
        ),
    ),
    Case(
        "a spread group already on a node sends the machine elsewhere",
        {"placement": {"spreadGroup": "db"}},
        Verdict(Candidate("a", ()), {}, ("a",)),
        groups={("db", "b"): "ns/db-1"},
    ),
    Case(
        "an image without a template on the node",
        {"placement": {"node": "b"}},
        Verdict(
            None,
            {
                "a": "not the pinned node (spec.placement.node=b)",
                "b": "no template of image deb",
                "c": MAINTENANCE,
            },
        ),
        inv={"images": {"deb": {"os": "debian", "templates": {"a": 9000}}}},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.reason for c in CASES])
def test_schedule(case: Case) -> None:
    inv = inventory(**case.inv)
    ledger = Ledger.from_inventory(inv)
    ledger.device_holder.update(case.devices_held)
    ledger.group_members.update(case.groups)
    got = schedule(inv.nodes, demand(inv, **case.claim), ledger, "ns/me")
    assert got == case.want, case.reason
