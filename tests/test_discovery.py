"""fabric-discover against recorded Proxmox VE answers served on loopback.

A real HTTP(S) server on 127.0.0.1 answers like pveproxy does: it checks the
`Authorization: PVEAPIToken=...` header and returns `{"data": ...}` from
tests/fixtures/proxmox (a 5-node homelab cluster). The real CLI (click's runner)
drives proxmoxer against it, over plain HTTP and over TLS with a self-signed
certificate. The merge rules are also exercised directly on records, table-driven.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from click.testing import CliRunner, Result

from fabric_discover import DiscoveryError
from fabric_discover.cli import cli
from fabric_discover.merge import build_inventory, load_overrides
from fabric_discover.proxmox import (
    Cluster,
    Drive,
    Guest,
    MapEntry,
    Mapping,
    NodeInfo,
    PciFunction,
    Storage,
    UsbDevice,
    boot_disk,
    parse_disk_size,
    parse_property_string,
)
from function.model import Inventory
from tools import fakeproxmox
from tools.fakeproxmox import FakeProxmox

FIXTURES = Path(__file__).parent / "fixtures" / "proxmox"
OVERRIDES = FIXTURES / "overrides.yaml"
USER, TOKEN_NAME, SECRET = "fabric@pve", "discover", "5e0c9a7d-3b1f-4c2a-9d8e-7f6a5b4c3d2e"
TOKEN = f"{USER}!{TOKEN_NAME}={SECRET}"
WRONG_SECRET = "0badc0de-0000-4000-8000-00000000beef"
API_PREFIX = "/api2/json"
NOT_REACHABLE = (595, "No route to host")

# proxmoxer silences urllib3's warning at import; pytest restores warning filters per test.
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


# --- a loopback Proxmox VE API (tools/fakeproxmox.py) ---------------------------------------------


@pytest.fixture(scope="session")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1."""
    return fakeproxmox.tls_context(tmp_path_factory.mktemp("tls"))


def _serve(fake: FakeProxmox, context: ssl.SSLContext | None) -> Iterator[FakeProxmox]:
    with fakeproxmox.serve(fake, context) as served:
        yield served


@pytest.fixture(params=["http", "https"])
def api(request: pytest.FixtureRequest, tls_context: ssl.SSLContext) -> Iterator[FakeProxmox]:
    """The recorded cluster, over plain HTTP and over TLS."""
    context = tls_context if request.param == "https" else None
    yield from _serve(FakeProxmox.recorded(TOKEN), context)


@pytest.fixture
def plain() -> Iterator[FakeProxmox]:
    """The recorded cluster over plain HTTP, for tests about content rather than transport."""
    yield from _serve(FakeProxmox.recorded(TOKEN), None)


@pytest.fixture
def tls(tls_context: ssl.SSLContext) -> Iterator[FakeProxmox]:
    """The recorded cluster over TLS only."""
    yield from _serve(FakeProxmox.recorded(TOKEN), tls_context)


def discover(
    fake: FakeProxmox,
    *args: str,
    overrides: Path | None = OVERRIDES,
    env: dict[str, str] | None = None,
    verify: bool = False,
) -> Result:
    """Run the real command against the fake API; the token comes from the environment."""
    argv = ["--host", "127.0.0.1", "--port", str(fake.port), "--protocol", fake.protocol]
    if fake.protocol == "https" and not verify:
        argv.append("--no-verify-ssl")
    if overrides is not None:
        argv += ["--overrides", str(overrides)]
    environment = {"PROXMOX_VE_API_TOKEN": TOKEN} if env is None else env
    return CliRunner().invoke(cli, [*argv, *args], env=environment, catch_exceptions=False)


