"""Typed models of what the function reads: the claim spec, the inventory and the step input.

Everything the function gets from Kubernetes passes through these pydantic models
first, so the rest of the code works on checked, typed values. Validators put
the accepted forms into their messages; `errors.describe` adds field and value.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from function.backupspec import BackupRequest, Backups

# The kinds of the fleet: XMachines are VMs, XContainers LXC guests; both share one scheduler,
# one VMID space and one space of names.
API_VERSION = "fabric.homelab.io/v1alpha1"
MACHINE_KIND = "XMachine"
CONTAINER_KIND = "XContainer"

# --- scalar types -----------------------------------------------------------------------------

_QUANTITY = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti)?$")
_UNITS = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
MIB = 2**20
GIB = 2**30
MAX_BYTES = 2**50  # 1 PiB: anything larger is a typo, and must not overflow Proxmox's fields.

# Values a claim puts into user-data are built from these patterns; the secret marker
# (see secrets.py) can never match them, and neither can YAML or shell syntax.
DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
NAME = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
UNIX_USER = r"^[a-z_][a-z0-9_-]{0,31}$"
TF_IDENT = r"^[a-z][a-z0-9_]{0,62}$"
K8S_NAME = r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$"
SECRET_KEY_NAME = r"^[-._a-zA-Z0-9]{1,253}$"  # noqa: S105 - a pattern, not a password
# A site template's key in the inventory: roles/<name> or devices/<class> (cloudinit/library.py).
TEMPLATE_KEY = r"^(roles|devices)/[a-z0-9][a-z0-9-]{0,62}$"
# An OpenSSH public key line: type, base64 body, optional printable comment (no newlines).
SSH_KEY = (
    r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)"
    r"@openssh\.com) [A-Za-z0-9+/]+={0,3}( [ -~]{1,200})?$"
)
# Flake references Fabric accepts: git+https, git+ssh and github: with ?ref/?rev/?dir and #attr.
FLAKE_REF = (
    r"^(git\+https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~-]+)+"
    r"|git\+ssh://([A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~-]+)+"
    r"|github:[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[A-Za-z0-9_./-]+)?)"
    r"(\?(ref|rev|dir)=[A-Za-z0-9._/-]+(&(ref|rev|dir)=[A-Za-z0-9._/-]+)*)?"
    r"(#[A-Za-z0-9_][A-Za-z0-9_.-]{0,62})?$"
)


def quantity_bytes(value: Any) -> int:
    """Parse a Kubernetes binary quantity ("16Gi", "512Mi") or a byte count into bytes."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # protobuf Structs carry every number as a double
    if isinstance(value, bool) or not isinstance(value, int | str):
        msg = "accepted: a quantity such as 16Gi, 512Mi or 1Ti (suffix Ki, Mi, Gi, Ti)"
        raise ValueError(msg)  # noqa: TRY004 - pydantic wants ValueError to report it
    match = _QUANTITY.fullmatch(str(value))
    if not match:
        msg = "accepted: a quantity such as 16Gi, 512Mi or 1Ti (suffix Ki, Mi, Gi, Ti)"
        raise ValueError(msg)
    number = int(match.group(1)) * _UNITS[match.group(2)]
    if number > MAX_BYTES:
        msg = "accepted: at most 1024Ti"
        raise ValueError(msg)
    return number


def _mib(value: Any) -> int:
    number = quantity_bytes(value)
    if number % MIB or number == 0:
        msg = "accepted: a positive whole number of MiB, such as 4Gi or 1536Mi"
        raise ValueError(msg)
    return number // MIB


def _gib(value: Any) -> int:
    number = quantity_bytes(value)
    if number % GIB or number == 0:
        msg = "accepted: a positive whole number of GiB, such as 32Gi (Proxmox sizes disks in GiB)"
        raise ValueError(msg)
    return number // GIB


def _ipv4_network(value: Any) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(str(value), strict=True)
    except ValueError as exc:
        msg = f"accepted: an IPv4 network in CIDR form such as 192.168.4.0/24 ({exc})"
        raise ValueError(msg) from None


