"""Read a Proxmox VE cluster through its API into plain, typed records.

Only GET requests are made, with an API token. Nothing here knows about Fabric's inventory:
the records say what Proxmox reports, normalised (ids in lowercase hex without `0x`, PCI
addresses with their domain, numbers as ints), and `merge` decides what that means.

Facts about the API that shape this module:

- Lists come in hash order (`/cluster/mapping/*` iterates a Perl hash), so everything is sorted.
- Numbers are not always numbers: container lists have reported `vmid` as a string, an LXC's
  `cpus` may be a fractional `cpulimit`.
- Per-node endpoints are proxied to that node, so an offline node answers 595; its facts come
  from `/nodes` and `/cluster/resources` instead, which the cluster keeps for every node.
- `/nodes/{node}/hardware/*` needed `Sys.Modify` on `/` in some PVE 8 releases, more than an
  auditor token holds; hardware listings are therefore read only where a mapping needs them,
  and a 403 there degrades to the mapping's own data with a warning.
- A template's boot disk is only in its configuration (`/nodes/{node}/qemu/{vmid}/config`), read
  for VM templates alone and interpreted the way qemu-server does (`boot: order=...`, or the
  legacy `boot: c` with `bootdisk: scsi0`); CD-ROM and cloud-init drives are not boot disks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import requests
from proxmoxer.backends import https
from proxmoxer.core import ProxmoxResource, ResourceException

from fabric_discover import DiscoveryError

T = TypeVar("T", "PciFunction", "UsbDevice")
Bus = Literal["pci", "usb"]
Kind = Literal["qemu", "lxc"]

# Statuses proxmoxer borrows from AnyEvent::HTTP: the node behind a proxied call is unreachable.
_UNREACHABLE = range(595, 600)
_PROPERTY = re.compile(r'\s*([A-Za-z0-9_-]+)=("(?:[^"\\]|\\.)*"|[^,]*)\s*(?:,|$)')
_CAUSE = re.compile(r"Caused by (.*)\)$")
# Disk slots a VM can boot from: qemu-server's valid_drive_names_for_boot (no efidisk0, tpmstate0).
_DISK_SLOT = re.compile(r"^(ide[0-3]|scsi([0-9]|[12][0-9]|30)|virtio([0-9]|1[0-5])|sata[0-5])$")
# Cloud-init drives, as qemu-server's drive_is_cloudinit sees them: `local-lvm:vm-9000-cloudinit`,
# `local:9000/vm-9000-cloudinit.qcow2`.
_CLOUDINIT = re.compile(r"[:/](?:vm-\d+-)?cloudinit(?:\.(?:raw|qcow2|vmdk))?$")
# pve-common's parse_size: a disk size such as 8G, 2252M, 1.5T, 8388608K or plain bytes.
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT])?$")
_SIZE_UNITS = {None: 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# qemu-server's valid_drive_names order, which it also uses to pick a disk when nothing says.
_SLOT_ORDER = {"ide": 0, "scsi": 1, "virtio": 2, "sata": 3}
_CONFIG_NOT_READ = "its configuration was not read"


# --- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """Where the API is and how to talk to it."""

    host: str
    port: int = 8006
    protocol: Literal["https", "http"] = "https"
    verify_ssl: bool = True
    timeout: float = 10.0

    @property
    def where(self) -> str:
        """`host:port` for messages."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Token:
    """An API token: `user@realm!name=value`. The value never appears in repr or messages."""

    user: str
    name: str
    value: str = field(repr=False)


@dataclass(frozen=True)
class Storage:
    """A storage as one node sees it, with the content types it accepts."""

    name: str
    content: frozenset[str]
    shared: bool = False


@dataclass(frozen=True, order=True)
class PciFunction:
    """One PCI function from `/nodes/{node}/hardware/pci`."""

    address: str  # 0000:01:00.0
    vendor: str  # 10de
    device: str  # 2484
    class_code: str  # 030000: base class 03 is a display controller
    vendor_name: str = ""
    device_name: str = ""

    @property
    def pci_id(self) -> str:
        """`vendor:device`, as mappings and the inventory spell it."""
        return f"{self.vendor}:{self.device}"


