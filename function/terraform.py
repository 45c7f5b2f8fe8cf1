"""The bpg/proxmox Terraform module, built as data and serialized as JSON.

Terraform reads every string in a JSON module as a template, so literal text
that contains `${` or `%{` must be escaped as `$${` / `%%{`. Strings that are
meant as expressions are wrapped in `Expr`; every other string is escaped when
the module is serialized, whatever its origin. Attributes that would make the
provider replace the VM on a later edit (the clone source and the cloud-init
file ids) are in `lifecycle.ignore_changes`: a running VM is never replaced
because a claim, an image or a template changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from function import secrets
from function.model import Device, Network

PROVIDER_SOURCE = "bpg/proxmox"
# One exact version: provider-terraform keeps no .terraform.lock.hcl across pods, so a range would
# let each run pick whatever the registry serves that day. Bump it with tools/versions.env
# (BPG_VERSION, which the tests build and plan with) and the plan-safety tests on the new version.
PROVIDER_VERSION = "0.111.1"
REQUIRED_PROVIDER = {"source": PROVIDER_SOURCE, "version": PROVIDER_VERSION}
FILE = "proxmox_virtual_environment_file"
VM = "proxmox_virtual_environment_vm"
# The names of the module's resources, and their paths in the module (what workspace.py reads).
VM_NAME = "machine"
VM_ADDRESS = f"{VM}.{VM_NAME}"
USER_DATA = "user_data"
VM_PATH = ("resource", VM, VM_NAME)
USER_DATA_PATH = ("resource", FILE, USER_DATA)
# network_device is an attribute of type list(object), not a block (bpg's SDKv2 resource marks it
# ConfigModeAttr): HCL accepts block syntax for it, but in JSON it is a plain value and Terraform
# requires every field of the object. null leaves a field to the provider's default.
NETWORK_DEVICE_FIELDS = (
    "bridge",
    "disconnected",
    "enabled",
    "firewall",
    "mac_address",
    "model",
    "mtu",
    "queues",
    "rate_limit",
    "trunks",
    "vlan_id",
)
# provider-terraform kills a whole Terraform run after 20 minutes (and holds the state lease while
# it runs); every bpg wait is capped below that, so bpg gives up first and says why. bpg's own
# defaults are 1800 s for most of these.
TIMEOUTS = {
    "timeout_clone": 900,
    "timeout_create": 900,
    "timeout_start_vm": 600,
    "timeout_reboot": 300,
    "timeout_shutdown_vm": 300,
    "timeout_stop_vm": 300,
    "timeout_migrate": 600,
}
# How long a refresh waits for the guest agent (bpg's default is 15 minutes per refresh, and
# provider-terraform reconciles one Workspace at a time: one guest whose agent never starts would
# stall every other machine).
AGENT_TIMEOUT = "2m"
# Edits to these would force a new VM; Fabric never lets a claim edit do that. node_name: a VM
# Proxmox moved (HA after a node failure, a migration by hand) is left where it is, never
# re-cloned; the claim says where it runs (outputs.node). migrate = true below covers a change of
# node_name in the module itself, which sticky placement never makes.
VM_IGNORE_CHANGES = [
    "clone",
    "node_name",
    # Which disk the VM boots from is a fact of its template at creation: an inventory edit
    # of the image's bootDisk must not add a disk to, or re-order the boot of, a running VM.
    "disk[0].interface",
    "boot_order",
    # Where the disks are is chosen at creation: bpg would move them (a long online disk move,
    # and a new cloud-init drive) on an edit of spec.storage.pool or of a node's default.
    "disk[0].datastore_id",
    "initialization[0].datastore_id",
    "initialization[0].user_data_file_id",
    "initialization[0].meta_data_file_id",
]
# User-data is written once, at creation: a later edit must not change the snippet, or the
# next cold boot would see new instance data (see meta-data below) or a half-applied config.
FILE_IGNORE_CHANGES = ["source_raw"]


class Expr(str):
    """A Terraform expression, written into the module without escaping."""

    __slots__ = ()

    @classmethod
    def of(cls, expression: str) -> Expr:
        """Wrap a bare expression as an interpolation."""
        return cls("${" + expression + "}")


def escape(text: str) -> str:
    """Make literal text safe inside a Terraform template string."""
    return text.replace("${", "$${").replace("%{", "%%{")


def secret_variable(name: str) -> str:
    """The Terraform variable that carries a bootstrap secret."""
    return f"secret_{name}"


def variable_env(variable: str) -> str:
    """The environment variable Terraform reads a variable's value from (TF_VAR_<name>)."""
    return f"TF_VAR_{variable}"


