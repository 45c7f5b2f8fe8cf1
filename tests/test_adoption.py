"""Adopting the seed homelab's running guests: discovered, rendered, imported, changed by nothing.

The recorded cluster (tests/fixtures/proxmox) is served on loopback over TLS. fabric-discover
reads it and writes the inventory and one adoption claim per guest; the function renders each
claim, in one fleet, over gRPC as Crossplane calls it; then real Terraform 1.5.5 with the pinned
bpg/proxmox imports each guest: the provider reads the guest's recorded configuration through
the API, exactly as it would from Proxmox, and the plan must change nothing. The fake API
answers GET only: a write would fail the plan, and any path it could not answer is a failure.

Then fields are taken over one at a time (spec.adopt.manage): each plan against the imported
state is an in-place update of that field alone, announced on the claim, never a replacement,
a disk change or a reboot.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from fabric_discover.cli import cli
from function import lxc, terraform
from tests.conftest import (
    applied,
    desired_ws,
    messages,
    reconcile,
    require_tool,
    status,
    warnings,
    with_status,
    xr,
)
from tools import fakeproxmox, realtools, tfharness
from tools.fakeproxmox import FakeProxmox

ROOT = realtools.ROOT
OVERRIDES = ROOT / "tests" / "fixtures" / "proxmox" / "overrides.yaml"
PROVIDERCONFIG = yaml.safe_load((ROOT / "compositions" / "providerconfig.yaml").read_text())
TOKEN = tfharness.DUMMY_CREDENTIALS["proxmox.auto.tfvars.json"]["proxmox_api_token"]
VM = "proxmox_virtual_environment_vm.machine"
# The guests the homelab's owner wants under Crossplane first (issue 11), by claim name.
SEED_VMS = ("k3s-vm-pve", "k3s-vm-still-fawn", "k3s-vm-pumped-piglet-gpu", "haos")
SEED = (*SEED_VMS, "frigate")
# The resource each kind's module imports.
IMPORTED = {"Machine": VM, "Container": lxc.ADDRESS}


@pytest.fixture(scope="module")
def proxmox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeProxmox]:
    """The recorded cluster over TLS (bpg refuses a plain-HTTP endpoint)."""
    context = fakeproxmox.tls_context(tmp_path_factory.mktemp("tls"))
    with fakeproxmox.serve(FakeProxmox.recorded(TOKEN), context) as served:
        yield served


def _discover(fake: FakeProxmox, *args: str) -> str:
    argv = ["--host", "127.0.0.1", "--port", str(fake.port), "--protocol", fake.protocol]
    argv += ["--no-verify-ssl", "--overrides", str(OVERRIDES), *args]
    result = CliRunner().invoke(
        cli, argv, env={"PROXMOX_VE_API_TOKEN": TOKEN}, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def homelab(proxmox: FakeProxmox) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """What one discovery run gives: the inventory ConfigMap and the adoption claims by name."""
    inventory = yaml.safe_load(_discover(proxmox))
    claims = [d for d in yaml.safe_load_all(_discover(proxmox, "--claims", "-")) if d]
    return inventory, {c["metadata"]["name"]: c for c in claims}


def _fleet(claims: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each claim as Crossplane's XR of it, created in the order discovery wrote them."""
    fleet = {}
    for i, claim in enumerate(claims.values()):
        name = claim["metadata"]["name"]
        fleet[name] = xr(name, claim["spec"], created=f"2026-12-01T10:00:{i:02d}Z")
        fleet[name]["kind"] = "X" + claim["kind"]
    return fleet


def _render(
    homelab: tuple[dict[str, Any], dict[str, dict[str, Any]]], name: str, call: Any
) -> tuple[dict[str, Any], Any]:
    inventory, claims = homelab
    fleet = _fleet(claims)
    rsp = reconcile(call, fleet[name], [inventory, *fleet.values()])
    return fleet[name], rsp


def _import(ws: dict[str, Any], fake: FakeProxmox, directory: Path) -> tfharness.Workdir:
    work = tfharness.lay_out(ws, PROVIDERCONFIG, directory)
    work.use_proxmox(fake.url, TOKEN)
    work.init()
    return work


def test_discovery_claims_every_seed_guest(
    homelab: tuple[dict[str, Any], dict[str, dict[str, Any]]],
) -> None:
    _, claims = homelab
    for name in SEED_VMS:
        assert claims[name]["kind"] == "Machine"
        assert claims[name]["spec"]["adopt"]["manage"] == []
    assert claims["frigate"]["kind"] == "Container"


