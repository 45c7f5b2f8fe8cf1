"""Scheduled backups (the Homelab's backups Workspace) and the restart policy, over real gRPC.

The example fleet is settled against an inventory with one PBS storage and two jobs, two
machines naming `nightly`. The Homelab composes one Workspace holding the storage and the jobs
with members; real Terraform (1.5.5, bpg 0.111.1) validates and plans it, then plans a
membership change and a storage edit against the applied state (tools/tfharness.py), and the
restart policy is shown on a machine's own Workspace the same way.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import yaml
from crossplane.function import resource

from function import backups, backupspec, model
from tests.conftest import (
    NS,
    Call,
    applied,
    desired_ws,
    inventory_cm,
    inventory_data,
    module,
    reconcile,
    require_reference,
    require_tool,
    status,
    warnings,
    with_inventory,
    with_status,
)
from tests.test_homelab import COMPOSITION, HOMELAB, view
from tools import crossplane_cli, realtools, tfharness, xpsim

ROOT = realtools.ROOT
PROVIDERCONFIG = yaml.safe_load((ROOT / "compositions" / "providerconfig.yaml").read_text())
PT = realtools.REFERENCE / "provider-terraform"
FINGERPRINT = ":".join(["ab"] * 32)
BACKUPS = {
    "storages": {
        "pbs-main": {
            "server": "pbs.homelab.lan",
            "datastore": "homelab",
            "username": "backup@pbs",
            "fingerprint": FINGERPRINT,
            "passwordSecretRef": {
                "namespace": "crossplane-system",
                "name": "pbs",
                "key": "password",
            },
        }
    },
    "jobs": {
        "nightly": {
            "schedule": "02:00",
            "storage": "pbs-main",
            "retention": {"keepDaily": 7, "keepWeekly": 4},
        },
        "weekly": {"schedule": "sun 03:00", "storage": "pbs-main", "mode": "stop"},
    },
}
MEMBERS = ("gpu-worker", "frigate")  # examples/xrs naming nightly
STORAGE = f"{backups.STORAGE}.pbs-main"
JOB = f"{backups.JOB}.nightly"


def backup_cm(edit: Any = None) -> dict[str, Any]:
    inv = inventory_data(inventory_cm())
    inv["backups"] = copy.deepcopy(BACKUPS)
    if edit:
        edit(inv["backups"])
    return with_inventory(inv)


def example_xrs(members: tuple[str, ...] = MEMBERS) -> list[dict[str, Any]]:
    xrs = []
    for path in sorted((ROOT / "examples" / "xrs").glob("*.yaml")):
        xr = xpsim.load_yaml(path)
        if path.stem in members:
            xr["spec"]["backup"] = {"job": "nightly"}
        xrs.append(xr)
    return xrs


def settle(call: Call, cm: dict[str, Any], machines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cluster after each machine was reconciled in creation order (as test_homelab does)."""
    machines = sorted(machines, key=lambda m: m["metadata"]["creationTimestamp"])
    done = {m["metadata"]["name"]: m for m in machines}
    held: list[dict[str, Any]] = []
    for machine in machines:
        name = machine["metadata"]["name"]
        rsp = reconcile(call, done[name], [cm, *done.values(), *held])
        done[name] = with_status(machine, rsp)
        held += xpsim.composed(rsp, xpsim.RESERVATION_PREFIX).values()
    return [cm, *done.values(), *held]


def backups_ws(rsp: fnv1.RunFunctionResponse) -> dict[str, Any] | None:
    if backups.RESOURCE_NAME not in rsp.desired.resources:
        return None
    return resource.struct_to_dict(rsp.desired.resources[backups.RESOURCE_NAME].resource)


def ws_module(ws: dict[str, Any]) -> dict[str, Any]:
    return json.loads(ws["spec"]["forProvider"]["module"])


_CLUSTER: list[list[dict[str, Any]]] = []


def cluster(call: Call) -> list[dict[str, Any]]:
    if not _CLUSTER:
        _CLUSTER.append(settle(call, backup_cm(), example_xrs()))
    return copy.deepcopy(_CLUSTER[0])


# --- the models ---------------------------------------------------------------------------------


def test_backupspec_patterns_are_the_models():
    assert backupspec.K8S_NAME == model.K8S_NAME
    assert backupspec.SECRET_KEY_NAME == model.SECRET_KEY_NAME


def test_retention_is_proxmoxs_prune_backups():
    retention = backupspec.Retention.model_validate({"keepDaily": 7, "keepWeekly": 4})
    assert retention.prune_backups() == {"keep-daily": "7", "keep-weekly": "4"}


# --- the Homelab owns the jobs; machines only name them ----------------------------------------