def inventory_of(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    configmap = yaml.safe_load(result.stdout)
    return yaml.safe_load(configmap["data"]["inventory.yaml"])


def node_of(inventory: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in inventory["nodes"] if n["name"] == name)


def assert_no_secret(result: Result, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in result.stdout
        assert secret not in result.stderr


# --- the recorded homelab ------------------------------------------------------------------------


def test_prints_the_inventory_configmap(api: FakeProxmox) -> None:
    result = discover(api, "--name", "homelab-inventory", "--namespace", "infra")

    assert result.exit_code == 0, result.output
    configmap = yaml.safe_load(result.stdout)
    assert configmap["apiVersion"] == "v1"
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"]["name"] == "homelab-inventory"
    assert configmap["metadata"]["namespace"] == "infra"
    assert configmap["metadata"]["labels"] == {"fabric.homelab.io/inventory": "homelab"}
    assert list(configmap["data"]) == ["inventory.yaml"]
    inventory = Inventory.model_validate(yaml.safe_load(configmap["data"]["inventory.yaml"]))
    assert [n.name for n in inventory.nodes] == [
        "chief-horse",
        "fun-bedbug",
        "pumped-piglet",
        "pve",
        "still-fawn",
    ]
    assert_no_secret(result, SECRET)


def test_hardware_is_read_only_where_a_mapping_needs_it(plain: FakeProxmox) -> None:
    inventory_of(discover(plain))

    # Hardware is listed only on nodes that a mapping of that bus points at.
    assert sorted(p for p in plain.requests if "/hardware/" in p) == [
        "/nodes/chief-horse/hardware/usb",
        "/nodes/fun-bedbug/hardware/usb",
        "/nodes/pumped-piglet/hardware/pci",
        "/nodes/still-fawn/hardware/pci",
    ]


DEVICES = [
    (
        "still-fawn",
        {
            "mapping": "rtx3070",
            "class": "gpu-nvidia",  # guessed: NVIDIA display controller, no class in overrides
            "bus": "pci",
            "address": "0000:01:00.0",
            "ids": ["10de:2484", "10de:228b"],  # the whole device: GPU and HDMI audio
            "model": "NVIDIA GeForce RTX 3070",
            "pcie": True,
        },
    ),
    (
        "fun-bedbug",
        {
            "mapping": "coral-usb",
            "class": "coral-tpu",
            "bus": "usb",
            "address": "2-1",
            "ids": ["1a6e:089a"],
            "model": "Google Coral USB Accelerator",
        },
    ),
]


@pytest.mark.parametrize(("node", "device"), DEVICES, ids=["gpu", "coral"])
def test_devices_are_resource_mappings_on_their_node(
    api: FakeProxmox, node: str, device: dict[str, Any]
) -> None:
    inventory = inventory_of(discover(api))

    assert node_of(inventory, node)["devices"] == [device]


@pytest.mark.parametrize(
    ("mapping", "node"), [("sas-hba", "pumped-piglet"), ("zigbee", "chief-horse")]
)
def test_a_mapping_without_a_class_is_left_out_with_a_warning(
    plain: FakeProxmox, mapping: str, node: str
) -> None:
    result = discover(plain)
    inventory = inventory_of(result)

    placed = [d["mapping"] for n in inventory["nodes"] for d in n.get("devices", [])]
    assert placed == ["coral-usb", "rtx3070"]
    assert f"mapping {mapping} on {node}: device class unknown" in result.stderr
    assert f"set overrides devices.{mapping}.class" in result.stderr


def test_a_class_from_the_overrides_brings_a_mapping_in(plain: FakeProxmox, tmp_path: Path) -> None:
    overrides = yaml.safe_load(OVERRIDES.read_text())
    overrides["devices"]["sas-hba"] = {"class": "hba"}
    path = tmp_path / "overrides.yaml"
    path.write_text(yaml.safe_dump(overrides))

    inventory = inventory_of(discover(plain, overrides=path))

    hba = node_of(inventory, "pumped-piglet")["devices"]
    assert hba == [
        {
            "mapping": "sas-hba",
            "class": "hba",
            "bus": "pci",
            "address": "0000:01:00.0",
            "ids": ["1000:0072"],
            "model": "Broadcom / LSI SAS2008 PCI-Express Fusion-MPT SAS-2 [Falcon]",
            "pcie": True,
        }
    ]


NODES = [
    # name, schedulable, reason, cpu, memory (MemTotal rounded down to MiB), reservedMemory
    ("chief-horse", False, "haos-host", 4, "15733Mi", "2Gi"),
    ("fun-bedbug", True, None, 4, "15858Mi", "2Gi"),
    ("pumped-piglet", True, None, 12, "32011Mi", "4Gi"),
    ("pve", True, None, 8, "31859Mi", "4Gi"),
    ("still-fawn", True, None, 16, "64216Mi", "4Gi"),
]


@pytest.mark.parametrize("row", NODES, ids=[row[0] for row in NODES])
def test_nodes(plain: FakeProxmox, row: tuple[str, bool, str | None, int, str, str]) -> None:
    name, schedulable, reason, cpu, memory, reserved = row
    node = node_of(inventory_of(discover(plain)), name)

    assert node["schedulable"] is schedulable
    assert node.get("reason") == reason
    assert (node["cpu"], node["memory"], node["reservedMemory"]) == (cpu, memory, reserved)
    assert node["snippetsDatastore"] == "local"
    # Only storage that takes VM disks; the shared backup NFS store never qualifies.
    assert node["storage"] in (["local-zfs"], ["local-lvm"])


def test_unmanaged_guests_are_everything_not_tagged_fabric(api: FakeProxmox) -> None:
    inventory = inventory_of(discover(api))

    assert inventory["unmanaged"] == [
        {
            "vmid": 101,
            "name": "opnsense",
            "node": "pve",
            "kind": "qemu",
            "cpu": 2,
            "memory": "4096Mi",
        },
        {"vmid": 102, "name": "maas", "node": "pve", "kind": "qemu", "cpu": 2, "memory": "4096Mi"},
        {
            "vmid": 105,
            "name": "k3s-vm-still-fawn",
            "node": "still-fawn",
            "kind": "qemu",
            "cpu": 8,
            "memory": "32768Mi",
        },
        {
            "vmid": 106,
            "name": "k3s-vm-pumped-piglet-gpu",
            "node": "pumped-piglet",
            "kind": "qemu",
            "cpu": 8,  # 2 sockets of 4 cores: the list says cpus 8
            "memory": "20480Mi",
        },
        {
            "vmid": 107,
            "name": "k3s-vm-pve",
            "node": "pve",
            "kind": "qemu",
            "cpu": 4,
            "memory": "8192Mi",
        },
        {
            "vmid": 113,
            "name": "frigate",
            "node": "fun-bedbug",
            "kind": "lxc",
            "cpu": 2,
            "memory": "4096Mi",
        },
        {
            "vmid": 116,
            "name": "haos",
            "node": "chief-horse",
            "kind": "qemu",
            "cpu": 2,
            "memory": "6144Mi",
        },
    ]


def test_the_fabric_tagged_vm_is_absent(plain: FakeProxmox) -> None:
    result = discover(plain)
    inventory = inventory_of(result)

    assert 210 not in [g["vmid"] for g in inventory["unmanaged"]]
    assert 210 not in inventory["reservedVmids"]
    assert "gpu-worker-1" not in result.stdout


def test_templates_feed_images_only_where_the_overrides_say(plain: FakeProxmox) -> None:
    inventory = inventory_of(discover(plain))

    assert inventory["images"] == {
        "debian-12": {
            "os": "debian",
            "templates": {
                "fun-bedbug": 9003,
                "pumped-piglet": 9002,
                "pve": 9000,
                "still-fawn": 9001,
            },
            # scsi0 from qm importdisk; 9002 says 3072M, 9003 the legacy `boot: c` + bootdisk.
            "bootDisk": {"interface": "scsi0", "size": "3Gi"},
            "minDisk": "8Gi",
        },
        "nixos": {
            "os": "nixos",
            "templates": {
                "fun-bedbug": 9023,
                "pumped-piglet": 9022,
                "pve": 9020,
                "still-fawn": 9021,
            },
            "bootDisk": {"interface": "virtio0", "size": "8Gi"},  # nixpkgs' proxmox-image
            "minDisk": "16Gi",
        },
        "ubuntu-24.04": {
            "os": "ubuntu",
            "templates": {
                "fun-bedbug": 9013,
                "pumped-piglet": 9012,
                "pve": 9010,
                "still-fawn": 9011,
            },
            # 9011 lists its cloud-init drive first; 9013's 4608M disk is the largest.
            "bootDisk": {"interface": "virtio0", "size": "5Gi"},
            "minDisk": "8Gi",
        },
    }
    # Every template holds its VMID, the unmapped Windows one included.
    assert inventory["reservedVmids"] == [
        9000, 9001, 9002, 9003, 9010, 9011, 9012, 9013, 9020, 9021, 9022, 9023, 9100,
    ]  # fmt: skip


def test_catalogs_are_copied_from_the_overrides(plain: FakeProxmox) -> None:
    inventory = inventory_of(discover(plain))
    overrides = yaml.safe_load(OVERRIDES.read_text())

    for key in ("networks", "classes", "vmids", "overcommit", "scoring"):
        assert inventory[key] == overrides[key], key
    assert inventory["deviceClasses"]["gpu"]["matches"] == ["gpu-nvidia", "gpu-amd"]


# --- boot disks of the image templates -----------------------------------------------------------

TEMPLATE_CONFIGS = [
    "/nodes/fun-bedbug/qemu/9003/config",
    "/nodes/fun-bedbug/qemu/9013/config",
    "/nodes/fun-bedbug/qemu/9023/config",
    "/nodes/pumped-piglet/qemu/9002/config",
    "/nodes/pumped-piglet/qemu/9012/config",
    "/nodes/pumped-piglet/qemu/9022/config",
    "/nodes/pumped-piglet/qemu/9100/config",
    "/nodes/pve/qemu/9000/config",
    "/nodes/pve/qemu/9010/config",
    "/nodes/pve/qemu/9020/config",
    "/nodes/still-fawn/qemu/9001/config",
    "/nodes/still-fawn/qemu/9011/config",
    "/nodes/still-fawn/qemu/9021/config",
]


def _overrides_with(tmp_path: Path, image: str, **fields: Any) -> Path:
    overrides = yaml.safe_load(OVERRIDES.read_text())
    overrides["images"][image].update(fields)
    path = tmp_path / "overrides.yaml"
    path.write_text(yaml.safe_dump(overrides))
    return path


def test_only_vm_template_configs_are_read(plain: FakeProxmox) -> None:
    inventory_of(discover(plain))

    # Every VM template (the Windows one too), never a running guest's or a container's.
    assert sorted(p for p in plain.requests if p.endswith("/config")) == TEMPLATE_CONFIGS


def test_templates_of_different_sizes_give_the_largest(plain: FakeProxmox) -> None:
    result = discover(plain)

    ubuntu = inventory_of(result)["images"]["ubuntu-24.04"]
    assert ubuntu["bootDisk"] == {"interface": "virtio0", "size": "5Gi"}  # 4608M, rounded up
    assert (
        "images.ubuntu-24.04: its templates' virtio0 disks differ in size (4Gi: 9012 on "
        "pumped-piglet, 9010 on pve, 9011 on still-fawn; 5Gi: 9013 on fun-bedbug); "
        "bootDisk.size is the largest, 5Gi"
    ) in result.stderr
    assert "images.debian-12" not in result.stderr  # 3G and 3072M agree
    assert "images.nixos" not in result.stderr  # 8G and 8388608K agree


def test_templates_that_boot_from_different_disks_leave_boot_disk_out(
    plain: FakeProxmox,
) -> None:
    config = plain.answers["/nodes/pumped-piglet/qemu/9022/config"]
    disk = config.pop("virtio0").replace("size=8388608K", "size=10G")
    config |= {"boot": "order=scsi0;net0", "scsi0": disk, "scsihw": "virtio-scsi-single"}

    result = discover(plain)
    inventory = inventory_of(result)

    assert "bootDisk" not in inventory["images"]["nixos"]
    assert (
        "warning: images.nixos: its templates boot from different disks (scsi0: 9022 on "
        "pumped-piglet; virtio0: 9023 on fun-bedbug, 9020 on pve, 9021 on still-fawn); "
        "the catalog holds one boot disk per image, so bootDisk is left out"
    ) in result.stderr
    assert "set overrides images.nixos.bootDisk.interface" in result.stderr
    # The other images are not affected.
    assert inventory["images"]["debian-12"]["bootDisk"] == {"interface": "scsi0", "size": "3Gi"}


def test_the_overrides_choose_the_interface_and_discovery_the_size(
    plain: FakeProxmox, tmp_path: Path
) -> None:
    config = plain.answers["/nodes/pumped-piglet/qemu/9022/config"]
    disk = config.pop("virtio0").replace("size=8388608K", "size=10G")
    config |= {"boot": "order=scsi0;net0", "scsi0": disk}
    path = _overrides_with(tmp_path, "nixos", bootDisk={"interface": "virtio0"})

    result = discover(plain, overrides=path)

    # The size is that of the virtio0 templates: 9022's 10G scsi0 disk is another disk.
    nixos = inventory_of(result)["images"]["nixos"]
    assert nixos["bootDisk"] == {"interface": "virtio0", "size": "8Gi"}
    assert (
        "overrides images.nixos.bootDisk.interface is virtio0, but template 9022 on "
        "pumped-piglet boots from scsi0: its clones would boot from a new, empty virtio0 disk"
    ) in result.stderr
    assert "boot from different disks" not in result.stderr


def test_a_boot_disk_in_the_overrides_wins_as_written(plain: FakeProxmox, tmp_path: Path) -> None:
    path = _overrides_with(tmp_path, "ubuntu-24.04", bootDisk={"interface": "scsi0", "size": "4Gi"})

    result = discover(plain, overrides=path)
    inventory = inventory_of(result)

    assert inventory["images"]["ubuntu-24.04"]["bootDisk"] == {"interface": "scsi0", "size": "4Gi"}
    assert "overrides images.ubuntu-24.04.bootDisk.interface is scsi0, but template" in (
        result.stderr
    )
    assert "differ in size" not in result.stderr  # nothing was taken from the templates
    Inventory.model_validate(inventory)


def test_a_boot_disk_smaller_than_a_template_s_is_reported(
    plain: FakeProxmox, tmp_path: Path
) -> None:
    path = _overrides_with(tmp_path, "ubuntu-24.04", bootDisk={"size": "4Gi"})

    result = discover(plain, overrides=path)

    ubuntu = inventory_of(result)["images"]["ubuntu-24.04"]
    assert ubuntu["bootDisk"] == {"interface": "virtio0", "size": "4Gi"}
    assert (
        "overrides images.ubuntu-24.04.bootDisk.size is 4Gi, smaller than the virtio0 disk of "
        "template 9013 on fun-bedbug"
    ) in result.stderr


def test_a_template_whose_config_cannot_be_read(plain: FakeProxmox) -> None:
    plain.failures["/nodes/pve/qemu/9020/config"] = (403, "Permission check failed (VM.Audit)")

    result = discover(plain)

    nixos = inventory_of(result)["images"]["nixos"]
    assert nixos["bootDisk"] == {"interface": "virtio0", "size": "8Gi"}  # from the other three
    assert (
        "images.nixos: boot disk of template 9020 on pve unknown "
        "(GET /nodes/pve/qemu/9020/config: 403"
    ) in result.stderr


def test_a_template_without_a_boot_disk_is_named(plain: FakeProxmox) -> None:
    for vmid, node in ((9020, "pve"), (9021, "still-fawn"), (9022, "pumped-piglet")):
        plain.answers[f"/nodes/{node}/qemu/{vmid}/config"]["boot"] = "order=ide2;net0"
    plain.answers["/nodes/fun-bedbug/qemu/9023/config"]["boot"] = "order=net0"

    result = discover(plain)

    assert "bootDisk" not in inventory_of(result)["images"]["nixos"]
    assert (
        "images.nixos: boot disk of template 9020 on pve unknown (GET "
        "/nodes/pve/qemu/9020/config: boot order=ide2;net0 names no disk"
    ) in result.stderr
    assert "images.nixos: no template's boot disk is known; bootDisk left out" in result.stderr
    assert "set overrides images.nixos.bootDisk" in result.stderr


def _reverse_lists(value: Any) -> Any:
    if isinstance(value, list):
        return [_reverse_lists(v) for v in reversed(value)]
    if isinstance(value, dict):
        return {k: _reverse_lists(v) for k, v in reversed(value.items())}
    return value


def test_output_is_byte_identical_whatever_order_the_api_answers_in(plain: FakeProxmox) -> None:
    first = discover(plain)
    second = discover(plain)
    # Proxmox lists mappings in Perl hash order: the answer order must not matter.
    plain.answers = {path: _reverse_lists(data) for path, data in plain.answers.items()}
    third = discover(plain)

    assert first.exit_code == 0, first.output
    assert first.stdout == second.stdout == third.stdout
    assert first.stderr == second.stderr == third.stderr


def test_without_overrides_the_cluster_alone_is_enough(plain: FakeProxmox) -> None:
    result = discover(plain, overrides=None)
    inventory = inventory_of(result)

    assert all(n["schedulable"] for n in inventory["nodes"])  # nobody said haos-host
    assert inventory["vmids"] == {"start": 200, "end": 399}
    assert "overrides give no vmids" in result.stderr
    assert "images" not in inventory
    devices = [d["mapping"] for n in inventory["nodes"] for d in n.get("devices", [])]
    assert devices == ["coral-usb", "rtx3070"]  # both classes are guessed
    Inventory.model_validate(inventory)


# --- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["env", "flags"])
def test_a_wrong_token_fails_clearly_without_printing_it(api: FakeProxmox, via: str) -> None:
    if via == "env":
        result = discover(api, env={"PROXMOX_VE_API_TOKEN": f"{USER}!{TOKEN_NAME}={WRONG_SECRET}"})
    else:
        flags = ["--user", USER, "--token-name", TOKEN_NAME, "--token-value", WRONG_SECRET]
        result = discover(api, *flags, env={})

    assert result.exit_code == 1
    assert "GET /version: 401" in result.stderr
    assert "the API token was refused" in result.stderr
    assert result.stdout == ""
    assert_no_secret(result, WRONG_SECRET, SECRET)


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        ({}, [], "missing --user, --token-name, --token-value"),
        ({}, ["--user", USER, "--token-name", TOKEN_NAME], "missing --token-value"),
        ({"PROXMOX_VE_API_TOKEN": SECRET}, [], "must look like user@realm!tokenid=secret"),
        ({"PROXMOX_VE_API_TOKEN": f"{USER}={SECRET}"}, [], "must look like"),
    ],
    ids=["nothing", "no-value", "bare-secret", "no-token-id"],
)
def test_token_usage_errors(
    plain: FakeProxmox, env: dict[str, str], args: list[str], expected: str
) -> None:
    result = discover(plain, *args, env=env)

    assert result.exit_code == 2
    assert expected in result.stderr
    assert_no_secret(result, SECRET)
    assert plain.requests == []


