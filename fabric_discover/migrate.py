"""`fabric-migrate`: turn `fabric.kubelize.io/v1alpha1` Machine claims into Fabric adoption claims.

    fabric-migrate --inventory inventory.yaml --workspaces workspaces.yaml old-claims.yaml
    kubectl get machines.fabric.kubelize.io -A -o yaml |
        fabric-migrate --inventory inv.yaml --host pve.lan --vmid test-vm=120

The old API says what a VM should be (`cpu.cores`, `memory.size` in MB, `disk.size` in GB,
`proxmox.node/storage/bridge/templateId`) but not which VM it is. The VMID comes from, in order:

1. `--vmid NAME=ID` (or `NAMESPACE/NAME=ID`), given by the person who knows;
2. the old composition's Workspace in a `kubectl get workspaces -o yaml` dump (`--workspaces`):
   the one whose labels name the claim (`crossplane.io/claim-name` and `-namespace`, or the
   composite of that name in its namespace), by `status.atProvider.outputs` `vm_id`/`vmid`, its
   `vars`/`varmap`, or a `vm_id` in its inline module;
3. the Proxmox API (`--host` and a token, as `fabric-discover` takes them): the one VM of the
   claim's name on its node.

Sources that answer must agree; a claim nothing answers for, or whose answers differ, is
refused with its name and what was tried, and nothing is written (no guessing, no half a
migration). The old `memory.size` and `disk.size` were handed to bpg's `memory.dedicated`
(MiB) and `disk.size` (GiB), so they become `Mi`/`Gi` quantities unchanged. `storage` and
`templateId` are not carried: an adopted VM is never cloned. The network is the inventory's one
network on that bridge without a VLAN; the address is the VM's static `ipconfig0` when the API
is at hand, else dhcp, said in a comment.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from fabric_discover import DiscoveryError, read_text
from fabric_discover.claims import DEFAULT_NAMESPACE, HEADER, Claim, load_inventory, stream
from fabric_discover.cli import TOKEN_ENV, resolve_token
from fabric_discover.proxmox import Api, ApiError, Endpoint, parse_property_string
from function.model import DNS_LABEL, Inventory

OLD_API = "fabric.kubelize.io/v1alpha1"
CLAIM_NAME = "crossplane.io/claim-name"
CLAIM_NAMESPACE = "crossplane.io/claim-namespace"
COMPOSITE = "crossplane.io/composite"
VMID_KEYS = ("vm_id", "vmid", "vm-id", "vmId")
_MODULE_VMID = re.compile(r"""["']?\bvm_id\b["']?\s*[=:]\s*["']?(\d+)""")
_STATIC = re.compile(r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$")


class MigrationError(DiscoveryError):
    """A claim that cannot be converted; the message names it and says what to do."""


@dataclass(frozen=True)
class OldClaim:
    """A `fabric.kubelize.io/v1alpha1` Machine, read strictly."""

    name: str
    namespace: str
    node: str
    source: str  # file and document, for messages
    cores: int | None = None
    memory_mb: int | None = None
    disk_gb: int | None = None
    bridge: str | None = None
    storage: str | None = None
    template_id: int | None = None

    @property
    def ref(self) -> str:
        """`namespace/name`, as messages name the claim."""
        return f"{self.namespace}/{self.name}"


@dataclass
class Found:
    """Where a claim's VMID was looked for, and what each place said."""

    answers: dict[str, int] = field(default_factory=dict)  # source -> VMID
    tried: list[str] = field(default_factory=list)


# --- reading -------------------------------------------------------------------------------------


def documents(text: str, source: str) -> list[tuple[str, Any]]:
    """YAML documents of a file (a `kind: List` gives its items), each with where it came from.

    Raises:
        MigrationError: the text is not YAML.
    """
    try:
        loaded = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        msg = f"{source}: not valid YAML: {exc}"
        raise MigrationError(msg) from None
    found: list[tuple[str, Any]] = []
    for index, doc in enumerate(loaded, start=1):
        if doc is None:
            continue
        where = f"{source} document {index}"
        if isinstance(doc, dict) and doc.get("kind") == "List":
            items = doc.get("items") or []
            found.extend((f"{where} item {i}", item) for i, item in enumerate(items, start=1))
        else:
            found.append((where, doc))
    return found


