"""Render the example XRs through the function over gRPC and print what Crossplane would apply.

This is what `crossplane render` does with the files in examples/, done without the
Crossplane CLI: start the function as a Development runtime (`function --insecure`),
send each XR with the Composition's input, answer the function's requirements with
the example inventory and the example fleet, and print the resulting XR (with its
status) and every composed resource as YAML (the Workspace's module shown parsed),
each followed by the events the claim would show. The run ends with a table like
`kubectl get machines`, one like `kubectl get containers`, and the warnings the claims
would show. The containers' XRs are in examples/xrs/containers/.

Usage: python -m tools.render [--crossplane-v2] [EXAMPLE ...]

EXAMPLE is an XR file, or an example by name: `gpu-worker` (examples/xrs/gpu-worker.yaml),
or its claim's or XR's name (`gpu-worker-1`). Without one, every example is rendered.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import yaml

from function.fleet import is_container
from tools import xpsim

EXAMPLES = xpsim.ROOT / "examples" / "xrs"
INVENTORY = "examples/inventory.yaml"
# The order `kubectl get -o yaml` prints an object's top-level fields in; the rest follow sorted.
TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec", "status")
NONE = "<none>"
SEVERITY = {
    fnv1.SEVERITY_NORMAL: "Normal",
    fnv1.SEVERITY_WARNING: "Warning",
    fnv1.SEVERITY_FATAL: "Fatal",
}

Call = Callable[[fnv1.RunFunctionRequest], fnv1.RunFunctionResponse]


# --- the examples -------------------------------------------------------------------------------


def examples() -> list[Path]:
    """Every example XR: the machines, then the containers, each in name order."""
    return sorted(EXAMPLES.glob("*.yaml")) + sorted((EXAMPLES / "containers").glob("*.yaml"))


def fleet_and_inventory() -> list[dict[str, Any]]:
    """What the requirements are answered from: the example inventory and every example XR."""
    return [xpsim.load_yaml(INVENTORY), *(xpsim.load_yaml(p) for p in examples())]


def claim_name(xr: dict[str, Any]) -> str:
    """The name `kubectl get machines` shows: the claim's, or a namespaced XR's own."""
    meta = xr.get("metadata") or {}
    labels = meta.get("labels") or {}
    claim = (xr.get("spec") or {}).get("claimRef") or {}
    return str(labels.get("crossplane.io/claim-name") or claim.get("name") or meta.get("name"))


def resolve(arg: str) -> Path:
    """An XR file, or the example named by its file stem, its claim's name or its own name."""
    path = Path(arg)
    if path.is_file():
        return path.resolve()
    for example in examples():
        xr = xpsim.load_yaml(example)
        if arg in {example.stem, example.name, claim_name(xr), xr["metadata"]["name"]}:
            return example
    names = ", ".join(p.stem for p in examples())
    msg = f"{arg}: neither a file nor an example (the examples are: {names})"
    raise SystemExit(msg)


def shown(path: Path) -> str:
    """A path as the reader knows it: relative to the repository when it is inside."""
    try:
        return str(path.resolve().relative_to(xpsim.ROOT))
    except ValueError:
        return str(path)


# --- one render ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One XR rendered: the source XR, the function's response and what the CLI would print."""

    source: dict[str, Any]
    response: fnv1.RunFunctionResponse
    rendered: xpsim.Rendered


def render(
    call: Call,
    xr: dict[str, Any],
    cluster: Iterable[dict[str, Any]],
    *,
    v2: bool,
) -> Outcome:
    """Reconcile one XR the way Crossplane 2.0 (v2) or 1.20 does, and render the outcome.

    A new machine's first reconcile only reserves (function/reservations.py); shown is what
    Crossplane applies once its Reservations exist: the Reservations and the Workspace.
    """
    # The XR is in its own cluster, part of the fleet: as given here, not as the example says.
    uid = xr["metadata"].get("uid")
    objects = [o for o in cluster if not uid or (o.get("metadata") or {}).get("uid") != uid]
    objects.append(xr)
    rsp = xpsim.settle(call, xr, xpsim.composition_input(), objects, v2=v2)
    version = (2, 0) if v2 else (1, 20)
    return Outcome(xr, rsp, xpsim.rendered(xr, rsp, version=version))


# --- documents as Kubernetes users read them ----------------------------------------------------