def test_flags_override_the_environment(plain: FakeProxmox) -> None:
    result = discover(
        plain,
        "--token-value",
        SECRET,
        env={"PROXMOX_VE_API_TOKEN": f"{USER}!{TOKEN_NAME}={WRONG_SECRET}"},
    )

    inventory_of(result)
    assert_no_secret(result, SECRET, WRONG_SECRET)


BROKEN_OVERRIDES = [
    ("nodes:\n  chief-horse:\n    schedulable: maybe\n", "nodes.chief-horse.schedulable: 'maybe'"),
    ("nodes:\n  chief-horse:\n    schedulabel: false\n", "nodes.chief-horse.schedulabel: unknown"),
    (
        "nodes:\n  chief-hose:\n    schedulable: false\n",
        "overrides nodes.chief-hose: no node of that name in the cluster",
    ),
    ("nodes:\n  pve:\n    reservedMemory: 4GB\n", "nodes.pve.reservedMemory: '4GB' is invalid"),
    ("nodes:\n  pve:\n    reservedMemory: 1000\n", "nodes.pve.reservedMemory: 1000 is invalid"),
    ("nodes:\n  pve:\n    reason: busy\n", "nodes.pve: {'reason': 'busy'} is invalid"),
    (
        "nodes:\n  pve:\n    defaultStorage: nas-backup\n",
        "overrides nodes.pve.defaultStorage: 'nas-backup' is not a VM disk storage of pve",
    ),
    ("devices:\n  rtx3070:\n    class: GPU!\n", "devices.rtx3070.class: 'GPU!' is invalid"),
    (
        "devices:\n  rtx3070:\n    node: pve\n",
        "overrides devices.rtx3070.node: 'pve' has no entry in pci mapping rtx3070",
    ),
    ("images:\n  debian-12:\n    os: windows\n    templateName: w\n", "images.debian-12.os"),
    ("images:\n  debian-12:\n    os: debian\n", "templates (node: VMID) or templateName"),
    ("images:\n  debian-12:\n    os: debian\n    templates: {pve: 42}\n", "templates.pve: 42"),
    (
        "images:\n  nixos: {os: nixos, templateName: n, bootDisk: {interface: nvme0}}\n",
        "images.nixos.bootDisk.interface: 'nvme0' is invalid",
    ),
    (
        "images:\n  nixos: {os: nixos, templateName: n, bootDisk: {size: 2560Mi}}\n",
        "images.nixos.bootDisk.size: '2560Mi' is invalid: accepted: a positive whole number",
    ),
    (
        "images:\n  nixos: {os: nixos, templateName: n, bootDisk: {slot: virtio0}}\n",
        "images.nixos.bootDisk.slot: unknown field",
    ),
    ("networks:\n  lan:\n    bridge: vmbr0\n    gateway: 10.0.0.1\n", "networks.lan: "),
    ("classes:\n  small: {cpu: 2, memory: 4Gi}\n", "classes.small.disk: is required"),
    ("vmids: {start: 50, end: 60}\n", "vmids.start: 50 is invalid"),
    ("scoring: random\n", "scoring: 'random' is invalid"),
    ("templates:\n  roles/K3s: x\n", "templates.roles/K3s"),
    ("nodes: [pve]\n", "nodes: ['pve'] is invalid"),
    ("nodes:\n  pve: {}\n  pve: {}\n", "duplicate key 'pve'"),
    ("- a\n- list\n", "expected a mapping of sections"),
    ("nodes: {pve: {cpu: [}\n", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN_OVERRIDES)
def test_broken_overrides_name_the_field(
    plain: FakeProxmox, tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "overrides.yaml"
    path.write_text(text)

    result = discover(plain, overrides=path)

    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert expected in result.stderr
    assert "overrides" in result.stderr


def test_the_merged_inventory_is_checked_against_the_model(
    plain: FakeProxmox, tmp_path: Path
) -> None:
    # Each override is fine alone; together the template sits inside the VMID range.
    path = tmp_path / "overrides.yaml"
    path.write_text(
        "vmids: {start: 9000, end: 9999}\n"
        "images:\n  debian-12: {os: debian, templateName: debian-12-cloud}\n"
    )

    result = discover(plain, overrides=path)

    assert result.exit_code == 1
    assert "the merged inventory is not valid" in result.stderr
    assert "lie inside vmids 9000-9999" in result.stderr


def _take_offline(fake: FakeProxmox, node: str, *, size_known: bool) -> None:
    """What the API says about a node that is down: little in /nodes, stale resources."""
    fake.answers["/nodes"] = [
        {"id": f"node/{node}", "node": node, "status": "offline", "type": "node"}
        if item["node"] == node
        else item
        for item in fake.answers["/nodes"]
    ]
    resources = [_offline_resource(i, node, size_known) for i in fake.answers["/cluster/resources"]]
    fake.answers["/cluster/resources"] = resources
    fake.failures[f"/nodes/{node}/"] = NOT_REACHABLE


def _offline_resource(item: dict[str, Any], node: str, size_known: bool) -> dict[str, Any]:
    if item.get("node") != node:
        return item
    if item["type"] == "node":
        size = {"maxcpu": item["maxcpu"], "maxmem": item["maxmem"]} if size_known else {}
        return {"id": item["id"], "node": node, "status": "offline", "type": "node"} | size
    if item["type"] in ("qemu", "lxc"):
        return item | {"status": "unknown"}
    return item


def test_an_offline_node_is_kept_unschedulable(plain: FakeProxmox) -> None:
    _take_offline(plain, "pumped-piglet", size_known=True)

    result = discover(plain)
    inventory = inventory_of(result)

    node = node_of(inventory, "pumped-piglet")
    assert (node["schedulable"], node["reason"]) == (False, "offline")
    assert (node["cpu"], node["memory"]) == (12, "32011Mi")  # the cluster's last report
    assert node["storage"] == ["local-zfs"]
    assert inventory["images"]["debian-12"]["templates"]["pumped-piglet"] == 9002
    # Its templates' configurations cannot be read; the other nodes' templates still tell.
    assert inventory["images"]["debian-12"]["bootDisk"] == {"interface": "scsi0", "size": "3Gi"}
    assert (
        "images.debian-12: boot disk of template 9002 on pumped-piglet unknown "
        "(pumped-piglet is offline, its configuration was not read)"
    ) in result.stderr
    assert plain.asked("/nodes/pumped-piglet/") == []
    # sas-hba still maps there, described from the mapping alone.
    assert "mapping sas-hba on pumped-piglet: device class unknown (1000:0072)" in result.stderr


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", "node pumped-piglet is offline and the API reported no CPU count"),
        ("    cpu: 12\n", "node pumped-piglet is offline and the API reported no memory size"),
        ("    cpu: 12\n    memory: 32Gi\n", None),
    ],
    ids=["nothing", "cpu-only", "cpu-and-memory"],
)
def test_an_offline_node_of_unknown_size_needs_the_overrides(
    plain: FakeProxmox, tmp_path: Path, extra: str, expected: str | None
) -> None:
    _take_offline(plain, "pumped-piglet", size_known=False)
    text = OVERRIDES.read_text().replace(
        "  pumped-piglet:\n    reservedMemory: 4Gi\n",
        f"  pumped-piglet:\n    reservedMemory: 4Gi\n{extra}",
    )
    path = tmp_path / "overrides.yaml"
    path.write_text(text)

    result = discover(plain, overrides=path)

    if expected is None:
        node = node_of(inventory_of(result), "pumped-piglet")
        assert (node["cpu"], node["memory"], node["reason"]) == (12, "32Gi", "offline")
    else:
        assert result.exit_code == 1
        assert expected in result.stderr
        assert "set overrides nodes.pumped-piglet." in result.stderr


