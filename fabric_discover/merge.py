"""Merge discovered records and the manual overrides file into an inventory dict.

The API is trusted for what it can know; the overrides add what only a person knows. Rules:

- **Devices are resource mappings**, never raw PCI/USB ids (raw ids fail with API tokens). A
  mapping becomes one device on the one node its entries name. Its class comes from
  `devices.<mapping>.class` or is guessed (NVIDIA/AMD display controllers, the Coral USB ids).
  A mapping whose class stays unknown is **left out with a warning**, not given a class
  `unknown`: no claim could ask for such a class, and leaving it out keeps the scheduler from
  counting hardware nobody described. The warning names the override that brings it in.
- **Unmanaged guests** are every VM and container that is not a template and not tagged
  `fabric`. Templates hold VMIDs too, so they go to `reservedVmids`; they enter the image
  catalog only where `images` in the overrides names them.
- **An image's boot disk** (`bootDisk: {interface, size}`) comes from its templates'
  configurations: the slot they agree on and the largest of their disks, rounded up to a GiB
  (a clone can grow a disk, never shrink it). Templates that boot from different slots leave
  `bootDisk` out with a warning: the catalog holds one per image, and the person decides.
  `images.<name>.bootDisk` in the overrides sets either field; what it sets wins.
- **Nodes** are kept whatever their state. A node is unschedulable for the first of: the
  overrides say so (their reason), it is offline (`offline`), it has no storage that accepts
  snippets (`no-snippets-datastore`: Fabric could not upload cloud-init there).
- **Catalogs** (deviceClasses, images, networks, classes, vmids, overcommit, scoring,
  templates) come from the overrides, validated here so that errors name the overrides field,
  and are written out as the user wrote them, entry names sorted.
- The result always passes `function.model.Inventory`; output order is fixed, so the same
  cluster and overrides give the same bytes.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import AfterValidator, Field, StringConstraints, model_validator

from fabric_discover import DiscoveryError
from fabric_discover.proxmox import Cluster, Drive, Guest, MapEntry, Mapping, NodeInfo
from function.errors import describe
from function.model import (
    GIB,
    MIB,
    NAME,
    TEMPLATE_KEY,
    BootDisk,
    DeviceClass,
    DnsLabel,
    Inventory,
    Name,
    Network,
    Overcommit,
    SizeClass,
    Strict,
    VmId,
    VmIdRange,
    quantity_bytes,
)
from function.yamlio import load_strict

FABRIC_TAG = "fabric"
DEFAULT_VMIDS = {"start": 200, "end": 399}
DEFAULT_DEVICE_CLASSES: dict[str, dict[str, Any]] = {
    "coral-tpu": {"description": "Google Coral Edge TPU"},
    "gpu": {"matches": ["gpu-amd", "gpu-nvidia"], "description": "any passthrough GPU"},
    "gpu-amd": {"description": "AMD GPU"},
    "gpu-nvidia": {"description": "NVIDIA GPU"},
}
GPU_VENDORS = {"10de": "gpu-nvidia", "1002": "gpu-amd"}
DISPLAY_CLASS = "03"  # PCI base class: display controller
# A Coral USB enumerates as Global Unichip 1a6e:089a until its runtime loads the firmware,
# then as Google 18d1:9302.
CORAL_USB_IDS = frozenset({"1a6e:089a", "18d1:9302"})
MAX_OVERRIDES_BYTES = 1 << 20
MAX_TEXT = 200
_NAME = re.compile(NAME)
_PCI_FUNCTION = re.compile(r"\.[0-9a-f]$")


# --- the overrides file --------------------------------------------------------------------------


def _whole(unit: int, example: str) -> AfterValidator:
    """Check a quantity like the inventory model does, but keep the value as written."""

    def check(value: Any) -> Any:
        number = quantity_bytes(value)
        if number == 0 or number % unit:
            msg = f"accepted: a positive whole number of {example[-2:]}, such as {example}"
            raise ValueError(msg)
        return value

    return AfterValidator(check)


Memory = Annotated[Any, _whole(MIB, "4Gi")]
Disk = Annotated[Any, _whole(GIB, "32Gi")]


class NodeOverride(Strict):
    """What a person says about a node: limits, sizes the API cannot report, labels."""

    cpu: int | None = Field(default=None, ge=1, le=4096)
    memory: Memory | None = None
    reserved_memory: Memory | None = Field(default=None, alias="reservedMemory")
    storage: list[Name] | None = Field(default=None, min_length=1)
    default_storage: Name | None = Field(default=None, alias="defaultStorage")
    snippets_datastore: Name | None = Field(default=None, alias="snippetsDatastore")
    schedulable: bool | None = None
    reason: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT)
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _reason_explains_unschedulable(self) -> NodeOverride:
        if self.reason is not None and self.schedulable is not False:
            msg = "reason says why a node is not schedulable; set schedulable: false with it"
            raise ValueError(msg)
        return self


class DeviceOverride(Strict):
    """What a person says about a resource mapping (keyed by the mapping's name)."""

    device_class: Name | None = Field(default=None, alias="class")
    model: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT)
    pcie: bool | None = None
    primary_gpu: bool | None = Field(default=None, alias="primaryGpu")
    node: DnsLabel | None = None