def old_claim(doc: Any, where: str, default_namespace: str) -> OldClaim:
    """Read one old Machine claim.

    Raises:
        MigrationError: it is not a kubelize Machine, or a field is missing or malformed.
    """
    if (
        not isinstance(doc, dict)
        or doc.get("apiVersion") != OLD_API
        or doc.get("kind") != "Machine"
    ):
        kind = (
            f"{doc.get('apiVersion')} {doc.get('kind')}" if isinstance(doc, dict) else "no object"
        )
        msg = f"{where}: {kind} is not a {OLD_API} Machine"
        raise MigrationError(msg)
    meta = doc.get("metadata") or {}
    name = str(meta.get("name") or "")
    if not re.match(DNS_LABEL, name):
        msg = f"{where}: metadata.name {name!r} is not a DNS label"
        raise MigrationError(msg)
    ref = f"{meta.get('namespace') or default_namespace}/{name}"
    spec = doc.get("spec") or {}
    proxmox = spec.get("proxmox") or {}
    node = proxmox.get("node")
    if not isinstance(node, str) or not node:
        msg = f"claim {ref} ({where}): spec.proxmox.node is missing; the VM cannot be found"
        raise MigrationError(msg)
    return OldClaim(
        name=name,
        namespace=str(meta.get("namespace") or default_namespace),
        node=node,
        source=where,
        cores=_whole(spec, ("cpu", "cores"), ref),
        memory_mb=_whole(spec, ("memory", "size"), ref),
        disk_gb=_whole(spec, ("disk", "size"), ref),
        bridge=str(proxmox["bridge"]) if proxmox.get("bridge") else None,
        storage=str(proxmox["storage"]) if proxmox.get("storage") else None,
        template_id=_whole(spec, ("proxmox", "templateId"), ref),
    )


def _whole(spec: dict[str, Any], path: tuple[str, str], ref: str) -> int | None:
    value = (spec.get(path[0]) or {}).get(path[1])
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        msg = f"claim {ref}: spec.{'.'.join(path)} {value!r} is not a whole number"
        raise MigrationError(msg)
    if int(value) <= 0:
        msg = f"claim {ref}: spec.{'.'.join(path)} {value!r} must be positive"
        raise MigrationError(msg)
    return int(value)


# --- the VMID ------------------------------------------------------------------------------------


def from_workspaces(claim: OldClaim, workspaces: list[dict[str, Any]], found: Found) -> None:
    """Record the VMID the old claim's Workspace states, if one of them is that claim's."""
    found.tried.append("the Workspaces dump")
    for workspace in workspaces:
        if not _belongs(workspace, claim):
            continue
        name = str((workspace.get("metadata") or {}).get("name"))
        values = _workspace_vmids(workspace)
        if len(values) > 1:
            listed = ", ".join(f"{v} ({w})" for w, v in sorted(values.items(), key=lambda i: i[1]))
            msg = f"claim {claim.ref}: Workspace {name} states several VMIDs: {listed}"
            raise MigrationError(msg)
        for where, vmid in values.items():
            found.answers[f"Workspace {name} {where}"] = vmid


def _belongs(workspace: dict[str, Any], claim: OldClaim) -> bool:
    meta = workspace.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(CLAIM_NAME) == claim.name:
        return labels.get(CLAIM_NAMESPACE) == claim.namespace
    if meta.get("namespace") != claim.namespace:  # Crossplane v2: the XR is the claim
        return False
    owners = meta.get("ownerReferences") or []
    return labels.get(COMPOSITE) == claim.name or any(
        o.get("kind") == "Machine" and o.get("name") == claim.name for o in owners
    )


def _workspace_vmids(workspace: dict[str, Any]) -> dict[str, int]:
    """VMIDs the Workspace states, by where (outputs first); distinct values only."""
    spec = (workspace.get("spec") or {}).get("forProvider") or {}
    outputs = ((workspace.get("status") or {}).get("atProvider") or {}).get("outputs") or {}
    candidates: list[tuple[str, Any]] = [(f"output {k}", outputs.get(k)) for k in VMID_KEYS]
    candidates += [
        (f"var {v.get('key')}", v.get("value"))
        for v in spec.get("vars") or []
        if isinstance(v, dict) and v.get("key") in VMID_KEYS
    ]
    varmap = spec.get("varmap") or {}
    candidates += [(f"varmap {k}", varmap.get(k)) for k in VMID_KEYS]
    module = spec.get("module")
    if isinstance(module, str):
        candidates += [("module vm_id", m.group(1)) for m in _MODULE_VMID.finditer(module)]
    by_value: dict[int, str] = {}
    for where, value in candidates:
        if isinstance(value, int | str) and str(value).isdigit():
            by_value.setdefault(int(value), where)
    return {where: value for value, where in by_value.items()}