def test_homelab_composes_the_jobs_with_their_placed_members(call):
    got = cluster(call)
    rsp = view(call, got)
    assert not rsp.results, [r.message for r in rsp.results]
    machines = {m["metadata"]["name"]: m for m in got if m.get("kind") == "XMachine"}
    vmids = {
        name.split("-x", 1)[0] if "-x" in name else name: m["status"]["vmId"]
        for name, m in machines.items()
    }
    gpu = next(m for m in machines.values() if m["spec"].get("devices"))
    frigate = next(m for m in machines.values() if "frigate" in m["metadata"]["name"])
    expected = sorted([int(gpu["status"]["vmId"]), int(frigate["status"]["vmId"])])
    assert vmids
    jobs = {j["job"]: j for j in status(rsp)["backups"]}
    assert [m["vmId"] for m in jobs["nightly"]["machines"]] == expected
    assert {m["machine"] for m in jobs["nightly"]["machines"]} == {
        f"{NS}/gpu-worker-1",
        f"{NS}/frigate",
    }
    assert jobs["weekly"] == {
        "job": "weekly",
        "storage": "pbs-main",
        "schedule": "sun 03:00",
        "enabled": True,
        "inProxmox": False,
        "machines": [],
    }
    ws = backups_ws(rsp)
    assert ws is not None
    doc = ws_module(ws)
    # A job without members is not in Proxmox (vzdump refuses a job without guests).
    assert set(doc["resource"][backups.JOB]) == {"nightly"}
    job = doc["resource"][backups.JOB]["nightly"]
    assert job["vmid"] == [str(v) for v in expected]
    assert job["storage"] == "${proxmox_storage_pbs.pbs-main.id}"
    assert job["prune_backups"] == {"keep-daily": "7", "keep-weekly": "4"}
    storage = doc["resource"][backups.STORAGE]["pbs-main"]
    assert storage["password"] == "${var.pbs_password_pbs_main}"
    # The password is a Secret reference that provider-terraform resolves; never a value.
    assert ws["spec"]["forProvider"]["env"] == [
        {
            "name": "TF_VAR_pbs_password_pbs_main",
            "secretKeyRef": {"namespace": "crossplane-system", "name": "pbs", "key": "password"},
        }
    ]


def test_machine_status_names_its_job_and_its_workspace_is_unchanged(call):
    got = cluster(call)
    gpu = next(m for m in got if m.get("kind") == "XMachine" and m["spec"].get("devices"))
    rsp = reconcile(call, gpu, got)
    assert status(rsp)["backup"] == {"job": "nightly", "storage": "pbs-main", "schedule": "02:00"}
    plain = copy.deepcopy(gpu)
    del plain["spec"]["backup"]
    other = reconcile(call, plain, [o if o is not gpu else plain for o in got])
    assert module(rsp) == module(other), "naming a job never changes the machine's own module"
    assert "backup" not in status(other)


def test_an_unplaced_machine_is_in_no_job(call):
    # Nothing settled: every machine pending, so no job has members and none is rendered.
    rsp = view(call, [backup_cm(), *example_xrs()])
    assert all(j["machines"] == [] for j in status(rsp)["backups"])
    doc = ws_module(backups_ws(rsp) or {})
    assert backups.JOB not in doc["resource"]


def test_a_homelab_that_cannot_compute_holds_the_backups_workspace(call):
    observed = backups_ws(view(call, cluster(call)))
    assert observed is not None
    broken = backup_cm()
    broken["data"]["inventory.yaml"] += "\nnodes: []\n"
    req = xpsim.request(
        xpsim.load_yaml(HOMELAB), xpsim.composition_input("compositions/homelab.yaml")
    )
    req.observed.resources[backups.RESOURCE_NAME].resource.update(observed)
    rsp = xpsim.converge(call, req, xpsim.Cluster([broken, *cluster(call)[1:]]))
    assert status(rsp)["phase"] == "Pending"
    assert backups_ws(rsp) == observed, "held exactly as it is"


def test_a_claim_naming_an_unknown_job_is_refused(call):
    xr = example_xrs()[0]
    xr["spec"]["backup"] = {"job": "hourly"}
    rsp = reconcile(call, xr, [backup_cm(), xr])
    assert desired_ws(rsp) is None
    assert any(
        "spec.backup.job: 'hourly' is not a backup job of the inventory; accepted: nightly, weekly"
        in w
        for w in warnings(rsp)
    ), warnings(rsp)


# --- real Terraform -------------------------------------------------------------------------------


def workdir(ws: dict[str, Any], where: Path) -> tfharness.Workdir:
    require_tool("terraform")
    require_tool("terraform-provider-proxmox")
    wd = tfharness.lay_out(ws, PROVIDERCONFIG, where)
    wd.init()
    return wd


