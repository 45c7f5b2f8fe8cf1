"""What a machine needs, resolved against the inventory's catalogs.

A claim names things (a size class, an image, device classes, a network); this
module turns those names into concrete numbers and catalog entries, and refuses
names the inventory does not know, listing the ones it does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from function import backupspec, cloudinit
from function.errors import FabricError, show_value
from function.model import (
    AdoptRequest,
    ContainerImage,
    ContainerSpec,
    Defaults,
    Image,
    Inventory,
    MachineSpec,
    Network,
    SizeClass,
)

Spec = MachineSpec | ContainerSpec


@dataclass(frozen=True)
class DeviceDemand:
    """A request for `count` devices whose class is one of `classes`."""

    requested: str
    classes: frozenset[str]
    count: int


@dataclass(frozen=True)
class Demand:
    """A machine's resolved needs: everything placement and rendering use from the claim."""

    cpu: int
    memory_mib: int
    disk_gib: int  # 0: not stated (an adopted guest keeps its disks)
    image_name: str | None  # None for an adopted guest: Fabric never clones it
    image: Image | ContainerImage | None
    devices: tuple[DeviceDemand, ...]
    network_name: str | None
    network: Network | None
    address: str  # auto | dhcp | a static CIDR address
    pool: str | None
    spread_group: str | None
    pin: str | None
    strategy: str
    adopt: AdoptRequest | None = None


def _unknown(*, field: str, value: str, known: list[str]) -> FabricError:
    accepted = ", ".join(sorted(known)) or "none defined in the inventory"
    msg = f"{field}: {show_value(value)} is not known; accepted: {accepted}"
    return FabricError(msg)


def device_classes(inv: Inventory, requested: str) -> frozenset[str]:
    """The concrete device classes a requested class matches (gpu -> gpu-nvidia, gpu-amd)."""
    entry = inv.device_classes.get(requested)
    matches = set(entry.matches) if entry else set()
    return frozenset({requested} | matches)


def _known_device_classes(inv: Inventory) -> set[str]:
    on_nodes = {d.device_class for n in inv.nodes for d in n.devices}
    return on_nodes | set(inv.device_classes)


def _devices(spec: Spec, inv: Inventory) -> tuple[DeviceDemand, ...]:
    if not spec.devices:
        return ()  # nothing to check, and listing the known classes scans every node
    known = _known_device_classes(inv)
    demands = []
    for i, req in enumerate(spec.devices):
        if req.device_class not in known:
            raise _unknown(
                field=f"spec.devices[{i}].class", value=req.device_class, known=list(known)
            )
        classes = device_classes(inv, req.device_class)
        demands.append(DeviceDemand(req.device_class, classes, req.count))
    return tuple(demands)


def _image(spec: MachineSpec, inv: Inventory, from_class: str | None) -> tuple[str, Image]:
    name = spec.image or from_class
    if name is None:
        msg = "spec.image: is required (or a class that sets image); accepted: " + ", ".join(
            sorted(inv.images)
        )
        raise FabricError(msg)
    if name not in inv.images:
        raise _unknown(field="spec.image", value=name, known=list(inv.images))
    return name, inv.images[name]


def _check_static(address: str, name: str, network: Network) -> None:
    iface = ipaddress.IPv4Interface(address)
    if network.cidr is None:
        msg = (
            f"spec.network.address: {address!r} is static but network {name} has no cidr; use dhcp"
        )
        raise FabricError(msg)
    if iface.network != network.cidr:
        msg = (
            f"spec.network.address: {address!r} is outside network {name} ({network.cidr}); "
            f"accepted: an address in {network.cidr} with prefix /{network.cidr.prefixlen}"
        )
        raise FabricError(msg)
    ip = iface.ip
    taken = {network.cidr.network_address, network.cidr.broadcast_address, network.gateway}
    if ip in taken or ip in network.reserved:
        msg = (
            f"spec.network.address: {address!r} is the network, broadcast, gateway or a reserved "
            f"address of network {name}; accepted: a free host address in {network.cidr}"
        )
        raise FabricError(msg)


def _network(spec: Spec, inv: Inventory) -> tuple[str | None, Network | None, str]:
    if spec.network is None:
        return None, None, "dhcp"
    name, address = spec.network.name, spec.network.address
    if name not in inv.networks:
        raise _unknown(field="spec.network.name", value=name, known=list(inv.networks))
    network = inv.networks[name]
    if address == "auto" and network.pool is None:
        msg = (
            f"spec.network.address: 'auto' needs an address pool, and network {name} has none; "
            "accepted: dhcp" + (" or a static address" if network.cidr else "")
        )
        raise FabricError(msg)
    if address not in ("auto", "dhcp"):
        _check_static(address, name, network)
    return name, network, address