def from_api(claim: OldClaim, api: Api, found: Found) -> None:
    """Record the VMID of the one VM of the claim's name on its node.

    Raises:
        MigrationError: several VMs have that name there.
    """
    path = f"/nodes/{claim.node}/qemu"
    found.tried.append(f"a VM named {claim.name} in GET {path}")
    listed = api.get(path)
    items = [i for i in listed if isinstance(i, dict)] if isinstance(listed, list) else []
    matches = sorted(
        int(item["vmid"])
        for item in items
        if item.get("name") == claim.name
        and str(item.get("template", 0)) != "1"
        and str(item.get("vmid", "")).isdigit()
    )
    if len(matches) > 1:
        msg = (
            f"claim {claim.ref}: {len(matches)} VMs named {claim.name} on {claim.node} "
            f"({', '.join(map(str, matches))}); say which with --vmid {claim.name}=ID"
        )
        raise MigrationError(msg)
    if matches:
        found.answers[f"GET {path} (name {claim.name})"] = matches[0]


def read_config(api: Api, claim: OldClaim, vmid: int, where: str) -> dict[str, Any]:
    """The VM's configuration; refuses a VMID that is not a VM on the claim's node.

    Raises:
        MigrationError: the configuration cannot be read (no such VM there, or no permission).
    """
    path = f"/nodes/{claim.node}/qemu/{vmid}/config"
    try:
        data = api.get(path)
    except ApiError as exc:
        msg = f"claim {claim.ref}: VM {vmid} ({where}) cannot be read on {claim.node}: {exc}"
        raise MigrationError(msg) from None
    if not isinstance(data, dict):
        msg = f"claim {claim.ref}: GET {path} is not a configuration"
        raise MigrationError(msg)
    return data


def choose(claim: OldClaim, explicit: int | None, found: Found) -> tuple[int, str]:
    """The VMID and where it came from; refuses none and disagreement.

    Raises:
        MigrationError: nothing says which VM this is, or two sources disagree.
    """
    values = set(found.answers.values())
    if explicit is not None:
        return explicit, "--vmid"
    if len(values) > 1:
        said = "; ".join(f"{where}: {vmid}" for where, vmid in sorted(found.answers.items()))
        msg = (
            f"claim {claim.ref}: the sources disagree on its VMID ({said}); say which with "
            f"--vmid {claim.name}=ID"
        )
        raise MigrationError(msg)
    if not values:
        tried = ", ".join(found.tried) if found.tried else "nothing (no --workspaces, no --host)"
        msg = (
            f"claim {claim.ref}: no VMID found for it on {claim.node} (tried {tried}); give "
            f"--vmid {claim.name}=ID, --workspaces with the old Workspaces, or --host"
        )
        raise MigrationError(msg)
    where, vmid = sorted(found.answers.items())[0]
    return vmid, where


# --- the new claim -------------------------------------------------------------------------------


def convert(
    claim: OldClaim,
    vmid: int,
    where: str,
    inventory: Inventory,
    *,
    config: dict[str, Any] | None = None,
    namespace: str | None = None,
) -> Claim:
    """The Fabric adoption claim for an old claim whose VM is `vmid`."""
    comments: list[str] = [f"The VMID {vmid} comes from {where}."]
    warnings: list[str] = []
    spec: dict[str, Any] = {
        "adopt": {"node": claim.node, "vmid": vmid, "devices": [], "manage": []},
    }
    if claim.cores is not None:
        spec["cpu"] = claim.cores
    if claim.memory_mb is not None:
        spec["memory"] = _quantity(claim.memory_mb, "Gi", "Mi")
    if claim.disk_gb is not None:
        spec["disk"] = f"{claim.disk_gb}Gi"
    not_carried = [
        f"{label} {value}"
        for label, value in (("storage", claim.storage), ("templateId", claim.template_id))
        if value is not None
    ]
    if not_carried:
        comments.append(
            f"Not carried: {' and '.join(not_carried)} (an adopted VM is never cloned)."
        )
    network = _network(claim, inventory, config, comments, warnings)
    if network is not None:
        spec["network"] = network
    spec["deletionPolicy"] = "Orphan"
    name = claim.name
    header = [
        line.format(what="VM", vmid=vmid, name=name, node=claim.node, tool="fabric-migrate")
        for line in HEADER
    ]
    header.insert(1, f"Converted from {OLD_API} Machine {claim.ref} ({claim.source}).")
    header.append(
        "Apply it only once the old claim's Workspace is orphaned and gone: two Terraform "
        "states must never manage one VM (docs/migrating-from-kubelize.md)."
    )
    return Claim(
        name=name,
        namespace=namespace or claim.namespace,
        manifest={
            "apiVersion": "fabric.homelab.io/v1alpha1",
            "kind": "Machine",
            "metadata": {"name": name, "namespace": namespace or claim.namespace},
            "spec": spec,
        },
        comments=(*header, "", *comments),
        warnings=tuple(f"claim {claim.ref}: {w}" for w in warnings),
    )


