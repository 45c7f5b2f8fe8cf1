"""Every rendered Workspace through real Terraform 1.5.5 and the pinned bpg/proxmox provider.

The Workspaces are the ones the real Crossplane 2.0 CLI rendered from each example, cluster
scoped (legacy XR) and namespaced (its v2 twin), each with its ProviderConfig. tools/tfharness.py
lays each out as provider-terraform does; `terraform init -plugin-dir`, `validate` and `plan`
then run offline, as they would in the provider's pod, and must report zero errors.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import real_render, require_tool
from tools import crossplane_cli, realtools, tfharness, xpsim

ROOT = realtools.ROOT
EXAMPLES = sorted((ROOT / "examples" / "xrs").glob("*.yaml"))
CLI = next(c for c in realtools.CLIS if c.name == "crossplane-2.0")
PROVIDERCONFIG = {
    "cluster": ROOT / "compositions" / "providerconfig.yaml",
    "namespaced": ROOT / "compositions" / "v2" / "providerconfig.yaml",
}
VM = "proxmox_virtual_environment_vm.machine"


def rendered_workspace(example: Path, scope: str, address: str, tmp: Path) -> dict[str, Any]:
    """The Workspace the real CLI renders for an example XR (or its namespaced twin)."""
    if scope == "cluster":
        out = real_render(CLI, example, address)
    else:
        twin = tmp / f"{example.stem}-v2.yaml"
        twin.write_text(yaml.safe_dump(crossplane_cli.namespaced_twin(xpsim.load_yaml(example))))
        out = real_render(CLI, twin, address, crossplane_cli.COMPOSITION_V2)
    ws = out.workspace()
    assert ws is not None, out.results
    return copy.deepcopy(ws)  # renders are cached for the session: tests may edit their copy


def workdir(ws: dict[str, Any], scope: str, path: Path) -> tfharness.Workdir:
    require_tool("terraform")
    require_tool("terraform-provider-proxmox")
    pc = yaml.safe_load(PROVIDERCONFIG[scope].read_text())
    wd = tfharness.lay_out(ws, pc, path)
    wd.init()
    return wd


@pytest.mark.parametrize("scope", PROVIDERCONFIG)
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_init_validate_plan(example, scope, address, tmp_path):
    ws = rendered_workspace(example, scope, address, tmp_path)
    wd = workdir(ws, scope, tmp_path / "tf")
    validated = wd.validate()
    assert validated["valid"], validated["diagnostics"]
    assert validated["error_count"] == 0
    assert validated["warning_count"] == 0, validated["diagnostics"]
    plan = wd.plan()
    acts = tfharness.actions(plan)
    assert VM in acts, acts
    # A new machine: everything is created, nothing else happens.
    assert set(map(tuple, acts.values())) == {("create",)}, acts
    module = json.loads(ws["spec"]["forProvider"]["module"])
    assert plan["planned_values"]["outputs"].keys() == module["output"].keys()
    vm = next(r for r in plan["planned_values"]["root_module"]["resources"] if r["address"] == VM)
    assert (
        vm["values"]["node_name"]
        == module["resource"]["proxmox_virtual_environment_vm"]["machine"]["node_name"]
    )


def test_the_harness_reports_an_invalid_module(address, tmp_path):
    # Terraform itself is the judge: an attribute bpg does not have fails validate.
    ws = rendered_workspace(EXAMPLES[0], "cluster", address, tmp_path)
    module = json.loads(ws["spec"]["forProvider"]["module"])
    module["resource"]["proxmox_virtual_environment_vm"]["machine"]["sockets_count"] = 2
    ws["spec"]["forProvider"]["module"] = json.dumps(module)
    wd = workdir(ws, "cluster", tmp_path / "tf")
    validated = wd.validate()
    assert not validated["valid"]
    assert "sockets_count" in json.dumps(validated["diagnostics"])


def test_module_pins_the_provider_the_tests_build(address, tmp_path):
    # One exact bpg version: the one tools/versions.env builds and every plan here runs with.
    ws = rendered_workspace(EXAMPLES[0], "cluster", address, tmp_path)
    module = json.loads(ws["spec"]["forProvider"]["module"])
    provider = module["terraform"]["required_providers"]["proxmox"]
    assert provider == {"source": "bpg/proxmox", "version": realtools.BPG_VERSION}


def test_the_terraform_that_judges_is_the_one_provider_terraform_runs():
    # Every provider-terraform release runs Terraform 1.5.5 (tools/versions.env pins it): the
    # plans here are only evidence if the binary that made them is that version.
    terraform = require_tool("terraform")
    done = subprocess.run(
        [str(terraform), "version", "-json"], capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout)["terraform_version"] == realtools.TERRAFORM_VERSION == "1.5.5"


def test_every_wait_ends_before_provider_terraform_gives_up(address, tmp_path):
    # provider-terraform kills a run after 20 minutes (holding the state lease); every bpg
    # timeout must end first, and a refresh waits at most 2 minutes for a guest agent.
    ws = rendered_workspace(EXAMPLES[0], "cluster", address, tmp_path)
    plan = workdir(ws, "cluster", tmp_path / "tf").plan()
    vm = next(r for r in plan["planned_values"]["root_module"]["resources"] if r["address"] == VM)
    timeouts = {k: v for k, v in vm["values"].items() if k.startswith("timeout_") and v}
    assert timeouts, vm["values"]
    late = {k: v for k, v in timeouts.items() if v >= 20 * 60}
    # timeout_move_disk is deprecated in bpg 0.111 and unused (validate warns if it is set).
    assert set(late) <= {"timeout_move_disk"}, late
    assert vm["values"]["agent"][0]["timeout"] == "2m"