def resolve(spec: Spec, inv: Inventory, defaults: Defaults) -> Demand:
    """Resolve a claim spec against the inventory; raise FabricError naming the bad field."""
    backupspec.check_job(spec, inv)
    if isinstance(spec, ContainerSpec):
        if spec.adopt is not None:
            return _adopted(spec, spec.adopt, inv, _CONTAINER_CREATION_FIELDS)
        return _container(spec, inv, defaults)
    if spec.adopt is not None:
        return _adopted(spec, spec.adopt, inv, _CREATION_FIELDS)
    size = _size_class(spec, inv)
    image_name, image = _image(spec, inv, size.image if size else None)
    disk = spec.disk or (size.disk if size else defaults.disk)
    smallest = image.smallest_disk()
    if smallest and disk < smallest:
        # Refused before any clone: bpg would fail after cloning and taint the VM.
        msg = (
            f"spec.disk: {disk}Gi is smaller than image {image_name}'s disk; "
            f"accepted: {smallest}Gi or more"
        )
        raise FabricError(msg)
    if spec.nix is not None and image.os != "nixos":
        msg = (
            f"spec.nix: a flake needs a NixOS image, and {image_name} is "
            f"{image.os}; accepted: an image with os nixos"
        )
        raise FabricError(msg)
    cloudinit.check_roles(spec.roles, image.os, inv.templates)
    return Demand(
        cpu=spec.cpu or (size.cpu if size else defaults.cpu),
        memory_mib=spec.memory or (size.memory if size else defaults.memory),
        disk_gib=disk,
        image_name=image_name,
        image=image,
        devices=_devices(spec, inv),
        **_where(spec, inv),
    )


def _size_class(spec: Spec, inv: Inventory) -> SizeClass | None:
    if spec.size_class is None:
        return None
    if spec.size_class not in inv.classes:
        raise _unknown(field="spec.class", value=spec.size_class, known=list(inv.classes))
    return inv.classes[spec.size_class]


def _where(spec: Spec, inv: Inventory) -> dict[str, Any]:
    """The Demand fields of a new guest that say where it may go and how it is attached."""
    network_name, network, address = _network(spec, inv)
    return {
        "network_name": network_name,
        "network": network,
        "address": address,
        "pool": spec.storage.pool,
        "spread_group": spec.placement.spread_group,
        "pin": spec.placement.node,
        "strategy": spec.placement.strategy or inv.scoring,
    }


def check_secret_namespaces(spec: Spec, home: str | None) -> None:
    """Refuse a bootstrap Secret outside the machine's own namespace.

    provider-terraform reads any Secret a Workspace points at, so without this a claim could
    pull another team's credentials into its user-data. `home` is the claim's namespace (or the
    namespaced XR's); None for a cluster-scoped XR without a claim, written by an administrator.
    """
    if home is None or isinstance(spec, ContainerSpec):
        return  # a container's bootstrap has no secrets
    for i, secret in enumerate(spec.bootstrap.secrets):
        if secret.secret_ref.namespace != home:
            msg = (
                f"spec.bootstrap.secrets[{i}].secretRef.namespace: "
                f"{secret.secret_ref.namespace!r} is not the machine's namespace; "
                f"accepted: {home!r}"
            )
            raise FabricError(msg)


# Claim fields that describe how Fabric creates a guest: an adopted guest exists already, so
# each would either be ignored silently or, worse, ask for a clone. Refused instead.
_CREATION_FIELDS: tuple[tuple[str, Callable[[Any], bool]], ...] = (
    ("class", lambda s: s.size_class is not None),
    ("image", lambda s: s.image is not None),
    ("devices", lambda s: bool(s.devices)),
    ("roles", lambda s: bool(s.roles)),
    ("nix", lambda s: s.nix is not None),
    ("bootstrap", lambda s: s.bootstrap != type(s.bootstrap)()),
    ("storage", lambda s: s.storage != type(s.storage)()),
    ("placement", lambda s: s.placement != type(s.placement)()),
)


_CONTAINER_CREATION_FIELDS: tuple[tuple[str, Callable[[Any], bool]], ...] = (
    ("class", lambda s: s.size_class is not None),
    ("image", lambda s: s.image is not None),
    ("devices", lambda s: bool(s.devices)),
    ("mountPoints", lambda s: bool(s.mount_points)),
    ("features", lambda s: s.features != type(s.features)()),
    ("bootstrap", lambda s: s.bootstrap != type(s.bootstrap)()),
    ("storage", lambda s: s.storage != type(s.storage)()),
    ("placement", lambda s: s.placement != type(s.placement)()),
)