@pytest.mark.parametrize(
    ("device_class", "expected"),
    [
        (None, None),  # no PCI class code to guess from: left out
        (
            "gpu-nvidia",
            {
                "mapping": "rtx3070",
                "class": "gpu-nvidia",
                "bus": "pci",
                "address": "0000:01:00.0",
                "ids": ["10de:2484"],  # the mapping knows only the first function
                "model": "NVIDIA GeForce RTX 3070",
                "pcie": True,
            },
        ),
    ],
    ids=["guess", "override"],
)
def test_a_token_that_cannot_list_hardware_falls_back_to_the_mapping(
    plain: FakeProxmox, tmp_path: Path, device_class: str | None, expected: dict[str, Any] | None
) -> None:
    plain.failures["/nodes/still-fawn/hardware/pci"] = (
        403,
        "Permission check failed (/, Sys.Modify)",
    )
    overrides = yaml.safe_load(OVERRIDES.read_text())
    if device_class:
        overrides["devices"]["rtx3070"]["class"] = device_class
    path = tmp_path / "overrides.yaml"
    path.write_text(yaml.safe_dump(overrides))

    result = discover(plain, overrides=path)

    devices = node_of(inventory_of(result), "still-fawn").get("devices")
    assert devices == ([expected] if expected else None)
    assert "GET /nodes/still-fawn/hardware/pci: 403" in result.stderr
    assert "PVEAuditor" in result.stderr


