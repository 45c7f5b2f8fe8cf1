"""docs/invariants.md as properties, over generated claims, inventories, fleets and states.

Hypothesis generates what Crossplane could hand the function, valid and hostile: claim specs
(from well-formed to nested junk of the wrong types, huge and unicode), inventories (variations
of the example homelab with fewer or more nodes, devices and pools, and broken ones), fleets of
XMachines (held, pending, invalid), observed Workspaces of odd shapes, both Crossplane
protocols and call orders. The bulk runs in-process (`call_inproc`, the servicer's own code
path); a smaller share goes over real gRPC to the function in its own process.

Properties (numbered as in docs/invariants.md):
1. nothing lost: an observed Workspace is in every non-FATAL response, held as it is or
   rendered again for the same node and VMID;
3. no double allocation: a fleet reconciled one by one, in any order, in concurrent batches
   (one snapshot for all) and with deletions, never gives two machines one device, VMID or
   address (reconciles on snapshots of different ages can: see the known bugs at the end);
4. deterministic: identical requests give byte-identical responses, whatever came before;
5. clear errors: every rejection names the field and shows the offending value; no exception
   escapes, over gRPC either.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import json
import random
import string
from dataclasses import dataclass
from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import grpc
import pytest
import yaml
from crossplane.function import resource
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from tests.conftest import (
    KEY,
    applied,
    basic_spec,
    desired_ws,
    fn_input,
    inventory_cm,
    inventory_data,
    status,
    warnings,
    xr,
)
from tools import xpsim

NODE = "fabric.homelab.io/node"
VMID = "fabric.homelab.io/vmid"
# Calls take milliseconds to tens of them; inputs are large by design.
FAST = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


# --- Crossplane's side, cached for speed --------------------------------------------------------


@functools.cache
def _base_cm() -> dict[str, Any]:
    return inventory_cm()


@functools.cache
def _base_inventory() -> dict[str, Any]:
    return inventory_data(_base_cm())


@functools.cache
def _fn_input() -> dict[str, Any]:
    return fn_input()


def cm_with(text: str, name: str = "fabric-inventory") -> dict[str, Any]:
    """The example ConfigMap with another inventory text."""
    cm = copy.deepcopy(_base_cm())
    cm["metadata"]["name"] = name
    cm["data"]["inventory.yaml"] = text
    return cm


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False)


@functools.cache
def _declared() -> fnv1.RunFunctionResponse:
    """The requirements the function declares; it declares the same ones on every call."""
    from function.fn import run

    req = xpsim.request(xr("probe", basic_spec()), _fn_input())
    return run(req, _Quiet())


class _Quiet:
    """A logger that drops everything (the function logs one line per call)."""

    def info(self, *_: Any, **__: Any) -> None:
        pass

    def debug(self, *_: Any, **__: Any) -> None:
        pass

    def error(self, *_: Any, **__: Any) -> None:
        pass


def answered(
    machine: dict[str, Any],
    objects: list[dict[str, Any]],
    *,
    observed: dict[str, Any] | None = None,
    inp: dict[str, Any] | None = None,
    v2: bool = False,
    unanswered: frozenset[str] = frozenset(),
) -> fnv1.RunFunctionRequest:
    """A request with the requirements answered, as Crossplane sends it after the first call."""
    req = xpsim.request(
        machine,
        _fn_input() if inp is None else inp,
        {"workspace": observed} if observed is not None else None,
    )
    nxt = xpsim.answer(req, _declared(), xpsim.Cluster(objects), v2=v2)
    target = nxt.required_resources if v2 else nxt.extra_resources
    for name in unanswered:
        del target[name]
    return nxt


def roundtrip(value: Any) -> Any:
    """A value as the function sees it after a Struct: numbers become floats."""
    return resource.struct_to_dict(resource.dict_to_struct({"v": value}))["v"]


def is_fatal(rsp: fnv1.RunFunctionResponse) -> bool:
    return any(r.severity == fnv1.SEVERITY_FATAL for r in rsp.results)


# --- strategies: text and junk ------------------------------------------------------------------

# Protocol buffers carry UTF-8: lone surrogates cannot even be put into a request.
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=24)
HUGE_TEXT = st.builds(
    lambda c, n: c * n, st.sampled_from(["a", "é", "\u2028", "$", "{"]), st.integers(5_000, 70_000)
)
NAMEISH = st.text(string.ascii_lowercase + string.digits + "-", min_size=1, max_size=12)
NUMBERS = st.one_of(
    st.integers(-(2**53), 2**53),
    # Crossplane builds Structs from JSON objects: NaN and infinities cannot occur.
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 1e300, 2**53, 0.5]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT, NAMEISH)
JUNK = st.recursive(
    st.one_of(SCALARS, HUGE_TEXT),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(TEXT, NAMEISH), inner, max_size=4)
    ),
    max_leaves=10,
)


# --- strategies: claims -------------------------------------------------------------------------

SIZES = st.sampled_from(["512Mi", "1Gi", "2Gi", "4Gi", "8Gi", "16Gi"])
LAN_STATIC = st.sampled_from(["192.168.4.50/24", "192.168.4.51/24", "192.168.4.205/24"])


@st.composite
def placeable_specs(
    draw: st.DrawFn, images: tuple[str, ...] = ("debian-12", "ubuntu-24.04")
) -> dict[str, Any]:
    """Valid claims the scheduler can place (no roles: those need secrets, tested elsewhere)."""
    spec: dict[str, Any] = {"bootstrap": {"adminUser": "admin", "sshAuthorizedKeys": [KEY]}}
    if draw(st.booleans()):
        spec["class"] = "small"
    else:
        spec["cpu"] = draw(st.integers(1, 6))
        spec["memory"] = draw(SIZES)
    spec["image"] = draw(st.sampled_from(images))
    devices = draw(
        st.lists(
            st.fixed_dictionaries(
                {"class": st.sampled_from(["gpu", "gpu-amd", "coral-tpu"])},
                optional={"count": st.integers(1, 2)},
            ),
            max_size=2,
        )
    )
    if devices:
        spec["devices"] = devices
    network = draw(
        st.one_of(
            st.none(),
            st.just({"name": "lan"}),
            st.just({"name": "lan", "address": "dhcp"}),
            st.builds(lambda a: {"name": "lan", "address": a}, LAN_STATIC),
            st.just({"name": "k3s-cluster", "address": "auto"}),
            st.just({"name": "iot", "address": "dhcp"}),
        )
    )
    if network is not None:
        spec["network"] = network
    placement = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "spreadGroup": st.sampled_from(["servers", "cams"]),
                "strategy": st.sampled_from(["spread", "pack"]),
            },
        )
    )
    if placement:
        spec["placement"] = placement
    if draw(st.booleans()):
        spec["deletionPolicy"] = draw(st.sampled_from(["Delete", "Orphan"]))
    return spec


def junk_at(spec: Any, path: tuple[str | int, ...], value: Any) -> Any:
    """A copy of spec with value written at path, containers made or replaced as needed."""
    step, rest = path[0], path[1:]
    if isinstance(step, int):
        items = copy.deepcopy(spec) if isinstance(spec, list) else []
        while len(items) <= step:
            items.append({})
        items[step] = junk_at(items[step], rest, value) if rest else value
        return items
    fields = copy.deepcopy(spec) if isinstance(spec, dict) else {}
    fields[step] = junk_at(fields.get(step), rest, value) if rest else value
    return fields


# Every field of the claim, as a path below spec; used to aim junk at one field at a time.
FIELD_PATHS: tuple[tuple[str | int, ...], ...] = (
    ("class",),
    ("cpu",),
    ("memory",),
    ("disk",),
    ("image",),
    ("devices",),
    ("devices", 0),
    ("devices", 0, "class"),
    ("devices", 0, "count"),
    ("roles",),
    ("roles", 0),
    ("network",),
    ("network", "name"),
    ("network", "address"),
    ("placement",),
    ("placement", "node"),
    ("placement", "spreadGroup"),
    ("placement", "strategy"),
    ("storage",),
    ("storage", "pool"),
    ("nix",),
    ("nix", "flakeRef"),
    ("bootstrap",),
    ("bootstrap", "adminUser"),
    ("bootstrap", "sshAuthorizedKeys"),
    ("bootstrap", "sshAuthorizedKeys", 0),
    ("bootstrap", "secrets", 0, "name"),
    ("bootstrap", "secrets", 0, "secretRef", "namespace"),
    ("bootstrap", "secrets", 0, "secretRef", "name"),
    ("bootstrap", "secrets", 0, "secretRef", "key"),
    ("deletionPolicy",),
    ("gpus",),  # not a field: unknown fields are rejected too
)
# Values that are wrong for most fields, plus a few that are wrong only for some.
BAD_VALUES = st.one_of(
    JUNK,
    st.sampled_from(
        [
            "16GB",
            "1Gi",
            "0",
            -3,
            0,
            1e9,
            "auto",
            "10.9.9.9/24",
            "192.168.4.1/24",
            "windows",
            "nowhere",
            "Keep",
            "ROOT",
            "not a key\nrm -rf /",
            "${jndi:x}",
            "https://evil; rm -rf /",
            "github:a/b#x y",
            "x" * 300,
        ]
    ),
)


@st.composite
def hostile_specs(draw: st.DrawFn) -> Any:
    """Junk specs: entirely junk, or a valid one with junk at a few fields or keys dropped."""
    kind = draw(st.sampled_from(["junk", "mutated", "mutated", "dropped"]))
    base = draw(placeable_specs())
    if kind == "junk":
        return draw(JUNK)
    if kind == "dropped":
        for key in draw(st.lists(st.sampled_from(sorted(base)), max_size=3)):
            base.pop(key, None)
        return base
    for path in draw(st.lists(st.sampled_from(FIELD_PATHS), min_size=1, max_size=3)):
        base = junk_at(base, path, draw(BAD_VALUES))
    return base


SPECS = st.one_of(placeable_specs(), hostile_specs())


# --- strategies: inventories --------------------------------------------------------------------

DEVICE_CLASSES = ("gpu-nvidia", "gpu-amd", "coral-tpu")


@st.composite
def valid_inventories(draw: st.DrawFn, *, extra_nodes: int = 4) -> dict[str, Any]:
    """Variations of the example inventory: fewer or more nodes, devices, pools and VMIDs."""
    data = copy.deepcopy(_base_inventory())
    kept = [n for n in data["nodes"] if draw(st.booleans()) or n["name"] == "still-fawn"]
    if draw(st.booleans()):
        kept = [n for n in kept if n["name"] != "still-fawn"] or kept
    added = []
    for i in range(draw(st.integers(0, extra_nodes))):
        name = f"node-{i:02d}"
        devices = [
            {
                "mapping": f"{name}-{cls}-{j}",
                "class": cls,
                "bus": "usb" if cls == "coral-tpu" else "pci",
            }
            for j, cls in enumerate(draw(st.lists(st.sampled_from(DEVICE_CLASSES), max_size=3)))
        ]
        node = {
            "name": name,
            "cpu": draw(st.integers(2, 64)),
            "memory": f"{draw(st.integers(4, 256))}Gi",
            "reservedMemory": "2Gi",
            "storage": ["local-zfs", "local"],
            "devices": devices,
        }
        added.append(node)
    data["nodes"] = kept + added
    names = {n["name"] for n in data["nodes"]}
    for index, (image_name, image) in enumerate(list(data["images"].items())):
        templates = {n: v for n, v in image["templates"].items() if n in names}
        for j, node in enumerate(added):
            templates[node["name"]] = 9100 + 10 * index + j
        if templates:
            image["templates"] = templates
        else:
            del data["images"][image_name]
    for ct_image in data.get("containerImages", {}).values():
        ct_image["templates"] = {n: v for n, v in ct_image["templates"].items() if n in names}
    data["containerImages"] = {
        k: v for k, v in data.get("containerImages", {}).items() if v["templates"]
    }
    data["unmanaged"] = [g for g in data["unmanaged"] if g["node"] in names]
    lan_size = draw(st.integers(1, 40))
    data["networks"]["lan"]["pool"]["end"] = str(
        ipaddress.IPv4Address("192.168.4.200") + lan_size - 1
    )
    k3s_size = draw(st.integers(1, 100))
    data["networks"]["k3s-cluster"]["pool"]["end"] = str(
        ipaddress.IPv4Address("10.40.0.100") + k3s_size - 1
    )
    data["vmids"] = {"start": 200, "end": 200 + draw(st.integers(1, 400)) - 1}
    data["reservedVmids"] = [9000, *draw(st.lists(st.integers(200, 210), max_size=3, unique=True))]
    if (
        len(set(data["reservedVmids"]) & set(range(200, data["vmids"]["end"] + 1)))
        >= data["vmids"]["end"] - 199
    ):
        data["reservedVmids"] = [9000]
    data["overcommit"] = {
        "cpu": draw(st.sampled_from([1.0, 4.0, 8.0])),
        "memory": draw(st.sampled_from([1.0, 1.5])),
    }
    data["scoring"] = draw(st.sampled_from(["spread", "pack"]))
    return data


def _breakers() -> dict[str, Any]:
    """Ways to break a valid inventory document: each returns the ConfigMap text."""

    def duplicate_node(d: dict[str, Any]) -> str:
        d["nodes"].append(copy.deepcopy(d["nodes"][0]))
        return dump(d)

    def duplicate_mapping(d: dict[str, Any]) -> str:
        dev = {"mapping": "dup", "class": "gpu-nvidia", "bus": "pci"}
        d["nodes"][0].setdefault("devices", []).append(dev)
        d["nodes"][-1].setdefault("devices", []).append(dict(dev))
        return dump(d)

    def unknown_template_node(d: dict[str, Any]) -> str:
        next(iter(d["images"].values()))["templates"]["nowhere"] = 9999
        return dump(d)

    def overlapping_pools(d: dict[str, Any]) -> str:
        d["networks"]["k3s-cluster"]["cidr"] = "192.168.4.0/24"
        d["networks"]["k3s-cluster"]["gateway"] = "192.168.4.1"
        d["networks"]["k3s-cluster"]["pool"] = {"start": "192.168.4.200", "end": "192.168.4.201"}
        return dump(d)

    def no_free_vmid(d: dict[str, Any]) -> str:
        d["vmids"] = {"start": 200, "end": 201}
        d["reservedVmids"] = [200, 201]
        return dump(d)

    def template_in_range(d: dict[str, Any]) -> str:
        d["vmids"] = {"start": 200, "end": 9999}
        return dump(d)

    def duplicate_key(d: dict[str, Any]) -> str:
        return dump(d) + "vmids: {start: 500, end: 600}\n"

    def not_yaml(_: dict[str, Any]) -> str:
        return "nodes: [\n  - {name: pve"

    def a_list(_: dict[str, Any]) -> str:
        return "- 1\n- 2\n"

    def empty(_: dict[str, Any]) -> str:
        return ""

    def no_nodes(d: dict[str, Any]) -> str:
        d["nodes"] = []
        return dump(d)

    def wrong_types(d: dict[str, Any]) -> str:
        d["nodes"][0]["cpu"] = "lots"
        d["vmids"] = "200-399"
        return dump(d)

    def over_limit(d: dict[str, Any]) -> str:
        return dump(d) + "#" * (1 << 20)

    return {
        f.__name__: f
        for f in (
            duplicate_node,
            duplicate_mapping,
            unknown_template_node,
            overlapping_pools,
            no_free_vmid,
            template_in_range,
            duplicate_key,
            not_yaml,
            a_list,
            empty,
            no_nodes,
            wrong_types,
            over_limit,
        )
    }


BREAKERS = _breakers()


@st.composite
def inventory_objects(draw: st.DrawFn) -> list[dict[str, Any]]:
    """The ConfigMaps a cluster holds: one valid, one broken, none, two, or junk data."""
    kind = draw(
        st.sampled_from(
            ["valid", "valid", "valid", "broken", "missing", "two", "junk", "junk-data"]
        )
    )
    if kind == "missing":
        return []
    data = draw(valid_inventories())
    if kind == "valid":
        return [cm_with(dump(data))]
    if kind == "broken":
        breaker = BREAKERS[draw(st.sampled_from(sorted(BREAKERS)))]
        return [cm_with(breaker(data))]
    if kind == "two":
        return [cm_with(dump(data)), cm_with(dump(data), name="second")]
    if kind == "junk":
        return [cm_with(dump(draw(JUNK)))]
    cm = cm_with("")
    cm["data"] = draw(JUNK)
    return [cm]


# --- strategies: fleets and observed Workspaces -------------------------------------------------

CREATED = st.sampled_from([f"2026-11-01T10:00:0{i}Z" for i in range(4)])


@st.composite
def held_statuses(draw: st.DrawFn) -> dict[str, Any]:
    """A status that records a placement, plausible or not."""
    out: dict[str, Any] = {
        "phase": "Running",
        "node": draw(
            st.sampled_from(["pve", "still-fawn", "pumped-piglet", "fun-bedbug", "node-00", "gone"])
        ),
        "vmId": draw(st.integers(100, 450)),
    }
    if draw(st.booleans()):
        out["devices"] = [
            {"mapping": draw(st.sampled_from(["rtx3070", "coral-usb", "node-00-gpu-nvidia-0"]))}
        ]
    if draw(st.booleans()):
        out["address"] = f"192.168.4.{draw(st.integers(200, 239))}/24"
        out["network"] = "lan"
    return out


@st.composite
def fleets(draw: st.DrawFn, max_size: int = 60) -> list[dict[str, Any]]:
    """Other XMachines: pending, held, invalid; legacy and namespaced."""
    out = []
    for i in range(draw(st.integers(0, max_size))):
        kind = draw(st.sampled_from(["pending", "held", "held", "invalid", "junk-status"]))
        spec = draw(placeable_specs()) if kind != "invalid" else draw(hostile_specs())
        stat = None
        if kind == "held":
            stat = draw(held_statuses())
        elif kind == "junk-status":
            stat = {"vmId": draw(JUNK), "node": draw(JUNK), "devices": draw(JUNK)}
        out.append(
            xr(
                f"fleet-{i}",
                spec,
                created=draw(CREATED),
                status=stat,
                namespaced=draw(st.booleans()),
            )
        )
    return out


@functools.cache
def rendered_workspaces() -> tuple[dict[str, Any], ...]:
    """Workspaces the function rendered for the subject machine, as Crossplane observes them."""
    from function.fn import run

    out = []
    specs = [
        basic_spec(),
        basic_spec(network={"name": "lan", "address": "dhcp"}),
        basic_spec(image="ubuntu-24.04", devices=[{"class": "gpu"}], memory="8Gi"),
    ]
    for spec in specs:
        machine = xr("subject", spec)
        rsp = xpsim.settle(
            lambda req: run(req, _Quiet()), machine, _fn_input(), [_base_cm(), machine]
        )
        assert desired_ws(rsp) is not None, rsp.results
        out.append(applied(rsp, outputs={"ipv4": "192.168.4.200"}))
    return tuple(out)


# Where each odd shape puts its junk (a "no-" shape deletes the part instead).
ODD_PARTS: dict[str, tuple[str, ...]] = {
    "no-annotations": ("metadata", "annotations"),
    "junk-annotations": ("metadata", "annotations"),
    "junk-vmid": ("metadata", "annotations", VMID),
    "junk-node": ("metadata", "annotations", NODE),
    "junk-devices": ("metadata", "annotations", "fabric.homelab.io/devices"),
    "junk-address": ("metadata", "annotations", "fabric.homelab.io/address"),
    "no-spec": ("spec",),
    "junk-spec": ("spec",),
    "junk-module": ("spec", "forProvider", "module"),
    "junk-status": ("status",),
    "junk-conditions": ("status", "conditions"),
    "failed": ("status", "conditions"),
    "junk-metadata": ("metadata",),
    "no-metadata": ("metadata",),
}


def _odd(ws: dict[str, Any], what: str, junk: Any) -> dict[str, Any]:
    """An observed Workspace with one part of an unexpected shape."""
    out = copy.deepcopy(ws)
    if what not in ODD_PARTS:
        return out
    if what == "failed":  # Terraform failing, with junk for its message
        junk = [
            {"type": "Synced", "status": "False", "reason": "ReconcileError", "message": junk},
            {"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ]
    *parents, last = ODD_PARTS[what]
    here = out
    for part in parents:
        here = here[part]
    if what.startswith("no-"):
        del here[last]
    else:
        here[last] = junk
    return out


ODD_SHAPES = (
    "as-applied",
    "no-annotations",
    "junk-annotations",
    "junk-vmid",
    "junk-node",
    "junk-devices",
    "junk-address",
    "no-spec",
    "junk-spec",
    "junk-module",
    "junk-status",
    "junk-conditions",
    "failed",
    "junk-metadata",
    "no-metadata",
)


# Annotations are map[string]string and the CRD types the module and condition messages as
# strings: there, only odd strings can occur. Elsewhere anything goes.
ODD_STRINGS = st.one_of(
    TEXT, NAMEISH, HUGE_TEXT, st.sampled_from(["", "0", "-1", "1e3", "200", "9" * 30, " 200"])
)
STRING_SHAPES = {
    "as-applied": st.none(),
    "no-annotations": st.none(),
    "no-spec": st.none(),
    "no-metadata": st.none(),
    "junk-vmid": ODD_STRINGS,
    "junk-node": ODD_STRINGS,
    "junk-devices": ODD_STRINGS,
    "junk-address": ODD_STRINGS,
    "junk-module": st.one_of(ODD_STRINGS, st.builds(json.dumps, JUNK)),
    "failed": ODD_STRINGS,
    "junk-annotations": st.dictionaries(
        st.one_of(TEXT, st.sampled_from([NODE, VMID])), ODD_STRINGS
    ),
}


@st.composite
def observed_workspaces(draw: st.DrawFn) -> tuple[dict[str, Any] | None, bool]:
    """An observed Workspace (or none), and whether its oddities are only odd strings."""
    if draw(st.integers(0, 3)) == 0:
        return None, True
    ws = draw(st.sampled_from(rendered_workspaces()))
    shape = draw(st.sampled_from(ODD_SHAPES))
    if shape in STRING_SHAPES:
        return _odd(ws, shape, draw(STRING_SHAPES[shape])), True
    return _odd(ws, shape, draw(JUNK)), False


def placement_of(ws: dict[str, Any]) -> tuple[str, str] | None:
    """Where an observed Workspace says its VM lives: its annotations, else its module."""
    meta = ws.get("metadata")
    notes = meta.get("annotations") if isinstance(meta, dict) else None
    if isinstance(notes, dict):
        node, vmid = notes.get(NODE), notes.get(VMID)
        if isinstance(node, str) and node and isinstance(vmid, str) and vmid.isdigit():
            return node, vmid
    try:
        vm = json.loads(ws["spec"]["forProvider"]["module"])["resource"][
            "proxmox_virtual_environment_vm"
        ]["machine"]
        return str(vm["node_name"]), str(int(vm["vm_id"]))
    except (KeyError, TypeError, ValueError):
        return None


def consistent_status(ws: dict[str, Any] | None) -> dict[str, Any] | None:
    """The XR status Crossplane would hold next to that Workspace (the function wrote both)."""
    if ws is None:
        return None
    where = placement_of(ws)
    if where is None:
        return None
    return {"phase": "Running", "node": where[0], "vmId": int(where[1])}


@dataclass(frozen=True)
class Generated:
    """A generated request, the Workspace it says is observed, and whether it holds junk that
    the function may quote in a message (a junk mapping's key order is a protobuf map's)."""

    req: fnv1.RunFunctionRequest
    observed: dict[str, Any] | None
    tame: bool


JUNK_INPUT = st.dictionaries(
    st.sampled_from(["deletionPolicy", "providerConfigName", "defaults", "inventory", "bogus"]),
    JUNK,
    min_size=1,
    max_size=2,
)
UNANSWERED = st.sampled_from(
    [
        frozenset(),
        frozenset(),
        frozenset(),
        frozenset({"fleet"}),
        frozenset({"inventory"}),
        frozenset({"inventory", "fleet"}),
    ]
)


@st.composite
def requests(draw: st.DrawFn, *, fleet_size: int = 30) -> Generated:
    """One RunFunctionRequest for the subject machine, Crossplane 1.x or 2.x."""
    observed, tame = draw(observed_workspaces())
    stat_kind = draw(st.sampled_from(["consistent", "consistent", "none", "junk"]))
    stat = consistent_status(observed) if stat_kind == "consistent" else None
    if stat_kind == "junk":
        stat = draw(st.one_of(JUNK, held_statuses()))
    name = draw(st.sampled_from(["subject", "subject", "subject", "bad.name", "x" * 70]))
    tame = tame and draw(st.booleans())
    spec = draw(placeable_specs() if tame else SPECS)
    machine = xr(name, spec, created="2026-11-01T10:00:02Z", namespaced=draw(st.booleans()))
    if stat is not None:
        machine["status"] = stat
    inp = _fn_input()
    if not tame and draw(st.integers(0, 9)) == 0:
        machine["spec"] = draw(JUNK)
    if not tame and draw(st.integers(0, 9)) == 0:
        inp = {**inp, **draw(JUNK_INPUT)}
    objects = [*draw(inventory_objects()), *draw(fleets(max_size=fleet_size)), machine]
    v2 = draw(st.booleans())
    req = answered(machine, objects, observed=observed, inp=inp, v2=v2, unanswered=draw(UNANSWERED))
    return Generated(req, observed, tame)


# --- 1. nothing lost ----------------------------------------------------------------------------


def assert_nothing_lost(observed: dict[str, Any] | None, rsp: fnv1.RunFunctionResponse) -> None:
    if observed is None or is_fatal(rsp):
        return
    got = desired_ws(rsp)
    assert got is not None, (
        f"the observed Workspace was dropped; results: {[r.message for r in rsp.results]}"
    )
    seen = roundtrip(observed)
    if got.get("spec") == (seen.get("spec") or {}):
        return  # held as it is
    want = placement_of(seen)
    notes = (got.get("metadata") or {}).get("annotations") or {}
    have = (notes.get(NODE), notes.get(VMID))
    assert want is not None, f"rendered anew over a Workspace with no known placement: {have}"
    assert have == want, f"rendered for {have}, the VM lives at {want}"


@settings(FAST, max_examples=150)
@given(data=requests())
def test_nothing_lost(call_inproc, data):
    assert_nothing_lost(data.observed, call_inproc(data.req))


# --- 4. deterministic ---------------------------------------------------------------------------


@settings(FAST, max_examples=60)
@given(
    batch=st.lists(requests(fleet_size=12), min_size=2, max_size=4),
    order=st.randoms(use_true_random=False),
)
def test_identical_requests_give_identical_bytes_in_any_call_order(
    call_inproc, call_fresh, batch, order
):
    # Afresh (past the response memo), so the second answers are computed again, in any order.
    first = [call_fresh(one.req).SerializeToString(deterministic=True) for one in batch]
    indices = list(range(len(batch)))
    order.shuffle(indices)
    for i in indices:
        again = call_fresh(batch[i].req).SerializeToString(deterministic=True)
        assert again == first[i], f"request {i} answered differently after requests {indices}"
        # The memo, which the served function answers from, agrees.
        memo = call_inproc(batch[i].req).SerializeToString(deterministic=True)
        assert memo == first[i], f"the memo answered request {i} differently"


# --- 5. no exception escapes, over gRPC; and the served function agrees with in-process --------


@settings(FAST, max_examples=40)
@given(data=requests(fleet_size=10))
def test_no_rpc_error_and_same_answer_over_grpc(call, call_inproc, data):
    try:
        rsp = call(data.req)
    except grpc.RpcError as err:
        pytest.fail(f"RunFunction raised {err.code()}: {err.details()}")
    assert_nothing_lost(data.observed, rsp)
    if data.tame:
        # Another process, another hash seed: the same content. Protobuf maps may serialize
        # in another order in another process, so the serialization is the deterministic one.
        want = call_inproc(data.req)
        assert [r.message for r in rsp.results] == [r.message for r in want.results]
        assert [c.message for c in rsp.conditions] == [c.message for c in want.conditions]
        got_bytes = rsp.SerializeToString(deterministic=True)
        assert got_bytes == want.SerializeToString(deterministic=True)


# --- 5. every rejection names the field and the value -------------------------------------------


def renderings(value: Any) -> list[str]:
    """Ways a message may show a scalar the function received (numbers arrive as floats)."""
    out = [repr(value)[:30], str(value)[:30]]
    if isinstance(value, float) and value.is_integer():
        out += [repr(int(value)), f"{int(value)}"]
    return out


def field_names(path: tuple[str | int, ...]) -> list[str]:
    """The message may name the field or one of its parents: spec.network or spec.network.name."""
    names, text = [], "spec"
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else f".{step}"
        names.append(text)
    return names


@settings(FAST, max_examples=200)
@given(
    base=placeable_specs(),
    path=st.sampled_from(FIELD_PATHS),
    value=BAD_VALUES,
    v2=st.booleans(),
)
@example(base=basic_spec(), path=("cpu",), value=0, v2=False)
@example(base=basic_spec(), path=("memory",), value="16GB", v2=False)
@example(base=basic_spec(), path=("devices", 0, "class"), value="fpga", v2=False)
def test_every_rejection_names_the_field_and_value(call_inproc, base, path, value, v2):
    spec = junk_at(base, path, value)
    machine = xr("subject", spec, namespaced=v2)
    rsp = call_inproc(answered(machine, [_base_cm(), machine], v2=v2))
    got = status(rsp)
    assume(got.get("phase") == "Invalid")
    message = got.get("message", "")
    assert any(name in message for name in field_names(path)), (
        f"want one of {field_names(path)} in {message!r}"
    )
    seen = roundtrip(value)
    if (
        not isinstance(seen, dict | list)
        and "unknown field" not in message
        and "is required" not in message
    ):
        assert any(r in message for r in renderings(seen)), f"want {seen!r} shown in {message!r}"
    assert message in warnings(rsp), f"{message!r} is not among the claim's warnings"
    event("rejected at " + field_names(path)[-1])


@settings(FAST, max_examples=40)
# Claim names are DNS subdomains (RFC 1123): that is all the API server lets through.
@given(
    name=st.one_of(
        st.from_regex(r"\A[a-z0-9]{1,20}\.[a-z0-9]{1,20}\Z"),
        st.from_regex(r"\A[a-z0-9]{64,200}\Z"),
        st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9-]{1,9})+\Z"),
    )
)
def test_a_bad_claim_name_is_named_as_metadata_name(call_inproc, name):
    machine = xr(name, basic_spec())
    rsp = call_inproc(answered(machine, [_base_cm(), machine]))
    got = status(rsp)
    assert got.get("phase") == "Invalid", got
    assert got["message"].startswith("metadata.name: "), got["message"]
    assert repr(name)[:30] in got["message"]
    assert got["message"] in warnings(rsp)


INVENTORY_FIELDS = {
    "duplicate_node": ["node names must be unique; repeated: "],
    "duplicate_mapping": ["device mapping 'dup'"],
    "unknown_template_node": ["templates names node 'nowhere'"],
    "overlapping_pools": ["address pools of networks", "overlap"],
    "no_free_vmid": ["vmids 200-201 has no ID left"],
    "template_in_range": ["template VMIDs", "lie inside vmids 200-9999"],
    "duplicate_key": ["duplicate key 'vmids'"],
    "not_yaml": ["not valid YAML"],
    "a_list": ["is invalid"],
    "empty": ["is invalid"],
    "no_nodes": ["nodes: [] is invalid"],
    "wrong_types": ["nodes[0].cpu: 'lots' is invalid", "vmids: '200-399' is invalid"],
    "over_limit": ["over 1048576 bytes"],
}


@settings(FAST, max_examples=30)
@given(inventory=valid_inventories(), breaker=st.sampled_from(sorted(BREAKERS)))
def test_every_inventory_rejection_says_inventory_and_what(call_inproc, inventory, breaker):
    machine = xr("subject", basic_spec())
    text = BREAKERS[breaker](inventory)
    rsp = call_inproc(answered(machine, [cm_with(text), machine]))
    message = status(rsp).get("message", "")
    assert message.startswith("inventory: "), message
    for want in INVENTORY_FIELDS[breaker]:
        assert want in message, f"{breaker}: want {want!r} in {message!r}"
    assert not is_fatal(rsp)


# --- 3. no double allocation --------------------------------------------------------------------


class Homelab:
    """The cluster as Crossplane keeps it: XMachines with the status the function wrote, and
    each machine's Workspace as observed after Crossplane applied the desired one."""

    def __init__(self, call: Any, inventory: dict[str, Any]) -> None:
        self.call = call
        self.cm = cm_with(dump(inventory))
        self.machines: dict[str, dict[str, Any]] = {}
        self.workspaces: dict[str, dict[str, Any]] = {}
        self.history: list[tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]] = []
        self.first_placement: dict[str, tuple[Any, ...]] = {}

    def snapshot(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        return dict(self.machines), dict(self.workspaces)

    def decide(
        self, name: str, view: tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]
    ) -> fnv1.RunFunctionResponse | None:
        machines, workspaces = view
        if name not in machines:
            return None
        objects = [self.cm, *machines.values()]
        return self.call(answered(machines[name], objects, observed=workspaces.get(name)))

    def write(self, name: str, rsp: fnv1.RunFunctionResponse | None) -> None:
        if rsp is None or name not in self.machines:
            return  # deleted meanwhile: Crossplane drops the write
        self.machines[name] = {**self.machines[name], "status": status(rsp)}
        if desired_ws(rsp) is not None:
            self.workspaces[name] = applied(rsp)

    def check(self) -> None:
        taken: dict[tuple[str, Any], str] = {}
        for name, machine in sorted(self.machines.items()):
            got = machine.get("status") or {}
            if "vmId" not in got:
                continue
            things = [("vmid", got["vmId"])]
            things += [("device", d["mapping"]) for d in got.get("devices", [])]
            if got.get("address"):
                things.append(("address", str(ipaddress.IPv4Interface(got["address"]).ip)))
            for thing in things:
                holder = taken.setdefault(thing, name)
                assert holder == name, f"{thing[0]} {thing[1]} given to both {holder} and {name}"
            # Devices as a set: their order changes once after creation, a known bug
            # (test_device_order_is_stable_after_creation).
            where = (
                got["node"],
                got["vmId"],
                tuple(sorted(d["mapping"] for d in got.get("devices", []))),
                got.get("address"),
            )
            if name in self.workspaces:
                first = self.first_placement.setdefault(name, where)
                assert where == first, f"{name} moved from {first} to {where}"