class ImageOverride(Strict):
    """An image catalog entry: templates by VMID per node, or found by template name."""

    os: Literal["debian", "ubuntu", "nixos"]
    templates: dict[DnsLabel, VmId] | None = Field(default=None, min_length=1)
    template_name: str | None = Field(
        default=None, alias="templateName", min_length=1, max_length=100
    )
    min_disk: Disk | None = Field(default=None, alias="minDisk")
    # Checked by the inventory's own model; the fields it sets win over the templates' configs.
    boot_disk: BootDisk | None = Field(default=None, alias="bootDisk")

    @model_validator(mode="after")
    def _one_way_to_find_templates(self) -> ImageOverride:
        if (self.templates is None) == (self.template_name is None):
            msg = "give either templates (node: VMID) or templateName (found on every node)"
            raise ValueError(msg)
        return self


TemplateKey = Annotated[str, StringConstraints(pattern=TEMPLATE_KEY)]


class Overrides(Strict):
    """The overrides file. Unknown fields are errors, so a typo cannot silently do nothing."""

    nodes: dict[DnsLabel, NodeOverride] = Field(default_factory=dict)
    devices: dict[str, DeviceOverride] = Field(default_factory=dict)
    device_classes: dict[Name, DeviceClass] = Field(default_factory=dict, alias="deviceClasses")
    images: dict[Name, ImageOverride] = Field(default_factory=dict)
    networks: dict[Name, Network] = Field(default_factory=dict)
    classes: dict[Name, SizeClass] = Field(default_factory=dict)
    vmids: VmIdRange | None = None
    reserved_vmids: list[VmId] = Field(default_factory=list, alias="reservedVmids")
    overcommit: Overcommit | None = None
    scoring: Literal["spread", "pack"] | None = None
    templates: dict[TemplateKey, Annotated[str, StringConstraints(max_length=65536)]] = Field(
        default_factory=dict, max_length=64
    )


@dataclass(frozen=True)
class LoadedOverrides:
    """The checked overrides, and the file as written (catalogs are copied from it verbatim)."""

    typed: Overrides
    raw: dict[str, Any]


def load_overrides(text: str, source: str) -> LoadedOverrides:
    """Parse and check an overrides file; errors name the file and the field.

    Raises:
        DiscoveryError: the file is not YAML, not a mapping, too big, or a field is invalid.
    """
    if len(text) > MAX_OVERRIDES_BYTES:
        msg = f"overrides {source}: larger than {MAX_OVERRIDES_BYTES} bytes"
        raise DiscoveryError(msg)
    try:
        raw = load_strict(text)
    except yaml.YAMLError as exc:
        msg = f"overrides {source}: not valid YAML: {exc}"
        raise DiscoveryError(msg) from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        msg = f"overrides {source}: expected a mapping of sections (nodes, devices, images, ...)"
        raise DiscoveryError(msg)
    try:
        typed = Overrides.model_validate(raw)
    except pydantic.ValidationError as err:
        msg = f"overrides {source}: {describe('', err)}"
        raise DiscoveryError(msg) from None
    return LoadedOverrides(typed=typed, raw=raw)


EMPTY_OVERRIDES = LoadedOverrides(typed=Overrides(), raw={})


