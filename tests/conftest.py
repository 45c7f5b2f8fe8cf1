"""Shared fixtures: the function served over real gRPC, and builders of Crossplane's side.

The function runs in its own process, started the way Crossplane's Development
runtime expects (`function --insecure`), and tests talk to it over a loopback
channel. `tools.xpsim` answers the function's requirements the 1.x or 2.x way.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import pytest
import yaml
from crossplane.function import logging, resource
from hypothesis import settings

from function.fn import reconcile as reconcile_afresh
from function.fn import run
from tools import crossplane_cli, realtools, xpsim

# CI explores the same examples on every run, so a landing is never decided by chance; local
# runs explore new ones each time, which is where new counterexamples come from.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

NS = "infra-machines"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFabricTestKeyOnlyForTests me@laptop"

Call = Callable[[fnv1.RunFunctionRequest], fnv1.RunFunctionResponse]


def require_tool(name: str) -> Path:
    """A real tool from the tool cache; missing, it fails the test in CI and skips it elsewhere."""
    path = realtools.binary(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(realtools.missing(name))
        pytest.skip(realtools.missing(name))
    return path


def require_reference(path: Path) -> Path:
    """A third-party reference file in ../shared/reference (CI has them); skip where absent."""
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared reference files are not beside this checkout")
    return path


_RENDERED: dict[tuple[str, str, str], tuple[xpsim.Rendered, xpsim.Rendered]] = {}


def real_renders(
    cli: realtools.CrossplaneCLI,
    example: Path,
    address: str,
    composition: Path = crossplane_cli.COMPOSITION,
) -> tuple[xpsim.Rendered, xpsim.Rendered]:
    """The real CLI's two passes over a new machine (reserve, then compose), once a session."""
    key = (cli.name, str(example), str(composition))
    if key not in _RENDERED:
        binary = require_tool(cli.name)
        resources = crossplane_cli.fleet_and_inventory()
        _RENDERED[key] = crossplane_cli.render_settled(
            cli, binary, example, address, resources, composition=composition
        )
    return _RENDERED[key]


def real_render(
    cli: realtools.CrossplaneCLI,
    example: Path,
    address: str,
    composition: Path = crossplane_cli.COMPOSITION,
) -> xpsim.Rendered:
    """What the real CLI renders for a machine whose Reservations exist: its Workspace."""
    return real_renders(cli, example, address, composition)[1]


@pytest.fixture(scope="session")
def address() -> Iterator[str]:
    """The function, serving insecurely on loopback in its own process."""
    with xpsim.serve("--insecure") as addr:
        yield addr


@pytest.fixture(scope="session")
def call(address: str) -> Call:
    """Call RunFunction over gRPC."""
    return xpsim.stub(address)


@pytest.fixture(scope="session")
def call_inproc() -> Call:
    """Call RunFunction in this process (same code path as the servicer)."""
    log = logging.get_logger()
    return lambda req: run(req, log)


@pytest.fixture(scope="session")
def call_fresh() -> Call:
    """Reconcile in this process afresh, past the response memo (fn.run's cache)."""
    log = logging.get_logger()
    return lambda req: reconcile_afresh(req, log)


def inventory_cm() -> dict[str, Any]:
    """The example homelab inventory ConfigMap (a fresh copy)."""
    return copy.deepcopy(xpsim.load_yaml("examples/inventory.yaml"))


def inventory_data(cm: dict[str, Any]) -> dict[str, Any]:
    """The inventory document inside the ConfigMap."""
    return yaml.safe_load(cm["data"]["inventory.yaml"])


def with_inventory(data: dict[str, Any]) -> dict[str, Any]:
    """The example ConfigMap holding another inventory document."""
    cm = inventory_cm()
    cm["data"]["inventory.yaml"] = yaml.safe_dump(data, sort_keys=False)
    return cm


def fn_input() -> dict[str, Any]:
    """The function input of the example Composition."""
    return copy.deepcopy(xpsim.composition_input())


def xr(
    name: str,
    spec: dict[str, Any],
    *,
    created: str = "2026-11-01T10:00:00Z",
    namespace: str = NS,
    status: dict[str, Any] | None = None,
    namespaced: bool = False,
) -> dict[str, Any]:
    """A legacy (claim-backed) XMachine, or a namespaced v2 one."""
    meta: dict[str, Any] = {
        "name": f"{name}-x1234" if not namespaced else name,
        "uid": f"uid-{namespace}-{name}",
        "creationTimestamp": created,
    }
    if namespaced:
        meta["namespace"] = namespace
    else:
        meta["labels"] = {
            "crossplane.io/claim-name": name,
            "crossplane.io/claim-namespace": namespace,
        }
    body: dict[str, Any] = {
        "apiVersion": "fabric.homelab.io/v1alpha1",
        "kind": "XMachine",
        "metadata": meta,
        "spec": copy.deepcopy(spec),
    }
    if status:
        body["status"] = status
    return body