@pytest.mark.parametrize("name", SEED)
def test_an_adopted_guest_is_imported_and_nothing_changes(
    name: str,
    homelab: tuple[dict[str, Any], dict[str, dict[str, Any]]],
    proxmox: FakeProxmox,
    call: Any,
    tmp_path: Path,
) -> None:
    require_tool("terraform")
    claim = homelab[1][name]
    _, rsp = _render(homelab, name, call)
    ws = desired_ws(rsp)
    assert ws is not None, messages(rsp)
    adopt = claim["spec"]["adopt"]
    assert ws["spec"]["deletionPolicy"] == "Orphan"
    notes = ws["metadata"]["annotations"]
    assert (notes["fabric.homelab.io/node"], notes["fabric.homelab.io/vmid"]) == (
        adopt["node"],
        str(adopt["vmid"]),
    )
    assert notes["fabric.homelab.io/adopted"] == "true"

    proxmox.unanswered.clear()
    work = _import(ws, proxmox, tmp_path)
    plan = work.plan()
    assert proxmox.unanswered == [], "the provider asked for what the recording lacks"
    changes = {rc["address"]: rc for rc in plan["resource_changes"]}
    assert list(changes) == [IMPORTED[claim["kind"]]]
    vm = changes[IMPORTED[claim["kind"]]]
    assert vm["change"]["actions"] == ["no-op"], vm["change"]["actions"]
    # From an empty state, a resource with a "before" is one the import read from Proxmox
    # (Terraform 1.5's JSON plan has no "importing" field yet).
    imported = vm["change"]["before"]
    assert imported is not None
    assert imported["node_name"] == adopt["node"]
    assert imported["id"] == str(adopt["vmid"])
    assert imported["clone"] == []  # nothing Fabric renders may add one: bpg #1988


def _taken_over(
    homelab: tuple[dict[str, Any], dict[str, dict[str, Any]]],
    name: str,
    call: Any,
    edit: dict[str, Any],
) -> tuple[Any, Any]:
    """The first response for the claim, and the response after `edit` to its spec."""
    inventory, claims = homelab
    fleet = _fleet(claims)
    machine, first = _render(homelab, name, call)
    running = with_status(machine, first)
    edited = copy.deepcopy(running)
    for key, value in edit.items():
        if key == "manage":
            edited["spec"]["adopt"]["manage"] = value
        else:
            edited["spec"][key] = value
    others = [x for n, x in fleet.items() if n != name]
    second = reconcile(call, edited, [inventory, *others, edited], observed=applied(first))
    return first, second


# The VM argument each manageable claim field sets (terraform.adopted_module).
ARGUMENT = {"cpu": "cpu", "memory": "memory", "powerState": "started", "protection": "protection"}

# Each take-over: the claim edit, and the VM attributes the in-place update may touch.
TAKEOVERS = {
    "same values": (
        {"manage": ["cpu", "memory", "powerState", "protection"]},
        {"reboot_after_update"},
    ),
    "memory grows": ({"manage": ["memory"], "memory": "10Gi"}, {"memory", "reboot_after_update"}),
    "cpu grows": ({"manage": ["cpu"], "cpu": 6}, {"cpu", "reboot_after_update"}),
    "protected": (
        {"manage": ["protection"], "protection": True},
        {"protection", "reboot_after_update"},
    ),
    "stopped": (
        {"manage": ["powerState"], "powerState": "Stopped"},
        {"started", "on_boot", "reboot_after_update"},
    ),
}


@pytest.mark.parametrize("case", TAKEOVERS)
def test_fields_are_taken_over_one_at_a_time_in_place(
    case: str,
    homelab: tuple[dict[str, Any], dict[str, dict[str, Any]]],
    proxmox: FakeProxmox,
    call: Any,
    tmp_path: Path,
) -> None:
    require_tool("terraform")
    edit, allowed = TAKEOVERS[case]
    first, second = _taken_over(homelab, "haos", call, edit)
    work = _import(desired_ws(first) or {}, proxmox, tmp_path)
    prior = tfharness.state_from_import(work.plan())

    ws = desired_ws(second)
    assert ws is not None, messages(second)
    (tmp_path / "main.tf.json").write_text(ws["spec"]["forProvider"]["module"])
    plan = work.plan(prior=prior)
    vm = next(rc for rc in plan["resource_changes"] if rc["address"] == VM)
    assert vm["change"]["actions"] == ["update"], vm["change"]["actions"]
    changed = tfharness.changed_attributes(vm["change"])
    assert changed <= allowed, f"{case}: the update also touches {sorted(changed - allowed)}"
    assert "disk" not in changed
    assert vm["change"]["after"]["reboot_after_update"] is False
    announced = " ".join(warnings(second))
    for field in edit["manage"]:
        assert f"Fabric takes over {ARGUMENT[field]} = " in announced, announced


