"""A real cluster: Crossplane core reconciles the example claims through the function, over mTLS.

tools/cluster.py brings up etcd, kube-apiserver, kube-controller-manager (garbage collection)
and Crossplane core v2.0.8, all built from Go modules, in a loopback-only network namespace;
installs Fabric as a user would (cluster/, the provider-terraform CRDs with no provider
running, the XRDs, the function package from a loopback registry, the Compositions, the
inventory) and applies the example claims, machines and the pihole container, one after the
other, in the order of the example XRs' creation times. What the API server then holds is
compared with what the function renders for the same fleet (tests/golden/, itself held to the
real CLI by test_real_crossplane.py): each claim's phase, node, VMID, address, devices and
conditions as Crossplane copied them, one Workspace per guest with the same module, and the
Reservations. Then the lifecycle a user
lives through: a second GPU claim refused naming the holder and placed once the holder is
deleted, a bad edit held with the Workspace untouched, a claim deleted with Orphan.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_reference, require_tool
from tools import cluster as real
from tools import realtools

pytestmark = pytest.mark.slow

NS = real.CLAIMS_NS
GOLDEN = realtools.ROOT / "tests" / "golden"
CLAIMS = realtools.ROOT / "examples" / "claims"
# Each example's claim and XR, by stem, and the order their XRs were created in: the order the
# golden renders place them in (placement is greedy in creation order).
EXAMPLES, ORDER = real.EXAMPLES, real.ORDER


def _doc(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def _golden(stem: str) -> dict[str, list[dict[str, Any]]]:
    """The golden render of one example, by kind."""
    out: dict[str, list[dict[str, Any]]] = {}
    for doc in yaml.safe_load_all((GOLDEN / f"{stem}.yaml").read_text()):
        if doc:
            out.setdefault(doc["kind"], []).append(doc)
    return out


def _name(stem: str) -> str:
    return str(_doc(EXAMPLES[stem][0])["metadata"]["name"])


def _golden_xr(stem: str) -> dict[str, Any]:
    """The golden render's XR of one example: an XMachine or an XContainer."""
    return _golden(stem)[_doc(EXAMPLES[stem][1])["kind"]][0]


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


@pytest.fixture(scope="module")
def cluster() -> Iterator[real.Cluster]:
    for tool in real.TOOLS:
        require_tool(tool)
    for crd in ("tf.upbound.io_workspaces.yaml", "tf.m.upbound.io_workspaces.yaml"):
        require_reference(
            realtools.ROOT.parent / "shared" / "reference" / "provider-terraform" / crd
        )
    why = real.netns_unavailable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    with real.running() as c:
        real.apply_examples(c)
        yield c


def claim_of(c: real.Cluster, stem: str) -> dict[str, Any]:
    """An example's claim as the API server holds it: a Machine or a Container."""
    kind = str(_doc(EXAMPLES[stem][0])["kind"]).lower()
    claim = c.get(kind, _name(stem), NS)
    assert claim is not None, f"{kind} {_name(stem)} is gone"
    return dict(claim)


def xr_of(c: real.Cluster, claim: dict[str, Any]) -> dict[str, Any]:
    xr = c.get(f"x{claim['kind'].lower()}", claim["spec"]["resourceRef"]["name"])
    assert xr is not None
    return dict(xr)


def workspaces_of(c: real.Cluster, xr: dict[str, Any]) -> list[dict[str, Any]]:
    uid = xr["metadata"]["uid"]
    return [
        ws
        for ws in c.get("workspaces.tf.upbound.io")
        if any(
            o.get("uid") == uid and o.get("controller")
            for o in ws["metadata"].get("ownerReferences", [])
        )
    ]


def reservations_of(c: real.Cluster, name: str) -> dict[str, dict[str, Any]]:
    return {
        r["metadata"]["name"]: r
        for r in c.get("reservations.fabric.homelab.io")
        if r["spec"]["machine"] == f"{NS}/{name}"
    }


@pytest.mark.parametrize("stem", sorted(ORDER))
def test_claim_shows_what_the_function_renders(cluster: real.Cluster, stem: str) -> None:
    """Phase, node, VMID, address, devices and conditions, as Crossplane copied them."""
    want = _golden_xr(stem)["status"]
    claim = claim_of(cluster, stem)
    got = claim["status"]
    for key in ("node", "vmId", "ip", "address", "network", "devices"):
        assert got.get(key) == want.get(key), (key, got.get(key), want.get(key))
    # The golden render is the reserving pass; here the Workspace exists and no provider runs.
    assert got["phase"] == "Provisioning"
    conditions = _conditions(claim)
    assert conditions["Scheduled"]["status"] == "True"
    assert (
        conditions["Scheduled"]["message"] == _conditions(_golden_xr(stem))["Scheduled"]["message"]
    )
    assert conditions["Valid"]["status"] == "True"
    assert conditions["Provisioned"]["status"] == "False"
    assert conditions["Provisioned"]["reason"] == "Applying"
    assert conditions["Synced"]["status"] == "True"
    assert conditions["Ready"]["status"] == "False"


