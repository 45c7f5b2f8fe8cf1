"""A refused claim holds nothing, in its own status or in any other machine's view (invariant 9).

Admission (demand.resolve, demand.check_secret_namespaces) refuses a claim before placement:
an unknown role, a role the image's os family cannot take, a flake on a non-NixOS image, a
Secret in another namespace. ea6a21b refused these only while rendering, after placing: the
refused claim's status carried a node, VMID and address, and other machines counted it as
pending, so a machine created after it got another VMID and address than without it.
"""

from __future__ import annotations

import pytest

from tests.conftest import (
    KEY,
    basic_spec,
    desired_ws,
    inventory_cm,
    reconcile,
    status,
    with_status,
    xr,
)

REFUSED = {
    "unknown role": basic_spec(roles=["no-such-role"]),
    "flake on a Debian image": basic_spec(nix={"flakeRef": "github:me/fleet#vm"}),
    "Secret in another namespace": basic_spec(
        bootstrap={
            "adminUser": "admin",
            "sshAuthorizedKeys": [KEY],
            "secrets": [
                {"name": "t", "secretRef": {"namespace": "other", "name": "s", "key": "k"}}
            ],
        }
    ),
}
PLACEMENT_FIELDS = {"node", "vmId", "address", "ip", "devices"}


@pytest.mark.parametrize("spec", REFUSED.values(), ids=list(REFUSED))
def test_a_refused_claim_holds_nothing(call, spec):
    refused = xr("refused", spec, created="2026-11-01T09:00:00Z")
    rsp = reconcile(call, refused)
    assert desired_ws(rsp) is None
    got = status(rsp)
    assert got["phase"] == "Invalid"
    assert not {k for k in PLACEMENT_FIELDS if got.get(k)}, got


@pytest.mark.parametrize("spec", REFUSED.values(), ids=list(REFUSED))
def test_a_machine_after_a_refused_claim_gets_what_it_would_without_it(call, spec):
    # The refused claim is older, so as a pending machine it would be placed first.
    refused = xr("refused", spec, created="2026-11-01T09:00:00Z")
    refused = with_status(refused, reconcile(call, refused))
    later = xr("later", basic_spec(), created="2026-11-01T10:00:00Z")
    alone = status(reconcile(call, later, [inventory_cm(), later]))
    beside = status(reconcile(call, later, [inventory_cm(), refused, later]))
    assert alone["vmId"] == beside["vmId"]
    assert alone["address"] == beside["address"]
    assert alone["node"] == beside["node"]
