"""Proof on a real cloud-init that Fabric's Debian user-data applies.

A throwaway Debian bookworm root (debootstrap, cached for the day as a tarball) gets
the rendered user-data as a NoCloud seed, with the secret markers filled in the way
Terraform fills them. cloud-init then runs its real stages inside it (`init --local`,
`init`, `modules --mode config`, `modules --mode final`) in private mount, UTS, PID and
network namespaces: the host's hostname and network are untouched and nothing inside
can reach the network. The modules that need a network or systemd (apt, package
installs) are left out of the stage lists; everything else is cloud-init's own code.

Needs root, debootstrap, unshare and the Debian mirror (http://deb.debian.org/debian).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from function import secrets
from function.cloudinit import DeviceFact, GuestFacts, NetworkFact, compose, nixos

try:
    from cloudinit.config.schema import get_schema, validate_cloudconfig_schema
except ImportError:  # Debian's python3 package lives outside the virtualenv's path
    sys.path.append("/usr/lib/python3/dist-packages")
    from cloudinit.config.schema import get_schema, validate_cloudconfig_schema

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Passing a schema to Validator:DeprecationWarning"),
]

SUITE = "bookworm"
MIRROR = os.environ.get("FABRIC_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# debootstrap does not resolve virtual packages: python3-cryptography (needed by cloud-init)
# depends on python3-cffi-backend-api-*, which only python3-cffi-backend provides.
INCLUDE = "cloud-init,python3-cffi-backend,sudo,tzdata,openssh-client"
CACHE = Path(tempfile.gettempdir()) / "fabric-test-cache"
STAGES = (
    ["cloud-init", "init", "--local"],
    ["cloud-init", "init"],
    ["cloud-init", "modules", "--mode", "config"],
    ["cloud-init", "modules", "--mode", "final"],
)
# cloud-init's stage lists for the test root: Debian's own minus what needs a network or
# a running systemd (growpart/resizefs would also look at the host's disks).
TEST_CLOUD_CFG = {
    "datasource_list": ["NoCloud"],
    "network": {"config": "disabled"},
    "cloud_init_modules": [
        "seed_random",
        "bootcmd",
        "write-files",
        "set_hostname",
        "update_hostname",
        "update_etc_hosts",
        "users-groups",
        "ssh",
    ],
    "cloud_config_modules": ["set-passwords", "timezone", "runcmd"],
    "cloud_final_modules": ["scripts-user", "final-message"],
}

INSTANCE = "fabric-test-1"
TOKEN = 'K10d2f::server:s3cr"et ${not} %{terraform} $(reboot)'
URL = "https://10.40.0.10:6443"
NASTY = "infra/'quoted' \"double\" ; $(reboot) `id` ${x} %{y} &a *a\nsecond line"
KEYS = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOaXf8Vq me@laptop",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFq x$(reboot) ${x} %{y} 'q' \"d\"",
)
# A site role that carries a claim string into a file and into list-form and shell-quoted
# runcmd entries; it comes last, so its command decides the runcmd script's exit status.
PROOF_ROLE = """os: [debian, ubuntu]
description: test-only role
---
write_files:
  - path: /etc/fabric/proof-file
    content: {{ machine | json }}
runcmd:
  - [touch, {{ ("/root/touched " ~ (machine | replace("/", "_"))) | json }}]
  - [sh, -c, {{ ("printf %s " ~ (machine | shquote) ~ " > /root/proof-shell") | json }}]
