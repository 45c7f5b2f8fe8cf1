"""Adoption claims for the guests discovery finds: one Machine (VM) or Container (LXC) each.

A claim adopts a running guest as it is: `spec.adopt` names it (node, VMID), lists the resource
mappings it already uses that the inventory knows, and `manage: []` leaves every field to the
guest, so the first plan changes nothing. The rest of the spec states what the guest is, read
from its configuration, so that the fleet counts it and a later `manage` entry starts from the
truth:

- `cpu` is cores x sockets (a container: its cores; none when it may use every core),
- `memory` the configured MiB as a quantity (6144 -> 6Gi, 1536 -> 1536Mi),
- `disk` the boot disk (a VM, the way qemu-server picks it) or the rootfs (a container), in
  whole GiB rounded up, with a YAML comment when rounding changed it,
- `network` only when net0's bridge and VLAN tag match exactly one network of the catalog;
  its address is the static CIDR Proxmox configures (ipconfig0, a container's ip=) or dhcp,
- `deletionPolicy: Orphan`: deleting the claim never deletes the guest.

What an API token cannot manage is listed, one entry per configuration key, in the
`fabric.homelab.io/needs-root` annotation: raw `hostpciN`/`usbN` ids (not `mapping=`), raw QEMU
`args`, a container's `devN` device passthrough, bind and device mount points (`mpN` with a
host path) and raw `lxc.*` keys. Proxmox allows these to root@pam alone, whatever the token's
role. Where such an entry is hardware the inventory knows (the Coral passed into Frigate as
/dev/bus/usb/002/002 is the device at port 2-1, mapping coral-usb), the entry says which.

Everything is a pure function of the guest, its configuration, its node's hardware listing and
the inventory, and the text is written in a fixed order, so the same cluster gives the same bytes.
"""

from __future__ import annotations

import ipaddress
import math
import re
import textwrap
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

from fabric_discover import DiscoveryError
from fabric_discover.proxmox import (
    Guest,
    NodeInfo,
    boot_disk,
    parse_disk_size,
    parse_property_string,
)
from function import yamlio
from function.errors import describe
from function.model import GIB, Device, Inventory, Network