def _quantity(mib: int, big: str, small: str) -> str:
    return f"{mib // 1024}{big}" if mib % 1024 == 0 else f"{mib}{small}"


def _network(
    claim: OldClaim,
    inventory: Inventory,
    config: dict[str, Any] | None,
    comments: list[str],
    warnings: list[str],
) -> dict[str, str] | None:
    bridge, vlan, said = claim.bridge, None, "the old claim's bridge"
    net0 = parse_property_string(str(config["net0"])) if config and config.get("net0") else None
    if net0 is not None:
        bridge, tag, said = net0.get("bridge"), net0.get("tag"), "the VM's net0"
        vlan = int(tag) if tag and tag.isdigit() else None
        if claim.bridge is not None and bridge != claim.bridge:
            warnings.append(f"the old claim says bridge {claim.bridge}, the VM's net0 {bridge}")
    if bridge is None:
        comments.append("Neither the old claim nor the VM names a bridge: no network.")
        return None
    found = sorted(
        name
        for name, net in inventory.networks.items()
        if net.bridge == bridge and net.vlan == vlan
    )
    if len(found) != 1:
        why = "no network" if not found else f"{len(found)} networks ({', '.join(found)})"
        where = f"bridge {bridge}" + (f" VLAN {vlan}" if vlan else " without a VLAN")
        note = f"{said} is on {where}: {why} of the inventory match; no network"
        comments.append(note)
        warnings.append(note)
        return None
    ip = None
    if config is not None and config.get("ipconfig0"):
        ip = parse_property_string(str(config["ipconfig0"])).get("ip")
    if ip is not None and _STATIC.match(ip):
        comments.append(f"The address is the VM's ipconfig0 ({ip}).")
        return {"name": found[0], "address": ip}
    if config is None:
        comments.append(
            "The old API states no address and the VM's configuration was not read: dhcp "
            "(Fabric assigns none). If the VM has a static ipconfig0, put it here."
        )
    return {"name": found[0], "address": "dhcp"}


# --- the command ---------------------------------------------------------------------------------


