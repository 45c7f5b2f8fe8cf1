"""Run the real Crossplane CLI on Fabric's files: render an XR through the function, validate.

The function runs as Crossplane's Development runtime expects (`function --insecure`), on a
free loopback port named to the CLI by the `render.crossplane.io/runtime-development-target`
annotation on a copy of examples/functions.yaml. Required resources (the inventory and the
fleet) go in as one directory, the way a user passes several files.
"""

from __future__ import annotations

import copy
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from tools import xpsim
from tools.realtools import OFFLINE_CROSSPLANE_IMAGE, ROOT, CrossplaneCLI, validate_cache

COMPOSITION = ROOT / "compositions" / "composition.yaml"
COMPOSITION_V2 = ROOT / "compositions" / "v2" / "composition.yaml"
FUNCTIONS = ROOT / "examples" / "functions.yaml"
TARGET_ANNOTATION = "render.crossplane.io/runtime-development-target"
TIMEOUT = 120


def functions_file(address: str, directory: Path) -> Path:
    """examples/functions.yaml, pointed at the function serving on `address`."""
    fn = yaml.safe_load(FUNCTIONS.read_text())
    fn["metadata"]["annotations"][TARGET_ANNOTATION] = address
    path = directory / "functions.yaml"
    path.write_text(yaml.safe_dump(fn, sort_keys=False))
    return path


def resources_dir(objects: Iterable[dict[str, Any]], directory: Path) -> Path:
    """A directory of YAML files, one object each, for --extra/--required-resources."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, obj in enumerate(objects):
        (directory / f"{i:03d}.yaml").write_text(yaml.safe_dump(obj, sort_keys=False))
    return directory


def parse(stdout: str) -> xpsim.Rendered:
    """Split the CLI's YAML stream: the XR first, then composed resources and Results."""
    docs = [d for d in yaml.safe_load_all(stdout) if d]
    results = [d for d in docs[1:] if d.get("kind") == "Result"]
    composed = [d for d in docs[1:] if d.get("kind") != "Result"]
    return xpsim.Rendered(xr=docs[0], composed=composed, results=results)


def render(
    cli: CrossplaneCLI,
    binary: Path,
    xr: Path,
    address: str,
    resources: Iterable[dict[str, Any]],
    *,
    composition: Path = COMPOSITION,
    observed: list[dict[str, Any]] | None = None,
) -> xpsim.Rendered:
    """Render one XR with the real CLI against the function at `address`.

    `observed`: composed resources that already exist (`--observed-resources`), each with the
    `crossplane.io/composition-resource-name` annotation, as render prints them.
    """
    with tempfile.TemporaryDirectory(prefix="fabric-render-") as tmp:
        work = Path(tmp)
        cmd = [
            str(binary),
            *cli.render,
            str(xr),
            str(composition),
            str(functions_file(address, work)),
            f"{cli.resources_flag}={resources_dir(resources, work / 'resources')}",
            "--include-function-results",
        ]
        if observed:
            cmd.append(f"--observed-resources={resources_dir(observed, work / 'observed')}")
        done = subprocess.run(  # noqa: S603 - our own tool cache and files
            cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False, cwd=ROOT
        )
    if done.returncode != 0:
        msg = f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr}"
        raise RuntimeError(msg)
    return parse(done.stdout)


def fleet_and_inventory() -> list[dict[str, Any]]:
    """The example inventory and the example fleet (every example XR)."""
    xrs = sorted((ROOT / "examples" / "xrs").glob("*.yaml"))
    return [xpsim.load_yaml("examples/inventory.yaml"), *(xpsim.load_yaml(p) for p in xrs)]


def validate(
    binary: Path, extensions: Iterable[Path], resources: Path
) -> subprocess.CompletedProcess[str]:
    """`crossplane beta validate EXTENSIONS RESOURCES`, offline (see realtools)."""
    ext = ",".join(str(p) for p in extensions)
    cmd = [
        str(binary),
        "beta",
        "validate",
        f"--cache-dir={validate_cache()}",
        f"--crossplane-image={OFFLINE_CROSSPLANE_IMAGE}",
        "--error-on-missing-schemas",
        ext,
        str(resources),
    ]
    return subprocess.run(  # noqa: S603 - our own tool cache and files
        cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False, cwd=ROOT
    )


def namespaced_twin(xr: dict[str, Any]) -> dict[str, Any]:
    """A legacy example XR as the Crossplane-v2 namespaced XMachine that would say the same."""
    twin = copy.deepcopy(xr)
    labels = twin["metadata"].get("labels", {})
    twin["metadata"] = {
        "name": labels["crossplane.io/claim-name"],
        "namespace": labels["crossplane.io/claim-namespace"],
        "uid": xr["metadata"]["uid"],
        "creationTimestamp": xr["metadata"]["creationTimestamp"],
    }
    twin["spec"].pop("claimRef")
    twin["spec"]["crossplane"] = {"compositionRef": twin["spec"].pop("compositionRef")}
    return twin


def render_settled(
    cli: CrossplaneCLI,
    binary: Path,
    xr: Path,
    address: str,
    resources: list[dict[str, Any]],
    *,
    composition: Path = COMPOSITION,
) -> tuple[xpsim.Rendered, xpsim.Rendered]:
    """Render a new machine as a user does: a first pass that only reserves, then a second.

    The second pass is given the first's Reservations as observed resources (they exist once
    Crossplane applied them) and in the required resources (the cluster's table lists them).
    Returns both passes.
    """
    first = render(cli, binary, xr, address, resources, composition=composition)
    held = [c for c in first.composed if c.get("kind") == "Reservation"]
    if not held:
        return first, first
    second = render(
        cli, binary, xr, address, [*resources, *held], composition=composition, observed=held
    )
    return first, second