def _ipv4_address(value: Any) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError:
        msg = "accepted: an IPv4 address such as 192.168.4.1"
        raise ValueError(msg) from None


def _whole(value: Any) -> Any:
    # Structs carry numbers as doubles (4 arrives as 4.0); booleans and strings are not counts.
    if isinstance(value, bool | str):
        msg = "accepted: a whole number"
        raise ValueError(msg)  # noqa: TRY004 - pydantic reports ValueError with the field
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Whole = Annotated[int, BeforeValidator(_whole)]
MiB = Annotated[int, BeforeValidator(_mib)]
GiB = Annotated[int, BeforeValidator(_gib)]
IPv4Net = Annotated[ipaddress.IPv4Network, BeforeValidator(_ipv4_network)]
IPv4Addr = Annotated[ipaddress.IPv4Address, BeforeValidator(_ipv4_address)]
DnsLabel = Annotated[str, StringConstraints(pattern=DNS_LABEL)]
Name = Annotated[str, StringConstraints(pattern=NAME)]
K8sName = Annotated[str, StringConstraints(pattern=K8S_NAME)]
MIN_VMID, MAX_VMID = 100, 999_999_999  # what Proxmox accepts; record.py reads the same bounds
VmId = Annotated[int, Field(ge=MIN_VMID, le=MAX_VMID)]