@dataclass(frozen=True, order=True)
class UsbDevice:
    """One USB device from `/nodes/{node}/hardware/usb`."""

    path: str  # bus-port such as 2-1; empty for root hubs
    vendor: str
    product_id: str
    manufacturer: str = ""
    product: str = ""
    devnode: str = ""  # 002/002: bus and device number under /dev/bus/usb (changes on replug)

    @property
    def usb_id(self) -> str:
        """`vendor:product`, as mappings and the inventory spell it."""
        return f"{self.vendor}:{self.product_id}"


@dataclass(frozen=True)
class NodeInfo:
    """A cluster node. Hardware lists are None when they were not (or could not be) read."""

    name: str
    online: bool
    cpu: int | None
    memory_bytes: int | None
    storage: tuple[Storage, ...] = ()
    pci: tuple[PciFunction, ...] | None = None
    usb: tuple[UsbDevice, ...] | None = None


@dataclass(frozen=True)
class Drive:
    """A VM template's boot disk: its slot (`virtio0`) and size, when the config states one."""

    slot: str
    size_bytes: int | None = None


@dataclass(frozen=True)
class Guest:
    """A VM or container, template or not.

    For VM templates, `boot_disk` is read from the configuration; when it is None,
    `boot_problem` says why (the node is offline, the token may not read it, no disk boots).
    """

    vmid: int
    name: str
    node: str
    kind: Kind
    cpu: int
    memory_bytes: int
    tags: frozenset[str] = frozenset()
    template: bool = False
    boot_disk: Drive | None = None
    boot_problem: str = _CONFIG_NOT_READ


@dataclass(frozen=True)
class MapEntry:
    """One node's entry of a resource mapping (a `map` property string, parsed)."""

    node: str
    path: str | None
    device_id: str | None


@dataclass(frozen=True)
class Mapping:
    """A cluster resource mapping (`/cluster/mapping/pci` or `/cluster/mapping/usb`)."""

    name: str
    bus: Bus
    description: str
    entries: tuple[MapEntry, ...]


@dataclass(frozen=True)
class Cluster:
    """Everything discovery read, sorted, plus what it had to warn about while reading."""

    version: str
    nodes: tuple[NodeInfo, ...]
    guests: tuple[Guest, ...]
    mappings: tuple[Mapping, ...]
    warnings: tuple[str, ...] = ()


# --- the API client ------------------------------------------------------------------------------


class ApiError(DiscoveryError):
    """A GET that failed; `status` is the HTTP status, 0 when there was no answer."""

    def __init__(self, path: str, status: int, detail: str) -> None:
        """Name the path and say what failed."""
        super().__init__(f"GET {path}: {detail}")
        self.status = status


class Api:
    """GET requests against one Proxmox VE API; every failure names the path."""

    def __init__(self, endpoint: Endpoint, token: Token) -> None:
        """Prepare a token-authenticated session (nothing is sent yet)."""
        backend = https.Backend(
            host=endpoint.host,
            port=endpoint.port,
            user=token.user,
            token_name=token.name,
            token_value=token.value,
            verify_ssl=endpoint.verify_ssl,
            timeout=endpoint.timeout,
        )
        base = backend.get_base_url()
        if endpoint.protocol == "http":
            # proxmoxer always builds an https:// URL; the session and its token header work the
            # same over plain HTTP, which only a loopback test server speaks.
            base = "http://" + base.removeprefix("https://")
        self._root = ProxmoxResource(
            base_url=base, session=backend.get_session(), serializer=backend.get_serializer()
        )
        self._endpoint = endpoint
        self._secret = token.value

    def get(self, path: str) -> Any:
        """GET an API path such as `/nodes/pve/status` and return its `data`."""
        try:
            data = self._root(path.strip("/")).get()
        except ResourceException as exc:
            raise ApiError(path, exc.status_code, self._scrub(_explain(exc))) from None
        except requests.exceptions.SSLError as exc:
            detail = f"TLS with {self._endpoint.where} failed: {_cause(exc)}"
            if self._endpoint.verify_ssl:
                detail += " (for a self-signed certificate, use --no-verify-ssl)"
            raise ApiError(path, 0, self._scrub(detail)) from None
        except requests.exceptions.Timeout:
            detail = f"no answer from {self._endpoint.where} in {self._endpoint.timeout:g}s"
            raise ApiError(path, 0, detail) from None
        except requests.RequestException as exc:
            detail = f"cannot reach {self._endpoint.where}: {_cause(exc)}"
            raise ApiError(path, 0, self._scrub(detail)) from None
        except KeyError:
            # proxmoxer indexes the JSON body with ["data"] and lets the KeyError escape.
            detail = "the answer has no 'data' field; is this a Proxmox VE API endpoint?"
            raise ApiError(path, 0, detail) from None
        if isinstance(data, dict) and isinstance(data.get("errors"), bytes):
            # proxmoxer's way of saying the body was not JSON (a login page, a proxy error).
            raise ApiError(path, 0, "the answer is not JSON; is this a Proxmox VE API endpoint?")
        return data

    def _scrub(self, text: str) -> str:
        # Nothing we format includes the token, but a server may echo headers back.
        return text.replace(self._secret, "***") if self._secret else text