@pytest.mark.parametrize("stem", sorted(ORDER))
def test_one_workspace_per_guest_with_the_rendered_module(cluster: real.Cluster, stem: str) -> None:
    claim = claim_of(cluster, stem)
    xr = xr_of(cluster, claim)
    found = workspaces_of(cluster, xr)
    assert len(found) == 1, [w["metadata"]["name"] for w in found]
    ws = found[0]
    want_ws = _golden(stem)["Workspace"][0]
    golden_xr = _golden_xr(stem)["metadata"]["name"]
    golden_uid = _doc(EXAMPLES[stem][1])["metadata"]["uid"]

    def same(text: str) -> str:
        return text.replace(golden_xr, xr["metadata"]["name"]).replace(
            golden_uid, xr["metadata"]["uid"]
        )

    assert json.loads(ws["spec"]["forProvider"]["module"]) == json.loads(
        same(want_ws["spec"]["forProvider"]["module"])
    )
    for key, value in want_ws["spec"].items():
        if key != "forProvider":
            assert ws["spec"].get(key) == json.loads(same(json.dumps(value))), key
    labels = ws["metadata"].get("labels", {})
    for key, value in (want_ws["metadata"].get("labels") or {}).items():
        if key.startswith("fabric.homelab.io/"):
            assert labels.get(key) == same(str(value)), key
    assert labels["crossplane.io/claim-name"] == claim["metadata"]["name"]


@pytest.mark.parametrize("stem", sorted(ORDER))
def test_reservations_are_the_rendered_ones(cluster: real.Cluster, stem: str) -> None:
    held = reservations_of(cluster, _name(stem))
    want = {r["metadata"]["name"]: r for r in _golden(stem).get("Reservation", [])}
    assert sorted(held) == sorted(want)
    for name, r in held.items():
        assert r["spec"] == want[name]["spec"], name


def test_core_runs_with_what_the_chart_and_cluster_rbac_grant(cluster: real.Cluster) -> None:
    """Core is its ServiceAccount, not an admin: cluster/rbac.yaml is what lets it reserve."""

    def can(verb: str, what: str) -> bool:
        out = cluster.kubectl("auth", "can-i", verb, what, f"--as={real.CORE_USER}", check=False)
        return out.strip() == "yes"

    for verb in ("list", "watch", "create", "delete"):
        assert can(verb, "reservations.fabric.homelab.io"), verb
    assert can("create", "workspaces.tf.upbound.io")
    assert can("list", "xmachines.fabric.homelab.io")
    assert not can("create", "nodes")
    assert not can("delete", "namespaces")
    log = (cluster.workdir / "logs" / "crossplane.log").read_text()
    assert "is forbidden" not in log


def test_printer_columns(cluster: real.Cluster) -> None:
    table = cluster.kubectl("get", "machines", "-n", NS).splitlines()
    header = table[0].split()
    for column in ("NAME", "NODE", "VMID", "IP", "PHASE", "DEVICES", "SYNCED", "READY"):
        assert column in header
    rows = {line.split()[0]: line for line in table[1:]}
    assert "rtx3070" in rows["gpu-worker-1"]
    assert "still-fawn" in rows["gpu-worker-1"]
    table = cluster.kubectl("get", "containers", "-n", NS).splitlines()
    for column in ("NAME", "NODE", "VMID", "IP", "PHASE", "DEVICES", "SYNCED", "READY"):
        assert column in table[0].split()
    cells = {line.split()[0]: line.split() for line in table[1:]}
    assert cells["pihole"][1:4] == ["still-fawn", "205", "192.168.4.53"]