OPS = st.one_of(
    st.tuples(st.just("reconcile"), st.integers(0, 10**6)),
    st.tuples(st.just("batch"), st.lists(st.integers(0, 10**6), min_size=2, max_size=4)),
    st.tuples(st.just("delete"), st.integers(0, 10**6)),
)


@st.composite
def fleet_runs(
    draw: st.DrawFn, max_machines: int = 40
) -> tuple[dict[str, Any], list[dict[str, Any]], list[Any]]:
    inventory = draw(valid_inventories(extra_nodes=6))
    images = tuple(sorted(set(inventory["images"]) & {"debian-12", "ubuntu-24.04"})) or (
        "debian-12",
    )
    machines = [
        xr(f"m-{i:03d}", draw(placeable_specs(images)), created=draw(CREATED))
        for i in range(draw(st.integers(1, max_machines)))
    ]
    ops = draw(st.lists(OPS, max_size=3 * len(machines)))
    return inventory, machines, ops


def run_fleet(
    call: Any, inventory: dict[str, Any], machines: list[dict[str, Any]], ops: list[Any]
) -> Homelab:
    lab = Homelab(call, inventory)
    for machine in machines:
        lab.machines[machine["metadata"]["name"]] = machine
    names = [m["metadata"]["name"] for m in machines]
    # Every machine is reconciled at least once, in an order the ops decide, with extra
    # reconciles, concurrent batches (one snapshot for all) and deletions in between.
    for kind, arg in [*ops, *(("reconcile", i) for i in range(len(names)))]:
        if kind == "reconcile":
            name = names[arg % len(names)]
            lab.write(name, lab.decide(name, lab.snapshot()))
        elif kind == "batch":
            view = lab.snapshot()
            picked = sorted({names[i % len(names)] for i in arg})
            results = [(n, lab.decide(n, view)) for n in picked]
            for n, rsp in results:
                lab.write(n, rsp)
        else:
            name = names[arg % len(names)]
            lab.machines.pop(name, None)
            lab.workspaces.pop(name, None)
            lab.first_placement.pop(name, None)
        lab.check()
    return lab