# --- the merge -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Merged:
    """The inventory (a dict in the ConfigMap's shape) and the warnings met on the way."""

    inventory: dict[str, Any]
    warnings: tuple[str, ...]


def build_inventory(cluster: Cluster, overrides: LoadedOverrides = EMPTY_OVERRIDES) -> Merged:
    """Merge what the cluster reports with the overrides into a valid inventory.

    Raises:
        DiscoveryError: the overrides contradict the cluster, or a fact is missing that only
            the overrides can supply; the message names the overrides field.
    """
    notes = list(cluster.warnings)
    typed, raw = overrides.typed, overrides.raw
    _check_node_names(cluster, typed)
    devices = _devices(cluster, typed, notes)
    nodes = [
        _node(info, typed.nodes.get(info.name, NodeOverride()), devices[info.name], notes)
        for info in cluster.nodes
    ]
    inventory: dict[str, Any] = {
        "nodes": nodes,
        "deviceClasses": _sorted(DEFAULT_DEVICE_CLASSES | raw.get("deviceClasses", {})),
    }
    _optional(inventory, "images", _images(cluster, typed, raw.get("images", {}), notes))
    _optional(inventory, "networks", _sorted(raw.get("networks", {})))
    _optional(inventory, "classes", _sorted(raw.get("classes", {})))
    inventory["vmids"] = raw.get("vmids") or _default_vmids(notes)
    _optional(inventory, "reservedVmids", _reserved(cluster, typed))
    _optional(inventory, "unmanaged", [_unmanaged(g) for g in _unmanaged_guests(cluster)])
    for key in ("overcommit", "scoring"):
        _optional(inventory, key, raw.get(key))
    _optional(inventory, "templates", _sorted(raw.get("templates", {})))
    _validate(inventory)
    return Merged(inventory=inventory, warnings=tuple(notes))


def _optional(target: dict[str, Any], key: str, value: Any) -> None:
    if value:
        target[key] = value


def _sorted(entries: dict[str, Any]) -> dict[str, Any]:
    return {key: entries[key] for key in sorted(entries)}


def _default_vmids(notes: list[str]) -> dict[str, int]:
    notes.append(
        f"overrides give no vmids; Fabric will allocate {DEFAULT_VMIDS['start']}-"
        f"{DEFAULT_VMIDS['end']} (set vmids: {{start: ..., end: ...}})"
    )
    return dict(DEFAULT_VMIDS)


def _check_node_names(cluster: Cluster, overrides: Overrides) -> None:
    # A misspelt node name would silently drop, say, the haos-host flag: refuse it instead.
    known = [n.name for n in cluster.nodes]
    for name in sorted(set(overrides.nodes) - set(known)):
        msg = f"overrides nodes.{name}: no node of that name in the cluster ({', '.join(known)})"
        raise DiscoveryError(msg)


def _validate(inventory: dict[str, Any]) -> None:
    try:
        Inventory.model_validate(inventory)
    except pydantic.ValidationError as err:
        msg = f"the merged inventory is not valid: {describe('', err)}"
        raise DiscoveryError(msg) from None


# --- nodes ---------------------------------------------------------------------------------------


def _node(
    info: NodeInfo, override: NodeOverride, devices: list[dict[str, Any]], notes: list[str]
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": info.name,
        "cpu": _cpu(info, override),
        "memory": _memory(info, override),
    }
    _optional(entry, "reservedMemory", override.reserved_memory)
    entry["storage"] = _disk_storage(info, override, notes)
    _optional(entry, "defaultStorage", _default_storage(info, override, entry["storage"]))
    snippets = _snippets(info, override, notes)
    _optional(entry, "snippetsDatastore", snippets)
    reason = _unschedulable(info, override, snippets)
    entry["schedulable"] = reason is None
    _optional(entry, "reason", reason)
    _optional(entry, "labels", _sorted(override.labels))
    _optional(entry, "devices", devices)
    return entry


def _state(info: NodeInfo) -> str:
    return "online" if info.online else "offline"


def _cpu(info: NodeInfo, override: NodeOverride) -> int:
    cpu = override.cpu or info.cpu
    if not cpu:
        msg = (
            f"node {info.name} is {_state(info)} and the API reported no CPU count; "
            f"set overrides nodes.{info.name}.cpu"
        )
        raise DiscoveryError(msg)
    return cpu