class Strict(BaseModel):
    """Base for every model: unknown fields are errors, values are immutable after parsing."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- claim spec -------------------------------------------------------------------------------


class DeviceRequest(Strict):
    """An abstract device request: a class from the inventory and how many."""

    device_class: Name = Field(alias="class")
    count: Whole = Field(default=1, ge=1, le=16)


_STATIC = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}")


def _address(value: Any) -> str:
    text = str(value)
    if text in ("auto", "dhcp"):
        return text
    if not _STATIC.fullmatch(text):
        msg = "accepted: auto, dhcp, or a static IPv4 address with prefix such as 192.168.4.50/24"
        raise ValueError(msg)
    try:
        ipaddress.IPv4Interface(text)
    except ValueError:
        msg = "accepted: auto, dhcp, or a static IPv4 address with prefix such as 192.168.4.50/24"
        raise ValueError(msg) from None
    if "/" not in text:
        msg = "accepted: a static address needs its prefix length, such as 192.168.4.50/24"
        raise ValueError(msg)
    return text


class NetworkRequest(Strict):
    """Attach to a network from the catalog, by name."""

    name: Name
    address: Annotated[str, BeforeValidator(_address)] = "auto"


class PlacementRequest(Strict):
    """Pin a node, spread a group, choose how to score nodes."""

    node: DnsLabel | None = None
    spread_group: Name | None = Field(default=None, alias="spreadGroup")
    strategy: Literal["spread", "pack"] | None = None


class StorageRequest(Strict):
    """Which storage pool holds the disk."""

    pool: Name | None = None


class NixRequest(Strict):
    """The NixOS flake the machine switches to and keeps pulling."""

    flake_ref: Annotated[str, StringConstraints(pattern=FLAKE_REF, max_length=512)] = Field(
        alias="flakeRef"
    )


class SecretKeyRef(Strict):
    """A key of a Kubernetes Secret; Fabric passes the reference, never the value."""

    namespace: K8sName
    name: K8sName
    key: Annotated[str, StringConstraints(pattern=SECRET_KEY_NAME)]


class BootstrapSecret(Strict):
    """A secret value that templates may use, delivered by Terraform at apply time."""

    name: Annotated[str, StringConstraints(pattern=TF_IDENT)]
    secret_ref: SecretKeyRef = Field(alias="secretRef")


class Bootstrap(Strict):
    """First-boot identity: the admin user, its keys and the secrets templates need."""

    admin_user: Annotated[str, StringConstraints(pattern=UNIX_USER)] | None = Field(
        default=None, alias="adminUser"
    )
    ssh_authorized_keys: list[
        Annotated[str, StringConstraints(pattern=SSH_KEY, max_length=8192)]
    ] = Field(default_factory=list, alias="sshAuthorizedKeys", max_length=32)
    secrets: list[BootstrapSecret] = Field(default_factory=list, max_length=32)

    @field_validator("secrets")
    @classmethod
    def _unique_secret_names(cls, secrets: list[BootstrapSecret]) -> list[BootstrapSecret]:
        names = [s.name for s in secrets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            msg = f"secret names must be unique; repeated: {', '.join(dupes)}"
            raise ValueError(msg)
        return secrets


# What an adopted guest's claim may take over from its current configuration, one at a time.
MANAGEABLE = ("cpu", "memory", "powerState", "protection")


class AdoptRequest(Strict):
    """An existing guest this claim is: where it runs, what it holds, what Fabric manages.

    An adopted guest starts hands-off: Terraform imports it and changes nothing. Each field in
    `manage` is then taken over from the claim, and only those.
    """

    node: DnsLabel
    vmid: VmId
    devices: list[Name] = Field(default_factory=list, max_length=16)  # resource mappings it uses
    manage: list[Literal["cpu", "memory", "powerState", "protection"]] = Field(
        default_factory=list, max_length=len(MANAGEABLE)
    )

    @field_validator("devices", "manage")
    @classmethod
    def _listed_once(cls, items: list[str]) -> list[str]:
        if len(set(items)) != len(items):
            msg = "each entry may be listed once"
            raise ValueError(msg)
        return items


class MachineSpec(Strict):
    """The intent of a Machine claim (the API the README's "Writing a claim" shows)."""

    size_class: Name | None = Field(default=None, alias="class")
    cpu: Whole | None = Field(default=None, ge=1, le=512)
    memory: MiB | None = None
    disk: GiB | None = None
    image: Name | None = None
    devices: list[DeviceRequest] = Field(default_factory=list, max_length=16)
    roles: list[Name] = Field(default_factory=list, max_length=16)
    network: NetworkRequest | None = None
    placement: PlacementRequest = Field(default_factory=PlacementRequest)
    storage: StorageRequest = Field(default_factory=StorageRequest)
    nix: NixRequest | None = None
    bootstrap: Bootstrap = Field(default_factory=Bootstrap)
    deletion_policy: Literal["Delete", "Orphan"] | None = Field(
        default=None, alias="deletionPolicy"
    )
    power_state: Literal["Running", "Stopped"] = Field(default="Running", alias="powerState")
    protection: bool = False
    adopt: AdoptRequest | None = None
    # Changes that need a restart: OnNextBoot waits for the owner's restart, Immediate restarts.
    restart_policy: Literal["OnNextBoot", "Immediate"] = Field(
        default="OnNextBoot", alias="restartPolicy"
    )
    backup: BackupRequest | None = None  # a job of the inventory's backups (function/backups.py)

    @field_validator("roles")
    @classmethod
    def _unique_roles(cls, roles: list[str]) -> list[str]:
        if len(set(roles)) != len(roles):
            msg = "each role may be listed once"
            raise ValueError(msg)
        return roles


class MountPoint(Strict):
    """A volume Proxmox makes on a datastore and mounts into the container.

    Never a host path: bind mounts are root@pam-only.
    """

    path: Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9._/-]{0,254}$")]
    size: GiB
    pool: Name | None = None
    backup: bool = False


class ContainerFeatures(Strict):
    """LXC features an unprivileged container may be given with an API token."""

    nesting: bool = False  # systemd and Docker inside need it
    keyctl: bool = False


class ContainerBootstrap(Strict):
    """First-boot identity of a container: root's SSH keys (Proxmox writes them at creation)."""

    ssh_authorized_keys: list[
        Annotated[str, StringConstraints(pattern=SSH_KEY, max_length=8192)]
    ] = Field(default_factory=list, alias="sshAuthorizedKeys", max_length=32)


