"""What the observed Workspace tells the claim (status.read_provisioning), like ready_test.go.

Each case is a Workspace as provider-terraform reports it (or none, with the XR's Synced
condition as Crossplane sets it) and the phase, readiness and Provisioned condition the
claim shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from function.outcome import Phase, Reason
from function.status import Provisioning, read_provisioning

T0 = "2026-12-01T10:00:00Z"


def workspace(*conditions: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "ws"}, "status": {"conditions": list(conditions)}}


def xr_synced(status: str, message: str) -> dict[str, Any]:
    cond = {"type": "Synced", "status": status, "reason": "ReconcileError", "message": message}
    return {"status": {"conditions": [cond]}}


def applying(message: str) -> Provisioning:
    return Provisioning(Phase.PROVISIONING, ready=False, reason=Reason.APPLYING, message=message)


def apply_failed(error: str) -> Provisioning:
    return Provisioning(
        Phase.PROVISIONING,
        ready=False,
        reason=Reason.APPLY_FAILED,
        message=f"Terraform failed: {error}",
        warning=f"Terraform failed for this machine: {error}",
    )


NOT_YET = Provisioning(
    Phase.SCHEDULED,
    ready=False,
    reason=Reason.PENDING,
    message="the Workspace has not been created yet",
)
REJECTED = 'cannot apply composed resource "workspace": admission webhook denied it'
HINT = (
    " (the Workspace CRD lacks fields Fabric sets: Fabric needs provider-terraform v1.x from "
    "crossplane-contrib, see the README's supported stack)"
)
OLD_PROVIDER = (
    'cannot apply composed resource "workspace": '
    ".spec.forProvider.env: field not declared in schema"
)


@dataclass(frozen=True)
class Case:
    reason: str
    observed_ws: dict[str, Any] | None
    want: Provisioning
    xr: dict[str, Any] | None = None


def not_applied(message: str) -> Provisioning:
    said = f"Crossplane could not apply the Workspace: {message}"
    return Provisioning(
        Phase.SCHEDULED,
        ready=False,
        reason=Reason.WORKSPACE_NOT_APPLIED,
        message=said,
        warning=said,
    )


CASES = [
    Case("no Workspace and nothing said about it: not created yet", None, NOT_YET),
    Case(
        "no Workspace and the XR is synced: not created yet",
        None,
        NOT_YET,
        xr=xr_synced("True", ""),
    ),
    Case(
        "Crossplane could not apply the Workspace: said, with its error, as a warning too",
        None,
        not_applied(REJECTED),
        xr=xr_synced("False", REJECTED),
    ),
    Case(
        "the API server found the Workspace invalid (unsynced resources lists it)",
        None,
        not_applied("Unsynced resources: reservation-vmid-200, workspace"),
        xr=xr_synced("False", "Unsynced resources: reservation-vmid-200, workspace"),
    ),
    Case(
        "only a Reservation is unsynced: allocation at work, not a Workspace failure",
        None,
        NOT_YET,
        xr=xr_synced("False", "Unsynced resources: reservation-vmid-200"),
    ),
    Case(
        "an old provider-terraform without env: the message says which provider to run",
        None,
        not_applied(OLD_PROVIDER + HINT),
        xr=xr_synced("False", OLD_PROVIDER),
    ),
    Case(
        "a Workspace without conditions yet: Terraform is applying",
        workspace(),
        applying("Terraform is applying"),
    ),
    Case(
        "ready and synced: Running, ready",
        workspace(
            {"type": "Synced", "status": "True"},
            {"type": "Ready", "status": "True", "reason": "Available"},
        ),
        Provisioning(
            Phase.RUNNING,
            ready=True,
            reason=Reason.AVAILABLE,
            message="the VM exists and matches the claim",
        ),
    ),
    Case(
        "not ready since a time: said with the time and the reason",
        workspace(
            {"type": "Ready", "status": "False", "reason": "Creating", "lastTransitionTime": T0}
        ),
        applying(f"Terraform is applying (not ready since {T0}: Creating)"),
    ),
    Case(
        "not ready without a time: said with the message",
        workspace({"type": "Ready", "status": "False", "message": "apply running"}),
        applying("Terraform is applying (apply running)"),
    ),
    Case(
        "a failed apply wins over a Ready left from the last success: a warning too",
        workspace(
            {"type": "Synced", "status": "False", "message": "plan: 401 Unauthorized"},
            {"type": "Ready", "status": "True"},
        ),
        apply_failed("plan: 401 Unauthorized"),
    ),
    Case(
        "a failed apply without a message: its reason",
        workspace({"type": "Synced", "status": "False", "reason": "ReconcileError"}),
        apply_failed("ReconcileError"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.reason for c in CASES])
def test_read_provisioning(case: Case) -> None:
    assert read_provisioning(case.observed_ws, case.xr) == case.want, case.reason