def _vmid_flags(values: tuple[str, ...]) -> dict[str, int]:
    parsed: dict[str, int] = {}
    for value in values:
        key, sep, vmid = value.partition("=")
        if not sep or not key or not vmid.isdigit() or int(vmid) < 100:
            msg = f"--vmid {value!r}: expected NAME=ID or NAMESPACE/NAME=ID, ID 100 or more"
            raise click.BadParameter(msg)
        parsed[key] = int(vmid)
    return parsed


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--inventory",
    "inventory_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Fabric's inventory (the ConfigMap or the bare YAML): the network catalog.",
)
@click.option(
    "--workspaces",
    "workspaces_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="`kubectl get workspaces -o yaml` of the old composition: VMIDs by claim.",
)
@click.option("--vmid", "vmids", multiple=True, metavar="NAME=ID", help="A claim's VMID.")
@click.option(
    "--namespace",
    default=None,
    help=f"Namespace of the new claims (default: the old claim's, else {DEFAULT_NAMESPACE}).",
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", help="Proxmox VE API host, to find VMIDs by name and read addresses.")
@click.option("--port", default=8006, show_default=True, type=click.IntRange(1, 65535))
@click.option("--user", help="Token owner, user@realm (else from PROXMOX_VE_API_TOKEN).")
@click.option("--token-name", help="Token id (else from PROXMOX_VE_API_TOKEN).")
@click.option("--token-value", help="Token secret; prefer PROXMOX_VE_API_TOKEN.")
@click.option("--verify-ssl/--no-verify-ssl", default=True, show_default=True)
@click.option("--protocol", type=click.Choice(["https", "http"]), default="https", hidden=True)
def cli(
    *,
    files: tuple[str, ...],
    inventory_file: Path,
    workspaces_file: Path | None,
    vmids: tuple[str, ...],
    namespace: str | None,
    out_dir: Path | None,
    host: str | None,
    port: int,
    user: str | None,
    token_name: str | None,
    token_value: str | None,
    verify_ssl: bool,
    protocol: str,
) -> None:
    """Convert fabric.kubelize.io Machine claims (FILES, or stdin) into Fabric adoption claims."""
    if namespace is not None and not re.match(DNS_LABEL, namespace):
        msg = f"--namespace {namespace!r} is not a DNS label"
        raise click.BadParameter(msg)
    explicit = _vmid_flags(vmids)
    api: Api | None = None
    secret = ""
    if host:
        token = resolve_token(user, token_name, token_value, os.environ.get(TOKEN_ENV))
        secret = token.value
        endpoint = Endpoint(
            host=host,
            port=port,
            protocol="http" if protocol == "http" else "https",
            verify_ssl=verify_ssl,
        )
        api = Api(endpoint, token)
    try:
        inventory = load_inventory(inventory_file)
        workspaces = _read_workspaces(workspaces_file)
        old = _read_claims(files or ("-",))
        claims, warnings = migrate(
            old, inventory, workspaces, explicit=explicit, api=api, namespace=namespace
        )
    except DiscoveryError as exc:
        text = str(exc).replace(secret, "***") if secret else str(exc)
        raise click.ClickException(text) from None
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if out_dir is None:
        click.echo(stream(claims), nl=False)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    for claim in claims:
        (out_dir / claim.filename).write_text(claim.text(), encoding="utf-8")
    click.echo(f"{len(claims)} adoption claims written to {out_dir}", err=True)


def migrate(
    old: list[OldClaim],
    inventory: Inventory,
    workspaces: list[dict[str, Any]] | None,
    *,
    explicit: dict[str, int],
    api: Api | None,
    namespace: str | None = None,
) -> tuple[list[Claim], list[str]]:
    """Convert every old claim, or refuse naming each that cannot be (then nothing is written).

    Raises:
        MigrationError: one or more claims cannot be converted; the message lists them all.
    """
    refusals: list[str] = []
    claims: list[Claim] = []
    warnings: list[str] = []
    seen: dict[str, str] = {}
    for claim in old:
        target = f"{namespace or claim.namespace}/{claim.name}"
        if target in seen:
            refusals.append(f"claim {claim.ref}: also in {seen[target]}; one claim per name")
            continue
        seen[target] = claim.source
        try:
            converted = _one(
                claim, inventory, workspaces, explicit=explicit, api=api, namespace=namespace
            )
        except MigrationError as exc:
            refusals.append(str(exc))
            continue
        claims.append(converted)
        warnings.extend(converted.warnings)
    if refusals:
        msg = "nothing written; " + "; ".join(refusals)
        raise MigrationError(msg)
    used = {k for k in explicit if not any(k in (c.name, c.ref) for c in old)}
    warnings.extend(f"--vmid {k}: no claim of that name" for k in sorted(used))
    return sorted(claims, key=lambda c: (c.namespace, c.name)), warnings


def _one(
    claim: OldClaim,
    inventory: Inventory,
    workspaces: list[dict[str, Any]] | None,
    *,
    explicit: dict[str, int],
    api: Api | None,
    namespace: str | None,
) -> Claim:
    found = Found()
    given = explicit.get(claim.ref, explicit.get(claim.name))
    if workspaces is not None:
        from_workspaces(claim, workspaces, found)
    if api is not None and given is None:
        from_api(claim, api, found)
    vmid, where = choose(claim, given, found)
    warnings = []
    if given is not None and any(v != given for v in found.answers.values()):
        said = "; ".join(f"{w}: {v}" for w, v in sorted(found.answers.items()))
        warnings.append(f"--vmid {given} wins over {said}")
    config = None
    if api is not None:
        config = read_config(api, claim, vmid, where)
        if config.get("name") not in (None, claim.name):
            warnings.append(f"VM {vmid} on {claim.node} is named {config.get('name')}")
    converted = convert(claim, vmid, where, inventory, config=config, namespace=namespace)
    extra = tuple(f"claim {claim.ref}: {w}" for w in warnings)
    return Claim(
        converted.name,
        converted.namespace,
        converted.manifest,
        converted.comments,
        converted.inline,
        converted.warnings + extra,
    )


def _read_claims(files: tuple[str, ...]) -> list[OldClaim]:
    found: list[OldClaim] = []
    for name in files:
        source = "stdin" if name == "-" else name
        text = read_text(name, source, MigrationError)
        found.extend(
            old_claim(doc, where, DEFAULT_NAMESPACE) for where, doc in documents(text, source)
        )
    if not found:
        msg = f"no {OLD_API} Machine claims in {', '.join(files)}"
        raise MigrationError(msg)
    return found


def _read_workspaces(path: Path | None) -> list[dict[str, Any]] | None:
    if path is None:
        return None
    text = read_text(path, f"--workspaces {path}", MigrationError)
    return [
        doc
        for _, doc in documents(text, str(path))
        if isinstance(doc, dict) and doc.get("kind") == "Workspace"
    ]