def _adopted(
    spec: Spec,
    adopt: AdoptRequest,
    inv: Inventory,
    creation_fields: tuple[tuple[str, Callable[[Any], bool]], ...],
) -> Demand:
    """Admission of an existing guest: where it is and what it holds, as the claim states."""
    for name, given in creation_fields:
        if given(spec):
            msg = (
                f"spec.{name}: an adopted guest (spec.adopt) is not created by Fabric, so it "
                f"takes no {name}; accepted: leave spec.{name} out (devices it already uses go "
                "in spec.adopt.devices)"
            )
            raise FabricError(msg)
    for name, value in (("cpu", spec.cpu), ("memory", spec.memory)):
        if value is None:
            msg = (
                f"spec.{name}: is required for an adopted guest; accepted: what the guest has "
                "now (fabric-discover writes it), which counts on its node"
            )
            raise FabricError(msg)
    node = inv.node(adopt.node)
    if node is None:
        known = ", ".join(n.name for n in inv.nodes)
        msg = f"spec.adopt.node: {adopt.node!r} is not a node; accepted: {known}"
        raise FabricError(msg)
    on_node = {d.mapping for d in node.devices}
    for i, mapping in enumerate(adopt.devices):
        if mapping not in on_node:
            accepted = ", ".join(sorted(on_node)) or "none (the inventory lists no device there)"
            msg = (
                f"spec.adopt.devices[{i}]: {mapping!r} is not a device mapping of node "
                f"{adopt.node}; accepted: {accepted}"
            )
            raise FabricError(msg)
    _check_template(adopt.vmid, inv)
    network_name, network, address = _network(spec, inv)
    if address == "auto":
        msg = (
            "spec.network.address: 'auto' would give the adopted guest a new address; accepted: "
            "the address it has (a static address with prefix) or dhcp"
        )
        raise FabricError(msg)
    return Demand(
        cpu=spec.cpu or 0,
        memory_mib=spec.memory or 0,
        disk_gib=spec.disk or 0,
        image_name=None,
        image=None,
        devices=(),
        network_name=network_name,
        network=network,
        address=address,
        pool=None,
        spread_group=None,
        pin=adopt.node,
        strategy=inv.scoring,
        adopt=adopt,
    )


def _check_template(vmid: int, inv: Inventory) -> None:
    for image_name, image in sorted(inv.images.items()):
        if vmid in image.templates.values():
            msg = (
                f"spec.adopt.vmid: {vmid} is a template of image {image_name}; accepted: the "
                "VMID of a guest"
            )
            raise FabricError(msg)
    if vmid in inv.reserved_vmids:
        msg = f"spec.adopt.vmid: {vmid} is reserved in the inventory; accepted: a guest's VMID"
        raise FabricError(msg)


def _container_image(spec: ContainerSpec, inv: Inventory) -> tuple[str, ContainerImage]:
    if spec.image is None:
        msg = "spec.image: is required for a container; accepted: " + (
            ", ".join(sorted(inv.container_images)) or "none (the inventory has no containerImages)"
        )
        raise FabricError(msg)
    if spec.image not in inv.container_images:
        raise _unknown(field="spec.image", value=spec.image, known=list(inv.container_images))
    return spec.image, inv.container_images[spec.image]


def _container(spec: ContainerSpec, inv: Inventory, defaults: Defaults) -> Demand:
    """Resolve a new container: its size, template, network and volumes."""
    if spec.devices:
        # Proxmox lets only root@pam write a container's devN entries, whatever the API token
        # may do; a mapping (what VMs use) does not exist for containers.
        msg = (
            "spec.devices: passing a device into a container is root@pam-only in Proxmox "
            "(its devN entries), and Fabric applies with an API token; accepted: no devices "
            "(a Machine gets devices through resource mappings)"
        )
        raise FabricError(msg)
    size = _size_class(spec, inv)
    image_name, image = _container_image(spec, inv)
    return Demand(
        cpu=spec.cpu or (size.cpu if size else defaults.cpu),
        memory_mib=spec.memory or (size.memory if size else defaults.memory),
        disk_gib=spec.disk or (size.disk if size else defaults.disk),
        image_name=image_name,
        image=image,
        devices=(),
        **_where(spec, inv),
    )
