"""What the user-data composer knows about a machine: plain, checked values only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DeviceFact:
    """A device the machine holds, as the guest should know it."""

    device_class: str  # the concrete class of the device, e.g. gpu-nvidia, coral-tpu
    mapping: str  # the Proxmox resource mapping name
    bus: str  # pci | usb
    ids: tuple[str, ...] = ()  # vendor:product ids, e.g. ("1a6e:089a",)
    model: str | None = None


@dataclass(frozen=True)
class NetworkFact:
    """The machine's network as the guest should know it."""

    name: str
    address: str  # "dhcp" or a static CIDR address such as 10.40.0.100/24
    gateway: str | None = None
    dns_servers: tuple[str, ...] = ()
    domain: str | None = None
    vlan: int | None = None


@dataclass(frozen=True)
class GuestFacts:
    """Everything user-data may depend on. Every string here was validated by the models."""

    machine: str  # namespace/name of the claim (or the XR name), for comments and facts
    hostname: str  # a DNS label
    admin_user: str
    ssh_keys: tuple[str, ...]
    timezone: str
    os_family: str  # debian | ubuntu | nixos
    roles: tuple[str, ...] = ()
    devices: tuple[DeviceFact, ...] = ()
    network: NetworkFact | None = None
    secrets: tuple[str, ...] = ()  # names of declared bootstrap secrets (values never known)
    flake_ref: str | None = None
    # Site templates from the inventory: "roles/<name>" / "devices/<class>" -> template text.
    site_templates: Mapping[str, str] = field(default_factory=dict)
