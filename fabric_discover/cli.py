"""`fabric-discover`: build the inventory ConfigMap from a Proxmox VE cluster.

    fabric-discover --host pve.lan --overrides overrides.yaml > inventory.yaml
    fabric-discover --host pve.lan --overrides overrides.yaml --apply
    fabric-discover --host pve.lan --overrides overrides.yaml --claims - > adopt.yaml
    fabric-discover --host pve.lan --overrides overrides.yaml --claims claims/

`--claims` writes adoption claims instead of the ConfigMap: a Machine per VM and a Container per
container that is neither a template nor tagged `fabric`, as one YAML stream (`-`) or one file
per claim in a directory (see fabric_discover/claims.py for what a claim says).

The API token comes from PROXMOX_VE_API_TOKEN (`user@realm!tokenid=secret`, the form the
bpg/proxmox provider uses) or from --user/--token-name/--token-value; flags win. The secret
is never printed, not even in errors. Warnings go to stderr, the ConfigMap to stdout.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import click

from fabric_discover import DiscoveryError, read_text
from fabric_discover.claims import (
    DEFAULT_NAMESPACE,
    Claim,
    adoption_claim,
    claim_names,
    load_inventory,
    stream,
)
from fabric_discover.merge import (
    EMPTY_OVERRIDES,
    LoadedOverrides,
    build_inventory,
    load_overrides,
)
from fabric_discover.proxmox import (
    Api,
    ApiError,
    Cluster,
    Endpoint,
    Token,
    read_cluster,
    read_guest_config,
)
from function import yamlio
from function.model import DNS_LABEL, K8S_NAME, Inventory

TOKEN_ENV = "PROXMOX_VE_API_TOKEN"  # noqa: S105 - the variable's name, not a secret
INVENTORY_LABEL = "fabric.homelab.io/inventory"
INVENTORY_KEY = "inventory.yaml"
FIELD_MANAGER = "fabric-discover"
_TOKEN = re.compile(r"^(?P<user>[^!=\s]+@[^!=\s]+)!(?P<name>[A-Za-z0-9._-]+)=(?P<value>\S+)$")


def _k8s_name(pattern: str) -> Any:
    def check(_ctx: click.Context, param: click.Parameter, value: str) -> str:
        if not re.match(pattern, value):
            msg = f"{value!r} is not a valid Kubernetes {param.name}"
            raise click.BadParameter(msg)
        return value

    return check


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", required=True, help="Proxmox VE API host (any cluster node).")
@click.option("--port", default=8006, show_default=True, type=click.IntRange(1, 65535))
@click.option("--user", help="Token owner, user@realm (else from PROXMOX_VE_API_TOKEN).")
@click.option("--token-name", help="Token id (else from PROXMOX_VE_API_TOKEN).")
@click.option("--token-value", help="Token secret; prefer PROXMOX_VE_API_TOKEN (no shell history).")
@click.option("--verify-ssl/--no-verify-ssl", default=True, show_default=True)
@click.option(
    "--protocol",
    type=click.Choice(["https", "http"]),
    default="https",
    show_default=True,
    help="http exists for loopback tests only.",
)
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1))
@click.option(
    "--overrides",
    "overrides_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Manual overrides YAML (device classes, node limits, catalogs).",
)
@click.option(
    "--name",
    default="fabric-inventory",
    show_default=True,
    callback=_k8s_name(K8S_NAME),
    help="ConfigMap name.",
)
@click.option(
    "--namespace",
    default="crossplane-system",
    show_default=True,
    callback=_k8s_name(DNS_LABEL),
    help="ConfigMap namespace.",
)
@click.option("--apply", is_flag=True, help="Server-side apply the ConfigMap instead of printing.")
@click.option(
    "--claims",
    "claims_to",
    metavar="-|DIR",
    help="Write adoption claims (Machine, Container) instead of the ConfigMap: to stdout (-) "
    "or one file per claim in DIR.",
)
@click.option(
    "--claims-namespace",
    default=DEFAULT_NAMESPACE,
    show_default=True,
    callback=_k8s_name(DNS_LABEL),
    help="Namespace of the adoption claims.",
)
@click.option(
    "--inventory",
    "inventory_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --claims: check devices and networks against this inventory (ConfigMap or bare "
    "inventory YAML) instead of the one discovered.",
)
def cli(  # click passes every flag by keyword
    *,
    host: str,
    port: int,
    user: str | None,
    token_name: str | None,
    token_value: str | None,
    verify_ssl: bool,
    protocol: str,
    timeout: float,
    overrides_file: Path | None,
    name: str,
    namespace: str,
    apply: bool,
    claims_to: str | None,
    claims_namespace: str,
    inventory_file: Path | None,
) -> None:
    """Discover a Proxmox VE cluster and print (or apply) Fabric's inventory ConfigMap."""
    if claims_to is not None and apply:
        msg = "--claims writes claims, --apply applies the ConfigMap: choose one"
        raise click.UsageError(msg)
    if inventory_file is not None and claims_to is None:
        msg = "--inventory only applies to --claims"
        raise click.UsageError(msg)
    token = resolve_token(user, token_name, token_value, os.environ.get(TOKEN_ENV))
    endpoint = Endpoint(
        host=host,
        port=port,
        protocol="http" if protocol == "http" else "https",
        verify_ssl=verify_ssl,
        timeout=timeout,
    )
    try:
        overrides = _read_overrides(overrides_file)
        api = Api(endpoint, token)
        cluster = read_cluster(api)
        merged = build_inventory(cluster, overrides)
        manifest = configmap(merged.inventory, name, namespace)
        if not verify_ssl and protocol == "https":
            click.echo("warning: the API's TLS certificate is not verified", err=True)
        for note in merged.warnings:
            click.echo(f"warning: {note}", err=True)
        if claims_to is not None:
            inventory = (
                load_inventory(inventory_file)
                if inventory_file is not None
                else Inventory.model_validate(merged.inventory)
            )
            claims, notes = discover_claims(api, cluster, inventory, claims_namespace)
            for note in notes:
                click.echo(f"warning: {note}", err=True)
            write_claims(claims, claims_to)
        elif apply:
            apply_configmap(manifest)
            click.echo(f"configmap {namespace}/{name} applied (server-side)", err=True)
        else:
            click.echo(yamlio.dump(manifest), nl=False)
    except DiscoveryError as exc:
        raise click.ClickException(str(exc).replace(token.value, "***")) from None