def _memory(info: NodeInfo, override: NodeOverride) -> Any:
    if override.memory is not None:
        return override.memory
    if not info.memory_bytes or info.memory_bytes < MIB:
        msg = (
            f"node {info.name} is {_state(info)} and the API reported no memory size; "
            f"set overrides nodes.{info.name}.memory"
        )
        raise DiscoveryError(msg)
    # The kernel keeps some memory for itself, so MemTotal is rarely a whole GiB: round down.
    return f"{info.memory_bytes // MIB}Mi"


def _disk_storage(info: NodeInfo, override: NodeOverride, notes: list[str]) -> list[str]:
    if override.storage is not None:
        known = {s.name for s in info.storage}
        notes.extend(
            f"overrides nodes.{info.name}.storage: {name} is not on {info.name}"
            for name in override.storage
            if info.storage and name not in known
        )
        return list(override.storage)
    # Where VM disks can live: content "images". Node-local pools first, then shared ones.
    pools = [s for s in info.storage if "images" in s.content]
    names = [s.name for s in sorted(pools, key=lambda s: (s.shared, s.name))]
    if not names:
        msg = (
            f"node {info.name} ({_state(info)}) reports no storage for VM disks "
            f"(content 'images'); set overrides nodes.{info.name}.storage"
        )
        raise DiscoveryError(msg)
    return names


def _default_storage(info: NodeInfo, override: NodeOverride, storage: list[str]) -> str | None:
    chosen = override.default_storage
    if chosen is not None and chosen not in storage:
        msg = (
            f"overrides nodes.{info.name}.defaultStorage: {chosen!r} is not a VM disk storage "
            f"of {info.name} (accepted: {', '.join(storage)})"
        )
        raise DiscoveryError(msg)
    return chosen


def _snippets(info: NodeInfo, override: NodeOverride, notes: list[str]) -> str | None:
    able = sorted(s.name for s in info.storage if "snippets" in s.content)
    chosen = override.snippets_datastore
    if chosen is not None:
        if info.storage and chosen not in able:
            notes.append(
                f"overrides nodes.{info.name}.snippetsDatastore: {chosen} does not accept "
                f"snippets on {info.name} (enable the content type, or uploads will fail)"
            )
        return chosen
    # `local` is where Proxmox users usually enable snippets; otherwise the first by name.
    return "local" if "local" in able else next(iter(able), None)


def _unschedulable(info: NodeInfo, override: NodeOverride, snippets: str | None) -> str | None:
    if override.schedulable is False:
        return override.reason or "disabled in overrides"
    if not info.online:
        return "offline"
    if snippets is None:
        return "no-snippets-datastore"
    return None


# --- devices -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Hardware:
    """What a mapping resolves to on its node."""

    address: str | None
    ids: tuple[str, ...]
    class_code: str | None = None
    name: str = ""


def _devices(
    cluster: Cluster, overrides: Overrides, notes: list[str]
) -> defaultdict[str, list[dict[str, Any]]]:
    nodes = {n.name: n for n in cluster.nodes}
    placed: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for mapping in cluster.mappings:
        found = _place(mapping, overrides.devices.get(mapping.name), nodes, notes)
        if found is not None:
            placed[found[0]].append(found[1])
    unknown = sorted(set(overrides.devices) - {m.name for m in cluster.mappings})
    notes.extend(
        f"overrides devices.{name}: no resource mapping of that name; ignored" for name in unknown
    )
    return placed


def _place(
    mapping: Mapping,
    override: DeviceOverride | None,
    nodes: dict[str, NodeInfo],
    notes: list[str],
) -> tuple[str, dict[str, Any]] | None:
    label = f"{mapping.bus} mapping {mapping.name}"
    if not _NAME.match(mapping.name):
        notes.append(f"{label}: Fabric needs a lowercase name (a-z, 0-9, . _ -); left out")
        return None
    entry = _pick_entry(mapping, override, nodes, notes)
    if entry is None:
        return None
    node = nodes[entry.node]
    resolve = _resolve_pci if mapping.bus == "pci" else _resolve_usb
    hardware = resolve(label, entry, node, notes)
    if hardware is None:
        return None
    device_class = override.device_class if override and override.device_class else None
    device_class = device_class or _guess_class(mapping.bus, hardware)
    if device_class is None:
        notes.append(
            f"{label} on {node.name}: device class unknown ({', '.join(hardware.ids) or 'no ids'});"
            f" left out; set overrides devices.{mapping.name}.class to include it"
        )
        return None
    return node.name, _device(mapping, hardware, device_class, override)