def with_secrets(user_data: str) -> Expr:
    """Escape user-data, then let Terraform put each secret where its marker stands.

    A secret is spliced as a JSON string, which is also a valid YAML scalar, so a
    value with quotes or newlines cannot change the document's structure.
    """
    text = escape(user_data)
    for name in secrets.markers_in(user_data):
        text = text.replace(
            secrets.marker(name), "${jsonencode(var." + secret_variable(name) + ")}"
        )
    return Expr(text)


def escape_all(value: Any) -> Any:
    """Escape every literal string of a module document (Expr values stay expressions)."""
    if isinstance(value, Expr):
        return str(value)
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {k: escape_all(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape_all(v) for v in value]
    return value


@dataclass(frozen=True)
class VmShape:
    """Everything the module needs, resolved and checked by the caller."""

    name: str  # external name: unique, stable; names the snippets
    hostname: str
    description: str
    node: str
    vmid: int
    template_vmid: int
    cpu: int
    memory_mib: int
    disk_gib: int
    boot_disk: str  # the template's boot disk slot, e.g. virtio0
    pool: str
    snippets_datastore: str
    tags: tuple[str, ...]
    devices: tuple[Device, ...]
    network: Network | None
    address: str | None  # static CIDR address; None means DHCP
    user_data: str
    meta_data: str
    secret_names: tuple[str, ...]
    started: bool = True  # the claim's powerState
    protection: bool = False
    # The claim's restartPolicy: Immediate lets bpg restart the guest for a change that needs it.
    reboot_after_update: bool = False


def _snippet(shape: VmShape, kind: str, data: Expr | str) -> dict[str, Any]:
    return {
        "content_type": "snippets",
        "datastore_id": shape.snippets_datastore,
        "node_name": shape.node,
        "source_raw": [{"data": data, "file_name": f"{shape.name}-{kind}.yaml"}],
        "lifecycle": {"ignore_changes": FILE_IGNORE_CHANGES},
    }


def _ip_config(shape: VmShape) -> list[dict[str, Any]]:
    if shape.address is None:
        return [{"ipv4": [{"address": "dhcp"}]}]
    ipv4: dict[str, Any] = {"address": shape.address}
    if shape.network is not None and shape.network.gateway is not None:
        ipv4["gateway"] = str(shape.network.gateway)
    return [{"ipv4": [ipv4]}]


def _initialization(shape: VmShape) -> dict[str, Any]:
    init: dict[str, Any] = {
        "datastore_id": shape.pool,
        "ip_config": _ip_config(shape),
        "user_data_file_id": Expr.of(f"{FILE}.{USER_DATA}.id"),
        "meta_data_file_id": Expr.of(f"{FILE}.meta_data.id"),
    }
    net = shape.network
    if net is not None and (net.dns.servers or net.dns.domain):
        dns: dict[str, Any] = {"servers": [str(s) for s in net.dns.servers]}
        if net.dns.domain:
            dns["domain"] = net.dns.domain
        init["dns"] = [dns]
    return init


def _passthrough(devices: tuple[Device, ...]) -> dict[str, Any]:
    """Hostpci entries by resource mapping (raw ids fail with API tokens) and usb by mapping."""
    out: dict[str, Any] = {}
    pci = [d for d in devices if d.bus == "pci"]
    usb = [d for d in devices if d.bus == "usb"]
    if pci:
        entries = []
        for index, dev in enumerate(pci):
            # Without an explicit rombar the provider sends rombar=0, which breaks most GPUs.
            entry: dict[str, Any] = {
                "device": f"hostpci{index}",
                "mapping": dev.mapping,
                "pcie": dev.pcie,
                "rombar": True,
            }
            if dev.primary_gpu:
                entry["xvga"] = True
            entries.append(entry)
        out["hostpci"] = entries
        if any(d.pcie for d in pci):
            out["machine"] = "q35"  # pcie=true needs the q35 machine type
    if usb:
        out["usb"] = [{"mapping": d.mapping, "usb3": True} for d in usb]
    return out


def _vm(shape: VmShape) -> dict[str, Any]:
    vm: dict[str, Any] = {
        "name": shape.hostname,
        "description": shape.description,
        "node_name": shape.node,
        "vm_id": shape.vmid,
        "tags": sorted(shape.tags),  # Proxmox sorts tags; unsorted ones diff forever
        # A Stopped machine stays off across host reboots too.
        "on_boot": shape.started,
        "started": shape.started,
        "protection": shape.protection,
        "stop_on_destroy": True,
        "migrate": True,
        # CPU and memory edits are written to the VM's configuration and take effect when the
        # guest next restarts (restartPolicy OnNextBoot, the default; bpg's own default reboots
        # at once); Immediate restarts it. The claim announces either (function/restart.py).
        "reboot_after_update": shape.reboot_after_update,
        "scsi_hardware": "virtio-scsi-single",
        # Parallel clones of one template contend for its lock; retry instead of failing.
        # The template is the node's own (model.py refuses one VMID on several nodes); saying
        # its node keeps bpg from looking for it elsewhere.
        "clone": [
            {"vm_id": shape.template_vmid, "node_name": shape.node, "full": True, "retries": 3}
        ],
        "agent": [{"enabled": True, "timeout": AGENT_TIMEOUT}],
        "cpu": [{"cores": shape.cpu, "type": "host"}],
        "memory": [{"dedicated": shape.memory_mib}],
        "disk": [
            {
                "interface": shape.boot_disk,
                "datastore_id": shape.pool,
                "size": shape.disk_gib,
                "iothread": True,
                "discard": "on",
                "ssd": True,
            }
        ],
        # Boot from the template's disk, whatever else the clone has (an empty disk, a CD).
        "boot_order": [shape.boot_disk],
        "operating_system": [{"type": "l26"}],
        "initialization": [_initialization(shape)],
        **TIMEOUTS,
        "lifecycle": {"ignore_changes": VM_IGNORE_CHANGES},
    }
    if shape.network is not None:
        nic: dict[str, Any] = dict.fromkeys(NETWORK_DEVICE_FIELDS)
        nic.update(bridge=shape.network.bridge, model="virtio")
        if shape.network.vlan is not None:
            nic["vlan_id"] = shape.network.vlan
        vm["network_device"] = [nic]
    vm.update(_passthrough(shape.devices))
    return vm


def ipv4_output(address: str | None, observed: str) -> str:
    """The ipv4 output: the static address, or the guest's as Terraform reads it.

    `observed` is an expression that gives "" until the guest reports one.
    """
    if address is not None:
        return address.split("/", 1)[0]
    return Expr.of(observed)


def _outputs(address: str | None) -> dict[str, Any]:
    # ipv4_addresses is one list per interface, loopback included, empty until the agent runs
    # and for an interface without IPv4 (Docker's and k3s's veths). flatten, not a test of
    # length(ips) > 0 && ips[0]: HCL's && does not short-circuit, and try() would turn the
    # error on an empty list into "" for the whole output.
    agent = (
        f'try([for ip in flatten({VM_ADDRESS}.ipv4_addresses) : ip if ip != "127.0.0.1"][0], "")'
    )
    return {
        "vm_id": {"value": Expr.of(f"{VM_ADDRESS}.vm_id")},
        "node": {"value": Expr.of(f"{VM_ADDRESS}.node_name")},
        "ipv4": {"value": ipv4_output(address, agent)},
    }


def module(shape: VmShape) -> dict[str, Any]:
    """The Terraform JSON module for one machine, every literal string escaped."""
    doc: dict[str, Any] = {
        "terraform": {"required_providers": {"proxmox": REQUIRED_PROVIDER}},
        "resource": {
            FILE: {
                USER_DATA: _snippet(shape, "user-data", with_secrets(shape.user_data)),
                "meta_data": _snippet(shape, "meta-data", shape.meta_data),
            },
            VM: {VM_NAME: _vm(shape)},
        },
        "output": _outputs(shape.address),
    }
    if shape.secret_names:
        doc["variable"] = {
            secret_variable(n): {"type": "string", "sensitive": True}
            for n in sorted(shape.secret_names)
        }
    return escape_all(doc)


# --- adopted guests ----------------------------------------------------------------------------
#
# An adopted guest is imported (Terraform 1.5: an `import` block with a literal "node/vmid") and
# starts hands-off: `ignore_changes = all` makes every plan a no-op for it, whatever the module
# says. No clone block ever (bpg #1988: importing a VM whose config has one plans a replacement).
# Each field the claim takes over (spec.adopt.manage) is then set from the claim and only that
# field is left out of ignore_changes; inside a block (cpu, memory) only the one value Fabric
# sets is managed, the rest stays as the guest has it.

# Every argument of bpg's VM resource a module can set (v0.111.1; tests/test_adoption.py checks
# this against `terraform providers schema -json` of the pinned provider, so a bump that adds
# one fails there instead of leaving it managed by accident).
VM_ARGUMENTS = (
    "acpi", "agent", "amd_sev", "audio_device", "bios", "boot_order", "cdrom", "clone", "cpu",
    "delete_unreferenced_disks_on_destroy", "description", "disk", "efi_disk",
    "hook_script_file_id", "hostpci", "hotplug", "initialization", "keyboard_layout",
    "kvm_arguments", "mac_addresses", "machine", "memory", "migrate", "name", "network_device",
    "node_name",
    "numa", "on_boot", "operating_system", "pool_id", "protection", "purge_on_destroy", "reboot",
    "reboot_after_update", "rng", "scsi_hardware", "serial_device", "smbios", "started",
    "startup", "stop_on_destroy", "tablet_device", "tags", "template", "timeout_clone",
    "timeout_create", "timeout_migrate", "timeout_move_disk", "timeout_reboot",
    "timeout_shutdown_vm", "timeout_start_vm", "timeout_stop_vm", "tpm_state", "usb", "vga",
    "virtiofs", "vm_id", "watchdog",
)  # fmt: skip
VM_CPU_FIELDS = (
    "affinity", "architecture", "cores", "flags", "hotplugged", "limit", "numa", "sockets",
    "type", "units",
)  # fmt: skip
VM_MEMORY_FIELDS = ("dedicated", "floating", "hugepages", "keep_hugepages", "shared")


@dataclass(frozen=True)
class AdoptedShape:
    """An adopted guest: where it is, and the claim's values of the fields it took over."""

    node: str
    vmid: int
    manage: frozenset[str]  # names from model.MANAGEABLE
    cpu: int
    memory_mib: int
    started: bool
    protection: bool
    address: str | None  # static CIDR address the claim states; None: DHCP or unknown
    reboot_after_update: bool = False  # the claim's restartPolicy is Immediate


# Inside a block the claim takes over, the one value Fabric sets; the rest stays the guest's.
BLOCK_FIELD = {"cpu": "cores", "memory": "dedicated"}


def managed_arguments(shape: AdoptedShape, power: tuple[str, ...]) -> dict[str, Any]:
    """The arguments the claim took over, with their values.

    `power` names the resource's arguments for whether the guest runs, now and at boot.
    """
    managed: dict[str, Any] = {}
    if "cpu" in shape.manage:
        managed["cpu"] = [{"cores": shape.cpu}]
    if "memory" in shape.manage:
        managed["memory"] = [{"dedicated": shape.memory_mib}]
    if "powerState" in shape.manage:
        managed.update(dict.fromkeys(power, shape.started))
    if "protection" in shape.manage:
        managed["protection"] = shape.protection
    return managed


def adopted_resource(
    shape: AdoptedShape,
    managed: dict[str, Any],
    arguments: tuple[str, ...],
    block_fields: dict[str, tuple[str, ...]],
) -> dict[str, Any]:
    """An imported guest's resource: everything but what the claim manages is ignored."""
    ignored: list[str] | str = "all"
    if managed:
        ignored = [a for a in arguments if a not in managed]
        ignored += [
            f"{block}[0].{field}"
            for block, fields in block_fields.items()
            if block in managed
            for field in fields
            if field != BLOCK_FIELD[block]
        ]
    return {
        "node_name": shape.node,
        "vm_id": shape.vmid,
        **managed,
        "lifecycle": {"ignore_changes": ignored},
    }


def adopted_module(shape: AdoptedShape) -> dict[str, Any]:
    """The Terraform JSON module that imports an existing VM and manages only what it took over."""
    managed = managed_arguments(shape, ("started", "on_boot"))
    if managed:
        # An imported VM's state says true (bpg's default): a CPU or memory edit would reboot
        # it at once. The change waits for the guest's next restart, as for created machines,
        # unless the claim's restartPolicy is Immediate.
        managed["reboot_after_update"] = shape.reboot_after_update
    blocks = {"cpu": VM_CPU_FIELDS, "memory": VM_MEMORY_FIELDS}
    vm = adopted_resource(shape, managed, VM_ARGUMENTS, blocks)
    doc: dict[str, Any] = {
        "terraform": {"required_providers": {"proxmox": REQUIRED_PROVIDER}},
        # A literal id: Terraform 1.5 (provider-terraform's) takes no expression here.
        "import": [{"to": VM_ADDRESS, "id": f"{shape.node}/{shape.vmid}"}],
        "resource": {VM: {VM_NAME: vm}},
        "output": _outputs(shape.address),
    }
    return escape_all(doc)


def to_json(doc: dict[str, Any]) -> str:
    """Serialize a module deterministically: sorted keys, compact.

    Compact, because an indent makes json fall back to its pure-Python encoder, which
    was a fifth of a small call's time; `python -m tools.render` shows the module parsed.
    """
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