def discover_claims(
    api: Api, cluster: Cluster, inventory: Inventory, namespace: str
) -> tuple[list[Claim], list[str]]:
    """An adoption claim for every guest that is neither a template nor tagged `fabric`.

    Each guest's configuration is read; a guest whose configuration cannot be read (its node is
    offline, the token lacks VM.Audit on it) gets no claim and a warning that says why.
    """
    from fabric_discover.merge import FABRIC_TAG  # noqa: PLC0415 - one constant, one module

    nodes = {n.name: n for n in cluster.nodes}
    guests = [g for g in cluster.guests if not g.template and FABRIC_TAG not in g.tags]
    names = claim_names(guests)
    claims: list[Claim] = []
    notes: list[str] = []
    for guest in guests:
        node = nodes.get(guest.node)
        label = f"{'vm' if guest.kind == 'qemu' else 'ct'} {guest.vmid} {guest.name}"
        if node is None or not node.online:
            notes.append(f"{label}: no claim: {guest.node} is offline, its configuration unread")
            continue
        try:
            config = read_guest_config(api, guest)
        except ApiError as exc:
            if exc.status != 403:
                raise
            notes.append(f"{label}: no claim: {exc}")
            continue
        name, renamed = names[guest.vmid]
        claim = adoption_claim(
            guest, config, inventory, node=node, name=name, renamed=renamed, namespace=namespace
        )
        claims.append(claim)
        notes.extend(claim.warnings)
    return claims, notes


