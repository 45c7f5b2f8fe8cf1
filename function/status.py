"""What the claim shows: phase, placement, conditions and events.

Crossplane copies the XR status to the claim, and conditions and results aimed at
COMPOSITE_AND_CLAIM land on the claim too, so `kubectl describe machine` is where
users read all of it. A FATAL result never reaches the claim: user-facing problems
are warnings plus a condition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from function import record, workspace
from function.model import Inventory
from function.outcome import Kind, Phase, Reason
from function.placement import Placement
from function.record import obj

# Terraform errors can be long; the claim shows the part a person reads first.
MAX_MESSAGE = 1024


@dataclass(frozen=True)
class Condition:
    """A condition of the XR, copied to the claim: what `kubectl describe machine` lists."""

    kind: Kind
    ok: bool
    reason: Reason
    message: str = ""


@dataclass
class Report:
    """Everything this call tells the user, collected while the pipeline runs."""

    phase: Phase = Phase.PENDING
    message: str = ""
    placement: Placement | None = None
    warnings: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    conditions: list[Condition] = field(default_factory=list)
    backup: dict[str, str] | None = None  # the backup job of the claim (backupspec.py)

    def warn(self, message: str) -> None:
        """Add a warning event (shown on the claim)."""
        self.warnings.append(_clip(message))

    def notice(self, message: str) -> None:
        """Add a normal event (shown on the claim)."""
        self.notices.append(_clip(message))

    def provisioned(self, seen: Provisioning) -> None:
        """Say what the observed Workspace says: the Provisioned condition and its warning."""
        self.condition(Kind.PROVISIONED, ok=seen.ready, reason=seen.reason, message=seen.message)
        if seen.warning is not None:
            self.warn(seen.warning)

    def condition(self, kind: Kind, *, ok: bool, reason: Reason, message: str = "") -> None:
        """Set a condition on the XR and the claim (a later one of the same type wins)."""
        self.conditions = [c for c in self.conditions if c.kind != kind]
        self.conditions.append(Condition(kind, ok, reason, _clip(message)))


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def _ip(placement: Placement | None, outputs: dict[str, Any]) -> str:
    observed = outputs.get("ipv4")
    if isinstance(observed, str) and observed:
        return observed
    if placement is not None and placement.address:
        return placement.address.split("/", 1)[0]
    return ""


def xr_status(
    report: Report,
    inv: Inventory | None,
    observed_ws: dict[str, Any] | None,
    desired_ws: dict[str, Any] | None,
) -> dict[str, Any]:
    """The XR status (copied to the claim): the printer columns read these fields."""
    ws_name = workspace.name_of(desired_ws)
    status: dict[str, Any] = {"phase": report.phase.value}
    if report.message:
        status["message"] = report.message
    placement = report.placement
    if placement is not None:
        status.update(record.to_status(placement.held(), inv))
        ip = _ip(placement, workspace.outputs(observed_ws))
        if ip:
            status["ip"] = ip
        if ws_name:
            status["workspace"] = ws_name
        if report.backup:
            status["backup"] = report.backup
    return status


# What an API server says when a Workspace CRD lacks a field Fabric sets: provider-terraform
# before v0.19 has neither inlineFormat nor env.
_OLD_PROVIDER_SIGNS = ("field not declared in schema", "unknown field")


def workspace_not_applied(xr: dict[str, Any]) -> str | None:
    """Crossplane's word, on the XR's Synced condition, that it could not apply the Workspace.

    Crossplane (v2.0 composite reconciler) applies each composed resource, and on failure sets
    the XR's Synced condition to False with the error, or to "Unsynced resources: workspace"
    when the API server found the Workspace invalid. The function sees that on its next call.
    """
    conditions = obj(xr.get("status")).get("conditions")
    for cond in conditions if isinstance(conditions, list) else []:
        if not isinstance(cond, dict) or cond.get("type") != "Synced":
            continue
        message = str(cond.get("message") or "")
        if cond.get("status") != "False":
            continue
        if f'"{workspace.RESOURCE_NAME}"' in message:
            return message
        # Only the Workspace: a Reservation another machine holds is unsynced too, and that
        # is allocation at work (reservations.py), not a Workspace Crossplane cannot apply.
        unsynced = message.removeprefix("Unsynced resources:")
        if unsynced != message and workspace.RESOURCE_NAME in re.split(r"[,\s]+", unsynced):
            return message
    return None


@dataclass(frozen=True)
class Provisioning:
    """What the observed Workspace says of the machine: a phase and the Provisioned condition."""

    phase: Phase
    ready: bool
    reason: Reason
    message: str
    warning: str | None = None  # an event too, when Crossplane or Terraform failed


def read_provisioning(
    observed_ws: dict[str, Any] | None, xr: dict[str, Any] | None = None
) -> Provisioning:
    """Read the observed Workspace (and the XR's Synced condition) into a Provisioning."""
    if observed_ws is None:
        return _not_observed(xr or {})
    synced = workspace.condition(observed_ws, "Synced")
    ready = workspace.condition(observed_ws, "Ready")
    if synced is not None and synced.get("status") == "False":
        error = str(synced.get("message") or synced.get("reason") or "unknown error")
        return Provisioning(
            Phase.PROVISIONING,
            ready=False,
            reason=Reason.APPLY_FAILED,
            message=f"Terraform failed: {error}",
            warning=f"Terraform failed for this machine: {error}",
        )
    if ready is not None and ready.get("status") == "True":
        message = "the VM exists and matches the claim"
        return Provisioning(Phase.RUNNING, ready=True, reason=Reason.AVAILABLE, message=message)
    detail = ""
    if ready is not None:
        since = ready.get("lastTransitionTime")
        reason = ready.get("message") or ready.get("reason") or ""
        detail = f" (not ready since {since}: {reason})" if since else f" ({reason})"
    message = "Terraform is applying" + detail
    return Provisioning(Phase.PROVISIONING, ready=False, reason=Reason.APPLYING, message=message)


def _not_observed(xr: dict[str, Any]) -> Provisioning:
    failure = workspace_not_applied(xr)
    if failure is None:
        message = "the Workspace has not been created yet"
        return Provisioning(Phase.SCHEDULED, ready=False, reason=Reason.PENDING, message=message)
    hint = ""
    if any(sign in failure for sign in _OLD_PROVIDER_SIGNS):
        hint = (
            " (the Workspace CRD lacks fields Fabric sets: Fabric needs provider-terraform"
            " v1.x from crossplane-contrib, see the README's supported stack)"
        )
    message = f"Crossplane could not apply the Workspace: {failure}{hint}"
    return Provisioning(
        Phase.SCHEDULED,
        ready=False,
        reason=Reason.WORKSPACE_NOT_APPLIED,
        message=message,
        warning=message,
    )
