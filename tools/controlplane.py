"""Crossplane's composite reconciler, modelled: many XRs reconciled over one shared API state.

What matters for allocation, from Crossplane's source (internal/controller/apiextensions/
composite, v1.20 and v2.0: reconciler.go, composition_functions.go):

- A reconcile reads the XR, its composed resources by reference (fresh: a cache miss is
  read again from the API server) and the function's required resources from the cache, which
  can lag: another XR's newest status, or a Reservation just created, may not be there yet.
- It calls the function until its requirements are stable (xpsim.converge).
- It records the desired resources' references on the XR first, then server-side applies
  each desired composed resource, in no fixed order. An object another XR controls is refused
  by the API server (a second controller reference is Invalid): Crossplane marks that resource
  unsynced and goes on. It deletes observed composed resources the function no longer desires,
  and patches the XR's status last.
- Deleting an XR deletes what it controls, later (Kubernetes' garbage collector).

`Cluster` holds that state; `reconcile` runs one reconcile of one XR against a view that may
lag. tests/test_race.py drives it with seeded random creates, deletes and reconciles.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
from crossplane.function import resource

from tools import xpsim

Call = Callable[[fnv1.RunFunctionRequest], fnv1.RunFunctionResponse]
Key = tuple[str, str]  # (kind, name) of a composed object


def _controller(obj: dict[str, Any]) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


@dataclass
class View:
    """What the cache shows a reconcile: XRs with their statuses, and the Reservations."""

    xrs: dict[str, dict[str, Any]]
    reservations: list[dict[str, Any]]


@dataclass
class Cluster:
    """The API server's state: XRs, composed objects, each XR's resource references."""

    inventory: dict[str, Any]
    fn_input: dict[str, Any]
    xrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    refs: dict[str, dict[str, Key]] = field(default_factory=dict)  # XR -> composed name -> key
    orphans: list[Key] = field(default_factory=list)  # awaiting garbage collection
    history: list[View] = field(default_factory=list)

    def view(self) -> View:
        """The state as a fresh cache shows it."""
        reservations = [o for (kind, _), o in self.objects.items() if kind == "Reservation"]
        return View(copy.deepcopy(self.xrs), copy.deepcopy(reservations))

    def snapshot(self) -> None:
        """Remember the current state: a lagging cache shows parts of these."""
        self.history.append(self.view())

    def lagging_view(self, rng: random.Random, lag: float, depth: int = 3) -> View:
        """The cache as a reconcile may read it.

        Each object, independently, with probability `lag` as it was up to `depth` steps ago
        (a stale status, a deleted XR still listed, a new one or a new Reservation not listed
        yet), else as it is now.
        """
        now = self.view()
        past = self.history[-depth:] or [now]

        def pick(current: dict[str, Any], older: list[dict[str, Any]]) -> dict[str, Any]:
            out = {}
            for name in sorted(set(current).union(*older)):
                source = rng.choice(older) if rng.random() < lag else current
                if name in source:
                    out[name] = source[name]
            return out

        def by_name(objs: list[dict[str, Any]]) -> dict[str, Any]:
            return {o["metadata"]["name"]: o for o in objs}

        xrs = pick(now.xrs, [v.xrs for v in past])
        held = pick(by_name(now.reservations), [by_name(v.reservations) for v in past])
        return View(xrs, list(held.values()))

    def create(self, xr: dict[str, Any]) -> None:
        """Create an XR (as a claim would)."""
        self.xrs[xr["metadata"]["name"]] = copy.deepcopy(xr)
        self.refs[xr["metadata"]["name"]] = {}

    def delete(self, name: str) -> None:
        """Delete an XR; what it controls is collected later (collect)."""
        xr = self.xrs.pop(name, None)
        if xr is None:
            return
        uid = xr["metadata"]["uid"]
        self.orphans += [k for k, o in self.objects.items() if _controller(o) == uid]
        self.refs.pop(name, None)

    def collect(self) -> None:
        """Kubernetes' garbage collector catches up."""
        for key in self.orphans:
            self.objects.pop(key, None)
        self.orphans.clear()

    def observed(self, name: str) -> dict[str, dict[str, Any]]:
        """The XR's composed resources it controls, read fresh, by composed resource name."""
        uid = self.xrs[name]["metadata"]["uid"]
        out = {}
        for composed, key in self.refs[name].items():
            obj = self.objects.get(key)
            if obj is not None and _controller(obj) == uid:
                out[composed] = copy.deepcopy(obj)
        return out

    def reconcile(self, call: Call, name: str, view: View, rng: random.Random) -> None:
        """One reconcile of one XR, the function reading `view` for its required resources."""
        if name not in self.xrs:
            return
        xr = copy.deepcopy(self.xrs[name])
        observed = self.observed(name)
        seen = [self.inventory, *view.xrs.values(), *view.reservations]
        req = xpsim.request(xr, self.fn_input, observed)
        rsp = xpsim.converge(call, req, xpsim.Cluster(seen))
        if any(r.severity == fnv1.SEVERITY_FATAL for r in rsp.results):
            return
        desired = {
            n: resource.struct_to_dict(rsp.desired.resources[n].resource)
            for n in rsp.desired.resources
        }
        uid = xr["metadata"]["uid"]
        refs = self.refs[name]
        for composed, body in desired.items():
            meta = body.setdefault("metadata", {})
            key = refs.get(composed)
            if meta.get("name"):
                key = (body["kind"], meta["name"])
            elif key is None or key[0] != body["kind"]:
                key = (body["kind"], f"{name}-{composed}")
            meta["name"] = key[1]
            meta["ownerReferences"] = [{"uid": uid, "controller": True, "kind": xr["kind"]}]
            meta.setdefault("annotations", {})[xpsim.RESOURCE_NAME_ANNOTATION] = composed
            refs[composed] = key
        order = list(desired)
        rng.shuffle(order)
        for composed in order:
            key = refs[composed]
            existing = self.objects.get(key)
            if existing is not None and _controller(existing) != uid:
                continue  # Invalid: another XR controls it; marked unsynced, the rest goes on
            self.objects[key] = desired[composed]
        for composed in [c for c in observed if c not in desired]:
            self.objects.pop(refs.pop(composed), None)
        status = resource.struct_to_dict(rsp.desired.composite.resource).get("status", {})
        if name in self.xrs:
            self.xrs[name]["status"] = status

    def workspaces(self) -> dict[str, dict[str, Any]]:
        """Each live XR's Workspace, by XR name: what provisions its VM."""
        out = {}
        for name, xr in self.xrs.items():
            for key in self.refs[name].values():
                obj = self.objects.get(key)
                mine = obj is not None and _controller(obj) == xr["metadata"]["uid"]
                if key[0] == "Workspace" and mine and obj is not None:
                    out[name] = obj
        return out