def _pick_entry(
    mapping: Mapping,
    override: DeviceOverride | None,
    nodes: dict[str, NodeInfo],
    notes: list[str],
) -> MapEntry | None:
    label = f"{mapping.bus} mapping {mapping.name}"
    mapped = sorted({e.node for e in mapping.entries})
    chosen = override.node if override else None
    if chosen is not None and chosen not in mapped:
        msg = (
            f"overrides devices.{mapping.name}.node: {chosen!r} has no entry in {label} "
            f"(it maps: {', '.join(mapped) or 'nothing'})"
        )
        raise DiscoveryError(msg)
    if chosen is None and len(mapped) != 1:
        why = "has no entries" if not mapped else f"has entries on {', '.join(mapped)}"
        notes.append(
            f"{label} {why}; Fabric places a mapping on one node: set overrides "
            f"devices.{mapping.name}.node or split the mapping; left out"
        )
        return None
    chosen = chosen or mapped[0]
    if chosen not in nodes:
        notes.append(f"{label} maps node {chosen}, which is not in the cluster; left out")
        return None
    entries = [e for e in mapping.entries if e.node == chosen]
    paths = sum(len((e.path or "-").split(";")) for e in entries)
    if paths > 1:
        notes.append(
            f"{label} lists {paths} devices on {chosen}; Proxmox takes the first free one at "
            "VM start, Fabric counts the mapping as one device"
        )
    return entries[0]


def _resolve_pci(label: str, entry: MapEntry, node: NodeInfo, notes: list[str]) -> _Hardware | None:
    path = (entry.path or "").split(";")[0].lower()
    if not path:
        notes.append(f"{label} on {node.name} has no PCI path; left out")
        return None
    if path.count(":") == 1:
        path = f"0000:{path}"
    whole_device = not _PCI_FUNCTION.search(path)
    if node.pci is None:
        # No listing (node offline, or the token may not read hardware): trust the mapping,
        # whose id is that of the first function.
        address = f"{path}.0" if whole_device else path
        return _Hardware(address=address, ids=(entry.device_id,) if entry.device_id else ())
    # A path without a function passes the whole device: every function goes to the VM.
    functions = [f for f in node.pci if f.address == path or f.address.startswith(f"{path}.")]
    if not functions:
        notes.append(f"{label}: {node.name} has no PCI device at {path} (stale mapping?); left out")
        return None
    if not whole_device:
        functions = functions[:1]
    first = functions[0]
    return _Hardware(
        address=first.address,
        ids=tuple(dict.fromkeys(f.pci_id for f in functions)),
        class_code=first.class_code,
        name=" ".join(part for part in (first.vendor_name, first.device_name) if part),
    )


def _resolve_usb(label: str, entry: MapEntry, node: NodeInfo, notes: list[str]) -> _Hardware | None:
    if node.usb is None:
        return _Hardware(address=entry.path, ids=(entry.device_id,) if entry.device_id else ())
    if entry.path:
        found = next((d for d in node.usb if d.path == entry.path), None)
    else:
        found = next((d for d in node.usb if d.usb_id == entry.device_id), None)
    if found is None:
        hint = ""
        if not entry.path and entry.device_id in CORAL_USB_IDS:
            hint = " (a Coral changes its USB id once its firmware loads; map it by port instead)"
        wanted = entry.path or entry.device_id
        notes.append(f"{label}: no USB device {wanted} on {node.name} now{hint}; left out")
        return None
    ids = tuple(dict.fromkeys(i for i in (entry.device_id, found.usb_id) if i))
    name = " ".join(part for part in (found.manufacturer, found.product) if part)
    return _Hardware(address=found.path or None, ids=ids, name=name)


def _guess_class(bus: str, hardware: _Hardware) -> str | None:
    if bus == "usb":
        return "coral-tpu" if CORAL_USB_IDS & set(hardware.ids) else None
    if hardware.class_code is None or not hardware.class_code.startswith(DISPLAY_CLASS):
        return None
    vendor = hardware.ids[0].split(":")[0] if hardware.ids else ""
    return GPU_VENDORS.get(vendor)