def test_unschedulable_gpu_claim_names_the_holder_then_gets_the_gpu(cluster: real.Cluster) -> None:
    second = yaml.safe_load((CLAIMS / "gpu-worker.yaml").read_text())
    second["metadata"]["name"] = "gpu-worker-2"
    cluster.apply_docs([second])
    # Crossplane copies an XR's status fields and its conditions to the claim in separate
    # steps: a claim can show the phase a moment before the condition (seen under load in CI).
    claim = cluster.wait(
        "gpu-worker-2 to be refused, with its Scheduled condition",
        lambda: (
            (m := cluster.get("machine", "gpu-worker-2", NS))
            and (m.get("status") or {}).get("phase") == "Unschedulable"
            and "Scheduled" in _conditions(m)
            and m
        ),
        timeout=240,
    )
    scheduled = _conditions(claim)["Scheduled"]
    assert scheduled["status"] == "False"
    assert scheduled["reason"] == "Unschedulable"
    assert "still-fawn: gpu rtx3070 is held by infra-machines/gpu-worker-1" in scheduled["message"]
    assert claim["status"].get("vmId") is None
    assert not reservations_of(cluster, "gpu-worker-2")
    assert not workspaces_of(cluster, xr_of(cluster, claim))

    def warned() -> bool:
        events = cluster.kubectl(
            "get", "events", "-n", NS, "--field-selector", "involvedObject.name=gpu-worker-2",
            "-o", "json",
        )  # fmt: skip
        return any(
            e["type"] == "Warning" and "held by infra-machines/gpu-worker-1" in e["message"]
            for e in json.loads(events)["items"]
        )

    cluster.wait("a Warning event on the claim naming the holder", warned, timeout=60)

    held_before = reservations_of(cluster, "gpu-worker-1")
    cluster.kubectl("delete", "machine", "gpu-worker-1", "-n", NS, "--wait=true", "--timeout=180s")
    cluster.wait(
        "gpu-worker-1's Reservations to be garbage collected",
        lambda: (
            not any(
                r["metadata"]["name"] in held_before
                for r in cluster.get("reservations.fabric.homelab.io")
            )
        ),
        timeout=180,
    )
    claim = cluster.wait(
        "gpu-worker-2 to be placed",
        lambda: (
            (m := cluster.get("machine", "gpu-worker-2", NS))
            and (m.get("status") or {}).get("phase") == "Provisioning"
            and _conditions(m).get("Scheduled", {}).get("status") == "True"
            and m
        ),
        timeout=300,
    )
    assert claim["status"]["node"] == "still-fawn"
    assert [d["mapping"] for d in claim["status"]["devices"]] == ["rtx3070"]
    assert _conditions(claim)["Scheduled"]["status"] == "True"
    assert "device-rtx3070" in reservations_of(cluster, "gpu-worker-2")
    assert len(workspaces_of(cluster, xr_of(cluster, claim))) == 1


def test_bad_edit_is_held_and_the_workspace_untouched(cluster: real.Cluster) -> None:
    claim = claim_of(cluster, "basic")
    xr = xr_of(cluster, claim)
    (before,) = workspaces_of(cluster, xr)
    cluster.kubectl(
        "patch", "machine", "basic", "-n", NS, "--type=merge", "-p",
        json.dumps({"spec": {"image": "no-such-image"}}),
    )  # fmt: skip
    claim = cluster.wait(
        "basic to be held",
        lambda: (
            (m := cluster.get("machine", "basic", NS))
            and (m.get("status") or {}).get("phase") == "Held"
            and _conditions(m).get("Valid", {}).get("status") == "False"
            and m
        ),
        timeout=180,
    )
    valid = _conditions(claim)["Valid"]
    assert valid["status"] == "False"
    assert "image" in valid["message"]
    assert "no-such-image" in valid["message"]
    (after,) = workspaces_of(cluster, xr)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["spec"] == before["spec"]
    assert claim["status"]["vmId"] == before_vmid(before)
    # Undoing the edit brings the machine back, on the same placement.
    cluster.kubectl(
        "patch", "machine", "basic", "-n", NS, "--type=merge", "-p",
        json.dumps({"spec": {"image": "debian-12"}}),
    )  # fmt: skip
    claim = cluster.wait(
        "basic to be valid again",
        lambda: (
            (m := cluster.get("machine", "basic", NS))
            and _conditions(m).get("Valid", {}).get("status") == "True"
            and m
        ),
        timeout=180,
    )
    assert claim["status"]["phase"] == "Provisioning"
    (again,) = workspaces_of(cluster, xr)
    assert again["spec"] == before["spec"]


def before_vmid(ws: dict[str, Any]) -> int:
    module = json.loads(ws["spec"]["forProvider"]["module"])
    vms = module["resource"]["proxmox_virtual_environment_vm"]
    return int(next(iter(vms.values()))["vm_id"])


def test_claim_deleted_with_orphan(cluster: real.Cluster) -> None:
    claim = claim_of(cluster, "nixos")
    assert claim["spec"]["deletionPolicy"] == "Orphan"
    xr = xr_of(cluster, claim)
    (ws,) = workspaces_of(cluster, xr)
    # What provider-terraform reads to leave the VM alone when the Workspace goes.
    assert ws["spec"]["deletionPolicy"] == "Orphan"
    held = reservations_of(cluster, "nixos-builder")
    assert held
    others = {
        stem: copy.deepcopy(claim_of(cluster, stem)["status"])
        for stem in ("basic", "pinned", "frigate", "pihole")
    }
    cluster.kubectl("delete", "machine", "nixos-builder", "-n", NS, "--wait=true", "--timeout=180s")
    assert cluster.get("xmachine", xr["metadata"]["name"]) is None
    cluster.wait(
        "nixos-builder's Workspace and Reservations to be garbage collected",
        lambda: (
            cluster.get("workspaces.tf.upbound.io", ws["metadata"]["name"]) is None
            and not reservations_of(cluster, "nixos-builder")
        ),
        timeout=180,
    )
    for stem, status in others.items():
        now = claim_of(cluster, stem)["status"]
        assert {k: now.get(k) for k in ("node", "vmId", "ip")} == {
            k: status.get(k) for k in ("node", "vmId", "ip")
        }, stem
