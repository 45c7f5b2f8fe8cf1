"""The fleet as every reconcile reads it: which XR stands for each name, in placement order.

Machines and Containers share one space of names (their hostnames): of a Machine and a Container
of one name the one made first keeps it. Each XR counts as the kind it is, whether or not its
spec validates, so a broken claim of one kind never hides the other kind's guest of that name.
"""

from __future__ import annotations

from typing import Any

import pytest

from function import fleet
from tests.unit.build import KEY

T1, T2, T3 = "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"
VALID = {
    "cpu": 1,
    "memory": "1Gi",
    "disk": "10Gi",
    "image": "deb",
    "bootstrap": {"sshAuthorizedKeys": [KEY]},
}
BROKEN = {**VALID, "cpu": "lots"}


def xr(kind: str, name: str, created: str, spec: dict[str, Any]) -> dict[str, Any]:
    """An XMachine or XContainer of claim ns/name, as Crossplane lists it."""
    return {
        "apiVersion": "fabric.homelab.io/v1alpha1",
        "kind": kind,
        "metadata": {
            "name": f"{name}-x{len(created)}{kind[1]}",
            "creationTimestamp": created,
            "labels": {
                "crossplane.io/claim-name": name,
                "crossplane.io/claim-namespace": "ns",
            },
        },
        "spec": spec,
    }


def vm(name: str, created: str, spec: dict[str, Any] = VALID) -> dict[str, Any]:
    return xr("XMachine", name, created, spec)


def lxc(name: str, created: str, spec: dict[str, Any] = VALID) -> dict[str, Any]:
    return xr("XContainer", name, created, spec)


CASES = [
    pytest.param(
        [vm("b", T2), vm("a", T1)],
        [("ns/a", False, True), ("ns/b", False, True)],
        id="machines in the order they were made",
    ),
    pytest.param(
        [vm("web", T2), lxc("web", T1)],
        [("ns/web", True, True)],
        id="of a machine and a container of one name, the one made first keeps it",
    ),
    pytest.param(
        [vm("web", T1), lxc("web", T2, BROKEN)],
        [("ns/web", False, True)],
        id="an invalid container does not stand in for the machine of its name",
    ),
    pytest.param(
        [vm("web", T2, BROKEN), lxc("web", T3), vm("db", T1)],
        [("ns/db", False, True), ("ns/web", False, False)],
        id="an invalid machine made first still keeps its name",
    ),
]


@pytest.mark.parametrize(("xrs", "want"), CASES)
def test_the_fleet_keeps_one_guest_per_name(
    xrs: list[dict[str, Any]], want: list[tuple[str, bool, bool]]
) -> None:
    records = fleet.Fleet([fleet.Record(x, spec_key=None) for x in xrs])
    got = [(m.key, m.is_container, m.spec is not None) for m in records.ordered()]
    assert got == want