def _device(
    mapping: Mapping, hardware: _Hardware, device_class: str, override: DeviceOverride | None
) -> dict[str, Any]:
    device: dict[str, Any] = {"mapping": mapping.name, "class": device_class, "bus": mapping.bus}
    _optional(device, "address", hardware.address)
    _optional(device, "ids", list(hardware.ids))
    model = (override.model if override else None) or hardware.name or mapping.description
    _optional(device, "model", model[:MAX_TEXT])
    if mapping.bus == "pci":
        device["pcie"] = override.pcie if override and override.pcie is not None else True
    if override and override.primary_gpu:
        device["primaryGpu"] = True
    return device


# --- guests and images ---------------------------------------------------------------------------


def _unmanaged_guests(cluster: Cluster) -> list[Guest]:
    return [g for g in cluster.guests if not g.template and FABRIC_TAG not in g.tags]


def _unmanaged(guest: Guest) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "vmid": guest.vmid,
        "name": guest.name[:100],
        "node": guest.node,
        "kind": guest.kind,
        "cpu": guest.cpu,
    }
    if guest.memory_bytes > 0:
        # Round up: the guest may use all of what it was given.
        entry["memory"] = f"{math.ceil(guest.memory_bytes / MIB)}Mi"
    return entry


def _reserved(cluster: Cluster, overrides: Overrides) -> list[int]:
    # Templates are not guests that use capacity, but their VMIDs are taken all the same.
    templates = {g.vmid for g in cluster.guests if g.template}
    return sorted(templates | set(overrides.reserved_vmids))


def _images(
    cluster: Cluster, overrides: Overrides, written: dict[str, Any], notes: list[str]
) -> dict[str, Any]:
    # Fabric clones VMs, so only VM templates can back an image.
    templates = [g for g in cluster.guests if g.template and g.kind == "qemu"]
    by_place = {(t.node, t.vmid): t for t in templates}
    images: dict[str, Any] = {}
    for name, image in sorted(overrides.images.items()):
        if image.templates is not None:
            found = _listed_templates(name, image.templates, templates, notes)
        else:
            found = _named_templates(name, image.template_name or "", templates, notes)
        if not found:
            notes.append(f"overrides images.{name}: no template found in the cluster; left out")
            continue
        entry: dict[str, Any] = {"os": image.os, "templates": _sorted(found)}
        used = [by_place[place] for place in sorted(found.items())]
        given = (written.get(name) or {}).get("bootDisk") or {}
        _optional(entry, "bootDisk", _boot_disk(name, image.boot_disk, given, used, notes))
        _optional(entry, "minDisk", image.min_disk)
        images[name] = entry
    return images


def _listed_templates(
    image: str, listed: dict[str, int], templates: list[Guest], notes: list[str]
) -> dict[str, int]:
    have = {(t.node, t.vmid) for t in templates}
    found = {}
    for node, vmid in sorted(listed.items()):
        if (node, vmid) in have:
            found[node] = vmid
        else:
            notes.append(
                f"overrides images.{image}.templates.{node}: VM {vmid} is not a template on "
                f"{node}; dropped"
            )
    return found


def _named_templates(
    image: str, template_name: str, templates: list[Guest], notes: list[str]
) -> dict[str, int]:
    by_node: dict[str, list[int]] = defaultdict(list)
    for template in templates:
        if template.name == template_name:
            by_node[template.node].append(template.vmid)
    for node, vmids in sorted(by_node.items()):
        if len(vmids) > 1:
            notes.append(
                f"overrides images.{image}: {len(vmids)} templates named {template_name} on "
                f"{node} ({', '.join(map(str, sorted(vmids)))}); using {min(vmids)}"
            )
    return {node: min(vmids) for node, vmids in by_node.items()}


# --- boot disks ----------------------------------------------------------------------------------

Known = list[tuple[Guest, Drive]]


def _where(templates: list[Guest]) -> str:
    return ", ".join(f"{t.vmid} on {t.node}" for t in templates)