def basic_spec(**extra: Any) -> dict[str, Any]:
    """A small Debian machine on the LAN with an admin key."""
    spec: dict[str, Any] = {
        "class": "small",
        "network": {"name": "lan"},
        "bootstrap": {"adminUser": "admin", "sshAuthorizedKeys": [KEY]},
    }
    spec.update(extra)
    return spec


def gpu_spec(**extra: Any) -> dict[str, Any]:
    """A GPU worker like examples/claims/gpu-worker.yaml."""
    spec = basic_spec(cpu=8, memory="16Gi", disk="100Gi", image="ubuntu-24.04")
    spec["devices"] = [{"class": "gpu", "count": 1}]
    spec.update(extra)
    return spec


def reconcile(
    call: Call,
    machine: dict[str, Any],
    cluster: list[dict[str, Any]] | None = None,
    *,
    observed: dict[str, Any] | None = None,
    v2: bool = False,
    inp: dict[str, Any] | None = None,
) -> fnv1.RunFunctionResponse:
    """Reconcile one XR like Crossplane: requirement rounds, then reconciles until it settles
    (a new machine reserves first, and gets its Workspace once its Reservations exist)."""
    objects = [inventory_cm(), machine] if cluster is None else [*cluster]
    if machine not in objects:
        objects.append(machine)
    return xpsim.settle(
        call,
        machine,
        fn_input() if inp is None else inp,
        objects,
        {"workspace": observed} if observed else None,
        v2=v2,
    )


def desired_ws(rsp: fnv1.RunFunctionResponse) -> dict[str, Any] | None:
    """The desired Workspace, if any."""
    if "workspace" not in rsp.desired.resources:
        return None
    return resource.struct_to_dict(rsp.desired.resources["workspace"].resource)


def module(rsp: fnv1.RunFunctionResponse) -> dict[str, Any]:
    """The Terraform module of the desired Workspace."""
    ws = desired_ws(rsp)
    assert ws is not None, messages(rsp)
    return json.loads(ws["spec"]["forProvider"]["module"])


def status(rsp: fnv1.RunFunctionResponse) -> dict[str, Any]:
    """The desired XR status."""
    return resource.struct_to_dict(rsp.desired.composite.resource).get("status", {})


def messages(rsp: fnv1.RunFunctionResponse) -> list[str]:
    """Every result message."""
    return [r.message for r in rsp.results]


def warnings(rsp: fnv1.RunFunctionResponse) -> list[str]:
    """Warning results that reach the claim."""
    return [
        r.message
        for r in rsp.results
        if r.severity == fnv1.SEVERITY_WARNING and r.target == fnv1.TARGET_COMPOSITE_AND_CLAIM
    ]


def condition(rsp: fnv1.RunFunctionResponse, kind: str) -> fnv1.Condition | None:
    """A condition of the response by type."""
    return next((c for c in rsp.conditions if c.type == kind), None)


def applied(
    rsp: fnv1.RunFunctionResponse,
    *,
    ready: bool = True,
    outputs: dict[str, Any] | None = None,
    synced: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Workspace as Crossplane would observe it after applying the desired one."""
    ws = desired_ws(rsp)
    assert ws is not None, messages(rsp)
    ws = copy.deepcopy(ws)
    ws["metadata"]["name"] = "machine-x1234-abcde"
    ws["metadata"]["uid"] = "ws-uid"
    ws["metadata"]["resourceVersion"] = "42"
    conditions = [
        {"type": "Ready", "status": "True" if ready else "False", "reason": "Available"},
        synced or {"type": "Synced", "status": "True", "reason": "ReconcileSuccess"},
    ]
    ws["status"] = {"conditions": conditions, "atProvider": {"outputs": outputs or {}}}
    return ws


def with_status(machine: dict[str, Any], rsp: fnv1.RunFunctionResponse) -> dict[str, Any]:
    """The XR after Crossplane wrote the status the function returned."""
    out = copy.deepcopy(machine)
    out["status"] = status(rsp)
    return out


# What the real tools judged, named in the log (pytest -q prints only dots): CI's log then shows
# every CLI render, Terraform run, validation, plan-safety event and image check that passed.
REAL_TOOL_TESTS = (
    "test_real_crossplane.py",
    "test_real_validate.py",
    "test_real_terraform.py",
    "test_plan_safety.py",
    "test_image.py",
    "test_cloudinit_real.py",
    "test_real_cluster.py",
    "test_adoption.py",
    "test_containers.py",
    "test_backups.py",
)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """List each real-tool test and its outcome after the run."""
    lines = [
        f"{outcome.upper():8} {report.nodeid}"
        for outcome in ("passed", "failed", "skipped")
        for report in terminalreporter.stats.get(outcome, [])
        if report.when in {"call", "setup"}
        and (outcome != "passed" or report.when == "call")
        and any(f"/{name}::" in f"/{report.nodeid}" for name in REAL_TOOL_TESTS)
    ]
    if lines:
        terminalreporter.section("judged by the real tools")
        for line in sorted(lines, key=lambda text: text.split(maxsplit=1)[1]):
            terminalreporter.write_line(line)
