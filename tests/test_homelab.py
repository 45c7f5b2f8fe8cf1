"""The Homelab composite: the fleet view, over real gRPC, agreeing with every machine's status.

The example homelab (examples/inventory.yaml and the five examples/xrs, each reconciled in
creation order as Crossplane would, their statuses and Reservations written back) is checked
against numbers worked out by hand; random fleets are checked against the machines' own
statuses; the real Crossplane CLI renders and validates examples/homelab.yaml.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import pytest
import yaml

from tests.conftest import (
    NS,
    Call,
    basic_spec,
    gpu_spec,
    inventory_cm,
    reconcile,
    require_tool,
    status,
    with_status,
    xr,
)
from tools import crossplane_cli, realtools, xpsim

ROOT = realtools.ROOT
HOMELAB = ROOT / "examples" / "homelab.yaml"
COMPOSITION = ROOT / "compositions" / "homelab.yaml"
XRD = ROOT / "xrds" / "homelab.yaml"


def homelab_input() -> dict[str, Any]:
    return xpsim.composition_input("compositions/homelab.yaml")


def view(
    call: Call, cluster: list[dict[str, Any]], *, v2: bool = False
) -> fnv1.RunFunctionResponse:
    """The Homelab XR reconciled against a cluster, as Crossplane calls the function."""
    req = xpsim.request(xpsim.load_yaml(HOMELAB), homelab_input())
    return xpsim.converge(call, req, xpsim.Cluster(cluster), v2=v2)


def settle_fleet(call: Call, machines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cluster after each machine was reconciled in creation order, statuses written back.

    Machines left unplaced are reconciled again once the rest have landed, so their statuses
    say what they say against the final fleet.
    """
    machines = sorted(machines, key=lambda m: m["metadata"]["creationTimestamp"])
    done: dict[str, dict[str, Any]] = {m["metadata"]["name"]: m for m in machines}
    held: list[dict[str, Any]] = []
    for rounds in range(3):
        for machine in machines:
            name = machine["metadata"]["name"]
            if rounds and (done[name].get("status") or {}).get("node"):
                continue
            cluster = [inventory_cm(), *done.values(), *held]
            rsp = reconcile(call, done[name], cluster)
            done[name] = with_status(machine, rsp)
            held += xpsim.composed(rsp, xpsim.RESERVATION_PREFIX).values()
    return [inventory_cm(), *done.values(), *held]


_EXAMPLE: list[list[dict[str, Any]]] = []


def example_cluster(call: Call) -> list[dict[str, Any]]:
    if not _EXAMPLE:
        # The example machines and the example container, pihole (examples/xrs/containers/).
        xrs = [xpsim.load_yaml(p) for p in sorted((ROOT / "examples" / "xrs").rglob("*.yaml"))]
        _EXAMPLE.append(settle_fleet(call, xrs))
    return copy.deepcopy(_EXAMPLE[0])