def write_claims(claims: list[Claim], target: str) -> None:
    """Print the claims as one YAML stream (`-`) or write one file per claim into a directory.

    Raises:
        DiscoveryError: the directory cannot be written.
    """
    if target == "-":
        click.echo(stream(claims), nl=False)
        return
    folder = Path(target)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for claim in claims:
            (folder / claim.filename).write_text(claim.text(), encoding="utf-8")
    except OSError as exc:
        msg = f"--claims {target}: cannot write: {exc}"
        raise DiscoveryError(msg) from None
    click.echo(f"{len(claims)} adoption claims written to {folder}", err=True)


def resolve_token(
    user: str | None, token_name: str | None, token_value: str | None, env: str | None
) -> Token:
    """Combine the token flags with PROXMOX_VE_API_TOKEN; flags win, the secret is not echoed.

    Raises:
        click.UsageError: a part is missing or the variable is malformed.
    """
    from_env: dict[str, str] = {}
    if env and not (user and token_name and token_value):
        match = _TOKEN.match(env.strip())
        if match is None:
            msg = f"{TOKEN_ENV} must look like user@realm!tokenid=secret"
            raise click.UsageError(msg)
        from_env = match.groupdict()
    parts = {
        "user": user or from_env.get("user"),
        "name": token_name or from_env.get("name"),
        "value": token_value or from_env.get("value"),
    }
    missing = [flag for flag, key in _FLAGS.items() if not parts[key]]
    if missing:
        msg = f"missing {', '.join(missing)}: give the flags or set {TOKEN_ENV}"
        raise click.UsageError(msg)
    return Token(user=str(parts["user"]), name=str(parts["name"]), value=str(parts["value"]))


_FLAGS = {"--user": "user", "--token-name": "name", "--token-value": "value"}


def _read_overrides(path: Path | None) -> LoadedOverrides:
    if path is None:
        return EMPTY_OVERRIDES
    return load_overrides(read_text(path, f"overrides {path}"), str(path))


def configmap(inventory: dict[str, Any], name: str, namespace: str) -> dict[str, Any]:
    """Wrap an inventory in the ConfigMap Fabric selects by label."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {INVENTORY_LABEL: "homelab"},
            "annotations": {"fabric.homelab.io/generated-by": FIELD_MANAGER},
        },
        "data": {INVENTORY_KEY: yamlio.dump(inventory)},
    }


# --- --apply -------------------------------------------------------------------------------------


def apply_configmap(manifest: dict[str, Any]) -> None:
    """Server-side apply the ConfigMap with the current kubeconfig (or in-cluster config).

    Raises:
        DiscoveryError: no Kubernetes configuration, or the API server refused the apply.
    """
    # Imported here: the client is slow to import and only --apply needs it.
    from kubernetes import client, config  # noqa: PLC0415
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415
    from kubernetes.config.config_exception import ConfigException  # noqa: PLC0415
    from urllib3.exceptions import HTTPError  # noqa: PLC0415

    meta = manifest["metadata"]
    where = f"configmap {meta['namespace']}/{meta['name']}"
    try:
        try:
            config.load_incluster_config()
        except ConfigException:
            # The client reads KUBECONFIG once, at import; honour its value now.
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    except (ConfigException, OSError) as exc:
        msg = f"applying {where}: no Kubernetes configuration ({exc})"
        raise DiscoveryError(msg) from None
    try:
        client.CoreV1Api().patch_namespaced_config_map(
            meta["name"],
            meta["namespace"],
            manifest,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
    except ApiException as exc:
        msg = f"applying {where}: {exc.status} {exc.reason}"
        raise DiscoveryError(msg) from None
    except HTTPError as exc:
        msg = f"applying {where}: cannot reach the Kubernetes API ({exc})"
        raise DiscoveryError(msg) from None