def test_proxmox_7_has_no_mappings(plain: FakeProxmox) -> None:
    plain.answers["/version"] = {"release": "7.4", "repoid": "9abbeb0b", "version": "7.4-17"}

    result = discover(plain)
    inventory = inventory_of(result)

    assert all("devices" not in n for n in inventory["nodes"])
    assert "Proxmox VE 7.4-17 has no resource mappings" in result.stderr
    assert plain.asked("/cluster/mapping") == []


@pytest.mark.parametrize(
    ("path", "failure", "expected"),
    [
        ("/nodes", (500, "internal error"), "GET /nodes: 500 Internal Server Error"),
        ("/nodes/pve/storage", (500, "got timeout"), "GET /nodes/pve/storage: 500"),
        ("/nodes/pve/status", NOT_REACHABLE, "the node that serves this path is unreachable"),
        ("/cluster/mapping/usb", (403, "Permission check failed"), "GET /cluster/mapping/usb: 403"),
    ],
)
def test_api_errors_name_the_path(
    plain: FakeProxmox, path: str, failure: tuple[int, str], expected: str
) -> None:
    plain.failures[path] = failure

    result = discover(plain)

    assert result.exit_code == 1
    assert expected in result.stderr
    assert_no_secret(result, SECRET)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", "GET /version: the answer is not JSON"),
        (b'{"result": []}', "GET /version: the answer has no 'data' field"),
    ],
    ids=["html", "no-data"],
)
def test_a_server_that_is_not_proxmox(plain: FakeProxmox, body: bytes, expected: str) -> None:
    plain.answers["/version"] = body

    result = discover(plain)

    assert result.exit_code == 1
    assert expected in result.stderr


