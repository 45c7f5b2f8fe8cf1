"""`fabric-discover --claims`: adoption claims for the recorded homelab, and the rules behind them.

The recorded cluster (tests/fixtures/proxmox, README.md there) is served on loopback as in
tests/test_discovery.py; the claims are checked whole, one table row per guest, then the rules
(what needs root, names, networks, sizes) are exercised on configurations directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from fabric_discover.claims import NEEDS_ROOT, adoption_claim, claim_names, dns_label
from fabric_discover.cli import cli
from fabric_discover.proxmox import Guest, NodeInfo, UsbDevice
from function.model import Inventory
from tools import fakeproxmox
from tools.fakeproxmox import FakeProxmox

FIXTURES = Path(__file__).parent / "fixtures" / "proxmox"
OVERRIDES = FIXTURES / "overrides.yaml"
EXAMPLE_INVENTORY = Path(__file__).parent.parent / "examples" / "inventory.yaml"
SECRET = "5e0c9a7d-3b1f-4c2a-9d8e-7f6a5b4c3d2e"
TOKEN = f"fabric@pve!discover={SECRET}"


@pytest.fixture
def plain() -> Iterator[FakeProxmox]:
    with fakeproxmox.serve(FakeProxmox.recorded(TOKEN)) as served:
        yield served


def discover(fake: FakeProxmox, *args: str, overrides: Path | None = OVERRIDES) -> Result:
    argv = ["--host", "127.0.0.1", "--port", str(fake.port), "--protocol", fake.protocol]
    if overrides is not None:
        argv += ["--overrides", str(overrides)]
    env = {"PROXMOX_VE_API_TOKEN": TOKEN}
    return CliRunner().invoke(cli, [*argv, *args], env=env, catch_exceptions=False)


def claims_of(result: Result) -> dict[str, dict[str, Any]]:
    assert result.exit_code == 0, result.output
    documents = [d for d in yaml.safe_load_all(result.stdout) if d is not None]
    return {d["metadata"]["name"]: d for d in documents}


def _claim(kind: str, name: str, spec: dict[str, Any], needs_root: str = "") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "infra-machines"}
    if needs_root:
        metadata["annotations"] = {NEEDS_ROOT: needs_root}
    return {
        "apiVersion": "fabric.homelab.io/v1alpha1",
        "kind": kind,
        "metadata": metadata,
        "spec": spec | {"deletionPolicy": "Orphan"},
    }


def _adopt(node: str, vmid: int, *devices: str) -> dict[str, Any]:
    return {"adopt": {"node": node, "vmid": vmid, "devices": list(devices), "manage": []}}


K3S = "k3s-cluster"
# The seed homelab, guest by guest: the claim discovery writes for it.
SEED = {
    "k3s-vm-pve": _claim(
        "Machine",
        "k3s-vm-pve",
        _adopt("pve", 107)
        | {"cpu": 4, "memory": "8Gi", "disk": "100Gi"}
        | {"network": {"name": K3S, "address": "10.40.0.7/24"}},  # vmbr0 tag 40, ipconfig0
    ),
    "k3s-vm-still-fawn": _claim(
        "Machine",
        "k3s-vm-still-fawn",
        _adopt("still-fawn", 105, "rtx3070")  # hostpci0: mapping=rtx3070
        | {"cpu": 8, "memory": "32Gi", "disk": "200Gi"}  # the boot disk is virtio0
        | {"network": {"name": K3S, "address": "10.40.0.8/24"}},
    ),
    "k3s-vm-pumped-piglet-gpu": _claim(
        "Machine",
        "k3s-vm-pumped-piglet-gpu",
        _adopt("pumped-piglet", 106)
        | {"cpu": 8, "memory": "20Gi", "disk": "128Gi"}  # 2 sockets x 4 cores; 130252M rounded
        | {"network": {"name": K3S, "address": "dhcp"}},
        "hostpci0: 0000:03:00,pcie=1 (raw PCI passthrough is root@pam only; 0000:03:00 is "
        "10de:2504 NVIDIA Corporation GA106 [GeForce RTX 3060 Lite Hash Rate], in no resource "
        "mapping)",
    ),
    "haos": _claim(
        "Machine",
        "haos",
        # usb0: mapping=zigbee, but the inventory has no zigbee device (no class): not held.
        _adopt("chief-horse", 116)
        | {"cpu": 2, "memory": "6Gi", "disk": "32Gi"}
        | {"network": {"name": "lan", "address": "dhcp"}},  # no cloud-init: no ipconfig0
    ),
    "frigate": _claim(
        "Container",
        "frigate",
        # dev0 is the Coral: the claim holds it, so no VM is given it.
        _adopt("fun-bedbug", 113, "coral-usb")
        | {"cpu": 2, "memory": "4Gi", "disk": "20Gi"}
        | {"network": {"name": "lan", "address": "192.168.4.13/24"}, "unprivileged": True},
        "dev0: /dev/bus/usb/002/002 (LXC device passthrough is root@pam only; it is USB "
        "1a6e:089a at port 2-1, inventory device coral-usb); mp0: /mnt/nvr/frigate -> "
        "/media/frigate (bind mount, root@pam only)",
    ),
}


@pytest.mark.parametrize("name", SEED)
def test_each_seed_guest_gets_its_adoption_claim(plain: FakeProxmox, name: str) -> None:
    claims = claims_of(discover(plain, "--claims", "-"))

    assert claims[name] == SEED[name]


def test_every_other_guest_too_but_no_template_and_nothing_tagged_fabric(
    plain: FakeProxmox,
) -> None:
    result = discover(plain, "--claims", "-")
    claims = claims_of(result)

    assert sorted((c["spec"]["adopt"]["vmid"], c["kind"]) for c in claims.values()) == [
        (101, "Machine"),
        (102, "Machine"),
        (105, "Machine"),
        (106, "Machine"),
        (107, "Machine"),
        (113, "Container"),
        (116, "Machine"),
    ]
    assert "gpu-worker-1" not in result.stdout  # 210 is tagged fabric: already Fabric's
    # Only the claimed guests' configurations are read (and the templates', for the images).
    guests = sorted(p for p in plain.requests if p.endswith("/config") and "/9" not in p)
    assert guests == [
        "/nodes/chief-horse/qemu/116/config",
        "/nodes/fun-bedbug/lxc/113/config",
        "/nodes/pumped-piglet/qemu/106/config",
        "/nodes/pve/qemu/101/config",
        "/nodes/pve/qemu/102/config",
        "/nodes/pve/qemu/107/config",
        "/nodes/still-fawn/qemu/105/config",
    ]
    assert plain.unanswered == []


def test_claims_say_why_in_comments_and_warnings(plain: FakeProxmox) -> None:
    result = discover(plain, "--claims", "-")

    text = result.stdout
    assert text.startswith("---\n# Adoption claim for VM 101 'opnsense' on pve")
    assert text.count("the first plan\n# changes nothing on it") == 7
    assert "  disk: 128Gi  # virtio0 is 130252M: rounded up to whole GiB\n" in text
    assert "# net1: not described (a claim states one network); left as is" in text
    assert (
        "warning: vm 116 haos: usb0 uses usb mapping zigbee, which the inventory has no device "
        "for on chief-horse; not in adopt.devices"
    ) in result.stderr
    assert SECRET not in result.stdout
    assert SECRET not in result.stderr


def test_claims_are_byte_identical_whatever_order_the_api_answers_in(plain: FakeProxmox) -> None:
    first = discover(plain, "--claims", "-")
    second = discover(plain, "--claims", "-")
    plain.answers = {path: _reverse(data) for path, data in plain.answers.items()}
    third = discover(plain, "--claims", "-")

    assert first.exit_code == 0, first.output
    assert first.stdout == second.stdout == third.stdout
    assert first.stderr == second.stderr == third.stderr


def _reverse(value: Any) -> Any:
    if isinstance(value, list):
        return [_reverse(v) for v in reversed(value)]
    if isinstance(value, dict):
        return {k: _reverse(v) for k, v in reversed(value.items())}
    return value


def test_a_directory_gets_one_file_per_claim(plain: FakeProxmox, tmp_path: Path) -> None:
    streamed = claims_of(discover(plain, "--claims", "-"))

    result = discover(plain, "--claims", str(tmp_path / "claims"))

    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "7 adoption claims written to" in result.stderr
    files = sorted((tmp_path / "claims").iterdir())
    assert [f.name for f in files] == sorted(f"{name}.yaml" for name in streamed)
    for path in files:
        assert yaml.safe_load(path.read_text()) == streamed[path.stem]


def test_the_namespace_is_an_option(plain: FakeProxmox) -> None:
    claims = claims_of(discover(plain, "--claims", "-", "--claims-namespace", "homelab"))

    assert {c["metadata"]["namespace"] for c in claims.values()} == {"homelab"}


def test_a_mapping_the_inventory_knows_is_held(plain: FakeProxmox, tmp_path: Path) -> None:
    overrides = yaml.safe_load(OVERRIDES.read_text())
    overrides["devices"]["zigbee"] = {"class": "zigbee"}
    overrides["deviceClasses"]["zigbee"] = {"description": "Zigbee coordinator"}
    path = tmp_path / "overrides.yaml"
    path.write_text(yaml.safe_dump(overrides))

    result = discover(plain, "--claims", "-", overrides=path)

    assert claims_of(result)["haos"]["spec"]["adopt"]["devices"] == ["zigbee"]
    assert "usb0 uses usb mapping zigbee" not in result.stderr


def test_an_inventory_file_replaces_the_discovered_one(plain: FakeProxmox, tmp_path: Path) -> None:
    # examples/inventory.yaml is hand-written: the same catalog, so the same claims.
    claims = claims_of(discover(plain, "--claims", "-", "--inventory", str(EXAMPLE_INVENTORY)))

    for name, expected in SEED.items():
        assert claims[name] == expected, name
    bare = tmp_path / "inventory.yaml"
    configmap = yaml.safe_load(EXAMPLE_INVENTORY.read_text())
    inventory = yaml.safe_load(configmap["data"]["inventory.yaml"])
    del inventory["networks"]["k3s-cluster"]
    bare.write_text(yaml.safe_dump(inventory))

    result = discover(plain, "--claims", "-", "--inventory", str(bare))

    assert "network" not in claims_of(result)["k3s-vm-pve"]["spec"]
    assert (
        "vm 107 k3s-vm-pve: net0 is on bridge vmbr0 VLAN 40: no network of the inventory's "
        "catalog match; no network"
    ) in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--claims", "-", "--apply"], "choose one"),
        (["--inventory", str(EXAMPLE_INVENTORY)], "--inventory only applies to --claims"),
    ],
)
def test_option_combinations_that_make_no_sense(
    plain: FakeProxmox, args: list[str], expected: str
) -> None:
    result = discover(plain, *args)

    assert result.exit_code == 2
    assert expected in result.stderr
    assert plain.requests == []


def test_a_guest_whose_configuration_cannot_be_read_gets_no_claim(plain: FakeProxmox) -> None:
    plain.failures["/nodes/chief-horse/qemu/116/config"] = (403, "Permission check failed")

    result = discover(plain, "--claims", "-")

    assert "haos" not in claims_of(result)
    assert "vm 116 haos: no claim: GET /nodes/chief-horse/qemu/116/config: 403" in result.stderr


def test_a_guest_on_an_offline_node_gets_no_claim(plain: FakeProxmox) -> None:
    plain.answers["/nodes"] = [
        {"id": "node/fun-bedbug", "node": "fun-bedbug", "status": "offline", "type": "node"}
        if item["node"] == "fun-bedbug"
        else item
        for item in plain.answers["/nodes"]
    ]
    plain.failures["/nodes/fun-bedbug/"] = (595, "No route to host")

    result = discover(plain, "--claims", "-")

    assert "frigate" not in claims_of(result)
    assert "ct 113 frigate: no claim: fun-bedbug is offline" in result.stderr


def test_names_become_dns_labels_and_say_so(plain: FakeProxmox) -> None:
    for path in ("/nodes/pve/qemu", "/cluster/resources"):
        for item in plain.answers[path]:
            if item.get("vmid") == 102:
                item["name"] = "MAAS.Region"
            if item.get("vmid") == 101:
                item["name"] = "k3s-vm-pve"  # a second guest of that name

    result = discover(plain, "--claims", "-")
    claims = claims_of(result)

    assert claims["maas-region"]["spec"]["adopt"]["vmid"] == 102
    assert claims["k3s-vm-pve-101"]["spec"]["adopt"]["vmid"] == 101
    assert claims["k3s-vm-pve-107"]["spec"]["adopt"]["vmid"] == 107
    assert "Proxmox names it 'MAAS.Region'; the claim is maas-region (not a DNS label)" in (
        result.stderr
    )
    assert "the claim is k3s-vm-pve-107 (another guest is also named k3s-vm-pve)" in result.stderr


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("haos", "haos"),
        ("MAAS.Region", "maas-region"),
        ("--odd__name--", "odd-name"),
        ("x" * 70, "x" * 63),
        ("...", ""),
    ],
)
def test_dns_labels(name: str, expected: str) -> None:
    assert dns_label(name) == expected


def test_a_nameless_label_falls_back_to_kind_and_vmid() -> None:
    guests = [Guest(120, "___", "a", "lxc", 1, 1 << 30), Guest(121, "web", "a", "qemu", 1, 1)]

    assert claim_names(guests) == {120: ("ct-120", "not a DNS label"), 121: ("web", "")}


# --- rules on configurations ---------------------------------------------------------------------

INVENTORY = Inventory.model_validate(
    {
        "nodes": [
            {
                "name": "a",
                "cpu": 8,
                "memory": "32Gi",
                "storage": ["local-lvm"],
                "devices": [
                    {
                        "mapping": "navi",
                        "class": "gpu-amd",
                        "bus": "pci",
                        "address": "0000:03:00.0",
                        "ids": ["1002:73bf"],
                    },
                    {
                        "mapping": "coral",
                        "class": "coral-tpu",
                        "bus": "usb",
                        "address": "1-4",
                        "ids": ["1a6e:089a", "18d1:9302"],
                    },
                ],
            }
        ],
        "deviceClasses": {"gpu-amd": {}, "coral-tpu": {}},
        "networks": {
            "lan": {"bridge": "vmbr0", "cidr": "192.168.4.0/24"},
            "iot": {"bridge": "vmbr1", "vlan": 20},
            "iot-copy": {"bridge": "vmbr1", "vlan": 20},
        },
        "vmids": {"start": 200, "end": 299},
    }
)
NODE = NodeInfo(
    "a",
    online=True,
    cpu=8,
    memory_bytes=32 << 30,
    usb=(UsbDevice("1-4", "1a6e", "089a", devnode="001/005"),),
)
VM = Guest(150, "vm", "a", "qemu", 2, 2 << 30)
CT = Guest(151, "ct", "a", "lxc", 2, 2 << 30)
DISK = {"scsi0": "local-lvm:vm-150-disk-0,size=8G"}

# configuration -> (devices, needs-root), for a VM unless the id says ct
RULES: dict[str, tuple[Guest, dict[str, Any], list[str], str]] = {
    "mapped-pci": (VM, {"hostpci0": "mapping=navi,pcie=1"}, ["navi"], ""),
    "raw-pci-of-a-mapped-device": (
        VM,
        {"hostpci0": "host=03:00.0,pcie=1"},
        [],
        (
            "hostpci0: host=03:00.0,pcie=1 (raw PCI passthrough is root@pam only; 0000:03:00.0 is "
            "inventory device navi: use mapping=navi)"
        ),
    ),
    "raw-usb-by-id": (
        VM,
        {"usb1": "host=18d1:9302,usb3=1"},
        [],
        (
            "usb1: host=18d1:9302,usb3=1 (raw USB passthrough is root@pam only; 18d1:9302 is "
            "inventory device coral: use mapping=coral)"
        ),
    ),
    "raw-usb-by-port": (
        VM,
        {"usb0": "host=1-4"},
        [],
        (
            "usb0: host=1-4 (raw USB passthrough is root@pam only; 1-4 is inventory device coral: "
            "use mapping=coral)"
        ),
    ),
    "raw-usb-unknown": (
        VM,
        {"usb1": "host=1a86:55d4"},
        [],
        "usb1: host=1a86:55d4 (raw USB passthrough is root@pam only)",
    ),
    "spice-is-fine": (VM, {"usb0": "spice"}, [], ""),
    "order-is-natural": (
        VM,
        {"usb10": "host=2-2", "usb2": "host=2-1", "args": "-cpu host", "hostpci1": "0000:05:00"},
        [],
        (
            "args: -cpu host (raw QEMU arguments are root@pam only); hostpci1: 0000:05:00 (raw PCI "
            "passthrough is root@pam only); usb2: host=2-1 (raw USB passthrough is root@pam only); "
            "usb10: host=2-2 (raw USB passthrough is root@pam only)"
        ),
    ),
    "ct-device-by-bus-number": (
        CT,
        {"dev0": "path=/dev/bus/usb/001/005,mode=0664"},
        ["coral"],  # held by the container's claim, so no VM is given it
        (
            "dev0: path=/dev/bus/usb/001/005,mode=0664 (LXC device passthrough is root@pam only; "
            "it is USB 1a6e:089a at port 1-4, inventory device coral)"
        ),
    ),
    "ct-other-device": (
        CT,
        {"dev1": "/dev/dri/renderD128,gid=104"},
        [],
        "dev1: /dev/dri/renderD128,gid=104 (LXC device passthrough is root@pam only)",
    ),
    "ct-volume-mount-is-fine": (CT, {"mp0": "local-lvm:vm-151-disk-1,mp=/data,size=8G"}, [], ""),
    "ct-device-mount": (
        CT,
        {"mp1": "/dev/sdb1,mp=/mnt/disk"},
        [],
        "mp1: /dev/sdb1 -> /mnt/disk (device mount, root@pam only)",
    ),
    "ct-raw-lxc-keys": (
        CT,
        {"lxc": [["lxc.cgroup2.devices.allow", "c 189:* rwm"]]},
        [],
        "lxc.cgroup2.devices.allow: c 189:* rwm (raw LXC keys are root@pam only)",
    ),
}


@pytest.mark.parametrize("rule", RULES.values(), ids=RULES.keys())
def test_devices_and_what_needs_root(rule: tuple[Guest, dict[str, Any], list[str], str]) -> None:
    guest, config, devices, needs_root = rule
    base = DISK if guest.kind == "qemu" else {"rootfs": "local-lvm:vm-151-disk-0,size=8G"}

    claim = adoption_claim(guest, base | config, INVENTORY, node=NODE)

    assert claim.manifest["spec"]["adopt"]["devices"] == devices
    annotations = claim.manifest["metadata"].get("annotations", {})
    assert annotations.get(NEEDS_ROOT, "") == needs_root


SIZES = {
    # config -> cpu, memory, disk
    "sockets": ({"cores": 4, "sockets": 2, "memory": "1536"} | DISK, 8, "1536Mi", "8Gi"),
    "defaults": (DISK, 1, "512Mi", "8Gi"),
    "memory-property-string": ({"memory": "current=6144"} | DISK, 1, "6Gi", "8Gi"),
    "disk-in-k": ({"virtio0": "l:d,size=8388608K", "boot": "order=virtio0"}, 1, "512Mi", "8Gi"),
    "no-disk": ({"ide2": "none,media=cdrom"}, 1, "512Mi", None),
}


@pytest.mark.parametrize("case", SIZES.values(), ids=SIZES.keys())
def test_sizes(case: tuple[dict[str, Any], int, str, str | None]) -> None:
    config, cpu, memory, disk = case

    spec = adoption_claim(VM, config, INVENTORY).manifest["spec"]

    assert (spec["cpu"], spec["memory"], spec.get("disk")) == (cpu, memory, disk)


def test_a_container_without_a_cores_limit_states_no_cpu() -> None:
    claim = adoption_claim(CT, {"memory": 2048, "rootfs": "l:r,size=4G"}, INVENTORY)

    assert "cpu" not in claim.manifest["spec"]
    assert claim.manifest["spec"]["memory"] == "2Gi"
    assert claim.manifest["spec"]["unprivileged"] is False  # not set: Proxmox's default
    assert any("no cores limit" in w for w in claim.warnings)


LAN = "virtio=AA,bridge=vmbr0"
CT_LAN = "name=eth0,bridge=vmbr0"
NETWORKS = {
    # guest, config -> (network, address) or None, and a comment the claim carries
    "lan-static": (
        VM,
        {"net0": LAN, "ipconfig0": "ip=192.168.4.9/24"},
        ("lan", "192.168.4.9/24"),
        "",
    ),
    "lan-dhcp": (VM, {"net0": LAN, "ipconfig0": "ip=dhcp,ip6=auto"}, ("lan", "dhcp"), ""),
    "no-ipconfig": (VM, {"net0": LAN}, ("lan", "dhcp"), "no ipconfig0 address"),
    "two-match": (
        VM,
        {"net0": "virtio=AA,bridge=vmbr1,tag=20"},
        None,
        "2 networks (iot, iot-copy)",
    ),
    "tag-not-in-catalog": (VM, {"net0": f"{LAN},tag=30"}, None, "vmbr0 VLAN 30: no network"),
    "outside-cidr": (
        VM,
        {"net0": LAN, "ipconfig0": "ip=10.0.0.5/8"},
        ("lan", "10.0.0.5/8"),
        "outside network lan",
    ),
    "ct-static": (CT, {"net0": f"{CT_LAN},ip=192.168.4.7/24"}, ("lan", "192.168.4.7/24"), ""),
    "ct-manual": (CT, {"net0": f"{CT_LAN},ip=manual"}, ("lan", "dhcp"), "no net0 address"),
    "ct-ipv6-only": (CT, {"net0": f"{CT_LAN},ip6=dhcp"}, ("lan", "dhcp"), "no net0 address"),
}


@pytest.mark.parametrize("case", NETWORKS.values(), ids=NETWORKS.keys())
def test_networks(case: tuple[Guest, dict[str, Any], tuple[str, str] | None, str]) -> None:
    guest, config, expected, comment = case

    claim = adoption_claim(guest, config, INVENTORY)

    network = claim.manifest["spec"].get("network")
    assert (network["name"], network["address"]) == expected if expected else network is None
    if comment:
        assert any(comment in c for c in claim.comments), claim.comments


# --- the function's model ------------------------------------------------------------------------


def test_every_machine_claim_is_a_valid_machine_spec(plain: FakeProxmox) -> None:
    from function.model import MachineSpec

    if "adopt" not in MachineSpec.model_fields:
        pytest.skip("function.model.MachineSpec has no adopt field yet (the adoption API)")
    claims = claims_of(discover(plain, "--claims", "-"))

    machines = [c for c in claims.values() if c["kind"] == "Machine"]
    assert len(machines) == 6
    for claim in machines:
        MachineSpec.model_validate(claim["spec"])


def test_every_container_claim_is_a_valid_container_spec(plain: FakeProxmox) -> None:
    from function import model

    spec_model = getattr(model, "ContainerSpec", None)
    if spec_model is None or "adopt" not in spec_model.model_fields:
        pytest.skip("function.model has no ContainerSpec with adopt yet (the Container kind)")
    claims = claims_of(discover(plain, "--claims", "-"))

    for claim in (c for c in claims.values() if c["kind"] == "Container"):
        spec_model.model_validate(claim["spec"])
