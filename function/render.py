"""From a placed machine to its documents: user-data, meta-data, module and Workspace."""

from __future__ import annotations

from dataclasses import dataclass

from function import cloudinit, lxc, terraform, workspace, yamlio
from function.demand import Demand, Spec
from function.errors import FabricError
from function.model import (
    ContainerImage,
    ContainerSpec,
    Device,
    FunctionInput,
    Image,
    Inventory,
    MachineSpec,
)
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
    spec: Spec
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
    subject: Subject,
    spec: MachineSpec,
    placement: Placement,
    devices: tuple[Device, ...],
    os_family: str,
) -> cloudinit.GuestFacts:
    """What the user-data composer may know about the machine."""
    machine, demand = subject.machine, subject.demand
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


def _template(demand: Demand, node: str) -> int | str:
    template = demand.image.templates.get(node) if demand.image else None
    if template is None:
        msg = (
            f"spec.image: {demand.image_name!r} has no template on node {node}, where this "
            f"machine lives; accepted: an image with a template on {node}"
        )
        raise FabricError(msg)
    return template


def workspace_manifest(subject: Subject, placement: Placement) -> dict[str, object]:
    """Render everything for a placed machine; FabricError when the claim cannot be rendered."""
    machine, spec, fn_input = subject.machine, subject.spec, subject.fn_input
    name = workspace.external_name(machine.xr_uid, machine.xr_name, machine.namespace)
    if isinstance(spec, ContainerSpec):
        module_json, snippets = _container_module(subject, placement), None
        policy = spec.deletion_policy or (
            "Orphan" if placement.adopted else fn_input.deletion_policy
        )
    elif placement.adopted:
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
            secrets=() if isinstance(spec, ContainerSpec) else tuple(spec.bootstrap.secrets),
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
        reboot_after_update=getattr(spec, "restart_policy", "") == "Immediate",
    )
    return terraform.to_json(terraform.adopted_module(shape))


def _created_module(subject: Subject, placement: Placement, name: str) -> tuple[str, str]:
    """The module of a machine Fabric clones, and the datastore its snippets are on."""
    machine, spec, demand, inv = subject.machine, subject.spec, subject.demand, subject.inv
    if not isinstance(demand.image, Image) or isinstance(spec, ContainerSpec):
        msg = "spec.image: is required for a machine Fabric creates"
        raise FabricError(msg)
    devices = held_devices(placement, inv)
    node = inv.node(placement.node)
    if node is None:
        msg = f"the inventory no longer lists node {placement.node}, where this machine lives"
        raise FabricError(msg)
    # A machine's snippets stay where they were written: its cicustom points there.
    snippets = placement.snippets or node.snippets_datastore
    facts = guest_facts(subject, spec, placement, devices, demand.image.os)
    user_data = cloudinit.compose(facts)
    shape = terraform.VmShape(
        name=name,
        hostname=machine.hostname,
        description=f"Managed by Fabric for {machine.key}. Edit the Machine claim, not this VM.",
        node=placement.node,
        vmid=placement.vmid,
        template_vmid=int(_template(demand, placement.node)),
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
        reboot_after_update=spec.restart_policy == "Immediate",
    )
    return terraform.to_json(terraform.module(shape)), snippets


def _container_module(subject: Subject, placement: Placement) -> str:
    """The module of a container: imported when adopted, else made from its template."""
    machine, spec, demand, inv = subject.machine, subject.spec, subject.demand, subject.inv
    assert isinstance(spec, ContainerSpec)
    if placement.adopted:
        adopted = terraform.AdoptedShape(
            node=placement.node,
            vmid=placement.vmid,
            manage=frozenset(spec.adopt.manage) if spec.adopt else frozenset(),
            cpu=demand.cpu,
            memory_mib=demand.memory_mib,
            started=spec.power_state == "Running",
            protection=spec.protection,
            address=placement.address,
        )
        return terraform.to_json(lxc.adopted_module(adopted))
    node = inv.node(placement.node)
    if node is None or not isinstance(demand.image, ContainerImage):
        msg = f"the inventory no longer lists node {placement.node}, where this container lives"
        raise FabricError(msg)
    pool = demand.pool or node.pool
    mounts = []
    for i, mount in enumerate(spec.mount_points):
        where = mount.pool or pool
        if where not in node.storage:
            msg = (
                f"spec.mountPoints[{i}].pool: {where!r} is not a datastore of node {node.name}; "
                f"accepted: {', '.join(node.storage)}"
            )
            raise FabricError(msg)
        mounts.append(lxc.Mount(mount.path, mount.size, where, mount.backup))
    shape = lxc.ContainerShape(
        hostname=machine.hostname,
        description=f"Managed by Fabric for {machine.key}. Edit the Container claim, not this.",
        node=node,
        vmid=placement.vmid,
        template_file_id=str(_template(demand, placement.node)),
        os_type=demand.image.os,
        cpu=demand.cpu,
        memory_mib=demand.memory_mib,
        disk_gib=demand.disk_gib,
        pool=pool,
        mounts=tuple(mounts),
        network=demand.network,
        address=placement.address,
        unprivileged=spec.unprivileged,
        nesting=spec.features.nesting,
        keyctl=spec.features.keyctl,
        start_on_boot=spec.start_on_boot,
        started=spec.power_state == "Running",
        protection=spec.protection,
        ssh_keys=tuple(spec.bootstrap.ssh_authorized_keys),
        tags=("fabric",),
    )
    return terraform.to_json(lxc.module(shape))
