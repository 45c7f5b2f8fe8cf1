"""Render every example XR through the function over gRPC and print what Crossplane would apply.

This is what `crossplane render` does with the files in examples/, done without the
Crossplane CLI: start the function as a Development runtime (`function --insecure`),
send each XR with the Composition's input, answer the function's requirements with
the example inventory and the example fleet, and print the resulting XR (with its
status) and composed Workspace as YAML, followed by the events and conditions the
claim would show.

Usage: python -m tools.render [--crossplane-v2] [XR files...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import yaml

from function import yamlio
from tools import xpsim

SEVERITY = {
    fnv1.SEVERITY_NORMAL: "Normal",
    fnv1.SEVERITY_WARNING: "Warning",
    fnv1.SEVERITY_FATAL: "Fatal",
}


def _documents(rendered: xpsim.Rendered) -> list[dict[str, Any]]:
    docs = [rendered.xr]
    for composed in rendered.composed:
        module = composed.get("spec", {}).get("forProvider", {}).get("module")
        if module:
            # Shown parsed so it reads as a document; the Workspace carries it as a JSON string.
            composed["spec"]["forProvider"]["module"] = json.loads(module)
        docs.append(composed)
    return docs


def _results(rsp: fnv1.RunFunctionResponse) -> list[dict[str, str]]:
    return [
        {"severity": SEVERITY.get(r.severity, "Unknown"), "message": r.message} for r in rsp.results
    ]


def _int_floats(value: Any) -> Any:
    # Struct numbers are doubles; print whole ones as integers, as Kubernetes would store them.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _int_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_int_floats(v) for v in value]
    return value


def render_all(paths: list[Path], *, v2: bool) -> int:
    """Render each XR; return the number that came back with a fatal result."""
    inventory = xpsim.load_yaml("examples/inventory.yaml")
    xrs = [xpsim.load_yaml(p) for p in paths]
    fleet = [xpsim.load_yaml(p) for p in sorted(Path(xpsim.ROOT, "examples/xrs").glob("*.yaml"))]
    fn_input = xpsim.composition_input()
    failed = 0
    with xpsim.serve("--insecure") as address:
        call = xpsim.stub(address)
        for path, xr in zip(paths, xrs, strict=True):
            req = xpsim.request(xr, fn_input)
            rsp = xpsim.converge(call, req, xpsim.Cluster([inventory, *fleet]), v2=v2)
            print(f"# ---- {path} ----")
            version = (2, 0) if v2 else (1, 20)
            docs = _int_floats(_documents(xpsim.rendered(xr, rsp, version=version)))
            # yamlio writes multi-line strings (the user-data) as literal blocks: readable.
            print("---\n".join(yamlio.dump(doc) for doc in docs), end="")
            print("---\n# Events on the claim:")
            print(yaml.safe_dump({"results": _results(rsp)}, sort_keys=False, width=120))
            failed += any(r.severity == fnv1.SEVERITY_FATAL for r in rsp.results)
    return failed


def main() -> None:
    """Parse arguments and render."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("xrs", nargs="*", type=Path, help="XR files (default: examples/xrs/*)")
    parser.add_argument(
        "--crossplane-v2",
        action="store_true",
        help="answer requirements the Crossplane 2.x way (required_resources)",
    )
    args = parser.parse_args()
    paths = args.xrs or sorted(Path(xpsim.ROOT, "examples/xrs").glob("*.yaml"))
    sys.exit(1 if render_all(paths, v2=args.crossplane_v2) else 0)


if __name__ == "__main__":
    main()