def plain(value: Any) -> Any:
    """Struct numbers are doubles; whole ones become integers, as Kubernetes stores them."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def ordered(value: Any, *, top: bool = True) -> Any:
    """The same data with keys in the order kubectl and `crossplane render` print them.

    apiVersion, kind, metadata, spec and status first at the top, every other key sorted.
    Protobuf Structs come back from gRPC in no fixed order; this is what makes output stable.
    """
    if isinstance(value, dict):
        rank = {k: i for i, k in enumerate(TOP_LEVEL)} if top else {}
        keys = sorted(value, key=lambda k: (rank.get(k, len(rank)), str(k)))
        return {k: ordered(value[k], top=False) for k in keys}
    if isinstance(value, list):
        return [ordered(v, top=False) for v in value]
    return value


class _Dumper(yaml.SafeDumper):
    """Block YAML, multi-line strings as literal blocks, no aliases.

    The pure-Python emitter, whatever libyaml the machine has, so the text is the same on
    every machine (the golden files depend on it); function/yamlio.py's dumper uses libyaml
    when present and folds lines past 4096 columns (the module is one long line).
    """

    def ignore_aliases(self, data: Any) -> bool:  # noqa: ARG002
        return True


# PyYAML's Python emitter writes NEL (U+0085) raw into block and plain scalars, where it reads
# back as a line break; the others are fine, but escaping all three costs nothing.
_YAML_BREAKS = ("\x85", "\u2028", "\u2029")


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # Scripts and files read best as literal blocks; the emitter falls back to a quoted
    # scalar by itself when a block cannot carry the text exactly (trailing spaces, tabs).
    style = '"' if any(b in data for b in _YAML_BREAKS) else "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def to_yaml(docs: Iterable[Any]) -> str:
    """A YAML stream, each document starting with `---`, keys in the order given."""
    return "".join(
        "---\n"
        + yaml.dump(
            doc,
            Dumper=_Dumper,
            default_flow_style=False,
            sort_keys=False,
            allow_unicode=True,
            width=1 << 30,  # never fold: a folded line is not the line the data holds
        )
        for doc in docs
    )


def readable(rendered: xpsim.Rendered) -> list[dict[str, Any]]:
    """The XR and the composed resources, a Workspace's module parsed so it reads as YAML."""
    docs = [rendered.xr]
    for composed in rendered.composed:
        doc = copy.deepcopy(composed)  # the Rendered stays what the CLI prints
        module = doc.get("spec", {}).get("forProvider", {}).get("module")
        if isinstance(module, str) and module.startswith("{"):
            doc["spec"]["forProvider"]["module"] = json.loads(module)
        docs.append(doc)
    return [ordered(plain(d)) for d in docs]


# --- what the claim shows -----------------------------------------------------------------------


def events(rsp: fnv1.RunFunctionResponse) -> list[tuple[str, str]]:
    """(type, message) of each result, as `kubectl describe machine` lists them."""
    return [(SEVERITY.get(r.severity, "Unknown"), r.message) for r in rsp.results]


def claim_warnings(rsp: fnv1.RunFunctionResponse) -> list[tuple[str, str]]:
    """The warnings a claim shows: Warning results aimed at it, and any Fatal result."""
    return [
        (SEVERITY[r.severity], r.message)
        for r in rsp.results
        if r.severity == fnv1.SEVERITY_FATAL
        or (r.severity == fnv1.SEVERITY_WARNING and r.target == fnv1.TARGET_COMPOSITE_AND_CLAIM)
    ]


def _cell(value: Any) -> str:
    if value is None or value in ("", []):
        return NONE
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def summary_row(outcome: Outcome) -> list[str]:
    """NAME, NODE, VMID, IP, DEVICES (class:mapping), PHASE from the rendered XR's status."""
    status = outcome.rendered.xr.get("status") or {}
    devices = ",".join(
        f"{d.get('class', '?')}:{d.get('mapping', '?')}" for d in status.get("devices") or []
    )
    return [
        claim_name(outcome.source),
        _cell(status.get("node")),
        _cell(status.get("vmId")),
        _cell(status.get("ip")),
        _cell(devices),
        _cell(status.get("phase")),
    ]


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded like kubectl's: three spaces apart, no trailing blanks."""
    lines = [list(header), *(list(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "".join(
        "   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in lines
    )


def summary(outcomes: Sequence[Outcome]) -> str:
    """A table of the machines, one of the containers, then the warnings each claim would show.

    As `kubectl get machines` and `kubectl get containers` print them: one table per kind.
    """
    header = ("NAME", "NODE", "VMID", "IP", "DEVICES", "PHASE")
    containers = [o for o in outcomes if is_container(o.source)]
    machines = [o for o in outcomes if not is_container(o.source)]
    tables = [table(header, map(summary_row, kind)) for kind in (machines, containers) if kind]
    out = "\n".join(tables)
    warned = [
        (claim_name(o.source), kind, message)
        for o in outcomes
        for kind, message in claim_warnings(o.response)
    ]
    if not warned:
        return out + "\nNo claim shows a warning.\n"
    return out + "\nWarnings the claims show:\n" + table(("NAME", "TYPE", "MESSAGE"), warned)


# --- the command --------------------------------------------------------------------------------


def render_all(paths: Sequence[Path], *, v2: bool) -> int:
    """Render each XR and print it; return the number that came back with a fatal result."""
    cluster = fleet_and_inventory()
    outcomes = []
    with xpsim.serve("--insecure") as address:
        call = xpsim.stub(address)
        for path in paths:
            outcome = render(call, xpsim.load_yaml(path), cluster, v2=v2)
            outcomes.append(outcome)
            print(f"# ---- {shown(path)} ----")
            print(to_yaml(readable(outcome.rendered)), end="")
            print(f"# Events on the claim {claim_name(outcome.source)}:")
            for kind, message in events(outcome.response):
                print(f"#   {kind:<8} {message}")
            print()
    print(summary(outcomes), end="")
    return sum(any(r.severity == fnv1.SEVERITY_FATAL for r in o.response.results) for o in outcomes)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments and render."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="EXAMPLE: an XR file, or an example by name (gpu-worker, gpu-worker-1).",
    )
    parser.add_argument(
        "xrs",
        nargs="*",
        metavar="EXAMPLE",
        help="what to render (default: examples/xrs/*, then examples/xrs/containers/*)",
    )
    parser.add_argument(
        "--crossplane-v2",
        action="store_true",
        help="answer requirements the Crossplane 2.x way (required_resources)",
    )
    args = parser.parse_args(argv)
    paths = [resolve(a) for a in args.xrs] if args.xrs else examples()
    try:
        failed = render_all(paths, v2=args.crossplane_v2)
    except BrokenPipeError:
        # The reader stopped early (`| head`): say nothing more on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