def _gib(size_bytes: int) -> int:
    return -(-size_bytes // GIB)  # rounded up: a claim may not ask for less than the disk


def _boot_disk(
    image: str,
    override: BootDisk | None,
    given: dict[str, Any],
    templates: list[Guest],
    notes: list[str],
) -> dict[str, Any]:
    """`bootDisk` for an image: the fields the overrides set, the rest from its templates."""
    label = f"images.{image}"
    fixed = override.model_fields_set if override is not None else set()
    known = [(t, t.boot_disk) for t in templates if t.boot_disk is not None]
    if fixed != {"interface", "size"}:
        notes.extend(
            f"{label}: boot disk of template {t.vmid} on {t.node} unknown ({t.boot_problem})"
            for t in templates
            if t.boot_disk is None
        )
    entry: dict[str, Any] = {}
    slot: str | None
    if override is not None and "interface" in fixed:
        entry["interface"] = given["interface"]
        slot = override.interface
        _check_interface(label, slot, known, notes)
    else:
        slot = _agreed_slot(label, known, notes)
        _optional(entry, "interface", slot)
    if override is not None and "size" in fixed:
        _optional(entry, "size", given["size"])
        if slot is not None and override.size is not None:
            _check_size(label, slot, override.size, known, notes)
    elif slot is not None:
        size = _largest(label, slot, known, notes)
        _optional(entry, "size", f"{size}Gi" if size else None)
    return entry


def _agreed_slot(label: str, known: Known, notes: list[str]) -> str | None:
    by_slot: defaultdict[str, list[Guest]] = defaultdict(list)
    for template, disk in known:
        by_slot[disk.slot].append(template)
    if len(by_slot) == 1:
        return next(iter(by_slot))
    if not by_slot:
        notes.append(
            f"{label}: no template's boot disk is known; bootDisk left out, so Fabric assumes "
            f"scsi0: set overrides {label}.bootDisk if the templates boot from another slot"
        )
        return None
    spread = "; ".join(f"{slot}: {_where(by_slot[slot])}" for slot in sorted(by_slot))
    notes.append(
        f"{label}: its templates boot from different disks ({spread}); the catalog holds one "
        f"boot disk per image, so bootDisk is left out (Fabric would assume scsi0): rebuild "
        f"the templates alike or set overrides {label}.bootDisk.interface"
    )
    return None


def _sizes(slot: str, known: Known) -> dict[int, list[Guest]]:
    """Templates by the GiB (rounded up) of their boot disk in that slot, where it is stated."""
    sizes: defaultdict[int, list[Guest]] = defaultdict(list)
    for template, disk in known:
        if disk.slot == slot and disk.size_bytes:
            sizes[_gib(disk.size_bytes)].append(template)
    return sizes


def _largest(label: str, slot: str, known: Known, notes: list[str]) -> int | None:
    sizes = _sizes(slot, known)
    if not sizes:
        notes.append(
            f"{label}: no template states the size of its {slot} disk; bootDisk.size left "
            f"out, so claims are not checked against it (set overrides {label}.bootDisk.size)"
        )
        return None
    largest = max(sizes)
    if len(sizes) > 1:
        spread = "; ".join(f"{size}Gi: {_where(sizes[size])}" for size in sorted(sizes))
        notes.append(
            f"{label}: its templates' {slot} disks differ in size ({spread}); bootDisk.size is "
            f"the largest, {largest}Gi, as a clone can grow a disk but never shrink it"
        )
    return largest


def _check_interface(label: str, slot: str, known: Known, notes: list[str]) -> None:
    other = [f"{t.vmid} on {t.node} boots from {d.slot}" for t, d in known if d.slot != slot]
    if other:
        notes.append(
            f"overrides {label}.bootDisk.interface is {slot}, but template {'; '.join(other)}: "
            f"its clones would boot from a new, empty {slot} disk"
        )


def _check_size(label: str, slot: str, size_gib: int, known: Known, notes: list[str]) -> None:
    larger = [t for size, found in _sizes(slot, known).items() if size > size_gib for t in found]
    if larger:
        notes.append(
            f"overrides {label}.bootDisk.size is {size_gib}Gi, smaller than the {slot} disk of "
            f"template {_where(sorted(larger, key=lambda t: t.vmid))}: a claim between the two "
            "would need that disk shrunk, which Proxmox refuses"
        )
