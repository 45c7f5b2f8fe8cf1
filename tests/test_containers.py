"""Containers as a kind: one scheduler, one VMID space, one IPAM, judged by the real tools.

- The function over gRPC: a Container and a Machine never share a VMID, an address, a device
  or a name; device passthrough into a container is refused with the reason.
- The real Crossplane CLIs render the example containers with their own Composition, and
  `beta validate` checks claims, XRs, namespaced twins and the rendered Workspace.
- Real Terraform 1.5.5 with the pinned bpg/proxmox validates and plans the container's module;
  day-2 edits plan in place against the applied state, never a replacement.
- The Frigate LXC (113), adopted: the provider imports it from the recorded Proxmox answers and
  plans nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from function import lxc
from function.model import intent
from tests.conftest import (
    applied,
    basic_spec,
    desired_ws,
    inventory_cm,
    inventory_data,
    messages,
    real_render,
    reconcile,
    require_reference,
    require_tool,
    status,
    warnings,
    with_inventory,
    with_status,
    xr,
)
from tools import crossplane_cli, fakeproxmox, realtools, tfharness, xpsim
from tools.fakeproxmox import FakeProxmox

ROOT = realtools.ROOT
PT = realtools.REFERENCE / "provider-terraform"
EXAMPLES = ROOT / "examples" / "containers"
COMPOSITION = ROOT / "compositions" / "container.yaml"
PROVIDERCONFIG = yaml.safe_load((ROOT / "compositions" / "providerconfig.yaml").read_text())
TOKEN = tfharness.DUMMY_CREDENTIALS["proxmox.auto.tfvars.json"]["proxmox_api_token"]
CT = lxc.ADDRESS


def container(name: str, spec: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """A legacy XContainer, as conftest.xr makes XMachines."""
    body = xr(name, spec, **kw)
    body["kind"] = "XContainer"
    return body


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())


def pihole_spec(**extra: Any) -> dict[str, Any]:
    spec = copy.deepcopy(example("pihole")["spec"])
    spec.update(extra)
    return spec


def test_the_example_xr_is_its_claims() -> None:
    """examples/xrs/containers/pihole.yaml, which make render and the golden file show."""
    claim = example("pihole")
    xr = xpsim.load_yaml(ROOT / "examples" / "xrs" / "containers" / "pihole.yaml")
    meta = claim["metadata"]
    assert xr["kind"] == "XContainer"
    assert intent(xr["spec"]) == claim["spec"]
    assert xr["spec"]["claimRef"] == {
        "apiVersion": claim["apiVersion"],
        "kind": "Container",
        "name": meta["name"],
        "namespace": meta["namespace"],
    }
    assert xr["metadata"]["labels"]["crossplane.io/claim-name"] == meta["name"]
    assert xr["metadata"]["labels"]["crossplane.io/claim-namespace"] == meta["namespace"]


# --- one fleet ---------------------------------------------------------------------------------


def test_a_container_and_a_machine_get_different_vmids(call: Any) -> None:
    machine = xr("basic", basic_spec(), created="2026-12-01T10:00:00Z")
    ct = container("pihole", pihole_spec(), created="2026-12-01T10:00:01Z")
    placed = with_status(machine, reconcile(call, machine, [inventory_cm(), machine, ct]))
    rsp = reconcile(call, ct, [inventory_cm(), placed, ct])
    assert desired_ws(rsp) is not None, messages(rsp)
    assert status(rsp)["vmId"] != placed["status"]["vmId"]
    assert lxc.CONTAINER in desired_ws(rsp)["spec"]["forProvider"]["module"]


def test_a_container_never_takes_a_machines_address(call: Any) -> None:
    machine = xr("dns", basic_spec(network={"name": "lan", "address": "192.168.4.53/24"}))
    ct = container("pihole", pihole_spec(), created="2026-12-01T11:00:00Z")
    placed = with_status(machine, reconcile(call, machine, [inventory_cm(), machine, ct]))
    rsp = reconcile(call, ct, [inventory_cm(), placed, ct])
    assert desired_ws(rsp) is None
    assert any("192.168.4.53/24 is held by infra-machines/dns" in m for m in messages(rsp))


def test_an_adopted_container_holds_its_device_against_machines(call: Any) -> None:
    """Frigate's LXC has the Coral: the Frigate VM example cannot be given it."""
    lxc_claim = container("frigate-lxc", example("frigate-adopted")["spec"])
    vm = xr(
        "frigate",
        xpsim.load_yaml("examples/claims/frigate.yaml")["spec"],
        created="2026-12-02T00:00:00Z",
    )
    held = with_status(lxc_claim, reconcile(call, lxc_claim, [inventory_cm(), lxc_claim, vm]))
    assert held["status"]["devices"][0]["mapping"] == "coral-usb"
    rsp = reconcile(call, vm, [inventory_cm(), held, vm])
    assert desired_ws(rsp) is None
    assert any("infra-machines/frigate-lxc" in m for m in messages(rsp)), messages(rsp)


