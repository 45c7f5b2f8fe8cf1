"""Run real Terraform on a rendered Workspace, in a directory laid out as provider-terraform does.

provider-terraform (v1.1.x, internal/controller/workspace and internal/terraform) writes, per
Workspace: the inline module as `main.tf.json` (inlineFormat JSON), the ProviderConfig's
`configuration` as `crossplane-provider-config.tf`, each ProviderConfig credential as its
`filename`, and runs Terraform with the Workspace's `env` in the process environment:
`init -input=false`, `validate -json`, `workspace select|new <external-name>`, then
`plan -input=false -detailed-exitcode -lock=false`.

Here the same, with three differences, all outside what Fabric emits:
- the kubernetes backend is replaced by a local one through an override file;
- credentials and Secret-backed env values are well-formed dummies (the provider checks their
  format at configure time but contacts Proxmox only at apply and refresh, bpg v0.111.1
  proxmoxtf/provider/provider.go, proxmox/api/client.go);
- providers come only from the tool cache (`init -plugin-dir`), never from a registry.

A plan can also run against a prior state (the state Terraform would hold after an apply,
optionally edited to show drift), with refresh off: that is how day-2 safety is shown.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools import realtools

PROVIDER = "registry.terraform.io/bpg/proxmox"
BACKEND_OVERRIDE = 'terraform {\n  backend "local" {}\n}\n'
# Well-formed stand-ins: an https endpoint and a token of the form bpg checks
# (^\S+@\S+!\S+=([a-zA-Z0-9-]+)$); nothing ever connects.
DUMMY_CREDENTIALS = {
    "proxmox.auto.tfvars.json": {
        "proxmox_endpoint": "https://127.0.0.1:8006/",
        "proxmox_api_token": "fabric@pve!ci=00000000-0000-0000-0000-000000000000",
        "proxmox_ssh_username": "root",
        "proxmox_ssh_private_key": "dummy",
    },
}
TIMEOUT = 300


class TerraformError(RuntimeError):
    """A Terraform command failed; the message holds its command line and output."""


@dataclass
class Workdir:
    """One Workspace's Terraform directory and the environment its commands run with."""

    path: Path
    workspace: str
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, ok_codes: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        """Run `terraform ARGS` here; raise TerraformError unless it exits with an ok code."""
        binary = realtools.binary("terraform")
        if binary is None:
            raise TerraformError(realtools.missing("terraform"))
        done = subprocess.run(  # noqa: S603 - the pinned Terraform from the tool cache
            [str(binary), *args],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        if done.returncode not in ok_codes:
            msg = (
                f"terraform {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
            raise TerraformError(msg)
        return done

    def init(self) -> None:
        """`terraform init` from the tool cache only, then select the Workspace's workspace."""
        self.run("init", "-input=false", "-no-color", f"-plugin-dir={realtools.plugin_dir()}")
        self.run("workspace", "new", "-no-color", self.workspace)

    def validate(self) -> dict[str, Any]:
        """`terraform validate -json`, parsed (it exits 1 when invalid: the caller reads why)."""
        done = self.run("validate", "-json", "-no-color", ok_codes=(0, 1))
        return json.loads(done.stdout)

    def plan(self, prior: dict[str, Any] | None = None) -> dict[str, Any]:
        """`terraform plan`, as `terraform show -json` reads it.

        With `prior`, the workspace's state is set to it first and the plan runs without
        refresh (a refresh would ask Proxmox): the plan is what the module does to that state.
        """
        args = ["plan", "-input=false", "-no-color", "-lock=false", "-out=fabric.tfplan"]
        if prior is not None:
            self.state_file().write_text(json.dumps(prior))
            args.append("-refresh=false")
        # -detailed-exitcode: 0 no changes, 2 changes; anything else is an error.
        self.run(*args, "-detailed-exitcode", ok_codes=(0, 2))
        shown = self.run("show", "-json", "-no-color", "fabric.tfplan")
        return json.loads(shown.stdout)

    def state_after_apply(self) -> dict[str, Any]:
        """The state Terraform would hold after applying this module to an empty workspace.

        The creation plan's values, computed ones filled as Proxmox fills them
        (state_from_plan); then what bpg's SDKv2 resource stores for what the module left
        unset inside a block: "", false or 0, never null. A plan against the first state shows
        those as updates from null; they, and only they, are taken into the state.
        """
        state = state_from_plan(self.plan())
        settled = self.plan(prior=state)
        by_address = {
            f"{r['type']}.{r['name']}": r["instances"][0]["attributes"] for r in state["resources"]
        }
        for rc in settled["resource_changes"]:
            attrs, change = by_address[rc["address"]], rc["change"]
            for key, after in (change["after"] or {}).items():
                if _same_but_unset(attrs.get(key), after):
                    attrs[key] = after
        return state

    def use_proxmox(self, url: str, token: str) -> None:
        """Point the provider at a (loopback, recorded) Proxmox API instead of the dummy one.

        The ProviderConfig's credentials file gets the API's URL and token, and TLS
        verification off for its self-signed certificate: what a user's Secret would say.
        """
        credentials: dict[str, Any] = dict(DUMMY_CREDENTIALS["proxmox.auto.tfvars.json"])
        credentials.update(proxmox_endpoint=url, proxmox_api_token=token, proxmox_insecure=True)
        (self.path / "proxmox.auto.tfvars.json").write_text(json.dumps(credentials))

    def state_file(self) -> Path:
        """Where the local backend keeps this workspace's state."""
        path = self.path / "terraform.tfstate.d" / self.workspace / "terraform.tfstate"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def schema(self) -> dict[str, Any]:
        """The provider schema, as `terraform providers schema -json` gives it."""
        done = self.run("providers", "schema", "-json")
        return json.loads(done.stdout)["provider_schemas"][PROVIDER]


def lay_out(workspace: dict[str, Any], providerconfig: dict[str, Any], directory: Path) -> Workdir:
    """Write a Workspace's Terraform directory as provider-terraform would, in `directory`."""
    spec = workspace["spec"]["forProvider"]
    unsupported = sorted({"vars", "varmap", "varFiles", "entrypoint"} & spec.keys())
    if spec.get("source", "Inline") != "Inline" or unsupported:
        # Fabric emits none of these today: teach the harness to lay them out before it does.
        msg = f"the harness lays out only inline modules without {unsupported}"
        raise ValueError(msg)
    directory.mkdir(parents=True, exist_ok=True)
    main = "main.tf.json" if spec.get("inlineFormat") == "JSON" else "main.tf"
    (directory / main).write_text(spec["module"])
    pc = providerconfig["spec"]
    (directory / "crossplane-provider-config.tf").write_text(pc.get("configuration", ""))
    for cred in pc.get("credentials", []):
        if "filename" in cred:
            (directory / cred["filename"]).write_text(
                json.dumps(DUMMY_CREDENTIALS[cred["filename"]])
            )
    (directory / "zz_fabric_backend_override.tf").write_text(BACKEND_OVERRIDE)
    env = _isolated_env(directory)
    for var in spec.get("env", []):
        env[var["name"]] = var.get("value", f"dummy-{var['name'].lower()}")
    external = workspace["metadata"]["annotations"]["crossplane.io/external-name"]
    return Workdir(directory, external, env)


def actions(plan: dict[str, Any]) -> dict[str, list[str]]:
    """Each resource address in a plan and its actions (e.g. ["create"], ["delete", "create"])."""
    return {rc["address"]: rc["change"]["actions"] for rc in plan.get("resource_changes", [])}


# What Proxmox and bpg set for the attributes a creation plan leaves unknown, by attribute path
# (block indexes dropped), as functions of the resource's planned values and of the plan's file
# ids. An unknown attribute without a rule here is an error: a provider bump that adds one must
# say what Proxmox gives it, or the prior state would not be what Terraform holds after apply.
MAC = "BC:24:11:5E:00:01"
GUEST_IPV4 = "192.168.4.77"
FILLS: dict[str, dict[str, Callable[[dict[str, Any], dict[str, str]], Any]]] = {
    "proxmox_virtual_environment_file": {
        "id": lambda v, _: f"{v['datastore_id']}:snippets/{v['source_raw'][0]['file_name']}",
        "file_name": lambda v, _: v["source_raw"][0]["file_name"],
        "file_modification_date": lambda _v, _f: "2026-12-01T00:00:00Z",
        "file_size": lambda v, _: len(v["source_raw"][0]["data"].encode()),
        "file_tag": lambda _v, _f: "",
    },
    "proxmox_virtual_environment_container": {
        "id": lambda v, _: str(v["vm_id"]),
        "cpu.units": lambda _v, _f: 1024,
        "disk.path_in_datastore": lambda v, _: f"subvol-{v['vm_id']}-disk-0",
        "mount_point.path_in_datastore": lambda v, _: f"subvol-{v['vm_id']}-disk-1",
        "network_interface.mac_address": lambda _v, _f: MAC,
        "ipv4": lambda _v, _f: {"eth0": GUEST_IPV4},
        "ipv6": lambda _v, _f: {},
    },
    "proxmox_virtual_environment_vm": {
        "id": lambda v, _: str(v["vm_id"]),
        "boot_order": lambda v, _: [v["disk"][0]["interface"], "net0"],
        "cpu.units": lambda _v, _f: 1024,
        "disk.file_format": lambda _v, _f: "raw",
        "disk.path_in_datastore": lambda v, _: f"vm-{v['vm_id']}-disk-0",
        "hotplug": lambda _v, _f: "network,disk,usb",
        "initialization.file_format": lambda _v, _f: "raw",
        "initialization.type": lambda _v, _f: "nocloud",
        "initialization.upgrade": lambda _v, _f: False,
        "initialization.user_data_file_id": lambda _, files: files["user_data"],
        "initialization.meta_data_file_id": lambda _, files: files["meta_data"],
        "initialization.network_data_file_id": lambda _v, _f: "",
        "initialization.vendor_data_file_id": lambda _v, _f: "",
        "ipv4_addresses": lambda _v, _f: [["127.0.0.1"], [GUEST_IPV4]],
        "ipv6_addresses": lambda _v, _f: [["::1"], []],
        "mac_addresses": lambda _v, _f: ["00:00:00:00:00:00", MAC],
        "network_interface_names": lambda _v, _f: ["lo", "eth0"],
        "network_device.mac_address": lambda _v, _f: MAC,
        "vga": lambda _v, _f: [{"clipboard": "", "memory": 16, "type": "std"}],
    },
    # The Homelab's backups Workspace (function/backups.py): what Proxmox reports for a PBS
    # storage and a vzdump job when the module leaves these unset.
    "proxmox_storage_pbs": {
        "content": lambda _v, _f: ["backup"],
        "disable": lambda _v, _f: False,
        "encryption_key_fingerprint": lambda _v, _f: None,
        "generated_encryption_key": lambda _v, _f: None,
        "nodes": lambda _v, _f: None,
        "shared": lambda _v, _f: True,
    },
    "proxmox_backup_job": {
        "all": lambda _v, _f: False,
        "bwlimit": lambda _v, _f: None,
        "compress": lambda _v, _f: "zstd",
        "enabled": lambda _v, _f: True,
        "ionice": lambda _v, _f: None,
        "mailnotification": lambda _v, _f: None,
        "mode": lambda _v, _f: "snapshot",
        "protected": lambda _v, _f: None,
        "prune_backups": lambda _v, _f: None,
        "remove": lambda _v, _f: None,
        "repeat_missed": lambda _v, _f: None,
        "stdexcludes": lambda _v, _f: None,
    },
}


def _fill(
    value: Any,
    unknown: Any,
    rule: Callable[[str], Any],
    path: str,
) -> Any:
    if unknown is True:
        return rule(path)
    if isinstance(unknown, dict):
        value = dict(value or {})
        for key, inner in unknown.items():
            value[key] = _fill(value.get(key), inner, rule, f"{path}.{key}" if path else key)
    elif isinstance(unknown, list) and unknown:
        value = [_fill(v, u, rule, path) for v, u in zip(value, unknown, strict=True)]
    return value


def state_from_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """The state a creation `plan` describes, before the provider's own normalisation.

    Known planned values stay as planned; unknown (computed) ones are filled by FILLS, as
    Proxmox and the provider would set them.
    """
    changes = {rc["address"]: rc["change"] for rc in plan["resource_changes"]}
    planned = plan["planned_values"]["root_module"].get("resources", [])
    files: dict[str, str] = {}
    resources = []
    # Files first: the VM's *_file_id attributes are the files' ids.
    for res in sorted(planned, key=lambda r: r["type"] != "proxmox_virtual_environment_file"):
        values = res["values"]

        def rule(path: str, kind: str = res["type"], values: Any = values) -> Any:
            if path not in FILLS[kind]:
                msg = f"no Proxmox value for the computed attribute {kind}.{path}"
                raise KeyError(msg)
            return FILLS[kind][path](values, files)

        attrs = _fill(values, changes[res["address"]]["after_unknown"], rule, "")
        if res["type"] == "proxmox_virtual_environment_file":
            files[res["name"]] = attrs["id"]
        resources.append(
            {
                "mode": res["mode"],
                "type": res["type"],
                "name": res["name"],
                "provider": f'provider["{PROVIDER}"]',
                "instances": [
                    {
                        "schema_version": res.get("schema_version", 0),
                        "attributes": attrs,
                        # Values from sensitive variables carry Terraform's mark into the
                        # state; a prior state without it would plan an update of the mark.
                        "sensitive_attributes": _marked(plan, res["address"]),
                    }
                ],
            }
        )
    return {
        "version": 4,
        "terraform_version": plan["terraform_version"],
        "serial": 1,
        "lineage": "fabric-plan-safety",
        "outputs": {},
        "resources": resources,
    }


def _marked(plan: dict[str, Any], address: str) -> list[list[dict[str, str]]]:
    """Top-level attributes set from a sensitive variable, as the state's sensitive_attributes.

    Only value marks are stored (a schema-sensitive attribute is not marked in the state).
    """
    config = plan.get("configuration", {}).get("root_module", {})
    secret = {f"var.{n}" for n, v in config.get("variables", {}).items() if v.get("sensitive")}
    resource: dict[str, Any] = next(
        (r for r in config.get("resources", []) if r["address"] == address), {}
    )
    return [
        [{"type": "get_attr", "value": name}]
        for name, expr in sorted(resource.get("expressions", {}).items())
        if isinstance(expr, dict) and secret & set(expr.get("references", []))
    ]


def state_from_import(plan: dict[str, Any]) -> dict[str, Any]:
    """The state an import `plan` from an empty state leaves: each resource as the provider read it.

    Terraform 1.5's JSON plan does not mark imports; from an empty state, a resource change
    with a "before" value is one an import block read.
    """
    resources = []
    for rc in plan["resource_changes"]:
        if rc["change"]["before"] is None:
            continue
        resources.append(
            {
                "mode": rc["mode"],
                "type": rc["type"],
                "name": rc["name"],
                "provider": f'provider["{PROVIDER}"]',
                "instances": [
                    {
                        "schema_version": 0,
                        "attributes": rc["change"]["before"],
                        "sensitive_attributes": [],
                    }
                ],
            }
        )
    return {
        "version": 4,
        "terraform_version": plan["terraform_version"],
        "serial": 1,
        "lineage": "fabric-adoption",
        "outputs": {},
        "resources": resources,
    }


def changed_attributes(change: dict[str, Any]) -> set[str]:
    """The top-level attributes a planned update really changes.

    bpg's SDKv2 resource plans every unset string, bool or number inside a block as "", false
    or 0 where the state (as built here) may hold null: that is no change on Proxmox.
    """
    before, after = change["before"] or {}, change["after"] or {}
    unknown = change.get("after_unknown") or {}
    return {
        k
        for k in after.keys() | before.keys()
        if unknown.get(k) is not True and not _same_but_unset(before.get(k), after.get(k))
    }


def _same_but_unset(stored: Any, planned: Any) -> bool:
    """Whether two values differ only where `stored` has null and `planned` a zero value."""
    if stored is None:
        return planned in ("", False, 0, [], None) and not isinstance(planned, dict)
    if isinstance(stored, dict) and isinstance(planned, dict):
        return stored.keys() == planned.keys() and all(
            _same_but_unset(stored[k], planned[k]) for k in stored
        )
    if isinstance(stored, list) and isinstance(planned, list):
        return len(stored) == len(planned) and all(
            _same_but_unset(a, b) for a, b in zip(stored, planned, strict=True)
        )
    return bool(stored == planned)


def provider_schema(directory: Path) -> dict[str, Any]:
    """The pinned provider's real schema, from `terraform providers schema -json`."""
    directory.mkdir(parents=True, exist_ok=True)
    required = {"proxmox": {"source": "bpg/proxmox", "version": realtools.BPG_VERSION}}
    (directory / "main.tf.json").write_text(
        json.dumps({"terraform": {"required_providers": required}})
    )
    wd = Workdir(directory, "default", _isolated_env(directory))
    plugins = f"-plugin-dir={realtools.plugin_dir()}"
    wd.run("init", "-input=false", "-no-color", "-backend=false", plugins)
    return wd.schema()


def _isolated_env(directory: Path) -> dict[str, str]:
    # Nothing from the caller's environment but PATH: no CLI config but an empty one of ours, no
    # version check, no prompts, no TF_VAR_ or TF_LOG that would change what is judged.
    (directory / "terraformrc").write_text("")
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(directory),
        "TF_CLI_CONFIG_FILE": str(directory / "terraformrc"),
        "CHECKPOINT_DISABLE": "1",
        "TF_IN_AUTOMATION": "1",
    }