class ContainerSpec(Strict):
    """The intent of a Container claim: an LXC guest in the same fleet and VMID space."""

    size_class: Name | None = Field(default=None, alias="class")
    cpu: Whole | None = Field(default=None, ge=1, le=512)
    memory: MiB | None = None
    disk: GiB | None = None  # the root filesystem
    image: Name | None = None  # an entry of the inventory's containerImages
    devices: list[DeviceRequest] = Field(default_factory=list, max_length=16)
    network: NetworkRequest | None = None
    placement: PlacementRequest = Field(default_factory=PlacementRequest)
    storage: StorageRequest = Field(default_factory=StorageRequest)
    mount_points: list[MountPoint] = Field(default_factory=list, alias="mountPoints", max_length=8)
    unprivileged: bool = True
    features: ContainerFeatures = Field(default_factory=ContainerFeatures)
    start_on_boot: bool = Field(default=True, alias="startOnBoot")
    bootstrap: ContainerBootstrap = Field(default_factory=ContainerBootstrap)
    deletion_policy: Literal["Delete", "Orphan"] | None = Field(
        default=None, alias="deletionPolicy"
    )
    power_state: Literal["Running", "Stopped"] = Field(default="Running", alias="powerState")
    protection: bool = False
    adopt: AdoptRequest | None = None

    @field_validator("mount_points")
    @classmethod
    def _unique_paths(cls, mounts: list[MountPoint]) -> list[MountPoint]:
        paths = [m.path for m in mounts]
        if len(set(paths)) != len(paths):
            msg = "each mount path may be listed once"
            raise ValueError(msg)
        return mounts


# Fields Crossplane itself writes into a legacy XR's spec; they are not part of the intent.
CROSSPLANE_SPEC_FIELDS = frozenset(
    {
        "claimRef",
        "compositionRef",
        "compositionRevisionRef",
        "compositionRevisionSelector",
        "compositionSelector",
        "compositionUpdatePolicy",
        "compositeDeletePolicy",
        "crossplane",
        "environmentConfigRefs",
        "publishConnectionDetailsTo",
        "resourceRef",
        "resourceRefs",
        "writeConnectionSecretToRef",
    }
)


def intent(spec: dict[str, Any]) -> dict[str, Any]:
    """Strip Crossplane's own fields from an XR spec, leaving the user's intent."""
    return {k: v for k, v in spec.items() if k not in CROSSPLANE_SPEC_FIELDS}


# --- inventory --------------------------------------------------------------------------------


class Device(Strict):
    """A passthrough device on a node, known to Proxmox as a cluster resource mapping."""

    mapping: Name
    device_class: Name = Field(alias="class")
    bus: Literal["pci", "usb"]
    address: str | None = None  # PCI 0000:01:00.0 or USB bus-port; informational
    ids: list[Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{4}:[0-9a-f]{4}$")]] = Field(
        default_factory=list
    )
    model: str | None = Field(default=None, max_length=200)
    pcie: bool = True
    primary_gpu: bool = Field(default=False, alias="primaryGpu")
    # A guest Fabric does not manage already uses the device (e.g. an LXC container with the
    # Coral): Proxmox only claims passthrough devices at VM start, so it would look free.
    held_by: str | None = Field(default=None, alias="heldBy", max_length=100)


class Node(Strict):
    """A Proxmox node and what Fabric may use of it."""

    name: DnsLabel
    cpu: int = Field(ge=1, le=4096)
    memory: MiB
    reserved_memory: MiB | None = Field(default=None, alias="reservedMemory")
    storage: list[Name] = Field(min_length=1)
    default_storage: Name | None = Field(default=None, alias="defaultStorage")
    snippets_datastore: Name = Field(default="local", alias="snippetsDatastore")
    schedulable: bool = True
    reason: str | None = Field(default=None, max_length=200)
    labels: dict[str, str] = Field(default_factory=dict)
    devices: list[Device] = Field(default_factory=list)

    @model_validator(mode="after")
    def _default_storage_known(self) -> Node:
        if self.default_storage is not None and self.default_storage not in self.storage:
            msg = f"defaultStorage {self.default_storage!r} is not one of storage {self.storage}"
            raise ValueError(msg)
        return self

    @property
    def pool(self) -> str:
        """The storage pool used when a claim names none."""
        return self.default_storage or self.storage[0]

    @property
    def reserved_mib(self) -> int:
        """Memory kept for the host itself."""
        return self.reserved_memory or 0


