"""NixOS bootstrap: the cloud-config that hands a fresh NixOS VM over to its flake.

On NixOS, cloud-init only sets the identity (hostname, admin user and keys) and
writes three files: the flake ref, the machine facts and a bootstrap script. The
script runs `nixos-rebuild switch --refresh --flake <ref>` in a transient systemd
unit, retrying with backoff until the network and the flake are reachable. Why so:

- NixOS owns /etc/systemd/system (a link into the store), so no unit files are
  written; `systemd-run` makes a transient unit that the switch does not stop,
  because it is in neither the old nor the new configuration.
- cloud-init's PATH on NixOS lacks nix, git and nixos-rebuild: every program is
  called by its path under /run/current-system/sw/bin.
- The flake ref is claim data: it reaches the script only through a file that the
  script reads into a quoted variable, never through shell text.

Devices and roles belong in the flake on NixOS; the facts file tells the flake what
the VM holds. `machine_facts` builds that file for every os family.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from function.cloudinit.facts import GuestFacts

SW_BIN = "/run/current-system/sw/bin"
SYSTEMD_RUN = f"{SW_BIN}/systemd-run"
BASH = f"{SW_BIN}/bash"
FLAKE_REF_PATH = "/etc/fabric/flake-ref"
FACTS_PATH = "/etc/fabric/machine.json"
BOOTSTRAP_PATH = "/var/lib/fabric/bootstrap.sh"
UNIT = "fabric-bootstrap"
FACTS_VERSION = 1
# NixOS's sudo does not read /etc/sudoers.d (cloud-init would try to edit the store-owned
# /etc/sudoers); the admin gets sudo through wheel, which fabric-guest.nix makes passwordless.
ADMIN_GROUPS = ("wheel",)

# Static text: no claim value is ever formatted into it.
BOOTSTRAP_SCRIPT = f"""#!{BASH}
# Fabric NixOS bootstrap: switch this machine to its flake, retrying until the network
# and the flake are reachable. cloud-init starts it once per instance as the transient
# unit {UNIT}.service; `journalctl -u {UNIT}` shows its progress.
set -u
export PATH={SW_BIN}:/run/wrappers/bin
# nixos-rebuild --flake needs these features even when the image's nix.conf lacks them.
export NIX_CONFIG="experimental-features = nix-command flakes"
ref=""
IFS= read -r ref < {FLAKE_REF_PATH} || true
if [ -z "$ref" ]; then
  echo "{UNIT}: {FLAKE_REF_PATH} is empty; nothing to do" >&2
  exit 1
fi
delay=10
attempt=1
max_attempts=200
while :; do
  echo "{UNIT}: attempt $attempt: nixos-rebuild switch --refresh --flake $ref"
  if {SW_BIN}/nixos-rebuild switch --refresh --flake "$ref"; then
    echo "{UNIT}: switched to $ref"
    exit 0
  fi
  if [ "$attempt" -ge "$max_attempts" ]; then
    echo "{UNIT}: giving up after $attempt attempts" >&2
    exit 1
  fi
  sleep "$delay"
  # Exponential backoff capped at five minutes: a VM that boots before its network or
  # git server keeps trying for hours without hammering either.
  delay=$(( delay * 2 > 300 ? 300 : delay * 2 ))
  attempt=$(( attempt + 1 ))
done
"""


def fqdn(facts: GuestFacts) -> str | None:
    """hostname.domain when the machine's network has a search domain."""
    if facts.network is not None and facts.network.domain:
        return f"{facts.hostname}.{facts.network.domain}"
    return None


def machine_facts(facts: GuestFacts) -> dict[str, Any]:
    """What the guest (and its flake) may want to know about itself, as JSON-ready data."""
    network = None
    if facts.network is not None:
        net = facts.network
        network = {
            "name": net.name,
            "address": net.address,
            "gateway": net.gateway,
            "dns_servers": list(net.dns_servers),
            "domain": net.domain,
            "vlan": net.vlan,
        }
    return {
        "version": FACTS_VERSION,
        "machine": facts.machine,
        "hostname": facts.hostname,
        "fqdn": fqdn(facts),
        "os_family": facts.os_family,
        "admin_user": facts.admin_user,
        "timezone": facts.timezone,
        "roles": list(facts.roles),
        "devices": [
            {
                "class": d.device_class,
                "mapping": d.mapping,
                "bus": d.bus,
                "ids": list(d.ids),
                "model": d.model,
            }
            for d in facts.devices
        ],
        "network": network,
        "flake_ref": facts.flake_ref,
    }


def machine_json(facts: GuestFacts) -> str:
    """The facts file's text: sorted keys, stable across calls."""
    return json.dumps(machine_facts(facts), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def user_data(facts: GuestFacts, extra_groups: Iterable[str] = ()) -> dict[str, Any]:
    """The cloud-config data for a NixOS machine (identity, facts, optional flake switch).

    Args:
        facts: the machine.
        extra_groups: more groups for the admin user (declared by site templates).
    """
    admin: dict[str, Any] = {
        "name": facts.admin_user,
        "groups": sorted({*ADMIN_GROUPS, *extra_groups}),
        "shell": BASH,
        "lock_passwd": True,
    }
    if facts.ssh_keys:
        admin["ssh_authorized_keys"] = list(facts.ssh_keys)
    data: dict[str, Any] = {"hostname": facts.hostname}
    full = fqdn(facts)
    if full:
        data["fqdn"] = full
    data["users"] = [admin]
    files: list[dict[str, Any]] = [
        {"path": FACTS_PATH, "permissions": "0644", "content": machine_json(facts)}
    ]
    if facts.flake_ref is None:
        # Without a flake the image's own configuration stays: identity and facts only.
        data["write_files"] = files
        return data
    files += [
        {"path": FLAKE_REF_PATH, "permissions": "0644", "content": facts.flake_ref + "\n"},
        {"path": BOOTSTRAP_PATH, "permissions": "0755", "content": BOOTSTRAP_SCRIPT},
    ]
    data["write_files"] = files
    data["runcmd"] = [bootstrap_command()]
    return data


def bootstrap_command() -> list[str]:
    """The runcmd entry that starts the transient bootstrap unit.

    A list-form entry: cloud-init writes it into its runcmd /bin/sh script with every
    argument single-quoted, so no argument is ever parsed as shell text.
    """
    return [
        SYSTEMD_RUN,
        f"--unit={UNIT}",
        "--description=Fabric NixOS bootstrap (nixos-rebuild switch to the machine flake)",
        "--no-block",
        "--property=Wants=network-online.target",
        "--property=After=network-online.target",
        BASH,
        BOOTSTRAP_PATH,
    ]