def by(items: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {item[key]: item for item in items}


GI = 1024


@pytest.mark.parametrize("v2", [False, True], ids=["crossplane-1.x", "crossplane-2.x"])
def test_example_homelab_by_hand(call, v2):
    rsp = view(call, example_cluster(call), v2=v2)
    assert not rsp.results, [r.message for r in rsp.results]
    assert rsp.desired.composite.ready == fnv1.READY_TRUE
    assert not rsp.desired.resources, "a Homelab composes nothing"
    assert rsp.meta.ttl.seconds == 300
    got = status(rsp)
    assert got["phase"] == "Ready"
    nodes = by(got["nodes"], "name")
    # (name, schedulable, vCPU allocated/capacity, memory allocated/free MiB, machines,
    # containers):
    # capacity is memory x 1.0 - reservedMemory; cpu x 4.0. Unmanaged guests count as allocated.
    expected = {
        # opnsense 2/4Gi, maas 2/4Gi, k3s-vm-pve 4/8Gi; 28Gi usable.
        "pve": (True, 8, 32, 16 * GI, 12 * GI, 0, 0),
        # basic (small: 2/4Gi), gpu-worker-1 (8/16Gi) and the pihole container (1/512Mi);
        # 60Gi usable.
        "still-fawn": (True, 11, 64, 20 * GI + 512, 40 * GI - 512, 2, 1),
        # pinned (small: 2/4Gi) and nixos-builder (medium: 4/16Gi); 28Gi usable.
        "pumped-piglet": (True, 6, 48, 20 * GI, 8 * GI, 2, 0),
        # the frigate LXC (2/4Gi, not Fabric's) and the frigate VM (default 2 vCPUs, 8Gi);
        # 14Gi usable.
        "fun-bedbug": (True, 4, 16, 12 * GI, 2 * GI, 1, 0),
        # haos (2/6Gi); 14Gi usable, but nothing is placed there.
        "chief-horse": (False, 2, 16, 6 * GI, 8 * GI, 0, 0),
    }
    assert list(nodes) == list(expected)
    assert (got["summary"]["machines"], got["summary"]["containers"]) == (5, 1)
    for name, (sched, cpu, cpu_cap, mem, free, count, containers) in expected.items():
        node = nodes[name]
        assert node["schedulable"] is sched, name
        assert (node["cpuAllocated"], node["cpuCapacity"]) == (cpu, cpu_cap), name
        assert (node["memoryAllocatedMiB"], node["memoryFreeMiB"]) == (mem, free), name
        assert (node["machines"], node["containers"]) == (count, containers), name
    assert nodes["chief-horse"]["reason"] == "haos-host"
    assert nodes["pve"]["memoryFree"] == "12Gi"
    assert by(got["devices"], "mapping") == {
        "rtx3070": {
            "node": "still-fawn",
            "mapping": "rtx3070",
            "class": "gpu-nvidia",
            "model": "NVIDIA GeForce RTX 3070",
            "holder": f"{NS}/gpu-worker-1",
        },
        "coral-usb": {
            "node": "fun-bedbug",
            "mapping": "coral-usb",
            "class": "coral-tpu",
            "model": "Google Coral USB Accelerator",
            "holder": f"{NS}/frigate",
        },
    }
    # VMIDs 200-205 of 200-399 (templates, 9000 and the unmanaged guests are outside the range).
    assert got["vmids"] == {"range": "200-399", "used": 6, "free": 194}
    networks = by(got["networks"], "name")
    # lan: basic .200, pinned .201 (pool), frigate .60 and pihole .53 (static); nixos-builder
    # is on DHCP. Free: 40 pool addresses - 2 held - .210 reserved = 37.
    assert networks["lan"] == {
        "name": "lan",
        "cidr": "192.168.4.0/24",
        "pool": "192.168.4.200-192.168.4.239",
        "used": 4,
        "free": 37,
    }
    assert (networks["k3s-cluster"]["used"], networks["k3s-cluster"]["free"]) == (1, 99)
    assert (networks["iot"]["used"], networks["iot"]["free"]) == (0, 0)
    assert got["pending"] == []
    # kubectl get homelab: 5 nodes, 12+39.5+8+2 = 61.5Gi free on schedulable nodes (shown
    # rounded down), no free GPU.
    summary = got["summary"]
    assert (summary["nodes"], summary["freeMemory"], summary["freeGpus"], summary["pending"]) == (
        5,
        "61Gi",
        0,
        0,
    )
    assert summary["freeMemoryMiB"] == 62 * GI - 512


def test_unplaced_fleet_shows_pending_and_held_by_unmanaged(call):
    # Nothing placed yet: every machine pending, said as its own reconcile would place it; a
    # device an unmanaged guest holds names that guest.
    cm = inventory_cm()
    cm["data"]["inventory.yaml"] = cm["data"]["inventory.yaml"].replace(
        '# heldBy: "113 frigate"', 'heldBy: "113 frigate"'
    )
    xrs = [xpsim.load_yaml(p) for p in sorted((ROOT / "examples" / "xrs").glob("*.yaml"))]
    got = status(view(call, [cm, *xrs]))
    assert got["summary"]["pending"] == 5
    assert got["summary"]["freeGpus"] == 1
    assert by(got["devices"], "mapping")["coral-usb"]["holder"] == "unmanaged guest 113 frigate"
    pending = by(got["pending"], "machine")
    assert pending[f"{NS}/frigate"]["message"].startswith(
        "0/5 nodes can host infra-machines/frigate"
    )
    assert pending[f"{NS}/basic"]["message"] == "being placed on node still-fawn, VMID 200"


def test_homelab_waits_without_an_inventory(call):
    rsp = view(call, [])
    assert rsp.desired.composite.ready == fnv1.READY_FALSE
    assert not rsp.desired.resources
    got = status(rsp)
    assert got["phase"] == "Pending"
    assert "inventory" in got["message"]


def random_fleet(rng: random.Random, size: int) -> list[dict[str, Any]]:
    machines = []
    for i in range(size):
        kind = rng.choice(["small", "medium", "gpu", "coral", "dhcp", "k3s", "pinned", "big"])
        if kind == "gpu":
            spec = gpu_spec(network={"name": "k3s-cluster"})
        elif kind == "coral":
            spec = basic_spec(devices=[{"class": "coral-tpu"}], memory="2Gi")
        elif kind == "dhcp":
            spec = basic_spec(network={"name": "lan", "address": "dhcp"})
        elif kind == "k3s":
            spec = basic_spec(network={"name": "k3s-cluster"})
        elif kind == "pinned":
            spec = basic_spec(placement={"node": rng.choice(["pve", "fun-bedbug"])})
        elif kind == "big":
            spec = basic_spec(**{"class": "large"})
        else:
            spec = basic_spec(**{"class": kind})
        created = f"2026-11-01T10:{i:02d}:00Z"
        machines.append(xr(f"m{i}-{kind}", spec, created=created))
    return machines


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_view_agrees_with_every_machine(call, seed):
    rng = random.Random(seed)
    cluster = settle_fleet(call, random_fleet(rng, rng.randint(6, 12)))
    got = status(view(call, cluster))
    machines = [o for o in cluster if o.get("kind") == "XMachine"]
    key = {
        m["metadata"]["name"]: f"{NS}/{m['metadata']['labels']['crossplane.io/claim-name']}"
        for m in machines
    }
    placed = [m for m in machines if m["status"].get("node")]
    # Devices: the Homelab's holder of each mapping is exactly the machine whose status lists it.
    holders = {d["mapping"]: d["holder"] for d in got["devices"] if d["holder"]}
    claimed = {
        d["mapping"]: key[m["metadata"]["name"]] for m in placed for d in m["status"]["devices"]
    }
    assert holders == claimed
    # VMIDs: one per placed machine, each in the range.
    assert got["vmids"]["used"] == len({m["status"]["vmId"] for m in placed}) == len(placed)
    # Addresses: per network, the machines whose status holds one.
    networks = by(got["networks"], "name")
    for name in ("lan", "k3s-cluster"):
        holding = [
            m for m in placed if m["status"].get("network") == name and m["status"].get("address")
        ]
        assert networks[name]["used"] == len(holding), name
    # Nodes: machine counts as the statuses say.
    for node in got["nodes"]:
        assert node["machines"] == sum(1 for m in placed if m["status"]["node"] == node["name"])
    # Pending: the unplaced machines, each with the message its own claim shows.
    unplaced = {
        key[m["metadata"]["name"]]: m["status"].get("message") for m in machines if m not in placed
    }
    assert got["summary"]["pending"] == len(unplaced)
    assert {p["machine"]: p["message"] for p in got["pending"]} == unplaced


def test_composition_uses_the_machines_input():
    assert homelab_input() == xpsim.composition_input()
    comp = yaml.safe_load(COMPOSITION.read_text())
    assert [s["functionRef"]["name"] for s in comp["spec"]["pipeline"]] == ["function-fabric"]
    xrd = yaml.safe_load(XRD.read_text())
    assert "claimNames" not in xrd["spec"]
    assert xrd["spec"]["names"] == {
        "kind": "Homelab",
        "plural": "homelabs",
        "categories": ["fabric"],
    }


# --- the real Crossplane CLI ------------------------------------------------------------------


def test_real_cli_renders_the_homelab(call, address):
    cli = next(c for c in realtools.CLIS if c.name == "crossplane-2.0")
    binary = require_tool(cli.name)
    cluster = example_cluster(call)
    out = crossplane_cli.render(cli, binary, HOMELAB, address, cluster, composition=COMPOSITION)
    assert out.composed == []
    assert not out.results, out.results
    real = {k: v for k, v in out.xr["status"].items() if k != "conditions"}
    assert real == status(view(call, cluster, v2=True))
    assert (real["summary"]["freeMemory"], real["summary"]["containers"]) == ("61Gi", 1)
    assert {"type": "Ready", "status": "True"}.items() <= out.xr["status"]["conditions"][0].items()


def test_real_validate_the_homelab(call, address, tmp_path: Path):
    binary = require_tool("crossplane-2.0")
    done = crossplane_cli.validate(binary, [XRD], HOMELAB)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "0 failure cases" in report, report
    assert "0 missing schemas" in report, report
    # The rendered status fits the XRD's status schema too.
    cli = next(c for c in realtools.CLIS if c.name == "crossplane-2.0")
    out = crossplane_cli.render(
        cli, binary, HOMELAB, address, example_cluster(call), composition=COMPOSITION
    )
    rendered = tmp_path / "homelab.yaml"
    # render prints no spec; the stored object has the one applied.
    stored = {**out.xr, "spec": xpsim.load_yaml(HOMELAB)["spec"]}
    rendered.write_text(yaml.safe_dump(stored, sort_keys=False))
    done = crossplane_cli.validate(binary, [XRD], rendered)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 failure cases" in done.stdout + done.stderr
