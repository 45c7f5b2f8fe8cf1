"""`fabric-migrate`: kubelize Machine claims in, Fabric adoption claims out, or a clear refusal.

The VMID is never guessed: it comes from --vmid, the old composition's Workspaces, or the one
VM of the claim's name on its node in the recorded Proxmox API (tests/fixtures/proxmox).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from fabric_discover.migrate import cli
from tools import fakeproxmox
from tools.fakeproxmox import FakeProxmox

INVENTORY = Path(__file__).parent.parent / "examples" / "inventory.yaml"
SECRET = "5e0c9a7d-3b1f-4c2a-9d8e-7f6a5b4c3d2e"
TOKEN = f"fabric@pve!discover={SECRET}"

# The example, as the old repository writes it.
TEST_VM = {
    "apiVersion": "fabric.kubelize.io/v1alpha1",
    "kind": "Machine",
    "metadata": {"name": "test-vm", "namespace": "infra-machines"},
    "spec": {
        "cpu": {"cores": 2},
        "memory": {"size": 2048},
        "disk": {"size": 32},
        "proxmox": {"node": "pve", "storage": "local-zfs", "bridge": "vmbr0", "templateId": 9000},
    },
}


def old(name: str = "test-vm", **spec: Any) -> dict[str, Any]:
    claim = copy.deepcopy(TEST_VM)
    claim["metadata"]["name"] = name
    for key, value in spec.items():
        if value is None:
            claim["spec"].pop(key, None)
        else:
            claim["spec"][key] = value
    return claim


def workspace(name: str, labels: dict[str, str], **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "tf.upbound.io/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "labels": labels},
        "spec": {"forProvider": {"source": "Inline", "module": fields.pop("module", "")}},
    }
    if "outputs" in fields:
        doc["status"] = {"atProvider": {"outputs": fields.pop("outputs")}}
    doc["spec"]["forProvider"].update(fields)
    return doc


def claim_labels(name: str, namespace: str = "infra-machines") -> dict[str, str]:
    return {
        "crossplane.io/claim-name": name,
        "crossplane.io/claim-namespace": namespace,
        "crossplane.io/composite": f"{name}-x7k2p",
    }


def run(
    tmp_path: Path,
    claims: list[dict[str, Any]],
    *args: str,
    workspaces: list[dict[str, Any]] | None = None,
    stdin: bool = False,
) -> Result:
    text = yaml.safe_dump_all(claims)
    argv = ["--inventory", str(INVENTORY)]
    if workspaces is not None:
        dump = tmp_path / "workspaces.yaml"
        dump.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": workspaces}))
        argv += ["--workspaces", str(dump)]
    if not stdin:
        path = tmp_path / "old.yaml"
        path.write_text(text)
        argv.append(str(path))
    env = {"PROXMOX_VE_API_TOKEN": TOKEN}
    return CliRunner().invoke(
        cli, [*argv, *args], input=text if stdin else None, env=env, catch_exceptions=False
    )


def new_claims(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


def expected(name: str, vmid: int, node: str = "pve", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "adopt": {"node": node, "vmid": vmid, "devices": [], "manage": []},
        "cpu": 2,
        "memory": "2Gi",
        "disk": "32Gi",
        "network": {"name": "lan", "address": "dhcp"},
    }
    for key, value in spec.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = value
    return {
        "apiVersion": "fabric.homelab.io/v1alpha1",
        "kind": "Machine",
        "metadata": {"name": name, "namespace": "infra-machines"},
        "spec": body | {"deletionPolicy": "Orphan"},
    }


# old claim, flags -> the new claim
CONVERSIONS = {
    "the-issue-example": (old(), ["--vmid", "test-vm=120"], expected("test-vm", 120)),
    "namespaced-vmid-flag": (
        old(),
        ["--vmid", "infra-machines/test-vm=120"],
        expected("test-vm", 120),
    ),
    "odd-memory-stays-mi": (
        old(memory={"size": 1536}),
        ["--vmid", "test-vm=120"],
        expected("test-vm", 120, memory="1536Mi"),
    ),
    "bridge-without-a-plain-network": (
        old(proxmox={"node": "still-fawn", "bridge": "vmbr1"}),  # iot is vmbr1 VLAN 20
        ["--vmid", "test-vm=130"],
        expected("test-vm", 130, node="still-fawn", network=None),
    ),
    "only-the-node": (
        old(cpu=None, memory=None, disk=None, proxmox={"node": "pve"}),
        ["--vmid", "test-vm=120"],
        expected("test-vm", 120, cpu=None, memory=None, disk=None, network=None),
    ),
    "another-namespace": (
        old(),
        ["--vmid", "test-vm=120", "--namespace", "homelab"],
        expected("test-vm", 120) | {"metadata": {"name": "test-vm", "namespace": "homelab"}},
    ),
}


@pytest.mark.parametrize("case", CONVERSIONS.values(), ids=CONVERSIONS.keys())
def test_conversions(
    tmp_path: Path, case: tuple[dict[str, Any], list[str], dict[str, Any]]
) -> None:
    claim, flags, want = case

    [got] = new_claims(run(tmp_path, [claim], *flags))

    assert got == want


def test_the_claim_says_what_was_done_and_what_comes_first(tmp_path: Path) -> None:
    result = run(tmp_path, [old()], "--vmid", "test-vm=120")

    assert result.stdout.startswith("---\n# Adoption claim for VM 120 'test-vm' on pve")
    text = result.stdout.replace("\n# ", " ")
    assert "Converted from fabric.kubelize.io/v1alpha1 Machine infra-machines/test-vm" in text
    assert "The VMID 120 comes from --vmid." in text
    assert "Not carried: storage local-zfs and templateId 9000" in text
    assert "two Terraform states must never manage one VM" in text
    assert "the VM's configuration was not read: dhcp" in text


def test_stdin_and_a_kubectl_list(tmp_path: Path) -> None:
    listing = {"apiVersion": "v1", "kind": "List", "items": [old("a"), old("b")]}

    result = run(tmp_path, [listing], "--vmid", "a=120", "--vmid", "b=121", stdin=True)

    assert [c["spec"]["adopt"]["vmid"] for c in new_claims(result)] == [120, 121]


WORKSPACES = {
    "v1-claim-labels-output": (
        workspace("test-vm-x7k2p-ws", claim_labels("test-vm"), outputs={"vm_id": 121}),
        "Workspace test-vm-x7k2p-ws output vm_id",
    ),
    "output-as-string": (
        workspace("ws", claim_labels("test-vm"), outputs={"vmid": "121"}),
        "Workspace ws output vmid",
    ),
    "v2-composite-module-hcl": (
        workspace("ws", {"crossplane.io/composite": "test-vm"}, module='vm_id = 121\nname = "x"')
        | {
            "metadata": {
                "name": "ws",
                "namespace": "infra-machines",
                "labels": {"crossplane.io/composite": "test-vm"},
            }
        },
        "Workspace ws module vm_id",
    ),
    "owner-reference-module-json": (
        workspace("ws", {}, module='{"resource": {"x": {"vm": {"vm_id": 121}}}}')
        | {
            "metadata": {
                "name": "ws",
                "namespace": "infra-machines",
                "ownerReferences": [{"kind": "Machine", "name": "test-vm"}],
            }
        },
        "Workspace ws module vm_id",
    ),
    "varmap": (
        workspace("ws", claim_labels("test-vm"), varmap={"vm_id": 121}),
        "Workspace ws varmap vm_id",
    ),
    "vars": (
        workspace("ws", claim_labels("test-vm"), vars=[{"key": "vmid", "value": "121"}]),
        "Workspace ws var vmid",
    ),
}


@pytest.mark.parametrize("case", WORKSPACES.values(), ids=WORKSPACES.keys())
def test_the_vmid_from_the_old_workspace(tmp_path: Path, case: tuple[dict[str, Any], str]) -> None:
    found, where = case
    others = [
        workspace("other", claim_labels("other-vm"), outputs={"vm_id": 999}),
        workspace("elsewhere", claim_labels("test-vm", "other-ns"), outputs={"vm_id": 998}),
    ]

    result = run(tmp_path, [old()], workspaces=[*others, found])

    [claim] = new_claims(result)
    assert claim["spec"]["adopt"]["vmid"] == 121
    assert f"The VMID 121 comes from {where}." in result.stdout


@pytest.fixture
def api() -> Iterator[FakeProxmox]:
    with fakeproxmox.serve(FakeProxmox.recorded(TOKEN)) as served:
        yield served


def api_flags(fake: FakeProxmox) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(fake.port), "--protocol", "http"]


def test_the_vmid_and_address_from_the_proxmox_api(tmp_path: Path, api: FakeProxmox) -> None:
    # k3s-vm-pve (107) was made by the old composition: the API finds it by name on pve, and its
    # configuration says where it really is: vmbr0 VLAN 40 with a static address.
    claim = old("k3s-vm-pve", cpu={"cores": 4}, memory={"size": 8192}, disk={"size": 100})

    result = run(tmp_path, [claim], *api_flags(api))

    [got] = new_claims(result)
    assert got == expected(
        "k3s-vm-pve",
        107,
        cpu=4,
        memory="8Gi",
        disk="100Gi",
        network={"name": "k3s-cluster", "address": "10.40.0.7/24"},
    )
    assert "The VMID 107 comes from GET /nodes/pve/qemu (name k3s-vm-pve)." in result.stdout
    assert "The address is the VM's ipconfig0 (10.40.0.7/24)." in result.stdout
    assert api.asked("/nodes/pve/qemu") == ["/nodes/pve/qemu", "/nodes/pve/qemu/107/config"]
    assert SECRET not in result.stdout + result.stderr


def test_workspace_and_api_agreeing_is_fine(tmp_path: Path, api: FakeProxmox) -> None:
    ws = workspace("ws", claim_labels("k3s-vm-pve"), outputs={"vm_id": 107})

    result = run(tmp_path, [old("k3s-vm-pve")], *api_flags(api), workspaces=[ws])

    assert new_claims(result)[0]["spec"]["adopt"]["vmid"] == 107


def test_an_explicit_vmid_wins_and_the_disagreement_is_said(
    tmp_path: Path, api: FakeProxmox
) -> None:
    ws = workspace("ws", claim_labels("k3s-vm-pve"), outputs={"vm_id": 150})

    result = run(tmp_path, [old("k3s-vm-pve")], "--vmid", "k3s-vm-pve=107", workspaces=[ws])

    assert new_claims(result)[0]["spec"]["adopt"]["vmid"] == 107
    assert "--vmid 107 wins over Workspace ws output vm_id: 150" in result.stderr


REFUSALS = {
    "no-source": (
        [old()],
        [],
        None,
        (
            "claim infra-machines/test-vm: no VMID found for it on pve (tried nothing (no "
            "--workspaces, no --host)); give --vmid test-vm=ID"
        ),
    ),
    "no-matching-workspace": (
        [old()],
        [],
        [workspace("ws", claim_labels("other"), outputs={"vm_id": 5})],
        "no VMID found for it on pve (tried the Workspaces dump)",
    ),
    "workspace-states-two": (
        [old()],
        [],
        [workspace("ws", claim_labels("test-vm"), outputs={"vm_id": 121}, module="vm_id = 122")],
        (
            "claim infra-machines/test-vm: Workspace ws states several VMIDs: 121 (output vm_id), "
            "122 (module vm_id)"
        ),
    ),
    "workspaces-disagree": (
        [old()],
        [],
        [
            workspace("a", claim_labels("test-vm"), outputs={"vm_id": 121}),
            workspace("b", claim_labels("test-vm"), outputs={"vm_id": 122}),
        ],
        (
            "the sources disagree on its VMID (Workspace a output vm_id: 121; Workspace b output "
            "vm_id: 122); say which with --vmid test-vm=ID"
        ),
    ),
    "no-node": (
        [old(proxmox={"bridge": "vmbr0"})],
        ["--vmid", "test-vm=120"],
        None,
        "spec.proxmox.node is missing; the VM cannot be found",
    ),
    "bad-memory": (
        [old(memory={"size": "2G"})],
        ["--vmid", "test-vm=120"],
        None,
        "claim infra-machines/test-vm: spec.memory.size '2G' is not a whole number",
    ),
    "not-kubelize": (
        [old() | {"apiVersion": "fabric.homelab.io/v1alpha1"}],
        [],
        None,
        "document 1: fabric.homelab.io/v1alpha1 Machine is not a fabric.kubelize.io/v1alpha1",
    ),
    "twice": (
        [old(), old()],
        ["--vmid", "test-vm=120"],
        None,
        "claim infra-machines/test-vm: also in",
    ),
    "bad-flag": ([old()], ["--vmid", "test-vm"], None, "expected NAME=ID"),
}


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusals_name_the_claim_and_write_nothing(
    tmp_path: Path,
    case: tuple[list[dict[str, Any]], list[str], list[dict[str, Any]] | None, str],
) -> None:
    claims, flags, workspaces, message = case

    result = run(tmp_path, claims, *flags, workspaces=workspaces)

    assert result.exit_code != 0
    assert result.stdout == ""
    assert message in result.stderr


def test_one_refusal_refuses_the_whole_migration(tmp_path: Path) -> None:
    result = run(tmp_path, [old("a"), old("b")], "--vmid", "a=120")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert "nothing written" in result.stderr
    assert "claim infra-machines/b: no VMID found" in result.stderr


def test_two_vms_of_one_name_are_not_guessed_between(tmp_path: Path, api: FakeProxmox) -> None:
    api.answers["/nodes/pve/qemu"][0]["name"] = "k3s-vm-pve"  # opnsense renamed: two now

    result = run(tmp_path, [old("k3s-vm-pve")], *api_flags(api))

    assert result.exit_code == 1
    assert "2 VMs named k3s-vm-pve on pve (101, 107); say which with --vmid" in result.stderr


def test_a_vmid_that_is_not_on_the_node_is_refused(tmp_path: Path, api: FakeProxmox) -> None:
    result = run(tmp_path, [old("test-vm")], "--vmid", "test-vm=105", *api_flags(api))

    assert result.exit_code == 1
    assert "claim infra-machines/test-vm: VM 105 (--vmid) cannot be read on pve" in result.stderr
    assert SECRET not in result.stderr


def test_output_is_deterministic_and_a_directory_works(tmp_path: Path) -> None:
    claims = [old("b"), old("a")]
    flags = ["--vmid", "a=120", "--vmid", "b=121"]

    first = run(tmp_path, claims, *flags)
    second = run(tmp_path, claims, *flags)
    folder = run(tmp_path, claims, *flags, "--out", str(tmp_path / "out"))

    assert first.stdout == second.stdout
    assert [c["metadata"]["name"] for c in new_claims(first)] == ["a", "b"]
    assert folder.exit_code == 0, folder.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.yaml", "b.yaml"]


def test_converted_claims_are_valid_machine_specs(tmp_path: Path) -> None:
    from function.model import MachineSpec

    if "adopt" not in MachineSpec.model_fields:
        pytest.skip("function.model.MachineSpec has no adopt field yet (the adoption API)")
    result = run(tmp_path, [old(), old("b", memory={"size": 1536})], "--vmid", "test-vm=120",
                 "--vmid", "b=121")  # fmt: skip

    for claim in new_claims(result):
        MachineSpec.model_validate(claim["spec"])


# --- docs/migrating-from-kubelize.md ------------------------------------------------------------

GUIDE = Path(__file__).parent.parent / "docs" / "migrating-from-kubelize.md"


def _guide_block(marker: str) -> str:
    text = GUIDE.read_text()
    opening = f"<!-- migrate: {marker} -->\n```yaml\n"
    start = text.index(opening) + len(opening)
    return text[start : text.index("\n```", start)] + "\n"


def test_the_guide_s_example_is_what_the_command_prints(tmp_path: Path) -> None:
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path):
        Path("old-claims.yaml").write_text(_guide_block("old"))
        Path("old-workspaces.yaml").write_text(_guide_block("workspaces"))
        args = ["--inventory", str(INVENTORY), "--workspaces", "old-workspaces.yaml"]
        result = runner.invoke(cli, [*args, "old-claims.yaml"], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    assert result.stdout == _guide_block("new")


def test_the_guide_s_steps_agree_with_the_tools() -> None:
    text = GUIDE.read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]

    assert [h.split(".")[0] for h in headings[1:]] == ["## 1", "## 2", "## 3", "## 4", "## 5"]
    # The Workspace the dump shows is the one the commands orphan and delete, orphaned first.
    workspace_name = yaml.safe_load(_guide_block("workspaces"))["items"][0]["metadata"]["name"]
    orphan = text.index(f"patch workspaces.tf.upbound.io {workspace_name}")
    delete = text.index("delete machines.fabric.kubelize.io test-vm")
    assert text.index("crossplane.io/paused=true") < orphan < delete
    # Every fabric-migrate option the guide names exists.
    options = {opt for p in cli.params for opt in p.opts}
    for option in ("--inventory", "--workspaces", "--vmid", "--host", "--out"):
        assert option in text
        assert option in options