"""


def _require_tools() -> None:
    if os.geteuid() != 0:
        pytest.fail("the real cloud-init test needs root (chroot and namespaces)")
    for tool in ("debootstrap", "unshare", "chroot", "tar", "mount"):
        if shutil.which(tool) is None:
            pytest.fail(f"the real cloud-init test needs {tool} (apt-get install debootstrap)")


@pytest.fixture(scope="module")
def rootfs_tarball() -> Path:
    """A Debian root with cloud-init, built once a day and kept as a tarball."""
    _require_tools()
    CACHE.mkdir(parents=True, exist_ok=True)
    today = dt.datetime.now(tz=dt.UTC).date().isoformat()
    tarball = CACHE / f"debian-{SUITE}-cloudinit-{today}.tar"
    if tarball.exists():
        return tarball
    for stale in CACHE.glob(f"debian-{SUITE}-cloudinit-*.tar"):
        stale.unlink()
    build = Path(tempfile.mkdtemp(dir=CACHE, prefix="build-"))
    try:
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE, str(build), MIRROR],
            check=True,
            capture_output=True,
            timeout=900,
        )
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(build), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)  # atomic: a half-written cache never looks complete
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return tarball


@pytest.fixture
def rootfs(rootfs_tarball: Path) -> Any:
    root = Path(tempfile.mkdtemp(dir=CACHE, prefix="root-"))
    try:
        subprocess.run(["tar", "-C", str(root), "-xf", str(rootfs_tarball)], check=True)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def make_facts() -> GuestFacts:
    return GuestFacts(
        machine=NASTY,
        hostname="worker-7",
        admin_user="fabric",
        ssh_keys=KEYS,
        timezone="Europe/Berlin",
        os_family="debian",
        roles=("k3s-node", "proof"),
        network=NetworkFact(name="k3s-cluster", address="dhcp", domain="home.arpa"),
        secrets=("k3s_token", "k3s_url"),
        site_templates={"roles/proof": PROOF_ROLE},
    )


def terraform_fill(text: str) -> str:
    """Replace markers with JSON strings of the values, as the Terraform module does."""
    values = {"k3s_token": TOKEN, "k3s_url": URL}
    assert secrets.markers_in(text) == sorted(values)
    for name, value in values.items():
        text = text.replace(secrets.marker(name), json.dumps(value))
    return text


def run_cloud_init(root: Path, user_data: str, cloud_cfg: dict[str, Any] = TEST_CLOUD_CFG) -> None:
    seed = root / "var/lib/cloud/seed/nocloud"
    seed.mkdir(parents=True)
    (seed / "user-data").write_text(user_data)
    (seed / "meta-data").write_text(f"instance-id: {INSTANCE}\nlocal-hostname: worker-7\n")
    (root / "etc/cloud/cloud.cfg.d/99-fabric-test.cfg").write_text(json.dumps(cloud_cfg))
    stages = " && ".join(shlex.join(stage) for stage in STAGES)
    inner = (
        f"mount --bind /dev {root}/dev && mount -t proc proc {root}/proc && "
        f"mount -t sysfs sysfs {root}/sys && exec chroot {root} /bin/sh -c {shlex.quote(stages)}"
    )
    run = subprocess.run(
        ["unshare", "--mount", "--uts", "--ipc", "--net", "--pid", "--fork", "sh", "-c", inner],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    log = (root / "var/log/cloud-init.log").read_text(errors="replace")
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{log[-4000:]}"


def test_debian_user_data_applies(rootfs: Path) -> None:
    facts = make_facts()
    user_data = terraform_fill(compose(facts))
    cfg = yaml.safe_load(user_data)
    validate_cloudconfig_schema(cfg, get_schema(), strict=True)
    run_cloud_init(rootfs, user_data)

    status = json.loads((rootfs / "run/cloud-init/status.json").read_text())["v1"]
    for stage in ("init-local", "init", "modules-config", "modules-final"):
        assert status[stage]["errors"] == [], (stage, status[stage])
    result = json.loads((rootfs / "run/cloud-init/result.json").read_text())["v1"]
    assert result["errors"] == []
    assert "NoCloud" in result["datasource"]

    # Identity.
    assert (rootfs / "etc/hostname").read_text().strip() == "worker-7"
    assert "127.0.1.1 worker-7.home.arpa worker-7" in (rootfs / "etc/hosts").read_text()
    assert (rootfs / "etc/timezone").read_text().strip() == "Europe/Berlin"

    # The admin user: shell, groups, locked password, keys, sudo.
    passwd = {line.split(":")[0]: line for line in (rootfs / "etc/passwd").read_text().splitlines()}
    assert passwd["fabric"].endswith(":/home/fabric:/bin/bash")
    groups = {
        line.split(":")[0]: line.split(":")[3].split(",")
        for line in (rootfs / "etc/group").read_text().splitlines()
    }
    assert "fabric" in groups["sudo"]
    assert "fabric" in groups["adm"]
    shadow = {line.split(":")[0]: line for line in (rootfs / "etc/shadow").read_text().splitlines()}
    assert shadow["fabric"].split(":")[1].startswith("!"), "lock_passwd"
    keys = (rootfs / "home/fabric/.ssh/authorized_keys").read_text().splitlines()
    assert sorted(keys) == sorted(KEYS)
    sudoers = (rootfs / "etc/sudoers.d/90-cloud-init-users").read_text()
    assert "fabric ALL=(ALL) NOPASSWD:ALL" in sudoers
    assert "PasswordAuthentication no" in (rootfs / "etc/ssh/sshd_config").read_text()

    # Files from the base and the k3s-node role, secrets as Terraform filled them in.
    machine = json.loads((rootfs / "etc/fabric/machine.json").read_text())
    assert machine == nixos.machine_facts(facts)
    k3s = rootfs / "etc/rancher/k3s"
    assert (k3s / "token").read_text() == TOKEN
    assert (k3s / "server-url").read_text() == URL
    assert oct((k3s / "token").stat().st_mode & 0o777) == "0o600"
    assert "token-file: /etc/rancher/k3s/token" in (k3s / "config.yaml").read_text()

    # Claim strings came through a file, list-form commands and a shell, unchanged.
    assert (rootfs / "etc/fabric/proof-file").read_text() == NASTY
    assert (rootfs / "root" / f"touched {NASTY.replace('/', '_')}").exists()
    assert (rootfs / "root/proof-shell").read_text() == NASTY

    # cloud-init quoted every list-form entry into its runcmd script word for word.
    instance = rootfs / "var/lib/cloud/instances" / INSTANCE
    script = (instance / "scripts/runcmd").read_text()
    assert script.startswith("#!/bin/sh\n")
    assert [shlex.split(line) for line in _commands(script)] == cfg["runcmd"]


def _commands(script: str) -> list[str]:
    # Each command is one line unless a quoted argument holds a newline: join those back.
    lines = script.splitlines()[1:]
    commands: list[str] = []
    for line in lines:
        if commands and _unbalanced(commands[-1]):
            commands[-1] += "\n" + line
        else:
            commands.append(line)
    return commands


def _unbalanced(text: str) -> bool:
    try:
        shlex.split(text)
    except ValueError:
        return True
    return False


def test_devices_and_docker_host_apply(rootfs: Path) -> None:
    facts = GuestFacts(
        machine="infra-machines/gpu-worker-1",
        hostname="gpu-worker-1",
        admin_user="fabric",
        ssh_keys=KEYS[:1],
        timezone="UTC",
        os_family="debian",
        roles=("docker-host",),
        devices=(
            DeviceFact("gpu-nvidia", "rtx3070", "pci", ("10de:2484", "10de:228b"), "RTX 3070"),
            DeviceFact("coral-tpu", "coral", "usb", ("1a6e:089a",), "Coral USB Accelerator"),
        ),
    )
    user_data = compose(facts)
    cfg = yaml.safe_load(user_data)
    # apt-configure writes source lists without the network; installing and the setup scripts
    # need it, so the final stage only runs what is harmless here.
    cloud_cfg = {
        **TEST_CLOUD_CFG,
        "cloud_config_modules": ["apt-configure", "timezone", "runcmd"],
        "cloud_final_modules": ["final-message"],
    }
    run_cloud_init(rootfs, user_data, cloud_cfg)

    groups = {
        line.split(":")[0]: line.split(":")[3].split(",")
        for line in (rootfs / "etc/group").read_text().splitlines()
    }
    for group in ("adm", "docker", "plugdev", "render", "sudo", "video"):
        assert "fabric" in groups[group], group
    nonfree = (rootfs / "etc/apt/sources.list.d/fabric-debian-nonfree.list").read_text()
    # cloud-init filled in $MIRROR (its Debian default) and $RELEASE.
    assert re.fullmatch(
        rf"deb https?://\S+/debian {SUITE} contrib non-free non-free-firmware\n", nonfree
    )
    rules = (rootfs / "etc/udev/rules.d/71-fabric-coral-tpu.rules").read_text()
    for vendor, product in (("1a6e", "089a"), ("18d1", "9302")):
        assert (
            f'ATTRS{{idVendor}}=="{vendor}", ATTRS{{idProduct}}=="{product}", GROUP="plugdev"'
            in rules
        )
    for name in ("coral-tpu", "gpu-nvidia", "docker-host"):
        script = rootfs / f"var/lib/fabric/setup/{name}.sh"
        assert oct(script.stat().st_mode & 0o777) == "0o755", name
    runcmd = (rootfs / "var/lib/cloud/instances" / INSTANCE / "scripts/runcmd").read_text()
    assert [shlex.split(line) for line in _commands(runcmd)] == cfg["runcmd"]