class DeviceClass(Strict):
    """A device class and the concrete classes it also matches (gpu matches gpu-nvidia)."""

    matches: list[Name] = Field(default_factory=list)
    description: str | None = Field(default=None, max_length=200)


# A disk slot as Proxmox names it (qemu-server's valid_drive_names).
DISK_INTERFACE = r"^(scsi([0-9]|[12][0-9]|30)|virtio([0-9]|1[0-5])|sata[0-5]|ide[0-3])$"


class BootDisk(Strict):
    """The disk a template boots from: where it sits and how large it is.

    A clone keeps it; Fabric resizes that disk to the claim's size and boots from it. A disk
    slot the template lacks would give the clone a new, empty disk (bpg adds one), which the
    VM would then try to boot from: templates built by nixpkgs' proxmox-image and by bpg's
    clone guide boot from virtio0.
    """

    interface: Annotated[str, StringConstraints(pattern=DISK_INTERFACE)] = "scsi0"
    size: GiB | None = None  # the template's disk: a clone can grow, never shrink


class Image(Strict):
    """An image catalog entry: the template VMID on each node, the os family, its boot disk."""

    os: Literal["debian", "ubuntu", "nixos"]
    templates: dict[DnsLabel, VmId] = Field(min_length=1)
    min_disk: GiB | None = Field(default=None, alias="minDisk")
    boot_disk: BootDisk = Field(default_factory=BootDisk, alias="bootDisk")

    def smallest_disk(self) -> int | None:
        """The smallest disk a machine of this image may ask for (GiB), if any."""
        floors = [d for d in (self.min_disk, self.boot_disk.size) if d]
        return max(floors) if floors else None


class ContainerImage(Strict):
    """A container template catalog entry: the vztmpl volume on each node, and its os type."""

    os: Literal["debian", "ubuntu", "alpine", "nixos"]
    templates: dict[
        DnsLabel,
        Annotated[
            str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}:vztmpl/[A-Za-z0-9._+-]+$")
        ],
    ] = Field(min_length=1)


class Pool(Strict):
    """The addresses Fabric hands out on a network."""

    start: IPv4Addr
    end: IPv4Addr


class Dns(Strict):
    """Resolvers and search domain for a network."""

    servers: list[IPv4Addr] = Field(default_factory=list, max_length=4)
    domain: Annotated[str, StringConstraints(pattern=r"^[a-z0-9.-]{1,253}$")] | None = None


class Network(Strict):
    """A network catalog entry: where a NIC attaches and how it is addressed."""

    bridge: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z][a-zA-Z0-9._-]{0,14}$")]
    vlan: int | None = Field(default=None, ge=1, le=4094)
    cidr: IPv4Net | None = None
    gateway: IPv4Addr | None = None
    dns: Dns = Field(default_factory=Dns)
    pool: Pool | None = None
    reserved: list[IPv4Addr] = Field(default_factory=list)

    @model_validator(mode="after")
    def _addresses_inside(self) -> Network:
        inside = [("gateway", self.gateway)]
        if self.pool is not None:
            inside += [("pool.start", self.pool.start), ("pool.end", self.pool.end)]
            if int(self.pool.start) > int(self.pool.end):
                msg = f"pool.start {self.pool.start} is after pool.end {self.pool.end}"
                raise ValueError(msg)
        for label, address in inside:
            if address is None:
                continue
            if self.cidr is None:
                msg = f"{label} {address} needs the network's cidr"
                raise ValueError(msg)
            if address not in self.cidr:
                msg = f"{label} {address} is outside {self.cidr}"
                raise ValueError(msg)
        return self


class SizeClass(Strict):
    """A named size: the defaults a claim gets from `class`."""

    cpu: int = Field(ge=1, le=512)
    memory: MiB
    disk: GiB
    image: Name | None = None


