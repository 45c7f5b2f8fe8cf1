"""The words a claim is told in: phases, condition types, reasons, and a refusal.

`kubectl get machines` shows the phase; `kubectl describe machine` shows the conditions
with their reasons. Alerts and scripts match on both, so each is a name defined once
here, never a string typed where it is used.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """Where a claim stands, in the order a new machine passes through them."""

    PENDING = "Pending"  # waiting for Crossplane's answers or a readable inventory
    INVALID = "Invalid"  # the claim is refused; it holds nothing
    UNSCHEDULABLE = "Unschedulable"  # valid, but no node can host it now
    SCHEDULED = "Scheduled"  # placed (reserving, or the Workspace not applied yet)
    PROVISIONING = "Provisioning"  # Terraform is applying, or failed to
    RUNNING = "Running"  # the Workspace is applied and ready
    HELD = "Held"  # a Workspace exists and is kept exactly as it is; the claim is not applied


class FleetPhase(StrEnum):
    """Where a Homelab (the fleet view) stands."""

    PENDING = "Pending"  # waiting for Crossplane's answers or a readable inventory
    READY = "Ready"  # the view is computed


class Kind(StrEnum):
    """The condition types Fabric sets on the XR and the claim."""

    SCHEDULED = "Scheduled"
    VALID = "Valid"
    PROVISIONED = "Provisioned"


class Reason(StrEnum):
    """Why a condition has the status it has (a condition's `reason`)."""

    # Refusals of the claim.
    INVALID = "Invalid"
    INVALID_NAME = "InvalidName"
    INVALID_SPEC = "InvalidSpec"
    UNSCHEDULABLE = "Unschedulable"
    UNEXPECTED_WORKSPACE = "UnexpectedWorkspace"
    # Waiting for Crossplane (routine, never an event) or for the inventory.
    WAITING_FOR_INVENTORY = "WaitingForInventory"
    WAITING_FOR_FLEET = "WaitingForFleet"
    WAITING_FOR_RESERVATIONS = "WaitingForReservations"
    INVENTORY_UNAVAILABLE = "InventoryUnavailable"
    INVENTORY_INVALID = "InventoryInvalid"
    # A placed claim.
    PLACED = "Placed"
    SPEC_VALID = "SpecValid"
    RESERVING = "Reserving"
    # The Workspace, as Crossplane and provider-terraform report it.
    PENDING = "Pending"
    WORKSPACE_NOT_APPLIED = "WorkspaceNotApplied"
    APPLY_FAILED = "ApplyFailed"
    APPLYING = "Applying"
    AVAILABLE = "Available"

    @property
    def waiting(self) -> bool:
        """Whether this is a wait for Crossplane's answers: routine, not worth an event."""
        return self.value.startswith("Waiting")


class Refusal(Exception):  # noqa: N818 - an outcome of a reconcile, not an error of the function
    """Stop rendering: hold what exists (or hold nothing) and tell the user why."""

    def __init__(self, phase: Phase, reason: Reason, message: str) -> None:
        """Remember the phase, the condition reason and the user-facing message."""
        super().__init__(message)
        self.phase = phase
        self.reason = reason
        self.message = message