@settings(FAST, max_examples=30)
@given(run=fleet_runs())
def test_no_double_allocation_in_any_order(call_inproc, run):
    run_fleet(call_inproc, *run)


def big_homelab() -> dict[str, Any]:
    """The example homelab with six more large nodes (two GPUs each), addresses and VMIDs."""
    data = copy.deepcopy(_base_inventory())
    for i in range(6):
        name = f"rack-{i}"
        data["nodes"].append(
            {
                "name": name,
                "cpu": 64,
                "memory": "256Gi",
                "storage": ["local-zfs"],
                "devices": [
                    {"mapping": f"{name}-gpu-{j}", "class": "gpu-amd", "bus": "pci"}
                    for j in range(2)
                ],
            }
        )
        for index, image in enumerate(data["images"].values()):
            image["templates"][name] = 9100 + 10 * index + i
    data["networks"]["k3s-cluster"]["pool"]["end"] = "10.40.0.199"
    data["vmids"] = {"start": 200, "end": 599}
    return data


def test_no_double_allocation_in_a_fleet_of_hundreds(call_inproc):
    rng = random.Random(2026)
    machines = []
    for i in range(200):
        network = rng.choice(
            [{"name": "lan"}, {"name": "k3s-cluster"}, {"name": "iot", "address": "dhcp"}]
        )
        spec = basic_spec(
            cpu=rng.randint(1, 4), memory=rng.choice(["1Gi", "2Gi", "4Gi"]), network=network
        )
        if i % 10 == 0:
            spec["devices"] = [{"class": "gpu"}]
        if i % 17 == 0:
            spec["placement"] = {"spreadGroup": "servers"}
        created = f"2026-11-01T10:{rng.randint(0, 9):02d}:00Z"  # many share a timestamp
        machines.append(xr(f"big-{i:03d}", spec, created=created))
    order = [rng.randrange(len(machines)) for _ in range(60)]
    lab = run_fleet(call_inproc, big_homelab(), machines, [("reconcile", i) for i in order])
    placed = [m for m in lab.machines.values() if "vmId" in (m.get("status") or {})]
    with_gpu = [m for m in placed if m["status"].get("devices")]
    # Enough of the fleet lands, and some is turned away, for the check to mean something.
    assert 120 <= len(placed) < 200, f"{len(placed)} of 200 placed"
    assert len(with_gpu) == 13, f"{len(with_gpu)} machines hold a GPU; 13 GPUs, 20 asked"