class VmIdRange(Strict):
    """Where Fabric allocates VMIDs."""

    start: VmId
    end: VmId


class UnmanagedGuest(Strict):
    """A VM or container Fabric does not manage; it holds its VMID and its share of the node."""

    vmid: VmId
    name: str = Field(max_length=100)
    node: DnsLabel
    kind: Literal["qemu", "lxc"] = "qemu"
    cpu: int = Field(default=0, ge=0, le=4096)
    memory: MiB | None = None

    @property
    def memory_mib(self) -> int:
        """Memory this guest takes from its node."""
        return self.memory or 0


class Overcommit(Strict):
    """How far vCPUs and memory may exceed the physical node."""

    cpu: float = Field(default=4.0, ge=1.0, le=64.0)
    memory: float = Field(default=1.0, ge=1.0, le=4.0)


class Inventory(Strict):
    """The single source of truth for hardware and catalogs (the README's "The inventory")."""

    nodes: list[Node] = Field(min_length=1, max_length=1000)
    device_classes: dict[Name, DeviceClass] = Field(default_factory=dict, alias="deviceClasses")
    images: dict[Name, Image] = Field(default_factory=dict)
    container_images: dict[Name, ContainerImage] = Field(
        default_factory=dict, alias="containerImages"
    )
    networks: dict[Name, Network] = Field(default_factory=dict)
    classes: dict[Name, SizeClass] = Field(default_factory=dict)
    vmids: VmIdRange
    reserved_vmids: list[VmId] = Field(default_factory=list, alias="reservedVmids")
    unmanaged: list[UnmanagedGuest] = Field(default_factory=list)
    overcommit: Overcommit = Field(default_factory=Overcommit)
    scoring: Literal["spread", "pack"] = "spread"
    backups: Backups = Field(default_factory=Backups)  # PBS storages and jobs (backupspec.py)
    # Site templates added without rebuilding the function: "roles/<name>" or "devices/<class>"
    # mapped to template text in the same format as the built-in library (cloudinit/templates).
    templates: dict[
        Annotated[str, StringConstraints(pattern=TEMPLATE_KEY)],
        Annotated[str, StringConstraints(max_length=65536)],
    ] = Field(default_factory=dict, max_length=64)

    @model_validator(mode="after")
    def _consistent(self) -> Inventory:
        checks = (
            _unique_nodes,
            _unique_mappings,
            _known_nodes,
            _templates_on_one_node,
            _vmid_range,
            _pools_disjoint,
        )
        for check in checks:
            check(self)
        return self

    def node(self, name: str) -> Node | None:
        """The node of that name, if the inventory has it."""
        return next((n for n in self.nodes if n.name == name), None)