def test_no_visible_nodes_points_at_permissions(plain: FakeProxmox) -> None:
    plain.answers["/nodes"] = []  # what a token without Sys.Audit sees

    result = discover(plain)

    assert result.exit_code == 1
    assert "GET /nodes: no nodes visible; grant the token the PVEAuditor role" in result.stderr


def test_a_self_signed_certificate_needs_no_verify_ssl(tls: FakeProxmox) -> None:
    refused = discover(tls, verify=True)
    accepted = discover(tls, verify=False)

    assert refused.exit_code == 1
    assert "GET /version: TLS with 127.0.0.1" in refused.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr
    assert "use --no-verify-ssl" in refused.stderr
    inventory_of(accepted)
    assert "warning: the API's TLS certificate is not verified" in accepted.stderr


def test_an_unreachable_host_is_named() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fake = FakeProxmox(answers={}, token=TOKEN, port=port)

    result = discover(fake, "--timeout", "2")

    assert result.exit_code == 1
    assert f"GET /version: cannot reach 127.0.0.1:{port}" in result.stderr


# --- --apply against a loopback Kubernetes API ---------------------------------------------------


@dataclass
class FakeKube:
    status: int = 200
    seen: list[dict[str, Any]] = field(default_factory=list)


class _KubeHandler(BaseHTTPRequestHandler):
    server: _KubeServer

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        url = urlsplit(self.path)
        self.server.kube.seen.append(
            {
                "path": url.path,
                "query": parse_qs(url.query),
                "content_type": self.headers["Content-Type"],
                "authorization": self.headers.get("Authorization"),
                "body": body,
            }
        )
        status = self.server.kube.status
        answer = body if status == 200 else {"kind": "Status", "code": status}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class _KubeServer(ThreadingHTTPServer):
    kube: FakeKube


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    server = _KubeServer(("127.0.0.1", 0), _KubeHandler)
    server.kube = FakeKube()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "lab", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}
        ],
        "users": [{"name": "lab", "user": {"token": "kube-test-token"}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
        "current-context": "lab",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield server.kube
    server.shutdown()
    server.server_close()
    thread.join()


def test_apply_server_side_applies_the_same_configmap(plain: FakeProxmox, kube: FakeKube) -> None:
    printed = yaml.safe_load(discover(plain).stdout)

    result = discover(plain, "--apply")

    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "configmap crossplane-system/fabric-inventory applied" in result.stderr
    [request] = kube.seen
    assert request["path"] == "/api/v1/namespaces/crossplane-system/configmaps/fabric-inventory"
    assert request["query"] == {"fieldManager": ["fabric-discover"], "force": ["true"]}
    assert request["content_type"] == "application/apply-patch+yaml"
    assert request["authorization"] == "Bearer kube-test-token"
    assert request["body"] == printed


def test_apply_reports_a_refusal(plain: FakeProxmox, kube: FakeKube) -> None:
    kube.status = 403

    result = discover(plain, "--apply")

    assert result.exit_code == 1
    assert "applying configmap crossplane-system/fabric-inventory: 403" in result.stderr


# --- merge rules on records ----------------------------------------------------------------------


def _node(name: str, **hardware: Any) -> NodeInfo:
    storage = (
        Storage("local", frozenset({"snippets", "iso"})),
        Storage("local-lvm", frozenset({"images"})),
    )
    return NodeInfo(
        name=name, online=True, cpu=8, memory_bytes=32 << 30, storage=storage, **hardware
    )


GPU = PciFunction("0000:03:00.0", "1002", "73bf", "030000", "AMD", "Navi 21")
GPU_AUDIO = PciFunction("0000:03:00.1", "1002", "ab28", "040300", "AMD", "Navi 21 HDMI Audio")
CORAL_LOADED = UsbDevice("1-4", "18d1", "9302", "Google Inc.")


@dataclass(frozen=True)
class Case:
    """One mapping on a small cluster, and the device or warning it should give."""

    mapping: Mapping
    nodes: tuple[NodeInfo, ...] = (_node("a", pci=(GPU, GPU_AUDIO), usb=(CORAL_LOADED,)),)
    device: dict[str, Any] | None = None
    warning: str | None = None
    overrides: str = ""


def _pci(name: str, *entries: str) -> Mapping:
    parsed = [parse_property_string(e) for e in entries]
    return Mapping(
        name, "pci", "", tuple(MapEntry(p["node"], p.get("path"), p.get("id")) for p in parsed)
    )


def _usb(name: str, *entries: str) -> Mapping:
    mapping = _pci(name, *entries)
    return replace(mapping, bus="usb")


AMD = {"mapping": "navi", "class": "gpu-amd", "bus": "pci", "address": "0000:03:00.0"}
CASES = {
    "amd-whole-device": Case(
        _pci("navi", "node=a,path=0000:03:00,id=1002:73bf"),
        device=AMD | {"ids": ["1002:73bf", "1002:ab28"], "model": "AMD Navi 21", "pcie": True},
    ),
    "one-function-only": Case(
        _pci("navi", "node=a,path=0000:03:00.0,id=1002:73bf"),
        device=AMD | {"ids": ["1002:73bf"], "model": "AMD Navi 21", "pcie": True},
    ),
    "audio-is-not-a-gpu": Case(
        _pci("hdmi", "node=a,path=0000:03:00.1,id=1002:ab28"),
        warning="pci mapping hdmi on a: device class unknown (1002:ab28)",
    ),
    "stale-path": Case(
        _pci("navi", "node=a,path=0000:09:00.0,id=1002:73bf"),
        warning="pci mapping navi: a has no PCI device at 0000:09:00.0 (stale mapping?)",
    ),
    "pool-on-one-node": Case(
        _pci("navi", "node=a,path=0000:03:00.0;0000:04:00.0,id=1002:73bf"),
        device=AMD | {"ids": ["1002:73bf"], "model": "AMD Navi 21", "pcie": True},
        warning="pci mapping navi lists 2 devices on a; Proxmox takes the first free one",
    ),
    "several-nodes": Case(
        _pci("navi", "node=a,path=0000:03:00,id=1002:73bf", "node=b,path=0000:03:00,id=1002:73bf"),
        nodes=(_node("a", pci=(GPU,)), _node("b", pci=(GPU,))),
        warning="has entries on a, b; Fabric places a mapping on one node",
    ),
    "several-nodes-pinned": Case(
        _pci(
            "navi", "node=a,path=0000:03:00.0,id=1002:73bf", "node=b,path=0000:03:00,id=1002:73bf"
        ),
        nodes=(_node("a", pci=(GPU,)), _node("b", pci=(GPU,))),
        overrides="devices: {navi: {node: b, primaryGpu: true, pcie: false}}",
        device=AMD
        | {"ids": ["1002:73bf"], "model": "AMD Navi 21", "pcie": False}
        | {"primaryGpu": True},
    ),
    "uppercase-name": Case(
        _pci("Navi", "node=a,path=0000:03:00,id=1002:73bf"),
        warning="pci mapping Navi: Fabric needs a lowercase name",
    ),
    "unknown-node": Case(
        _pci("navi", "node=zz,path=0000:03:00,id=1002:73bf"),
        warning="pci mapping navi maps node zz, which is not in the cluster",
    ),
    "coral-by-port-after-firmware": Case(
        _usb("coral", "node=a,path=1-4,id=1a6e:089a"),
        device={
            "mapping": "coral",
            "class": "coral-tpu",
            "bus": "usb",
            "address": "1-4",
            "ids": ["1a6e:089a", "18d1:9302"],
            "model": "Google Inc.",
        },
    ),
    "coral-by-id-after-firmware": Case(
        _usb("coral", "node=a,id=1a6e:089a"),
        warning="no USB device 1a6e:089a on a now (a Coral changes its USB id",
    ),
    "quoted-description": Case(
        _pci("navi", 'node=a,description="left, top slot",path=0000:03:00.0,id=1002:73bf'),
        device=AMD | {"ids": ["1002:73bf"], "model": "AMD Navi 21", "pcie": True},
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_mapping_rules(case: Case) -> None:
    cluster = Cluster(version="8.3.0", nodes=case.nodes, guests=(), mappings=(case.mapping,))
    overrides = load_overrides(case.overrides + "\nvmids: {start: 200, end: 299}\n", "case")

    merged = build_inventory(cluster, overrides)

    devices = [d for n in merged.inventory["nodes"] for d in n.get("devices", [])]
    assert devices == ([case.device] if case.device else [])
    if case.warning:
        assert any(case.warning in w for w in merged.warnings), merged.warnings
    else:
        assert merged.warnings == ()
    Inventory.model_validate(merged.inventory)


GUESTS = (
    Guest(100, "router", "a", "qemu", 2, 2 << 30, frozenset({"net"})),
    Guest(101, "ct", "a", "lxc", 2, 512 << 20),
    Guest(102, "mine", "a", "qemu", 4, 8 << 30, frozenset({"fabric", "k3s"})),
    Guest(103, "odd", "a", "qemu", 1, (1 << 30) + 1),  # not a whole MiB: round up
    Guest(9000, "tpl", "a", "qemu", 2, 2 << 30, template=True),
    Guest(9001, "tpl", "a", "qemu", 2, 2 << 30, template=True),
    Guest(9100, "ct-tpl", "a", "lxc", 1, 512 << 20, template=True),
)


def test_guest_rules() -> None:
    cluster = Cluster("8.3.0", (_node("a"),), GUESTS, ())
    overrides = load_overrides(
        "vmids: {start: 200, end: 299}\nreservedVmids: [150]\n"
        "images:\n  deb: {os: debian, templateName: tpl}\n"
        "  ct: {os: debian, templateName: ct-tpl}\n",
        "case",
    )

    merged = build_inventory(cluster, overrides)

    inventory = merged.inventory
    assert [(g["vmid"], g["kind"], g.get("memory")) for g in inventory["unmanaged"]] == [
        (100, "qemu", "2048Mi"),
        (101, "lxc", "512Mi"),
        (103, "qemu", "1025Mi"),
    ]
    assert inventory["reservedVmids"] == [150, 9000, 9001, 9100]
    assert inventory["images"] == {"deb": {"os": "debian", "templates": {"a": 9000}}}
    assert any("2 templates named tpl on a (9000, 9001); using 9000" in w for w in merged.warnings)
    assert any("images.ct: no template found" in w for w in merged.warnings)  # LXC: not clonable


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ((Storage("local", frozenset({"snippets"})), Storage("lvm", frozenset({"images"}))), None),
        (
            (Storage("local", frozenset({"iso"})), Storage("lvm", frozenset({"images"}))),
            "no-snippets-datastore",
        ),
    ],
    ids=["snippets", "no-snippets"],
)
def test_a_node_without_snippets_storage_is_unschedulable(
    storage: tuple[Storage, ...], expected: str | None
) -> None:
    node = NodeInfo("a", online=True, cpu=4, memory_bytes=8 << 30, storage=storage)
    cluster = Cluster("8.3.0", (node,), (), ())

    merged = build_inventory(cluster, load_overrides("vmids: {start: 200, end: 299}", "case"))

    [entry] = merged.inventory["nodes"]
    assert entry.get("reason") == expected
    assert entry["schedulable"] is (expected is None)


def test_a_node_without_disk_storage_needs_the_overrides() -> None:
    node = NodeInfo("a", online=True, cpu=4, memory_bytes=8 << 30, storage=())
    cluster = Cluster("8.3.0", (node,), (), ())

    with pytest.raises(DiscoveryError, match=r"set overrides nodes\.a\.storage"):
        build_inventory(cluster, load_overrides("", "case"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "node=pve,path=0000:01:00,id=10de:2484",
            {"node": "pve", "path": "0000:01:00", "id": "10de:2484"},
        ),
        (
            'node=pve,description="a, \\"b\\"",id=1a6e:089a',
            {"node": "pve", "description": 'a, "b"', "id": "1a6e:089a"},
        ),
        ("node=pve,path=2-1.3", {"node": "pve", "path": "2-1.3"}),
    ],
)
def test_property_strings(text: str, expected: dict[str, str]) -> None:
    assert parse_property_string(text) == expected


def test_a_bad_property_string_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot parse"):
        parse_property_string("node=pve,garbage")


def test_loaded_overrides_keep_the_values_as_written() -> None:
    text = OVERRIDES.read_text()

    loaded = load_overrides(text, "overrides.yaml")

    assert loaded.raw == yaml.safe_load(text)
    assert loaded.typed.nodes["pve"].reserved_memory == "4Gi"
    assert copy.deepcopy(loaded.raw["networks"]["lan"]["pool"]) == {
        "start": "192.168.4.200",
        "end": "192.168.4.239",
    }


# --- boot disks from configurations, and merged per image ----------------------------------------

CLOUDINIT = "local-lvm:vm-9000-cloudinit,media=cdrom"
BOOT_DISKS = {
    "order-virtio0": (
        {"boot": "order=virtio0;net0", "virtio0": "local-zfs:base-9000-disk-0,size=8G"},
        Drive("virtio0", 8 << 30),
    ),
    "cloudinit-first": (
        {"boot": "order=ide2;scsi0;net0", "ide2": CLOUDINIT, "scsi0": "local-lvm:d,size=3G"},
        Drive("scsi0", 3 << 30),
    ),
    "cloudinit-without-media": (
        {
            "boot": "order=sata1;sata0",
            "sata1": "local:9000/vm-9000-cloudinit.qcow2",
            "sata0": "x:y",
        },
        Drive("sata0"),
    ),
    "iso-first": (
        {"boot": "order=ide2;scsi0", "ide2": "local:iso/d.iso,media=cdrom", "scsi0": "s:d,size=1T"},
        Drive("scsi0", 1 << 40),
    ),
    "missing-and-foreign-entries": (
        {"boot": "order=hostpci0;efidisk0;virtio3;usb0;scsi1", "efidisk0": "s:e,size=1M"}
        | {"scsi1": "file=s:vm-9000-disk-1,size=2252M"},
        Drive("scsi1", 2252 << 20),
    ),
    "legacy-bootdisk": (
        {"boot": "c", "bootdisk": "scsi0", "ide2": CLOUDINIT, "scsi0": "l:d,size=8388608K"},
        Drive("scsi0", 8 << 30),
    ),
    "legacy-key": (
        {"boot": "legacy=cdn", "bootdisk": "virtio0", "virtio0": "l:d,size=1.5G"},
        Drive("virtio0", 3 << 29),
    ),
    "bootdisk-without-boot": (
        {"bootdisk": "ide0", "ide0": "local-lvm:vm-9000-disk-0,size=34359738368"},
        Drive("ide0", 32 << 30),
    ),
    "order-beats-a-stale-bootdisk": (
        {"boot": "order=virtio0", "bootdisk": "scsi0", "scsi0": "l:a,size=2G"}
        | {"virtio0": "l:b,size=4G"},
        Drive("virtio0", 4 << 30),
    ),
    "one-disk-nothing-said": (
        {"ide2": CLOUDINIT, "virtio0": "/dev/disk/by-id/nvme-Samsung_SSD_980_1TB"},
        Drive("virtio0"),
    ),
}


@pytest.mark.parametrize(("config", "expected"), BOOT_DISKS.values(), ids=BOOT_DISKS.keys())
def test_the_boot_disk_of_a_config(config: dict[str, Any], expected: Drive) -> None:
    assert boot_disk(config) == expected


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"boot": "order=ide2;net0", "ide2": CLOUDINIT}, "order=ide2;net0 names no disk"),
        ({"boot": "order=scsi0", "scsi0": "none,media=cdrom"}, "order=scsi0 names no disk"),
        ({"boot": "c", "bootdisk": "scsi0"}, "bootdisk scsi0 is not a disk of this VM"),
        ({"boot": "cdn", "ide2": CLOUDINIT}, "the VM has no disk"),
        (
            {"scsi1": "l:a,size=2G", "scsi0": "l:b,size=2G"},
            "neither boot order nor bootdisk chooses among its disks (scsi0, scsi1)",
        ),
        ({"boot": "order=scsi0,garbage", "scsi0": "l:a"}, "is not a Proxmox boot setting"),
    ],
    ids=["cloudinit-only", "empty-cdrom", "missing-bootdisk", "no-disk", "two-disks", "garbled"],
)
def test_a_config_without_a_boot_disk_says_why(config: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError, match=re.escape(expected)):
        boot_disk(config)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8G", 8 << 30),
        ("2252M", 2252 << 20),
        ("8388608K", 8 << 30),
        ("2T", 2 << 40),
        ("1.5G", 3 << 29),
        ("4096", 4096),
        ("8GB", None),
        ("-1G", None),
    ],
)
def test_disk_sizes(text: str, expected: int | None) -> None:
    assert parse_disk_size(text) == expected