def test_backups_workspace_validates_plans_and_changes_in_place(call, tmp_path):
    base = view(call, cluster(call))
    ws = backups_ws(base)
    assert ws is not None
    wd = workdir(ws, tmp_path / "create")
    validated = wd.validate()
    assert validated["valid"], validated
    created = tfharness.actions(wd.plan())
    assert created == {STORAGE: ["create"], JOB: ["create"]}
    state = wd.state_after_apply()
    # Nothing changed: no-op.
    same = tfharness.actions(workdir(ws, tmp_path / "same").plan(copy.deepcopy(state)))
    assert same == {STORAGE: ["no-op"], JOB: ["no-op"]}, same
    # A machine joins the job (pinned names it too), then one leaves (only frigate stays): the
    # job's VMID list changes in place; nothing is replaced.
    for label, members in (("joins", (*MEMBERS, "pinned")), ("leaves", ("frigate",))):
        edited = settle(call, backup_cm(), example_xrs(members))
        new = backups_ws(view(call, edited))
        assert new is not None
        plan = workdir(new, tmp_path / label).plan(copy.deepcopy(state))
        assert tfharness.actions(plan) == {STORAGE: ["no-op"], JOB: ["update"]}, label
        change = next(rc["change"] for rc in plan["resource_changes"] if rc["address"] == JOB)
        assert tfharness.changed_attributes(change) == {"vmid"}, label
    # A storage edit Proxmox takes in place (the server's new certificate fingerprint).
    new_fp = ":".join(["cd"] * 32)
    edited_cm = backup_cm(lambda b: b["storages"]["pbs-main"].update(fingerprint=new_fp))
    new = backups_ws(view(call, [edited_cm, *cluster(call)[1:]]))
    assert new is not None
    plan = workdir(new, tmp_path / "fingerprint").plan(copy.deepcopy(state))
    assert tfharness.actions(plan) == {STORAGE: ["update"], JOB: ["no-op"]}
    # A retention edit: the job, in place.
    edited_cm = backup_cm(lambda b: b["jobs"]["nightly"]["retention"].update(keepDaily=14))
    new = backups_ws(view(call, [edited_cm, *cluster(call)[1:]]))
    assert new is not None
    plan = workdir(new, tmp_path / "retention").plan(copy.deepcopy(state))
    assert tfharness.actions(plan) == {STORAGE: ["no-op"], JOB: ["update"]}


def test_real_cli_renders_and_validates_the_homelab_with_backups(call, address, tmp_path):
    cli = next(c for c in realtools.CLIS if c.name == "crossplane-2.0")
    binary = require_tool(cli.name)
    got = cluster(call)
    out = crossplane_cli.render(cli, binary, HOMELAB, address, got, composition=COMPOSITION)
    assert not out.results, out.results
    real = {k: v for k, v in out.xr["status"].items() if k != "conditions"}
    assert real == status(view(call, got, v2=True))
    assert [c["kind"] for c in out.composed] == ["Workspace"]
    composed = out.composed[0]
    assert json.loads(composed["spec"]["forProvider"]["module"]) == ws_module(
        backups_ws(view(call, got, v2=True)) or {}
    )
    crds = [require_reference(PT / "tf.upbound.io_workspaces.yaml")]
    directory = tmp_path / "ws"
    directory.mkdir()
    (directory / "backups.yaml").write_text(yaml.safe_dump(composed, sort_keys=False))
    done = crossplane_cli.validate(binary, crds, directory)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "0 failure cases" in report, report
    assert "0 missing schemas" in report, report


# --- the restart policy, through the plan harness -----------------------------------------------


def test_immediate_memory_edit_restarts_in_place_and_is_announced(call, tmp_path):
    xr = xpsim.load_yaml(ROOT / "examples" / "xrs" / "gpu-worker.yaml")
    fleet = [xpsim.load_yaml(p) for p in sorted((ROOT / "examples" / "xrs").glob("*.yaml"))]
    first = reconcile(call, xr, [inventory_cm(), *fleet])
    ws = desired_ws(first)
    assert ws is not None
    assert (
        ws_module(ws)["resource"]["proxmox_virtual_environment_vm"]["machine"][
            "reboot_after_update"
        ]
        is False
    ), "OnNextBoot is the default"
    state = workdir(ws, tmp_path / "base").state_after_apply()
    placed = with_status(xr, first)
    edited = copy.deepcopy(placed)
    edited["spec"].update(restartPolicy="Immediate", memory="24Gi")
    others = [m for m in fleet if m["metadata"]["name"] != xr["metadata"]["name"]]
    rsp = reconcile(call, edited, [inventory_cm(), *others, edited], observed=applied(first))
    new = desired_ws(rsp)
    assert new is not None
    plan = workdir(new, tmp_path / "immediate").plan(copy.deepcopy(state))
    acts = tfharness.actions(plan)
    vm = "proxmox_virtual_environment_vm.machine"
    assert acts[vm] == ["update"], acts
    assert all(a == ["no-op"] for addr, a in acts.items() if addr != vm), acts
    change = next(rc["change"] for rc in plan["resource_changes"] if rc["address"] == vm)
    assert not change.get("replace_paths")
    assert tfharness.changed_attributes(change) == {"memory", "reboot_after_update"}
    assert change["after"]["reboot_after_update"] is True
    said = " ".join(warnings(rsp))
    assert "restartPolicy is Immediate: Proxmox restarts the machine at the next apply" in said
    assert "memory from 16384 to 24576 MiB" in said
