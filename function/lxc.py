"""The Terraform module of a container: bpg's proxmox_virtual_environment_container.

A container is made from a template archive (vztmpl) on its node, with its root filesystem and
volume mount points on datastores, one network interface on a catalog network (same IPAM as
machines), unprivileged unless the claim says otherwise. Proxmox writes root's SSH keys and the
network configuration into the container itself: there is no cloud-init.

What only root@pam may do is never rendered: device passthrough (devN) and bind mounts of host
paths (demand.py refuses them on a claim; an adopted container keeps its own, hands-off).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from function.model import Network, Node
from function.terraform import (
    REQUIRED_PROVIDER,
    AdoptedShape,
    Expr,
    adopted_resource,
    escape_all,
    ipv4_output,
    managed_arguments,
)

CONTAINER = "proxmox_virtual_environment_container"
CONTAINER_NAME = "container"
ADDRESS = f"{CONTAINER}.{CONTAINER_NAME}"
PATH = ("resource", CONTAINER, CONTAINER_NAME)  # the resource's path in the module
# Edits that would force a new container (each shown by tests/test_containers.py with the real
# provider), and facts of its creation: a template archive renamed in the inventory, a node move
# by HA, a datastore default edited, the keys root got, its unprivileged flag, its mount points
# (bpg re-creates a container for any mount point edit). The claim says when it changed one.
IGNORE_CHANGES = [
    "node_name",
    "operating_system[0].template_file_id",
    "disk[0].datastore_id",
    "initialization[0].user_account",
    "unprivileged",
    "mount_point",
]
# Every argument of bpg's container resource a module can set (v0.111.1; tests/test_containers.py
# checks this against the pinned provider's schema).
ARGUMENTS = (
    "clone", "console", "cpu", "description", "device_passthrough", "disk",
    "environment_variables", "features", "hook_script_file_id", "idmap", "initialization",
    "memory", "mount_point", "network_interface", "node_name", "operating_system", "pool_id",
    "protection", "start_on_boot", "started", "startup", "tags", "template", "timeout_clone",
    "timeout_create", "timeout_delete", "timeout_start", "timeout_update", "unprivileged",
    "vm_id", "wait_for_ip",
)  # fmt: skip
CPU_FIELDS = ("architecture", "cores", "limit", "units")
MEMORY_FIELDS = ("dedicated", "swap")


@dataclass(frozen=True)
class Mount:
    """A volume mount point: a new volume of `size_gib` on `pool`, mounted at `path`."""

    path: str
    size_gib: int
    pool: str
    backup: bool


@dataclass(frozen=True)
class ContainerShape:
    """Everything the module of a new container needs, resolved and checked by the caller."""

    hostname: str
    description: str
    node: Node
    vmid: int
    template_file_id: str
    os_type: str
    cpu: int
    memory_mib: int
    disk_gib: int
    pool: str
    mounts: tuple[Mount, ...]
    network: Network | None
    address: str | None  # static CIDR address; None means DHCP
    unprivileged: bool
    nesting: bool
    keyctl: bool
    start_on_boot: bool
    started: bool
    protection: bool
    ssh_keys: tuple[str, ...]
    tags: tuple[str, ...]


def _initialization(shape: ContainerShape) -> dict[str, Any]:
    ipv4: dict[str, Any] = {"address": shape.address or "dhcp"}
    if shape.address and shape.network is not None and shape.network.gateway is not None:
        ipv4["gateway"] = str(shape.network.gateway)
    init: dict[str, Any] = {"hostname": shape.hostname, "ip_config": [{"ipv4": [ipv4]}]}
    net = shape.network
    if net is not None and (net.dns.servers or net.dns.domain):
        dns: dict[str, Any] = {"servers": [str(s) for s in net.dns.servers]}
        if net.dns.domain:
            dns["domain"] = net.dns.domain
        init["dns"] = [dns]
    if shape.ssh_keys:
        init["user_account"] = [{"keys": list(shape.ssh_keys)}]
    return init


def _container(shape: ContainerShape) -> dict[str, Any]:
    ct: dict[str, Any] = {
        "node_name": shape.node.name,
        "vm_id": shape.vmid,
        "description": shape.description,
        "tags": sorted(shape.tags),  # Proxmox sorts tags; unsorted ones diff forever
        "unprivileged": shape.unprivileged,
        "features": [{"nesting": shape.nesting, "keyctl": shape.keyctl}],
        "start_on_boot": shape.start_on_boot and shape.started,
        "started": shape.started,
        "protection": shape.protection,
        "cpu": [{"cores": shape.cpu}],
        "memory": [{"dedicated": shape.memory_mib, "swap": 0}],
        "disk": [{"datastore_id": shape.pool, "size": shape.disk_gib}],
        "operating_system": [{"template_file_id": shape.template_file_id, "type": shape.os_type}],
        "initialization": [_initialization(shape)],
        "lifecycle": {"ignore_changes": IGNORE_CHANGES},
    }
    if shape.mounts:
        ct["mount_point"] = [
            {"volume": m.pool, "size": f"{m.size_gib}G", "path": m.path, "backup": m.backup}
            for m in shape.mounts
        ]
    if shape.network is not None:
        nic: dict[str, Any] = {"name": "eth0", "bridge": shape.network.bridge}
        if shape.network.vlan is not None:
            nic["vlan_id"] = shape.network.vlan
        ct["network_interface"] = [nic]
    return ct


def _document(resource: dict[str, Any], address: str | None, extra: dict[str, Any]) -> Any:
    doc: dict[str, Any] = {
        "terraform": {"required_providers": {"proxmox": REQUIRED_PROVIDER}},
        **extra,
        "resource": {CONTAINER: {CONTAINER_NAME: resource}},
        "output": {
            "vm_id": {"value": Expr.of(f"{ADDRESS}.vm_id")},
            "node": {"value": Expr.of(f"{ADDRESS}.node_name")},
            # bpg's ipv4 is a map of interface name to address, read from the running container.
            "ipv4": {
                "value": ipv4_output(address, f'try({ADDRESS}.ipv4["eth0"], "")'),
            },
        },
    }
    return escape_all(doc)


def module(shape: ContainerShape) -> dict[str, Any]:
    """The Terraform JSON module of a new container, every literal string escaped."""
    return _document(_container(shape), shape.address, {})


def adopted_module(shape: AdoptedShape) -> dict[str, Any]:
    """Import an existing container and manage only what the claim took over.

    The same rules as for VMs (terraform.adopted_module); a container's CPU and memory change
    live, so there is no restart to hold back.
    """
    managed = managed_arguments(shape, ("started", "start_on_boot"))
    blocks = {"cpu": CPU_FIELDS, "memory": MEMORY_FIELDS}
    resource = adopted_resource(shape, managed, ARGUMENTS, blocks)
    imports = {"import": [{"to": ADDRESS, "id": f"{shape.node}/{shape.vmid}"}]}
    return _document(resource, shape.address, imports)