def test_a_machine_and_a_container_share_one_space_of_names(call: Any) -> None:
    machine = xr("pihole", basic_spec(), created="2026-12-01T10:00:00Z")
    ct = container("pihole", pihole_spec(), created="2026-12-01T10:00:01Z")
    rsp = reconcile(call, ct, [inventory_cm(), machine, ct])
    assert desired_ws(rsp) is None
    assert any("a Machine named infra-machines/pihole exists already" in m for m in messages(rsp))
    # ...and the machine, made first, is placed as if the container were not there.
    assert desired_ws(reconcile(call, machine, [inventory_cm(), machine, ct])) is not None


def test_a_machine_made_first_keeps_its_name_while_its_spec_is_invalid(call: Any) -> None:
    # A bad edit holds the machine (and any VM it has); its name is still its hostname, and the
    # fleet every other reconcile reads still shows the machine under it.
    machine = xr("pihole", basic_spec(cpu="lots"), created="2026-12-01T10:00:00Z")
    ct = container("pihole", pihole_spec(), created="2026-12-01T10:00:01Z")
    rsp = reconcile(call, ct, [inventory_cm(), machine, ct])
    assert desired_ws(rsp) is None
    assert any("a Machine named infra-machines/pihole exists already" in m for m in messages(rsp))


def test_device_passthrough_into_a_container_is_refused_with_the_reason(call: Any) -> None:
    ct = container("nvr", pihole_spec(devices=[{"class": "coral-tpu"}]))
    rsp = reconcile(call, ct, [inventory_cm(), ct])
    assert desired_ws(rsp) is None
    assert any("root@pam-only" in m and "spec.devices" in m for m in messages(rsp))


def test_a_mount_point_on_a_datastore_the_node_lacks_is_refused(call: Any) -> None:
    mounts = [{"path": "/data", "size": "10Gi", "pool": "tank"}]
    ct = container("pihole", pihole_spec(mountPoints=mounts))
    rsp = reconcile(call, ct, [inventory_cm(), ct])
    assert desired_ws(rsp) is None
    assert any("spec.mountPoints[0].pool: 'tank'" in m for m in messages(rsp)), messages(rsp)


# --- the real Crossplane CLIs ------------------------------------------------------------------


