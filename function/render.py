"""From a placed machine to its documents: user-data, meta-data, module and Workspace."""

from __future__ import annotations

from dataclasses import dataclass

from function import cloudinit, terraform, workspace, yamlio
from function.demand import Demand
from function.errors import FabricError
from function.model import Device, FunctionInput, Inventory, MachineSpec
from function.placement import Placement


@dataclass(frozen=True)
class Machine:
    """Who the machine is, as the XR tells it."""

    key: str  # claim namespace/name, or the XR name
    hostname: str
    xr_name: str
    xr_uid: str
    namespace: str | None  # set for a namespaced (Crossplane v2) XR
    claim_namespace: str | None = None  # the claim's namespace, for a legacy XR with a claim


@dataclass(frozen=True)
class Subject:
    """Everything rendering reads besides the placement: the machine, its claim, the site."""

    machine: Machine
    spec: MachineSpec
    demand: Demand
    inv: Inventory
    fn_input: FunctionInput


def held_devices(placement: Placement, inv: Inventory) -> tuple[Device, ...]:
    """The inventory records of the devices a placement holds, in mapping order."""
    node = inv.node(placement.node)
    by_mapping = {d.mapping: d for d in node.devices} if node else {}
    missing = [m for m in placement.devices if m not in by_mapping]
    if missing:
        msg = (
            f"the inventory no longer lists device {', '.join(missing)} on node "
            f"{placement.node}, which this machine holds"
        )
        raise FabricError(msg)
    # Mapping order, always: a fresh and a read-back placement must give the same hostpci list.
    return tuple(by_mapping[m] for m in sorted(placement.devices))


def guest_facts(
    subject: Subject, placement: Placement, devices: tuple[Device, ...], os_family: str
) -> cloudinit.GuestFacts:
    """What the user-data composer may know about the machine."""
    machine, spec, demand = subject.machine, subject.spec, subject.demand
    inv, fn_input = subject.inv, subject.fn_input
    network = None
    if demand.network is not None and demand.network_name is not None:
        net = demand.network
        network = cloudinit.NetworkFact(
            name=demand.network_name,
            address=placement.address or "dhcp",
            gateway=str(net.gateway) if net.gateway else None,
            dns_servers=tuple(str(s) for s in net.dns.servers),
            domain=net.dns.domain,
            vlan=net.vlan,
        )
    return cloudinit.GuestFacts(
        machine=machine.key,
        hostname=machine.hostname,
        admin_user=spec.bootstrap.admin_user or fn_input.defaults.admin_user,
        ssh_keys=tuple(spec.bootstrap.ssh_authorized_keys),
        timezone=fn_input.defaults.timezone,
        os_family=os_family,
        roles=tuple(spec.roles),
        devices=tuple(
            cloudinit.DeviceFact(d.device_class, d.mapping, d.bus, tuple(d.ids), d.model)
            for d in devices
        ),
        network=network,
        secrets=tuple(s.name for s in spec.bootstrap.secrets),
        flake_ref=spec.nix.flake_ref if spec.nix else None,
        site_templates=dict(inv.templates),
    )


def meta_data(name: str, hostname: str) -> str:
    """A fixed instance-id: edits to user-data or network never make a 'new instance'.

    Proxmox would otherwise derive the instance-id from a hash of the data, and an
    edit would rerun first-boot modules and regenerate SSH host keys.
    """
    return yamlio.dump({"instance-id": name, "local-hostname": hostname})


def _template_vmid(demand: Demand, node: str) -> int:
    vmid = demand.image.templates.get(node) if demand.image else None
    if vmid is None:
        msg = (
            f"spec.image: {demand.image_name!r} has no template on node {node}, where this "
            f"machine lives; accepted: an image with a template on {node}"
        )
        raise FabricError(msg)
    return vmid


def workspace_manifest(subject: Subject, placement: Placement) -> dict[str, object]:
    """Render everything for a placed machine; FabricError when the claim cannot be rendered."""
    machine, spec, fn_input = subject.machine, subject.spec, subject.fn_input
    name = workspace.external_name(machine.xr_uid, machine.xr_name, machine.namespace)
    if placement.adopted:
        module_json, snippets = _adopted_module(subject, placement), None
        # An adopted guest outlives its claim unless the claim says otherwise: Fabric did not
        # make it, and deleting a claim must not be how one loses a guest made by hand.
        policy = spec.deletion_policy or "Orphan"
    else:
        module_json, snippets = _created_module(subject, placement, name)
        policy = spec.deletion_policy or fn_input.deletion_policy
    return workspace.manifest(
        workspace.WorkspaceShape(
            external_name=name,
            machine_key=machine.key,
            namespaced=machine.namespace is not None,
            provider_config=fn_input.provider_config_name,
            deletion_policy=policy,
            held=placement.held(snippets),
            module_json=module_json,
            secrets=tuple(spec.bootstrap.secrets),
        )
    )


def _adopted_module(subject: Subject, placement: Placement) -> str:
    """The module of an adopted guest: import it, then manage only what the claim took over."""
    spec, demand = subject.spec, subject.demand
    manage = frozenset(spec.adopt.manage) if spec.adopt else frozenset()
    shape = terraform.AdoptedShape(
        node=placement.node,
        vmid=placement.vmid,
        manage=manage,
        cpu=demand.cpu,
        memory_mib=demand.memory_mib,
        started=spec.power_state == "Running",
        protection=spec.protection,
        address=placement.address,
    )
    return terraform.to_json(terraform.adopted_module(shape))


def _created_module(subject: Subject, placement: Placement, name: str) -> tuple[str, str]:
    """The module of a machine Fabric clones, and the datastore its snippets are on."""
    machine, spec, demand, inv = subject.machine, subject.spec, subject.demand, subject.inv
    if demand.image is None:
        msg = "spec.image: is required for a machine Fabric creates"
        raise FabricError(msg)
    devices = held_devices(placement, inv)
    node = inv.node(placement.node)
    if node is None:
        msg = f"the inventory no longer lists node {placement.node}, where this machine lives"
        raise FabricError(msg)
    # A machine's snippets stay where they were written: its cicustom points there.
    snippets = placement.snippets or node.snippets_datastore
    facts = guest_facts(subject, placement, devices, demand.image.os)
    user_data = cloudinit.compose(facts)
    shape = terraform.VmShape(
        name=name,
        hostname=machine.hostname,
        description=f"Managed by Fabric for {machine.key}. Edit the Machine claim, not this VM.",
        node=placement.node,
        vmid=placement.vmid,
        template_vmid=_template_vmid(demand, placement.node),
        cpu=demand.cpu,
        memory_mib=demand.memory_mib,
        disk_gib=demand.disk_gib,
        boot_disk=demand.image.boot_disk.interface,
        pool=demand.pool or node.pool,
        snippets_datastore=snippets,
        tags=("fabric", *spec.roles),
        devices=devices,
        network=demand.network,
        address=placement.address,
        user_data=user_data,
        meta_data=meta_data(name, machine.hostname),
        secret_names=tuple(s.name for s in spec.bootstrap.secrets),
        started=spec.power_state == "Running",
        protection=spec.protection,
    )
    return terraform.to_json(terraform.module(shape)), snippets