# --- bugs these properties found: regression tests, and strict xfails for what is still open ---


ODD_METADATA = [["name", "annotations"], True, 7, "labels and annotations"]


@pytest.mark.parametrize("metadata", ODD_METADATA, ids=[repr(m) for m in ODD_METADATA])
def test_odd_workspace_metadata_never_escapes_as_rpc_error(call, metadata):
    observed = _odd(rendered_workspaces()[0], "junk-metadata", metadata)
    machine = xr("subject", basic_spec())
    rsp = call(answered(machine, [_base_cm(), machine], observed=observed))
    assert_nothing_lost(observed, rsp)


UNNAMED = [
    (
        "ssh key comment with the secret marker",
        basic_spec(bootstrap={"sshAuthorizedKeys": ["ssh-ed25519 AAAA __FABRIC_SECRET_x__"]}),
        "spec.bootstrap.sshAuthorizedKeys[0]",
    ),
    (
        "flake ref with the secret marker",
        basic_spec(image="nixos", disk="32Gi", nix={"flakeRef": "github:a/b#__FABRIC_SECRET_x__"}),
        "spec.nix.flakeRef",
    ),
    (
        "32 keys of 8000 characters: user-data over 64 KiB",
        basic_spec(
            bootstrap={"sshAuthorizedKeys": [f"ssh-ed25519 {'A' * 8000} k{i}" for i in range(32)]}
        ),
        "spec.bootstrap.sshAuthorizedKeys",
    ),
]