def _xr_file(directory: Path, name: str, kind: str = "Container") -> Path:
    claim = example(name)
    meta = claim["metadata"]
    body = {
        "apiVersion": "fabric.homelab.io/v1alpha1",
        "kind": "XContainer",
        "metadata": {
            "name": f"{meta['name']}-c8k2p",
            # Stable across runs: str hashes are salted per process, so not hash(name).
            "uid": f"c0a7a1e0-0000-4000-8000-{hashlib.sha256(name.encode()).hexdigest()[:12]}",
            "creationTimestamp": "2025-06-02T09:00:00Z",
            "labels": {
                "crossplane.io/claim-name": meta["name"],
                "crossplane.io/claim-namespace": meta["namespace"],
            },
        },
        "spec": {
            "claimRef": {
                "apiVersion": "fabric.homelab.io/v1alpha1",
                "kind": kind,
                "name": meta["name"],
                "namespace": meta["namespace"],
            },
            "compositionRef": {"name": "fabric-container"},
            **claim["spec"],
        },
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.mark.parametrize("cli", realtools.CLIS, ids=lambda c: c.name)
def test_the_real_cli_renders_a_container(
    cli: realtools.CrossplaneCLI, address: str, tmp_path: Path
) -> None:
    binary = require_tool(cli.name)
    path = _xr_file(tmp_path, "pihole")
    resources = [*crossplane_cli.fleet_and_inventory(), xpsim.load_yaml(path)]
    _, second = crossplane_cli.render_settled(
        cli, binary, path, address, resources, composition=COMPOSITION
    )
    ws = second.workspace()
    assert ws is not None
    module = yaml.safe_load(ws["spec"]["forProvider"]["module"])
    ct = module["resource"][lxc.CONTAINER]["container"]
    # The example machines, rendered by the same CLI: the container is placed around them.
    machines = {
        str(
            json.loads(real_render(cli, p, address).workspace()["spec"]["forProvider"]["module"])[
                "resource"
            ]["proxmox_virtual_environment_vm"]["machine"]["vm_id"]
        )
        for p in sorted((ROOT / "examples" / "xrs").glob("*.yaml"))
    }
    assert str(ct["vm_id"]) not in machines
    assert ct["initialization"][0]["ip_config"][0]["ipv4"][0]["address"] == "192.168.4.53/24"
    assert {c["kind"] for c in second.composed} >= {"Workspace", "Reservation"}


def test_containers_validate_against_their_xrds(tmp_path: Path, address: str) -> None:
    validator = require_tool("crossplane-2.0")

    def check(extensions: list[Path], resources: Path) -> str:
        done = crossplane_cli.validate(validator, extensions, resources)
        report = done.stdout + done.stderr
        assert done.returncode == 0, report
        assert "0 failure cases" in report, report
        assert "0 missing schemas" in report, report
        return report

    assert check([ROOT / "xrds" / "xcontainer.yaml"], EXAMPLES).count("Kind=Container,") == 2
    xrs = tmp_path / "xrs"
    xrs.mkdir()
    paths = [_xr_file(xrs, n) for n in ("pihole", "frigate-adopted")]
    assert check([ROOT / "xrds" / "xcontainer.yaml"], xrs).count("Kind=XContainer,") == 2
    twins = tmp_path / "twins"
    twins.mkdir()
    for p in paths:
        twin = crossplane_cli.namespaced_twin(xpsim.load_yaml(p))
        (twins / p.name).write_text(yaml.safe_dump(twin))
    assert check([ROOT / "xrds" / "v2"], twins).count("Kind=XContainer,") == 2
    check([ROOT / "package" / "input"], ROOT / "compositions" / "container.yaml")
    cli = next(c for c in realtools.CLIS if c.name == "crossplane-2.0")
    resources = [*crossplane_cli.fleet_and_inventory(), *map(xpsim.load_yaml, paths)]
    _, second = crossplane_cli.render_settled(
        cli, validator, paths[0], address, resources, composition=COMPOSITION
    )
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    (rendered / "ws.yaml").write_text(yaml.safe_dump(second.workspace()))
    check([require_reference(PT / "tf.upbound.io_workspaces.yaml")], rendered)


# --- real Terraform ----------------------------------------------------------------------------


def _rendered(call: Any, spec: dict[str, Any], inventory: dict[str, Any] | None = None) -> Any:
    ct = container("pihole", spec)
    return reconcile(call, ct, [inventory or inventory_cm(), ct]), ct


@pytest.fixture(scope="module")
def applied_state(tmp_path_factory: pytest.TempPathFactory, call_inproc: Any) -> dict[str, Any]:
    """The state Terraform holds after creating the example container."""
    require_tool("terraform")
    rsp, _ = _rendered(call_inproc, pihole_spec())
    work = tfharness.lay_out(desired_ws(rsp), PROVIDERCONFIG, tmp_path_factory.mktemp("ct"))
    work.init()
    report = work.validate()
    assert report["valid"], report
    assert report["warning_count"] == 0, report
    return work.state_after_apply()


Edit = Callable[[dict[str, Any]], None]


def _nodes(inv: dict[str, Any]) -> None:
    for image in inv["containerImages"].values():
        for node in image["templates"]:
            image["templates"][node] = "local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst"


def _default_storage(inv: dict[str, Any]) -> None:
    for node in inv["nodes"]:
        node["defaultStorage"] = "local"


MOUNTS = example("pihole")["spec"]["mountPoints"]
NOOP, UPDATE = ("no-op",), ("update",)
# Claim edits that only a re-created container would get: the claim must say so.
RECREATED = "only when the machine is re-created"
# What the claim must say for an event, besides planning as it must.
ANNOUNCED = {
    "privileged": RECREATED,
    "mount added": RECREATED,
    "mount grows": RECREATED,
    "keys removed": RECREATED,
    "stopped": "powerState is Stopped",
    "disk shrink attempt": "a disk cannot shrink",
}

# Day-2 events: the claim edit, the inventory edit, the drift in the state; the container's
# planned actions, and the attributes an update may touch.
EVENTS: dict[str, tuple[dict[str, Any], Edit | None, Edit | None, tuple[str, ...], set[str]]] = {
    "nothing": ({}, None, None, ("no-op",), set()),
    "memory grows": ({"memory": "1Gi"}, None, None, ("update",), {"memory"}),
    "cpu grows": ({"cpu": 2}, None, None, ("update",), {"cpu"}),
    "disk grows": ({"disk": "16Gi"}, None, None, ("update",), {"disk"}),
    # Held as it is, and said: a root filesystem cannot shrink.
    "disk shrink attempt": ({"disk": "4Gi"}, None, None, NOOP, set()),
    "stopped": ({"powerState": "Stopped"}, None, None, ("update",), {"started", "start_on_boot"}),
    "protected": ({"protection": True}, None, None, ("update",), {"protection"}),
    "keyctl": ({"features": {"nesting": True, "keyctl": True}}, None, None, UPDATE, {"features"}),
    # bpg re-creates a container for these: they are facts of its creation, announced.
    "privileged": ({"unprivileged": False}, None, None, NOOP, set()),
    "mount added": (
        {"mountPoints": [*MOUNTS, {"path": "/srv", "size": "2Gi"}]},
        None,
        None,
        NOOP,
        set(),
    ),
    "mount grows": ({"mountPoints": [{**MOUNTS[0], "size": "2Gi"}]}, None, None, NOOP, set()),
    "keys removed": ({"bootstrap": {"sshAuthorizedKeys": []}}, None, None, NOOP, set()),
    "pool default edited": ({}, _default_storage, None, NOOP, set()),
    "template bumped in the inventory": ({}, _nodes, None, ("no-op",), set()),
    "moved by HA": ({}, None, lambda a: a.update(node_name="fun-bedbug"), ("no-op",), set()),
}


@pytest.mark.parametrize("event", EVENTS)
def test_day_two_edits_plan_in_place(
    event: str, applied_state: dict[str, Any], call: Any, tmp_path: Path
) -> None:
    edit, inventory_edit, drift, want, allowed = EVENTS[event]
    first, ct = _rendered(call, pihole_spec())
    inv = inventory_data(inventory_cm())
    if inventory_edit is not None:
        inventory_edit(inv)
    running = with_status(ct, first)
    running["spec"].update(edit)
    rsp = reconcile(call, running, [with_inventory(inv), running], observed=applied(first))
    ws = desired_ws(rsp)
    assert ws is not None, messages(rsp)
    prior = copy.deepcopy(applied_state)
    if drift is not None:
        drift(
            next(r for r in prior["resources"] if r["type"] == lxc.CONTAINER)["instances"][0][
                "attributes"
            ]
        )
    work = tfharness.lay_out(ws, PROVIDERCONFIG, tmp_path)
    work.init()
    plan = work.plan(prior=prior)
    change = next(rc for rc in plan["resource_changes"] if rc["address"] == CT)["change"]
    assert tuple(change["actions"]) == want, (event, change["actions"])
    assert tfharness.changed_attributes(change) <= allowed
    if event in ANNOUNCED:
        said = warnings(rsp)
        assert any(ANNOUNCED[event] in m for m in said), said


def test_the_argument_lists_are_the_providers(tmp_path: Path) -> None:
    require_tool("terraform")
    block = tfharness.provider_schema(tmp_path)["resource_schemas"][lxc.CONTAINER]["block"]
    arguments = {
        name
        for name, attr in block["attributes"].items()
        if (attr.get("optional") or attr.get("required")) and name != "id"
    } | set(block["block_types"])
    assert set(lxc.ARGUMENTS) == arguments
    for name, fields in (("cpu", lxc.CPU_FIELDS), ("memory", lxc.MEMORY_FIELDS)):
        assert set(fields) == set(block["block_types"][name]["block"]["attributes"])


# --- Frigate's LXC, adopted --------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxmox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeProxmox]:
    context = fakeproxmox.tls_context(tmp_path_factory.mktemp("tls"))
    with fakeproxmox.serve(FakeProxmox.recorded(TOKEN), context) as served:
        yield served


def test_the_adopted_frigate_container_is_imported_and_nothing_changes(
    proxmox: FakeProxmox, call: Any, tmp_path: Path
) -> None:
    require_tool("terraform")
    ct = container("frigate-lxc", example("frigate-adopted")["spec"])
    rsp = reconcile(call, ct, [inventory_cm(), ct])
    ws = desired_ws(rsp)
    assert ws is not None, messages(rsp)
    assert ws["spec"]["deletionPolicy"] == "Orphan"
    proxmox.unanswered.clear()
    work = tfharness.lay_out(ws, PROVIDERCONFIG, tmp_path)
    work.use_proxmox(proxmox.url, TOKEN)
    work.init()
    plan = work.plan()
    assert proxmox.unanswered == []
    change = next(rc for rc in plan["resource_changes"] if rc["address"] == CT)["change"]
    assert change["actions"] == ["no-op"], change["actions"]
    # bpg 0.111.1 imports a container with its id but vm_id null: vm_id is ignored (never one of
    # the fields taken over), so the module's vm_id never plans a change.
    assert change["before"]["id"] == "113"
    assert change["before"]["node_name"] == "fun-bedbug"
    # Taking memory over: an in-place update of that one value.
    running = with_status(ct, rsp)
    running["spec"]["adopt"]["manage"] = ["memory"]
    running["spec"]["memory"] = "6Gi"
    second = reconcile(call, running, [inventory_cm(), running], observed=applied(rsp))
    assert any("Fabric takes over memory = " in w for w in warnings(second)), warnings(second)
    (tmp_path / "main.tf.json").write_text(desired_ws(second)["spec"]["forProvider"]["module"])
    plan = work.plan(prior=tfharness.state_from_import(plan))
    change = next(rc for rc in plan["resource_changes"] if rc["address"] == CT)["change"]
    assert change["actions"] == ["update"]
    assert tfharness.changed_attributes(change) == {"memory"}
