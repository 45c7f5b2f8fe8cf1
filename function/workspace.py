"""The provider-terraform Workspace that carries a machine's module.

The Workspace records the placement in its annotations so that a later call,
any function version, reads it back and keeps the machine where it is. A
cluster-scoped XR composes the cluster-scoped `tf.upbound.io` Workspace; a
namespaced (Crossplane v2) XR composes the namespaced `tf.m.upbound.io` one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from function import lxc, record, terraform
from function.model import BootstrapSecret
from function.record import ANNOTATION_PREFIX, Held, dig, module_of, obj

EXTERNAL_NAME = "crossplane.io/external-name"
CLUSTER_API = "tf.upbound.io/v1beta1"
NAMESPACED_API = "tf.m.upbound.io/v1beta1"
RESOURCE_NAME = "workspace"
# Orphan on a namespaced Workspace: every management action but Delete.
KEEP_POLICIES = ["Observe", "Create", "Update", "LateInitialize"]


@dataclass(frozen=True)
class WorkspaceShape:
    """What the Workspace manifest is built from."""

    external_name: str
    machine_key: str
    namespaced: bool
    provider_config: str
    deletion_policy: str  # Delete | Orphan
    held: Held
    module_json: str
    secrets: tuple[BootstrapSecret, ...]


def external_name(xr_uid: str, xr_name: str, xr_namespace: str | None) -> str:
    """A unique, stable external name: Terraform state is keyed by it.

    The XR's UID makes it unique even when a claim of the same name is deleted with
    Orphan and created again: the new machine must not adopt the old one's state.
    """
    if xr_uid:
        return f"fabric-{xr_uid}"
    # crossplane render without a uid: derive a stable name from the identity instead.
    digest = hashlib.sha256(f"{xr_namespace or ''}/{xr_name}".encode()).hexdigest()[:16]
    return f"fabric-{digest}"


def _env(shape: WorkspaceShape) -> list[dict[str, Any]]:
    env = []
    for secret in sorted(shape.secrets, key=lambda s: s.name):
        ref: dict[str, str] = {"name": secret.secret_ref.name, "key": secret.secret_ref.key}
        if not shape.namespaced:
            ref["namespace"] = secret.secret_ref.namespace
        # Terraform reads TF_VAR_<name> as the variable's value; the function never sees it.
        name = terraform.variable_env(terraform.secret_variable(secret.name))
        env.append({"name": name, "secretKeyRef": ref})
    return env


def manifest(shape: WorkspaceShape) -> dict[str, Any]:
    """The Workspace as the desired composed resource."""
    for_provider: dict[str, Any] = {
        "source": "Inline",
        "inlineFormat": "JSON",
        "module": shape.module_json,
    }
    env = _env(shape)
    if env:
        for_provider["env"] = env
    spec: dict[str, Any] = {"forProvider": for_provider}
    if shape.namespaced:
        spec["providerConfigRef"] = {"kind": "ClusterProviderConfig", "name": shape.provider_config}
        if shape.deletion_policy == "Orphan":
            spec["managementPolicies"] = KEEP_POLICIES
    else:
        spec["providerConfigRef"] = {"name": shape.provider_config}
        spec["deletionPolicy"] = shape.deletion_policy
    annotations = {EXTERNAL_NAME: shape.external_name, **record.to_annotations(shape.held)}
    annotations[ANNOTATION_PREFIX + "machine"] = shape.machine_key
    return {
        "apiVersion": NAMESPACED_API if shape.namespaced else CLUSTER_API,
        "kind": "Workspace",
        "metadata": {
            "annotations": dict(sorted(annotations.items())),
            "labels": {ANNOTATION_PREFIX + "node": shape.held.node},
        },
        "spec": spec,
    }


def held_copy(observed: dict[str, Any]) -> dict[str, Any]:
    """The observed Workspace as a desired resource: exactly what exists, nothing the server owns.

    Used when this call cannot render a new Workspace (bad claim, broken inventory,
    internal error): returning the Workspace unchanged keeps the VM as it is.
    """
    meta = obj(observed.get("metadata"))
    kept_meta = {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta}
    return {
        "apiVersion": observed.get("apiVersion", CLUSTER_API),
        "kind": observed.get("kind", "Workspace"),
        "metadata": kept_meta,
        "spec": observed.get("spec") or {},
    }


def name_of(manifest: dict[str, Any] | None) -> str:
    """The Workspace's external name (what provider-terraform names its state by), or ""."""
    if not manifest:
        return ""
    return str(obj(obj(manifest.get("metadata")).get("annotations")).get(EXTERNAL_NAME) or "")


def outputs(observed: dict[str, Any] | None) -> dict[str, Any]:
    """The Workspace's Terraform outputs, as provider-terraform reports them."""
    if not observed:
        return {}
    at = obj(obj(observed.get("status")).get("atProvider"))
    return obj(at.get("outputs"))