API_VERSION = "fabric.homelab.io/v1alpha1"
NEEDS_ROOT = "fabric.homelab.io/needs-root"
DEFAULT_NAMESPACE = "infra-machines"
_MAX_LABEL = 63
_KEY = re.compile(r"^([a-z]+)(\d+)$")
_STATIC = re.compile(r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$")
_USB_NODE = re.compile(r"^/dev/bus/usb/(\d{3})/(\d{3})$")
_PCI_FUNCTION = re.compile(r"\.[0-7]$")
_QEMU_DEFAULT_MEMORY = 512  # qemu-server's and pve-container's default, in MiB
ROOT_ONLY = "root@pam only"
_WIDTH = 98  # comment lines, "# " included, stay within 100 columns

HEADER = (
    "Adoption claim for {what} {vmid} {name!r} on {node}, written by {tool}.",
    "Adoption is hands-off first: Fabric imports the guest as it runs, and the first plan",
    "changes nothing on it (no clone, no disk or network change, no reboot). List fields in",
    "spec.adopt.manage (cpu, memory, powerState, protection) to take them over, one at a time.",
    "deletionPolicy Orphan: deleting this claim leaves the guest running, untouched.",
)


@dataclass(frozen=True)
class Claim:
    """One adoption claim: the manifest, the comments written with it, and the warnings."""

    name: str
    namespace: str
    manifest: dict[str, Any]
    comments: tuple[str, ...] = ()  # above the document
    inline: dict[str, str] = field(default_factory=dict)  # spec key -> comment on its line
    warnings: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        """Where a directory of claims keeps this one."""
        return f"{self.name}.yaml"

    def text(self) -> str:
        """The claim as YAML with its comments, one document, deterministic."""
        lines = [
            f"# {part}" if part else "#"
            for line in self.comments
            for part in (textwrap.wrap(line, _WIDTH, break_on_hyphens=False) or [""])
        ]
        for line in yamlio.dump(self.manifest).splitlines():
            key = line.strip().split(":", 1)[0] if line.startswith("  ") else ""
            comment = self.inline.get(key) if line.startswith("  ") and line[2] != " " else None
            lines.append(f"{line}  # {comment}" if comment else line)
        return "\n".join(lines) + "\n"


def stream(claims: Iterable[Claim]) -> str:
    """A multi-document YAML stream of claims, as `kubectl apply -f -` takes it."""
    return "".join(f"---\n{claim.text()}" for claim in claims)


# --- the inventory the claims are checked against ------------------------------------------------


def load_inventory(path: Path) -> Inventory:
    """Read an inventory file: the ConfigMap (`data."inventory.yaml"`) or the bare inventory.

    Raises:
        DiscoveryError: the file cannot be read or is not a valid inventory; names the file.
    """
    try:
        data = yamlio.load_strict(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("kind") == "ConfigMap":
            data = yamlio.load_strict(str((data.get("data") or {}).get("inventory.yaml", "")))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        msg = f"inventory {path}: cannot read: {exc}"
        raise DiscoveryError(msg) from None
    try:
        return Inventory.model_validate(data)
    except pydantic.ValidationError as exc:
        msg = f"inventory {path}: not a valid Fabric inventory: {describe('', exc)}"
        raise DiscoveryError(msg) from None


# --- names -------------------------------------------------------------------------------------


def dns_label(text: str) -> str:
    """`text` as a DNS label (lowercase, a-z 0-9 and -, at most 63); empty if nothing is left."""
    label = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return label[:_MAX_LABEL].rstrip("-")


def claim_names(guests: Iterable[Guest]) -> dict[int, tuple[str, str]]:
    """A unique claim name per guest VMID, and why it differs from the guest's name ("" if not).

    Proxmox names are DNS names but may hold capitals and dots, and two guests may share one;
    both become a DNS label, and guests that would share a label get their VMID appended.
    """
    wanted = {g.vmid: dns_label(g.name) or f"{_prefix(g)}-{g.vmid}" for g in guests}
    counts = Counter(wanted.values())
    names: dict[int, tuple[str, str]] = {}
    for guest in guests:
        name = wanted[guest.vmid]
        why = "" if name == guest.name else "not a DNS label"
        if counts[name] > 1:
            suffix = f"-{guest.vmid}"
            name = name[: _MAX_LABEL - len(suffix)].rstrip("-") + suffix
            why = f"another guest is also named {wanted[guest.vmid]}"
        names[guest.vmid] = (name, why)
    return names


def _prefix(guest: Guest) -> str:
    return "vm" if guest.kind == "qemu" else "ct"


# --- the claim ---------------------------------------------------------------------------------


@dataclass
class _Draft:
    """What a claim accumulates while the configuration is read."""

    guest: Guest
    config: dict[str, Any]
    node: NodeInfo | None
    inventory: Inventory
    devices: list[str] = field(default_factory=list)
    needs_root: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    inline: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{_prefix(self.guest)} {self.guest.vmid} {self.guest.name}"

    def note(self, comment: str, *, warn: bool = True) -> None:
        self.comments.append(comment)
        if warn:
            self.warnings.append(f"{self.label}: {comment}")


def adoption_claim(
    guest: Guest,
    config: dict[str, Any],
    inventory: Inventory,
    *,
    node: NodeInfo | None = None,
    name: str | None = None,
    renamed: str = "",
    namespace: str = DEFAULT_NAMESPACE,
    tool: str = "fabric-discover",
) -> Claim:
    """The adoption claim for one guest, from its configuration and the inventory.

    `node` is the guest's node as discovery read it (its PCI and USB listings let a raw entry
    name the hardware it is); `name` the claim's name (default: the guest's, as a DNS label).
    """
    draft = _Draft(guest, config, node, inventory)
    claim_name = name or dns_label(guest.name) or f"{_prefix(guest)}-{guest.vmid}"
    if renamed or claim_name != guest.name:
        why = f" ({renamed})" if renamed else ""
        draft.note(f"Proxmox names it {guest.name!r}; the claim is {claim_name}{why}")
    for key in sorted(config, key=_natural):
        _entry(draft, key, config[key])
    spec: dict[str, Any] = {
        "adopt": {
            "node": guest.node,
            "vmid": guest.vmid,
            "devices": sorted(set(draft.devices)),
            "manage": [],
        }
    }
    _size(draft, spec)
    network = _network(draft)
    if network is not None:
        spec["network"] = network
    if guest.kind == "lxc":
        spec["unprivileged"] = _flag(config.get("unprivileged", 0))
    spec["deletionPolicy"] = "Orphan"
    metadata: dict[str, Any] = {"name": claim_name, "namespace": namespace}
    if draft.needs_root:
        metadata["annotations"] = {NEEDS_ROOT: "; ".join(draft.needs_root)}
    manifest = {
        "apiVersion": API_VERSION,
        "kind": "Machine" if guest.kind == "qemu" else "Container",
        "metadata": metadata,
        "spec": spec,
    }
    what = "VM" if guest.kind == "qemu" else "container"
    header = [
        line.format(what=what, vmid=guest.vmid, name=guest.name, node=guest.node, tool=tool)
        for line in HEADER
    ]
    if draft.needs_root:
        header.append(f"{NEEDS_ROOT}: what an API token cannot manage; Fabric leaves it as it is.")
    return Claim(
        name=claim_name,
        namespace=namespace,
        manifest=manifest,
        comments=tuple(header + [""] * bool(draft.comments) + draft.comments),
        inline=draft.inline,
        warnings=tuple(draft.warnings),
    )


def _natural(key: str) -> tuple[str, int, str]:
    match = _KEY.match(key)
    return (match.group(1), int(match.group(2)), "") if match else (key, -1, key)


def _entry(draft: _Draft, key: str, value: Any) -> None:
    """Devices and what needs root, from one configuration key."""
    match = _KEY.match(key)
    kind = match.group(1) if match else key
    text = str(value)
    if draft.guest.kind == "qemu":
        if kind == "hostpci":
            _hostpci(draft, key, text)
        elif kind == "usb":
            _usb(draft, key, text)
        elif key == "args":
            draft.needs_root.append(f"args: {text} (raw QEMU arguments are {ROOT_ONLY})")
    elif kind == "dev":
        _lxc_device(draft, key, text)
    elif kind == "mp":
        _mount_point(draft, key, text)
    elif key == "lxc" and isinstance(value, list):
        for pair in value:
            if isinstance(pair, list | tuple) and len(pair) == 2:
                draft.needs_root.append(f"{pair[0]}: {pair[1]} (raw LXC keys are {ROOT_ONLY})")


def _properties(draft: _Draft, key: str, text: str, default_key: str) -> dict[str, str] | None:
    head, _, rest = text.partition(",")
    try:
        values = parse_property_string(rest) if rest else {}
        if "=" in head:
            values |= parse_property_string(head)
        else:
            values[default_key] = head.strip()
    except ValueError as exc:
        draft.note(f"{key}: {text!r} cannot be read ({exc}); left as it is")
        return None
    return values


def _hostpci(draft: _Draft, key: str, text: str) -> None:
    props = _properties(draft, key, text, "host")
    if props is None:
        return
    if props.get("mapping"):
        _mapped(draft, key, props["mapping"], "pci")
        return
    host = props.get("host", "")
    what = _pci_hardware(draft, host)
    draft.needs_root.append(f"{key}: {text} (raw PCI passthrough is {ROOT_ONLY}{what})")


def _usb(draft: _Draft, key: str, text: str) -> None:
    props = _properties(draft, key, text, "host")
    if props is None:
        return
    if props.get("mapping"):
        _mapped(draft, key, props["mapping"], "usb")
        return
    host = props.get("host", "")
    if host == "spice":
        return  # SPICE USB redirection: no host device, any token with VM.Config.HWType
    what = _usb_hardware(draft, host)
    draft.needs_root.append(f"{key}: {text} (raw USB passthrough is {ROOT_ONLY}{what})")


def _mapped(draft: _Draft, key: str, mapping: str, bus: str) -> None:
    device = _inventory_device(draft, lambda d: d.mapping == mapping)
    if device is not None and device.bus == bus:
        draft.devices.append(mapping)
        return
    draft.note(
        f"{key} uses {bus} mapping {mapping}, which the inventory has no device for on "
        f"{draft.guest.node}; not in adopt.devices (give the mapping a class, e.g. overrides "
        f"devices.{mapping}.class, and run discovery again for Fabric to hold it)"
    )


def _inventory_device(draft: _Draft, wanted: Any) -> Device | None:
    node = draft.inventory.node(draft.guest.node)
    return next((d for d in node.devices if wanted(d)), None) if node else None


def _pci_hardware(draft: _Draft, host: str) -> str:
    """`; it is ...` for a raw PCI path: the inventory device, else what the node lists there."""
    path = host.split(";", maxsplit=1)[0].lower()
    if path.count(":") == 1:
        path = f"0000:{path}"
    if not path:
        return ""

    def covers(address: str | None) -> bool:
        return bool(address) and (address == path or str(address).startswith(f"{path}."))

    device = _inventory_device(draft, lambda d: d.bus == "pci" and covers(d.address))
    if device is not None:
        return f"; {path} is inventory device {device.mapping}: use mapping={device.mapping}"
    if draft.node is None or draft.node.pci is None:
        return ""
    found = [f for f in draft.node.pci if covers(f.address)]
    if not found:
        return ""
    named = " ".join(p for p in (found[0].vendor_name, found[0].device_name) if p)
    return f"; {path} is {found[0].pci_id} {named}, in no resource mapping".replace("  ", " ")


def _usb_hardware(draft: _Draft, host: str) -> str:
    """`; it is ...` for a raw USB host (vendor:product or bus-port)."""
    host = host.lower()
    if ":" in host:
        device = _inventory_device(draft, lambda d: d.bus == "usb" and host in d.ids)
    else:
        device = _inventory_device(draft, lambda d: d.bus == "usb" and d.address == host)
    if device is None:
        return ""
    return f"; {host} is inventory device {device.mapping}: use mapping={device.mapping}"


def _lxc_device(draft: _Draft, key: str, text: str) -> None:
    props = _properties(draft, key, text, "path")
    path = (props or {}).get("path", text)
    what = ""
    match = _USB_NODE.match(path)
    if match and draft.node is not None and draft.node.usb is not None:
        devnode = f"{match.group(1)}/{match.group(2)}"
        found = next((u for u in draft.node.usb if u.devnode == devnode), None)
        if found is not None:
            device = _inventory_device(
                draft,
                lambda d: d.bus == "usb" and (d.address == found.path or found.usb_id in d.ids),
            )
            named = f"inventory device {device.mapping}" if device else "in no resource mapping"
            what = f"; it is USB {found.usb_id} at port {found.path}, {named}"
            if device is not None:
                # The adopted container holds it in the fleet (no machine is given it), though
                # Fabric never writes its devN entry: that stays as it is, root@pam's.
                draft.devices.append(device.mapping)
                draft.note(
                    f"{key} passes inventory device {device.mapping} into this container: the "
                    "claim holds it (adopt.devices), so no VM is given it",
                    warn=False,
                )
    draft.needs_root.append(f"{key}: {text} (LXC device passthrough is {ROOT_ONLY}{what})")


def _mount_point(draft: _Draft, key: str, text: str) -> None:
    props = _properties(draft, key, text, "volume")
    if props is None:
        return
    volume = props.get("volume", "")
    if volume.startswith("/"):
        kind = "device mount" if volume.startswith("/dev/") else "bind mount"
        target = props.get("mp", "?")
        draft.needs_root.append(f"{key}: {volume} -> {target} ({kind}, {ROOT_ONLY})")


# --- sizes and network -------------------------------------------------------------------------


def _size(draft: _Draft, spec: dict[str, Any]) -> None:
    config = draft.config
    if draft.guest.kind == "qemu":
        cores, sockets = _int(config.get("cores"), 1), _int(config.get("sockets"), 1)
        spec["cpu"] = cores * sockets
    elif config.get("cores") is not None:
        spec["cpu"] = _int(config.get("cores"), 1)
    else:
        draft.note("no cores limit (the container may use every core of its node): no cpu")
    spec["memory"] = _memory(draft)
    disk = _disk(draft)
    if disk is not None:
        spec["disk"] = disk


def _int(value: Any, default: int) -> int:
    try:
        return max(1, math.ceil(float(value))) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _memory(draft: _Draft) -> str:
    value = draft.config.get("memory")
    if isinstance(value, str) and "=" in value:  # PVE 8.1+: [current=]<MiB>[,...]
        value = parse_property_string(value).get("current")
    mib = _int(value, _QEMU_DEFAULT_MEMORY)
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def _disk(draft: _Draft) -> str | None:
    if draft.guest.kind == "lxc":
        slot, text = "rootfs", str(draft.config.get("rootfs") or "")
        size = parse_property_string(text.partition(",")[2]).get("size") if text else None
    else:
        try:
            drive = boot_disk(draft.config)
        except ValueError as exc:
            draft.note(f"no disk: the boot disk is unknown ({exc})")
            return None
        slot = drive.slot
        text = str(draft.config.get(slot) or "")
        size = next((p.partition("=")[2] for p in text.split(",") if p.startswith("size=")), None)
    size_bytes = parse_disk_size(size) if size else None
    if not size_bytes:
        draft.note(f"no disk: {slot} states no size")
        return None
    gib = -(-size_bytes // GIB)
    if size_bytes % GIB:
        draft.inline["disk"] = f"{slot} is {size}: rounded up to whole GiB"
    return f"{gib}Gi"


def _network(draft: _Draft) -> dict[str, str] | None:
    text = draft.config.get("net0")
    if not text:
        draft.note("no net0: no network", warn=False)
        return None
    default = "model" if draft.guest.kind == "qemu" else "name"
    props = _properties(draft, "net0", str(text), default)
    if props is None:
        return None
    if draft.guest.kind == "qemu":
        props.pop("model", None)  # virtio=MAC is the first pair; no key of ours is a model
    bridge, tag = props.get("bridge", ""), props.get("tag")
    vlan = int(tag) if tag and tag.isdigit() else None
    found = sorted(
        name for name, net in draft.inventory.networks.items() if _same(net, bridge, vlan)
    )
    where = f"bridge {bridge}" + (f" VLAN {vlan}" if vlan else " without a VLAN tag")
    if len(found) != 1:
        why = "no network" if not found else f"{len(found)} networks ({', '.join(found)})"
        draft.note(f"net0 is on {where}: {why} of the inventory's catalog match; no network")
        return None
    others = sorted((k for k in draft.config if re.fullmatch(r"net[1-9]\d*", k)), key=_natural)
    if others:
        draft.note(
            f"{', '.join(others)}: not described (a claim states one network); left as is",
            warn=False,
        )
    name = found[0]
    address = _address(draft, props)
    if address is None:
        return None
    network = draft.inventory.networks[name]
    if address != "dhcp" and network.cidr is not None:
        inside = ipaddress.IPv4Interface(address).ip in network.cidr
        if not inside:
            draft.note(f"net0's address {address} is outside network {name} ({network.cidr})")
    return {"name": name, "address": address}


def _same(network: Network, bridge: str, vlan: int | None) -> bool:
    return network.bridge == bridge and network.vlan == vlan


def _address(draft: _Draft, net0: dict[str, str]) -> str | None:
    if draft.guest.kind == "lxc":
        source, ip = "net0", net0.get("ip")
    else:
        source = "ipconfig0"
        text = draft.config.get("ipconfig0")
        ip = parse_property_string(str(text)).get("ip") if text else None
    if ip is None or ip == "manual":
        draft.note(
            f"no {source} address: the guest configures its own; address dhcp (Fabric assigns "
            "none)",
            warn=False,
        )
        return "dhcp"
    if ip == "dhcp":
        return "dhcp"
    if _STATIC.match(ip):
        try:
            ipaddress.IPv4Interface(ip)
        except ValueError:
            pass
        else:
            return ip
    draft.note(f"{source} ip={ip} is neither dhcp nor an IPv4 CIDR; no network")
    return None


def _flag(value: Any) -> bool:
    return str(value).lower() in ("1", "true")