@pytest.mark.parametrize(("case", "spec", "want"), UNNAMED, ids=[c[0] for c in UNNAMED])
def test_late_rejections_name_the_claim_field(call_inproc, case, spec, want):
    machine = xr("subject", spec)
    rsp = call_inproc(answered(machine, [_base_cm(), machine]))
    got = status(rsp)
    assert got["phase"] == "Invalid", case
    assert want in got["message"], f"{case}: want {want!r} in {got['message']!r}"


def two_device_inventory() -> dict[str, Any]:
    data = copy.deepcopy(_base_inventory())
    fawn = next(n for n in data["nodes"] if n["name"] == "still-fawn")
    fawn["devices"].append({"mapping": "radeon", "class": "gpu-amd", "bus": "pci"})
    return data


def test_device_order_is_stable_after_creation(call_inproc):
    cm = cm_with(dump(two_device_inventory()))
    spec = basic_spec(
        image="ubuntu-24.04", memory="8Gi", devices=[{"class": "gpu-nvidia"}, {"class": "gpu-amd"}]
    )
    machine = xr("two-gpus", spec)
    first = xpsim.settle(call_inproc, machine, _fn_input(), [cm, machine])
    placed = {**machine, "status": status(first)}
    again = call_inproc(answered(placed, [cm, placed], observed=applied(first)))
    was, now = status(first)["devices"], status(again)["devices"]
    assert [d["mapping"] for d in now] == [d["mapping"] for d in was], f"{was} became {now}"
    assert desired_ws(again)["spec"] == desired_ws(first)["spec"], "the Workspace changed"