def _explain(exc: ResourceException) -> str:
    status = exc.status_code
    text = str(exc)
    if status == 401:
        return (
            f"{text}; the API token was refused: check --user, --token-name and --token-value "
            "(or PROXMOX_VE_API_TOKEN=user@realm!tokenid=secret)"
        )
    if status == 403:
        return (
            f"{text}; the token lacks a privilege here: grant it the PVEAuditor role on / "
            "(a token with privilege separation needs the role itself)"
        )
    if status in _UNREACHABLE:
        return f"{text}; the node that serves this path is unreachable"
    return text


def _cause(exc: Exception) -> str:
    # requests nests the useful part deep inside "...(Caused by SSLError(...))".
    text = str(exc)
    match = _CAUSE.search(text)
    return match.group(1) if match else text


# --- payload helpers -----------------------------------------------------------------------------


def _items(payload: Any, path: str) -> list[dict[str, Any]]:
    if not isinstance(payload, list) or not all(isinstance(i, dict) for i in payload):
        msg = f"GET {path}: expected a list of objects, got {type(payload).__name__}"
        raise DiscoveryError(msg)
    return payload


def _object(payload: Any, path: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        msg = f"GET {path}: expected an object, got {type(payload).__name__}"
        raise DiscoveryError(msg)
    return payload


def _text(item: dict[str, Any], key: str, path: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        msg = f"GET {path}: an entry has no {key!r} (got {value!r})"
        raise DiscoveryError(msg)
    return value


def _number(item: dict[str, Any], key: str, path: str) -> int | None:
    """Read a count as an int, rounding up: an LXC's `cpus` may be a cpulimit such as 1.5."""
    value = item.get(key)
    if value is None or value == "":
        return None
    try:
        return math.ceil(float(value))
    except (TypeError, ValueError):
        msg = f"GET {path}: {key} {value!r} is not a number"
        raise DiscoveryError(msg) from None


def _flag(value: Any) -> bool:
    return str(value).lower() in ("1", "true")


def _hex(value: Any) -> str:
    return str(value or "").lower().removeprefix("0x")


def _split(value: Any, separators: str) -> frozenset[str]:
    return frozenset(part for part in re.split(f"[{separators}]", str(value or "")) if part)


def parse_property_string(text: str) -> dict[str, str]:
    """Parse a Proxmox property string such as `node=pve,path=0000:01:00,id=10de:2484`.

    Values that contain commas are double-quoted with backslash escapes, as Proxmox writes them.

    Raises:
        ValueError: the text is not a list of key=value pairs.
    """
    values: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _PROPERTY.match(text, pos)
        if match is None or match.end() == pos:
            msg = f"cannot parse {text[pos:]!r} as key=value"
            raise ValueError(msg)
        key, raw = match.groups()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        values[key] = raw
        pos = match.end()
    return values


def _with_default_key(text: str, default_key: str) -> dict[str, str]:
    """Parse a property string whose first value may come without its key (`local:iso/x,...`)."""
    head, _, rest = text.partition(",")
    if "=" in head:
        return parse_property_string(text)
    values = parse_property_string(rest)
    values[default_key] = head.strip()
    return values


def parse_disk_size(text: str) -> int | None:
    """Bytes of a drive's `size=` (`8G`, `2252M`, `1.5T`, `8388608K`, bytes); None if invalid."""
    match = _SIZE.match(text.strip())
    if match is None:
        return None
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def _bootable(slot: str, config: dict[str, Any]) -> tuple[bool, int | None]:
    """Whether a slot holds a disk to boot from (no CD-ROM, no cloud-init), and its size."""
    text = config.get(slot)
    if not _DISK_SLOT.match(slot) or not isinstance(text, str) or not text:
        return False, None
    try:
        drive = _with_default_key(text, "file")
    except ValueError:
        return False, None
    volume = drive.get("file") or drive.get("volume") or ""
    if drive.get("media") == "cdrom" or _CLOUDINIT.search(volume):
        return False, None
    size = drive.get("size")
    return True, (parse_disk_size(size) or None) if size else None


def _slot_order(slot: str) -> tuple[int, int]:
    bus = slot.rstrip("0123456789")  # only called on slots that match _DISK_SLOT
    return _SLOT_ORDER[bus], int(slot[len(bus) :])


def boot_disk(config: dict[str, Any]) -> Drive:
    """The disk a VM boots from, by its configuration, the way qemu-server reads it.

    `boot: order=virtio0;ide2;net0` lists devices: the first that is a disk (not a CD-ROM or
    cloud-init drive, not a NIC or passed-through device) boots. Older configurations say
    `boot: c` or `cdn` (or no `boot`) with `bootdisk: scsi0`; with neither `order` nor
    `bootdisk`, a VM with a single disk boots from it.

    Raises:
        ValueError: no disk boots, or which one does is ambiguous; the message says why.
    """
    boot = config.get("boot")
    try:
        settings = _with_default_key(str(boot), "legacy") if boot else {}
    except ValueError:
        msg = f"boot {boot!r} is not a Proxmox boot setting"
        raise ValueError(msg) from None
    order = settings.get("order")
    if order is not None and not settings.get("legacy"):
        for slot in re.split(r"[;\s]+", order.strip()):
            bootable, size = _bootable(slot, config)
            if bootable:
                return Drive(slot, size)
        msg = f"boot order={order} names no disk (only CD-ROM, cloud-init or network devices)"
        raise ValueError(msg)
    named = config.get("bootdisk")
    if named:
        bootable, size = _bootable(str(named), config)
        if bootable:
            return Drive(str(named), size)
        msg = f"bootdisk {named} is not a disk of this VM"
        raise ValueError(msg)
    disks = sorted((slot for slot in config if _bootable(slot, config)[0]), key=_slot_order)
    if len(disks) == 1:
        return Drive(disks[0], _bootable(disks[0], config)[1])
    if not disks:
        msg = "the VM has no disk"
        raise ValueError(msg)
    msg = f"neither boot order nor bootdisk chooses among its disks ({', '.join(disks)})"
    raise ValueError(msg)


# --- reading -------------------------------------------------------------------------------------


def read_cluster(api: Api) -> Cluster:
    """Read nodes, storage, guests and resource mappings of the whole cluster."""
    warnings: list[str] = []
    version = str(_object(api.get("/version"), "/version").get("version", ""))
    listed = _items(api.get("/nodes"), "/nodes")
    if not listed:
        msg = "GET /nodes: no nodes visible; grant the token the PVEAuditor role on /"
        raise DiscoveryError(msg)
    resources = _items(api.get("/cluster/resources"), "/cluster/resources")
    mappings = _read_mappings(api, version, warnings)
    nodes: list[NodeInfo] = []
    guests: dict[int, Guest] = {}
    for item in sorted(listed, key=lambda i: str(i.get("node"))):
        node, on_node = _read_node(api, item, resources, mappings, warnings)
        nodes.append(node)
        for guest in on_node:
            guests.setdefault(guest.vmid, guest)
    return Cluster(
        version=version,
        nodes=tuple(nodes),
        guests=tuple(guests[v] for v in sorted(guests)),
        mappings=mappings,
        warnings=tuple(warnings),
    )


def _read_mappings(api: Api, version: str, warnings: list[str]) -> tuple[Mapping, ...]:
    major = version.split(".", 1)[0]
    if major.isdigit() and int(major) < 8:
        warnings.append(
            f"Proxmox VE {version} has no resource mappings (added in 8.0): no devices discovered"
        )
        return ()
    found: list[Mapping] = []
    buses: tuple[Bus, ...] = ("pci", "usb")
    for bus in buses:
        path = f"/cluster/mapping/{bus}"
        found.extend(_mapping(item, bus, path) for item in _items(api.get(path), path))
    return tuple(sorted(found, key=lambda m: (m.name, m.bus)))


def _mapping(item: dict[str, Any], bus: Bus, path: str) -> Mapping:
    name = _text(item, "id", path)
    entries = []
    for text in item.get("map") or []:
        try:
            props = parse_property_string(str(text))
        except ValueError as exc:
            msg = f"GET {path}: mapping {name}: map entry {text!r}: {exc}"
            raise DiscoveryError(msg) from None
        if not props.get("node"):
            msg = f"GET {path}: mapping {name}: map entry {text!r} names no node"
            raise DiscoveryError(msg)
        device_id = props.get("id")
        entries.append(
            MapEntry(
                node=props["node"],
                path=props.get("path") or None,
                device_id=device_id.lower() if device_id else None,
            )
        )
    description = str(item.get("description") or "")
    return Mapping(name=name, bus=bus, description=description, entries=tuple(entries))


def _read_node(
    api: Api,
    item: dict[str, Any],
    resources: list[dict[str, Any]],
    mappings: tuple[Mapping, ...],
    warnings: list[str],
) -> tuple[NodeInfo, list[Guest]]:
    name = _text(item, "node", "/nodes")
    if item.get("status") != "online":
        return _offline_node(name, item, resources), _resource_guests(name, resources)
    base = f"/nodes/{name}"
    status = _object(api.get(f"{base}/status"), f"{base}/status")
    cpuinfo, memory = status.get("cpuinfo") or {}, status.get("memory") or {}
    node = NodeInfo(
        name=name,
        online=True,
        cpu=_number(cpuinfo, "cpus", f"{base}/status") or _number(item, "maxcpu", "/nodes"),
        memory_bytes=_number(memory, "total", f"{base}/status"),
        storage=_storage(_items(api.get(f"{base}/storage"), f"{base}/storage"), f"{base}/storage"),
        pci=_hardware(api, name, "pci", mappings=mappings, warnings=warnings, parse=_pci_function),
        usb=_hardware(api, name, "usb", mappings=mappings, warnings=warnings, parse=_usb_device),
    )
    guests = [
        _guest(entry, name, kind, f"{base}/{kind}")
        for kind in ("qemu", "lxc")
        for entry in _items(api.get(f"{base}/{kind}"), f"{base}/{kind}")
    ]
    return node, [_read_boot_disk(api, g) if _is_vm_template(g) else g for g in guests]


def _is_vm_template(guest: Guest) -> bool:
    return guest.template and guest.kind == "qemu"


def _read_boot_disk(api: Api, guest: Guest) -> Guest:
    """Read a VM template's configuration for its boot disk; a 403 leaves it unknown."""
    path = f"/nodes/{guest.node}/qemu/{guest.vmid}/config"
    try:
        config = _object(api.get(path), path)
    except ApiError as exc:
        if exc.status != 403:
            raise
        return replace(guest, boot_problem=str(exc))
    try:
        return replace(guest, boot_disk=boot_disk(config), boot_problem="")
    except ValueError as exc:
        return replace(guest, boot_problem=f"GET {path}: {exc}")


def _offline_node(name: str, item: dict[str, Any], resources: list[dict[str, Any]]) -> NodeInfo:
    # The node cannot answer; the cluster still knows its last reported size and its storage.
    known = next((r for r in resources if r.get("type") == "node" and r.get("node") == name), {})
    storage = [r for r in resources if r.get("type") == "storage" and r.get("node") == name]
    return NodeInfo(
        name=name,
        online=False,
        cpu=_number(item, "maxcpu", "/nodes") or _number(known, "maxcpu", "/cluster/resources"),
        memory_bytes=_number(item, "maxmem", "/nodes")
        or _number(known, "maxmem", "/cluster/resources"),
        storage=_storage(storage, "/cluster/resources"),
    )


def _storage(items: list[dict[str, Any]], path: str) -> tuple[Storage, ...]:
    found = [
        Storage(
            name=_text(item, "storage", path),
            content=_split(item.get("content"), ","),
            shared=_flag(item.get("shared", 0)),
        )
        # A storage disabled for this node is not usable; an inactive one (an NFS server that
        # is down right now) is kept, so the inventory does not flap with transient outages.
        for item in items
        if _flag(item.get("enabled", 1))
    ]
    return tuple(sorted(found, key=lambda s: s.name))


def _hardware(
    api: Api,
    node: str,
    bus: Bus,
    *,
    mappings: tuple[Mapping, ...],
    warnings: list[str],
    parse: Callable[[dict[str, Any]], T],
) -> tuple[T, ...] | None:
    """Read a node's PCI or USB list, only when a mapping of that bus has an entry there."""
    if not any(m.bus == bus and any(e.node == node for e in m.entries) for m in mappings):
        return None
    path = f"/nodes/{node}/hardware/{bus}"
    try:
        items = _items(api.get(path), path)
    except ApiError as exc:
        if exc.status != 403:
            raise
        warnings.append(f"{exc}; {bus} mappings on {node} are described from the mapping alone")
        return None
    return tuple(sorted(parse(item) for item in items))


def _pci_function(item: dict[str, Any]) -> PciFunction:
    address = str(item.get("id") or "").lower()
    if address.count(":") == 1:  # older releases leave out the PCI domain
        address = f"0000:{address}"
    return PciFunction(
        address=address,
        vendor=_hex(item.get("vendor")),
        device=_hex(item.get("device")),
        class_code=_hex(item.get("class")),
        vendor_name=str(item.get("vendor_name") or ""),
        device_name=str(item.get("device_name") or ""),
    )


def _usb_device(item: dict[str, Any]) -> UsbDevice:
    # `usbpath` is the port chain below the bus; mappings spell the full path as bus-port.
    port = item.get("usbpath")
    bus, number = item.get("busnum"), item.get("devnum")
    devnode = ""
    if _whole(bus) and _whole(number):
        devnode = f"{int(str(bus)):03d}/{int(str(number)):03d}"
    return UsbDevice(
        path=f"{item.get('busnum')}-{port}" if port else "",
        vendor=_hex(item.get("vendid")),
        product_id=_hex(item.get("prodid")),
        manufacturer=str(item.get("manufacturer") or ""),
        product=str(item.get("product") or ""),
        devnode=devnode,
    )


def _whole(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, str) and value.isdigit())


def _guest(item: dict[str, Any], node: str, kind: Kind, path: str) -> Guest:
    vmid = _number(item, "vmid", path)
    if vmid is None:
        msg = f"GET {path}: a guest has no vmid"
        raise DiscoveryError(msg)
    # Per-node lists say `cpus`, /cluster/resources says `maxcpu`.
    cpu = _number(item, "cpus", path) or _number(item, "maxcpu", path) or 0
    return Guest(
        vmid=vmid,
        name=str(item.get("name") or f"{kind}-{vmid}"),
        node=node,
        kind=kind,
        cpu=cpu,
        memory_bytes=_number(item, "maxmem", path) or 0,
        tags=_split(item.get("tags"), ";, "),
        template=_flag(item.get("template", 0)),
    )


def _resource_guests(node: str, resources: list[dict[str, Any]]) -> list[Guest]:
    kinds: dict[str, Kind] = {"qemu": "qemu", "lxc": "lxc"}
    guests = [
        _guest(item, node, kinds[str(item.get("type"))], "/cluster/resources")
        for item in resources
        if item.get("type") in kinds and item.get("node") == node
    ]
    offline = f"{node} is offline, {_CONFIG_NOT_READ}"
    return [replace(g, boot_problem=offline) if _is_vm_template(g) else g for g in guests]


def read_guest_config(api: Api, guest: Guest) -> dict[str, Any]:
    """A guest's current configuration: `GET /nodes/{node}/{qemu|lxc}/{vmid}/config`."""
    path = f"/nodes/{guest.node}/{guest.kind}/{guest.vmid}/config"
    return _object(api.get(path), path)