def test_the_argument_lists_are_the_providers(tmp_path: Path) -> None:
    """What ignore_changes names is every argument of the pinned provider's VM resource."""
    require_tool("terraform")
    block = tfharness.provider_schema(tmp_path)["resource_schemas"][terraform.VM]["block"]
    arguments = {
        name
        for name, attr in block["attributes"].items()
        if (attr.get("optional") or attr.get("required")) and name != "id"
    } | set(block["block_types"])
    assert set(terraform.VM_ARGUMENTS) == arguments
    for name, fields in (("cpu", terraform.VM_CPU_FIELDS), ("memory", terraform.VM_MEMORY_FIELDS)):
        assert set(fields) == set(block["block_types"][name]["block"]["attributes"])


# --- the fleet: one VMID space, one holder per device ------------------------------------------


def _adoption(node: str, vmid: int, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"cpu": 2, "memory": "4Gi", "adopt": {"node": node, "vmid": vmid}}
    spec["adopt"].update(extra)
    return spec


def _example_fleet(*machines: dict[str, Any]) -> list[dict[str, Any]]:
    from tests.conftest import inventory_cm

    return [inventory_cm(), *machines]


def test_adopting_a_listed_unmanaged_guest_takes_its_place(call: Any) -> None:
    """107 is in the example inventory's unmanaged list: its claim supersedes that entry."""
    machine = xr("k3s-vm-pve", _adoption("pve", 107))
    rsp = reconcile(call, machine, _example_fleet(machine))
    ws = desired_ws(rsp)
    assert ws is not None, messages(rsp)
    assert ws["metadata"]["annotations"]["fabric.homelab.io/vmid"] == "107"
    assert any("adopting the existing guest 107" in m for m in messages(rsp)), messages(rsp)


def test_two_claims_cannot_adopt_one_guest(call: Any) -> None:
    first = xr("a", _adoption("pve", 107), created="2026-12-01T10:00:00Z")
    second = xr("b", _adoption("pve", 107), created="2026-12-01T10:00:01Z")
    placed = with_status(first, reconcile(call, first, _example_fleet(first, second)))
    rsp = reconcile(call, second, _example_fleet(placed, second))
    assert desired_ws(rsp) is None
    assert any("spec.adopt.vmid: 107 is held by infra-machines/a" in m for m in messages(rsp))


def test_an_adopted_device_is_never_given_to_a_new_machine(call: Any) -> None:
    from tests.conftest import gpu_spec

    guest = xr("k3s-vm-still-fawn", _adoption("still-fawn", 105, devices=["rtx3070"]))
    placed = with_status(guest, reconcile(call, guest, _example_fleet(guest)))
    worker = xr("gpu-worker-1", gpu_spec(), created="2026-12-01T11:00:00Z")
    rsp = reconcile(call, worker, _example_fleet(placed, worker))
    assert desired_ws(rsp) is None
    assert any("infra-machines/k3s-vm-still-fawn" in m for m in messages(rsp)), messages(rsp)


def test_an_adoption_is_never_turned_into_a_clone(call: Any) -> None:
    """Removing spec.adopt would render a clone block for an imported VM: bpg replaces it."""
    guest = xr("haos", _adoption("chief-horse", 116))
    first = reconcile(call, guest, _example_fleet(guest))
    edited = with_status(guest, first)
    edited["spec"] = {"class": "small", "network": {"name": "lan"}}
    rsp = reconcile(call, edited, _example_fleet(edited), observed=applied(first))
    held, adopted = desired_ws(rsp), desired_ws(first)
    assert held is not None, messages(rsp)
    assert adopted is not None
    assert held["spec"]["forProvider"]["module"] == adopted["spec"]["forProvider"]["module"]
    assert any("spec.adopt: removed" in m for m in messages(rsp)), messages(rsp)


def test_a_refused_adoption_frees_nothing_the_inventory_holds(call: Any) -> None:
    """An invalid adoption claim must not release the unmanaged entry's VMID to others."""
    from tests.conftest import basic_spec, inventory_cm, inventory_data, with_inventory

    data = inventory_data(inventory_cm())
    data["unmanaged"].append({"vmid": 200, "name": "old-vm", "node": "pve", "cpu": 1})
    cm = with_inventory(data)
    refused = xr("old-vm", {**_adoption("pve", 200), "image": "debian-12"})
    new = xr("web", basic_spec(), created="2026-12-01T11:00:00Z")
    assert desired_ws(reconcile(call, refused, [cm, refused, new])) is None
    rsp = reconcile(call, new, [cm, refused, new])
    assert status(rsp)["vmId"] == 201, messages(rsp)


def test_an_adoption_on_the_wrong_node_is_refused_by_the_unmanaged_entry(call: Any) -> None:
    """The inventory says 116 runs on chief-horse: a claim saying pve is wrong, and told so."""
    guest = xr("haos", _adoption("pve", 116))
    rsp = reconcile(call, guest, _example_fleet(guest))
    assert desired_ws(rsp) is None
    assert any("spec.adopt.vmid: 116 is held by unmanaged qemu haos" in m for m in messages(rsp))