def _template(vmid: int, node: str, disk: Drive | None, problem: str = "") -> Guest:
    guest = Guest(vmid, "tpl", node, "qemu", 2, 2 << 30, template=True)
    return replace(guest, boot_disk=disk, boot_problem=problem) if problem or disk else guest


@dataclass(frozen=True)
class BootCase:
    """Templates a, b of one image, what the overrides add, and the bootDisk and warnings."""

    disks: tuple[Guest, ...]
    expected: dict[str, Any] | None
    warnings: tuple[str, ...] = ()
    boot_disk: str = ""


BOOT_CASES = {
    "agree": BootCase(
        (_template(9000, "a", Drive("virtio0", 8 << 30)), _template(9001, "b", Drive("virtio0"))),
        {"interface": "virtio0", "size": "8Gi"},
    ),
    "largest-rounded-up": BootCase(
        (
            _template(9000, "a", Drive("scsi0", 3 << 30)),
            _template(9001, "b", Drive("scsi0", (3 << 30) + 1)),
        ),
        {"interface": "scsi0", "size": "4Gi"},
        ("its templates' scsi0 disks differ in size (3Gi: 9000 on a; 4Gi: 9001 on b)",),
    ),
    "interfaces-differ": BootCase(
        (_template(9000, "a", Drive("scsi0", 3 << 30)), _template(9001, "b", Drive("virtio0"))),
        None,
        ("images.img: its templates boot from different disks (scsi0: 9000 on a; virtio0: 9001",),
    ),
    "interfaces-differ-size-given": BootCase(
        (_template(9000, "a", Drive("scsi0", 3 << 30)), _template(9001, "b", Drive("virtio0"))),
        {"size": "8Gi"},
        ("boot from different disks",),
        "{size: 8Gi}",
    ),
    "one-unknown": BootCase(
        (_template(9000, "a", Drive("virtio0", 8 << 30)), _template(9001, "b", None, "gone")),
        {"interface": "virtio0", "size": "8Gi"},
        ("images.img: boot disk of template 9001 on b unknown (gone)",),
    ),
    "all-unknown": BootCase(
        (_template(9000, "a", None), _template(9001, "b", None)),
        None,
        (
            "boot disk of template 9000 on a unknown (its configuration was not read)",
            "images.img: no template's boot disk is known; bootDisk left out",
        ),
    ),
    "all-unknown-given": BootCase(
        (_template(9000, "a", None), _template(9001, "b", None)),
        {"interface": "sata0", "size": 12884901888},
        boot_disk="{interface: sata0, size: 12884901888}",
    ),
    "no-size": BootCase(
        (_template(9000, "a", Drive("virtio0")),),
        {"interface": "virtio0"},
        ("no template states the size of its virtio0 disk",),
    ),
}


@pytest.mark.parametrize("case", BOOT_CASES.values(), ids=BOOT_CASES.keys())
def test_boot_disk_rules(case: BootCase) -> None:
    cluster = Cluster("8.3.0", (_node("a"), _node("b")), case.disks, ())
    given = f", bootDisk: {case.boot_disk}" if case.boot_disk else ""
    images = f"images:\n  img: {{os: nixos, templateName: tpl{given}}}\n"
    overrides = load_overrides(f"vmids: {{start: 200, end: 299}}\n{images}", "case")

    merged = build_inventory(cluster, overrides)

    image = merged.inventory["images"]["img"]
    assert image.get("bootDisk") == case.expected
    for warning in case.warnings:
        assert any(warning in w for w in merged.warnings), merged.warnings
    if not case.warnings:
        assert merged.warnings == ()
    Inventory.model_validate(merged.inventory)