def condition(observed: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """One status condition of the observed Workspace, if present."""
    if not observed:
        return None
    conditions = obj(observed.get("status")).get("conditions")
    for cond in conditions if isinstance(conditions, list) else []:
        if isinstance(cond, dict) and cond.get("type") == kind:
            return cond
    return None


# What the running VM was created with, and never changes in place (see terraform.py).
_CT_PATH = lxc.PATH
_VM_PATH = terraform.VM_PATH
_CREATE_ONLY: dict[str, tuple[str | int, ...]] = {
    "user-data (bootstrap, roles, devices' guest setup)": (
        *terraform.USER_DATA_PATH,
        "source_raw",
        0,
        "data",
    ),
    "storage pool (where its disks are)": (*_VM_PATH, "disk", 0, "datastore_id"),
    "image (template clone)": (*_VM_PATH, "clone", 0, "vm_id"),
    # A container's (function/lxc.py): bpg would re-create it for any of these.
    "unprivileged flag": (*_CT_PATH, "unprivileged"),
    "mount points (volumes are made with the container)": (*_CT_PATH, "mount_point"),
    "storage pool (where its root filesystem is)": (*_CT_PATH, "disk", 0, "datastore_id"),
    "image (template archive)": (*_CT_PATH, "operating_system", 0, "template_file_id"),
    "root's SSH keys": (*_CT_PATH, "initialization", 0, "user_account"),
}


def create_only_changes(observed: dict[str, Any] | None, desired: dict[str, Any]) -> list[str]:
    """Name what the claim changed that only a re-created machine would get."""
    if observed is None:
        return []
    was, now = module_of(observed), module_of(desired)
    if not was:
        return []
    return [what for what, path in _CREATE_ONLY.items() if dig(was, *path) != dig(now, *path)]


# What a running guest takes only when it next restarts (terraform.py sets
# reboot_after_update = false): what the claim calls it, the module path, the unit.
_AT_RESTART: dict[str, tuple[tuple[str | int, ...], str]] = {
    "CPU": ((*_VM_PATH, "cpu", 0, "cores"), "cores"),
    "memory": ((*_VM_PATH, "memory", 0, "dedicated"), "MiB"),
}


def _guest(module: dict[str, Any]) -> dict[str, Any]:
    """The guest resource of a module: the VM (terraform.py) or the container (lxc.py)."""
    return obj(dig(module, *_CT_PATH)) or obj(dig(module, *_VM_PATH))


def restart_changes(observed: dict[str, Any] | None, desired: dict[str, Any]) -> list[str]:
    """What the claim changed that Proxmox applies to the running guest at its next restart."""
    if observed is None:
        return []
    was, now = module_of(observed), module_of(desired)
    out = []
    for what, (path, unit) in _AT_RESTART.items():
        before, after = dig(was, *path), dig(now, *path)
        if before is not None and before != after:
            out.append(f"{what} from {before} to {after} {unit}")
    return out


def disk_shrink(observed: dict[str, Any] | None, desired: dict[str, Any]) -> tuple[int, int] | None:
    """(had, asked) when the desired module would make the machine's disk smaller (GiB)."""
    if observed is None:
        return None
    had = dig(_guest(module_of(observed)), "disk", 0, "size")
    asked = dig(_guest(module_of(desired)), "disk", 0, "size")
    if isinstance(had, int) and isinstance(asked, int) and asked < had:
        return had, asked
    return None


def power_change(observed: dict[str, Any] | None, desired: dict[str, Any]) -> str | None:
    """What a powerState edit does to the running guest, when it changes whether it runs."""
    if observed is None:
        return None
    was = _guest(module_of(observed)).get("started")
    now = _guest(module_of(desired)).get("started")
    if was is None or was == now:
        return None
    if now:
        return "powerState is Running: Proxmox starts the machine at the next apply"
    return (
        "powerState is Stopped: Proxmox shuts the machine down (ACPI) at the next apply, "
        "and it stays off across host reboots"
    )


# What an adopted guest's module sets besides its identity (terraform.adopted_module).
_IDENTITY = frozenset({"node_name", "vm_id", "lifecycle"})


def taken_over(observed: dict[str, Any] | None, desired: dict[str, Any]) -> list[str]:
    """What an adopted guest's module now sets that its applied module left to the guest."""
    now = module_of(desired)
    if "import" not in now:
        return []
    was = module_of(observed) if observed is not None else {}
    before = _guest(was) if "import" in was else {}
    after = _guest(now)
    return [
        f"{name} = {json.dumps(value, sort_keys=True)}"
        for name, value in sorted(after.items())
        if name not in _IDENTITY and before.get(name) != value
    ]
