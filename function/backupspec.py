"""Backups as the inventory describes them and as a claim asks for them: models and checks.

The inventory lists Proxmox Backup Server storages and backup jobs (`backups:`); a claim names
one job (`spec.backup.job`). The Homelab composite owns every storage and job of its inventory
(function/backups.py): a job is a cluster object shared by many machines, so no machine's own
Workspace holds it, and a backup edit is never a VM edit.

This module is a leaf (pydantic only), so that model.py can use its models without an import
cycle. Passwords are never in the inventory: a storage names a Secret key, which
provider-terraform hands to Terraform as an environment variable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from function.errors import FabricError

if TYPE_CHECKING:
    from function.model import Inventory

# A storage or job ID Fabric creates in Proxmox: a letter first, as Proxmox's own IDs
# (pve-storage-id, pve-configid) start; lowercase so it is also a Terraform-safe name part.
PVE_ID = r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$"
# The same as model.K8S_NAME and model.SECRET_KEY_NAME (tests/test_backups.py holds them equal).
K8S_NAME = r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$"
SECRET_KEY_NAME = r"^[-._a-zA-Z0-9]{1,253}$"  # noqa: S105 - a pattern, not a password
# A systemd calendar event as Proxmox takes it ("02:00", "sat 03:30", "*-*-* 01:15", "daily").
SCHEDULE = r"^[A-Za-z0-9*:,./~-]([A-Za-z0-9*:,./~ -]{0,126}[A-Za-z0-9*:,./~-])?$"
# A PBS user ("backup@pbs") or API token ("backup@pbs!pve").
PBS_USER = r"^[A-Za-z0-9._-]{1,64}@[A-Za-z0-9._-]{1,64}(![A-Za-z0-9._-]{1,64})?$"
HOST = r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"
FINGERPRINT = r"^([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}$"
DATASTORE = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,31}$"
PBS_NAMESPACE = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,31}(/[A-Za-z0-9_][A-Za-z0-9._-]{0,31}){0,7}$"

PveId = Annotated[str, StringConstraints(pattern=PVE_ID)]
Keep = Annotated[int, Field(ge=1, le=10_000)]


class _Strict(BaseModel):
    """As model.Strict: unknown fields are errors, values immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class BackupRequest(_Strict):
    """Which backup job of the inventory backs this machine up."""

    job: PveId


class PasswordRef(_Strict):
    """A key of a Kubernetes Secret holding the PBS password; Fabric passes the reference only."""

    namespace: Annotated[str, StringConstraints(pattern=K8S_NAME)]
    name: Annotated[str, StringConstraints(pattern=K8S_NAME)]
    key: Annotated[str, StringConstraints(pattern=SECRET_KEY_NAME)]


class PbsStorage(_Strict):
    """A Proxmox Backup Server datastore, added to Proxmox VE as a storage of that ID."""

    server: Annotated[str, StringConstraints(pattern=HOST)]
    datastore: Annotated[str, StringConstraints(pattern=DATASTORE)]
    username: Annotated[str, StringConstraints(pattern=PBS_USER)]
    password_secret_ref: PasswordRef = Field(alias="passwordSecretRef")
    fingerprint: Annotated[str, StringConstraints(pattern=FINGERPRINT)] | None = None
    namespace: Annotated[str, StringConstraints(pattern=PBS_NAMESPACE)] | None = None


class Retention(_Strict):
    """How many backups of each guest the job keeps (Proxmox's prune-backups)."""

    keep_last: Keep | None = Field(default=None, alias="keepLast")
    keep_hourly: Keep | None = Field(default=None, alias="keepHourly")
    keep_daily: Keep | None = Field(default=None, alias="keepDaily")
    keep_weekly: Keep | None = Field(default=None, alias="keepWeekly")
    keep_monthly: Keep | None = Field(default=None, alias="keepMonthly")
    keep_yearly: Keep | None = Field(default=None, alias="keepYearly")

    @model_validator(mode="after")
    def _something_kept(self) -> Retention:
        if not self.prune_backups():
            msg = "keep at least one backup: set keepLast, keepDaily, keepWeekly or another keep*"
            raise ValueError(msg)
        return self

    def prune_backups(self) -> dict[str, str]:
        """As bpg's prune_backups map: Proxmox's option names, values as strings."""
        values = self.model_dump(by_alias=False, exclude_none=True)
        return {name.replace("_", "-"): str(count) for name, count in sorted(values.items())}


class BackupJob(_Strict):
    """A scheduled backup job: when, where to, how much to keep. Members come from the claims."""

    schedule: Annotated[str, StringConstraints(pattern=SCHEDULE)]
    storage: PveId
    retention: Retention | None = None
    mode: Literal["snapshot", "suspend", "stop"] = "snapshot"
    enabled: bool = True


class Backups(_Strict):
    """The inventory's backups: PBS storages and the jobs that write to them."""

    storages: dict[PveId, PbsStorage] = Field(default_factory=dict, max_length=16)
    jobs: dict[PveId, BackupJob] = Field(default_factory=dict, max_length=64)

    @model_validator(mode="after")
    def _jobs_write_to_known_storages(self) -> Backups:
        for name, job in sorted(self.jobs.items()):
            if job.storage not in self.storages:
                known = ", ".join(sorted(self.storages)) or "none"
                msg = (
                    f"backups.jobs.{name}.storage: {job.storage!r} is not a storage of "
                    f"backups.storages; accepted: {known}"
                )
                raise ValueError(msg)
        return self


def job_name(spec: Any) -> str | None:
    """The job a claim names, whatever kind of claim it is (a kind without backups names none)."""
    request = getattr(spec, "backup", None)
    return request.job if isinstance(request, BackupRequest) else None


def check_job(spec: Any, inv: Inventory) -> None:
    """Refuse a claim naming a backup job the inventory does not have."""
    name = job_name(spec)
    if name is None or name in inv.backups.jobs:
        return
    known = ", ".join(sorted(inv.backups.jobs)) or "none"
    msg = f"spec.backup.job: {name!r} is not a backup job of the inventory; accepted: {known}"
    raise FabricError(msg)


def machine_status(spec: Any, inv: Inventory) -> dict[str, str] | None:
    """What a placed machine's status says of its backups: the job, its storage and schedule.

    The job's VMID list is the Homelab's to write (function/backups.py); it lists every placed
    machine whose claim names the job, so a placed machine naming one is in it.
    """
    name = job_name(spec)
    job = inv.backups.jobs.get(name) if name is not None else None
    if job is None:
        return None
    return {"job": name or "", "storage": job.storage, "schedule": job.schedule}
