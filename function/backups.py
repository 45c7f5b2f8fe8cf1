"""The Homelab's backups Workspace: every PBS storage and backup job of the inventory.

A Proxmox backup job is a cluster object that many machines share, so no machine's Workspace
can hold it (two would fight over it, and a backup edit would become a VM edit). The Homelab
composite, one per inventory, owns them all in one extra Workspace. Each job's VMID list is
computed from the fleet the Homelab view already builds (homelab._members: the fleet's
placements confirmed by the Reservation table, the same members every machine places with):
a placed machine whose claim names the job is in it; a machine not placed yet is not.

Proxmox refuses a backup job without guests (vzdump: "vmid: property is missing"), so a job no
placed machine names is not rendered: it appears when its first member is placed and is
removed with its last one. Adding or removing a member otherwise updates the job in place.

PBS passwords never pass through the function: each storage's password is a Terraform variable
that provider-terraform fills from the Secret key the inventory names (an env secretKeyRef).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from function import backupspec, fleet, record, terraform, workspace
from function.model import FunctionInput, Inventory

RESOURCE_NAME = "backups"
# bpg v0.111.1 deprecates proxmox_virtual_environment_storage_pbs (removed in v1.0) for this
# one, of the same schema; proxmox_backup_job is bpg's only backup job resource.
STORAGE = "proxmox_storage_pbs"
JOB = "proxmox_backup_job"
ANNOTATION = record.ANNOTATION_PREFIX + "backups"


@dataclass(frozen=True)
class Job:
    """One job of the inventory and the placed machines it backs up."""

    name: str
    spec: backupspec.BackupJob
    members: tuple[tuple[str, int], ...]  # (machine key, VMID), by VMID


def jobs(inv: Inventory, members: list[fleet.Member]) -> list[Job]:
    """Every job of the inventory, with the placed members whose claims name it."""
    out = []
    for name, spec in sorted(inv.backups.jobs.items()):
        held = sorted(
            (m.held.vmid, m.key)
            for m in members
            if m.held is not None and backupspec.job_name(m.spec) == name
        )
        out.append(Job(name, spec, tuple((key, vmid) for vmid, key in held)))
    return out


def password_variable(storage: str) -> str:
    """The Terraform variable carrying a storage's PBS password."""
    return "pbs_password_" + storage.replace("-", "_")


def _storage(name: str, spec: backupspec.PbsStorage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": name,
        "server": spec.server,
        "datastore": spec.datastore,
        "username": spec.username,
        "password": terraform.Expr.of(f"var.{password_variable(name)}"),
        "content": ["backup"],
    }
    if spec.fingerprint:
        body["fingerprint"] = spec.fingerprint
    if spec.namespace:
        body["namespace"] = spec.namespace
    return body


def _job(job: Job) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": job.name,
        "schedule": job.spec.schedule,
        # A reference, so Terraform creates the storage before the job and removes it after.
        "storage": terraform.Expr.of(f"{STORAGE}.{job.spec.storage}.id"),
        "mode": job.spec.mode,
        "enabled": job.spec.enabled,
        "vmid": [str(vmid) for _, vmid in job.members],
    }
    if job.spec.retention is not None:
        body["prune_backups"] = job.spec.retention.prune_backups()
    return body


def module(inv: Inventory, found: list[Job]) -> dict[str, Any] | None:
    """The Terraform JSON module of the backups Workspace, or None when there is nothing to hold."""
    backups = inv.backups
    if not backups.storages:
        return None
    resources: dict[str, Any] = {
        STORAGE: {name: _storage(name, spec) for name, spec in sorted(backups.storages.items())}
    }
    rendered = {j.name: _job(j) for j in found if j.members}
    if rendered:
        resources[JOB] = rendered
    doc = {
        "terraform": {
            "required_providers": {
                "proxmox": {
                    "source": terraform.PROVIDER_SOURCE,
                    "version": terraform.PROVIDER_VERSION,
                }
            }
        },
        "variable": {
            password_variable(name): {"type": "string", "sensitive": True}
            for name in sorted(backups.storages)
        },
        "resource": resources,
    }
    return terraform.escape_all(doc)


def manifest(
    inv: Inventory, fn_input: FunctionInput, found: list[Job], homelab: dict[str, Any]
) -> dict[str, Any] | None:
    """The backups Workspace the Homelab composes, or None when the inventory has no storage."""
    doc = module(inv, found)
    if doc is None:
        return None
    meta = fleet.obj(homelab.get("metadata"))
    name = workspace.external_name(str(meta.get("uid") or ""), f"homelab/{meta.get('name')}", None)
    env = [
        {
            "name": terraform.variable_env(password_variable(storage)),
            "secretKeyRef": {
                "namespace": spec.password_secret_ref.namespace,
                "name": spec.password_secret_ref.name,
                "key": spec.password_secret_ref.key,
            },
        }
        for storage, spec in sorted(inv.backups.storages.items())
    ]
    return {
        "apiVersion": workspace.CLUSTER_API,
        "kind": "Workspace",
        "metadata": {
            "annotations": {
                workspace.EXTERNAL_NAME: name,
                ANNOTATION: ",".join(sorted(inv.backups.jobs)),
            },
        },
        "spec": {
            "forProvider": {
                "source": "Inline",
                "inlineFormat": "JSON",
                "module": terraform.to_json(doc),
                "env": env,
            },
            "providerConfigRef": {"name": fn_input.provider_config_name},
            "deletionPolicy": fn_input.deletion_policy,
        },
    }


def status(found: list[Job]) -> list[dict[str, Any]]:
    """The Homelab's status.backups: each job, where it writes, and the machines it backs up."""
    return [
        {
            "job": j.name,
            "storage": j.spec.storage,
            "schedule": j.spec.schedule,
            "enabled": j.spec.enabled,
            "inProxmox": bool(j.members),
            "machines": [{"machine": key, "vmId": vmid} for key, vmid in j.members],
        }
        for j in found
    ]