def _unique_nodes(inv: Inventory) -> None:
    names = [n.name for n in inv.nodes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        msg = f"node names must be unique; repeated: {', '.join(dupes)}"
        raise ValueError(msg)


def _unique_mappings(inv: Inventory) -> None:
    seen: dict[str, str] = {}
    for node in inv.nodes:
        for dev in node.devices:
            # A Proxmox resource mapping is cluster-wide: one name, one device, one node here.
            if dev.mapping in seen:
                msg = (
                    f"device mapping {dev.mapping!r} appears on {seen[dev.mapping]} and "
                    f"{node.name}; mapping names must be unique"
                )
                raise ValueError(msg)
            seen[dev.mapping] = node.name


def _known_nodes(inv: Inventory) -> None:
    known = {n.name for n in inv.nodes}
    for image_name, image in inv.images.items():
        for node in sorted(set(image.templates) - known):
            msg = f"images.{image_name}.templates names node {node!r}, not in nodes"
            raise ValueError(msg)
    for image_name, ct_image in inv.container_images.items():
        for node in sorted(set(ct_image.templates) - known):
            msg = f"containerImages.{image_name}.templates names node {node!r}, not in nodes"
            raise ValueError(msg)
    for guest in inv.unmanaged:
        if guest.node not in known:
            msg = f"unmanaged guest {guest.vmid} ({guest.name}) is on unknown node {guest.node!r}"
            raise ValueError(msg)


def _templates_on_one_node(inv: Inventory) -> None:
    # A template is a VM: it lives on one node. The same VMID listed for several nodes is a
    # template on shared storage, which bpg clones onto another node only through
    # clone.node_name; Fabric clones each node's own template, on that node.
    where: dict[int, tuple[str, str]] = {}
    for image_name, image in sorted(inv.images.items()):
        for node, vmid in sorted(image.templates.items()):
            first = where.setdefault(vmid, (image_name, node))
            if first[1] != node:
                msg = (
                    f"images.{image_name}.templates.{node}: template VMID {vmid} is also given "
                    f"for node {first[1]} (images.{first[0]}); a template lives on one node, "
                    "so accepted: each node's own template VMID"
                )
                raise ValueError(msg)


def _vmid_range(inv: Inventory) -> None:
    if inv.vmids.start > inv.vmids.end:
        msg = f"vmids.start {inv.vmids.start} is after vmids.end {inv.vmids.end}"
        raise ValueError(msg)
    held = set(inv.reserved_vmids) | {g.vmid for g in inv.unmanaged}
    free = (
        inv.vmids.end
        - inv.vmids.start
        + 1
        - sum(1 for v in held if inv.vmids.start <= v <= inv.vmids.end)
    )
    if free <= 0:
        msg = f"vmids {inv.vmids.start}-{inv.vmids.end} has no ID left after reserved IDs"
        raise ValueError(msg)
    templates = {vmid for image in inv.images.values() for vmid in image.templates.values()}
    clash = sorted(v for v in templates if inv.vmids.start <= v <= inv.vmids.end)
    if clash:
        msg = f"template VMIDs {clash} lie inside vmids {inv.vmids.start}-{inv.vmids.end}"
        raise ValueError(msg)


def _pools_disjoint(inv: Inventory) -> None:
    ranges = sorted(
        (int(net.pool.start), int(net.pool.end), name)
        for name, net in inv.networks.items()
        if net.pool is not None
    )
    for (_, end_a, name_a), (start_b, _, name_b) in itertools.pairwise(ranges):
        if start_b <= end_a:
            msg = f"address pools of networks {name_a} and {name_b} overlap"
            raise ValueError(msg)


# --- function input ---------------------------------------------------------------------------


class InventorySource(Strict):
    """Where the inventory ConfigMap is: label selector (Crossplane 1.x) plus namespace."""

    match_labels: dict[str, str] = Field(
        default_factory=lambda: {"fabric.homelab.io/inventory": "homelab"}, alias="matchLabels"
    )
    namespace: K8sName | None = None
    key: Annotated[str, StringConstraints(pattern=SECRET_KEY_NAME)] = "inventory.yaml"


class Defaults(Strict):
    """Site defaults for claims that leave a field unset."""

    admin_user: Annotated[str, StringConstraints(pattern=UNIX_USER)] = Field(
        default="admin", alias="adminUser"
    )
    timezone: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_+/-]{1,64}$")] = "UTC"
    cpu: int = Field(default=2, ge=1, le=512)
    memory: MiB = 2048
    disk: GiB = 32


def _api_group_version(value: str) -> str:
    if value != API_VERSION:
        msg = f"accepted: {API_VERSION}"
        raise ValueError(msg)
    return value


class FunctionInput(Strict):
    """The Composition step's `input` (kind Input)."""

    api_version: Annotated[str, AfterValidator(_api_group_version)] = Field(
        default=API_VERSION, alias="apiVersion"
    )
    kind: Literal["Input"] = "Input"
    metadata: dict[str, Any] = Field(default_factory=dict)
    inventory: InventorySource = Field(default_factory=InventorySource)
    provider_config_name: K8sName = Field(default="proxmox", alias="providerConfigName")
    deletion_policy: Literal["Delete", "Orphan"] = Field(default="Delete", alias="deletionPolicy")
    defaults: Defaults = Field(default_factory=Defaults)