def two_gpu_nodes() -> dict[str, Any]:
    data = copy.deepcopy(_base_inventory())
    data["nodes"] = [
        {
            "name": name,
            "cpu": 16,
            "memory": "64Gi",
            "storage": ["local"],
            "devices": [{"mapping": f"gpu-{name}", "class": "gpu-nvidia", "bus": "pci"}],
        }
        for name in ("x", "y")
    ]
    for image in data["images"].values():
        image["templates"] = {"x": 9001, "y": 9002}
    data.pop("containerImages", None)
    data["unmanaged"] = []
    return data


def test_reconciles_on_views_that_differ_in_a_later_machine_agree(call_inproc):
    # a < b < c in the global order; a and b want a GPU, c only memory. All pending (view V):
    # a takes gpu-x, b gpu-y, c goes to x. c's reconcile lands first; b reconciled on V; a
    # reconciled after c's status landed but before b's. Scores leave out held machines that
    # come later in the order, so a ranks the nodes as in V and still takes gpu-x.
    gpu = basic_spec(cpu=1, memory="1Gi", devices=[{"class": "gpu"}])
    lab = Homelab(call_inproc, two_gpu_nodes())
    for name, spec, second in (("a", gpu, 0), ("b", gpu, 1), ("c", basic_spec(memory="16Gi"), 2)):
        machine = xr(name, spec, created=f"2026-11-01T10:00:0{second}Z")
        lab.machines[machine["metadata"]["name"]] = machine
    view = lab.snapshot()
    lab.write("c-x1234", lab.decide("c-x1234", view))
    b, a = lab.decide("b-x1234", view), lab.decide("a-x1234", lab.snapshot())
    lab.write("b-x1234", b)
    lab.write("a-x1234", a)
    lab.check()


def test_refusal_wording_is_the_same_in_every_process(call, call_inproc):
    spec = basic_spec(**{f"field{i}": i for i in range(10)})
    machine = xr("many-typos", spec)
    req = answered(machine, [_base_cm(), machine])
    here, there = status(call_inproc(req))["message"], status(call(req))["message"]
    assert here == there
