"""What the function asks Crossplane for on every call, and how it reads the answers.

Crossplane 1.x reads only `requirements.extra_resources` and answers in
`req.extra_resources`; it cannot select a ConfigMap by name, so the inventory is
selected by labels. Crossplane 2.x reads both fields and answers in
`required_resources`. The function writes both and reads both, and asks for the
same things on every call: Crossplane stops calling once two calls agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
from crossplane.function import resource

from function.model import InventorySource

INVENTORY = "inventory"
FLEET = "fleet"
XR_API_VERSION = "fabric.homelab.io/v1alpha1"
XR_KIND = "XMachine"


def _selectors(source: InventorySource) -> dict[str, fnv1.ResourceSelector]:
    inventory = fnv1.ResourceSelector(
        api_version="v1",
        kind="ConfigMap",
        match_labels=fnv1.MatchLabels(labels=dict(sorted(source.match_labels.items()))),
    )
    if source.namespace:
        inventory.namespace = source.namespace
    # An empty label selector matches every XMachine (in every namespace).
    fleet = fnv1.ResourceSelector(api_version=XR_API_VERSION, kind=XR_KIND)
    fleet.match_labels.SetInParent()
    return {INVENTORY: inventory, FLEET: fleet}


def declare(rsp: fnv1.RunFunctionResponse, source: InventorySource) -> None:
    """Ask for the inventory and the fleet in both the 1.x and the 2.x field."""
    for name, selector in _selectors(source).items():
        rsp.requirements.extra_resources[name].CopyFrom(selector)
        rsp.requirements.resources[name].CopyFrom(selector)


@dataclass(frozen=True)
class Answer:
    """Crossplane's answer to one requirement: None when it has not answered yet."""

    items: list[fnv1.Resource] | None

    @property
    def arrived(self) -> bool:
        """Whether Crossplane resolved the requirement (possibly to nothing)."""
        return self.items is not None


def answer(req: fnv1.RunFunctionRequest, name: str) -> Answer:
    """The resources Crossplane returned for a requirement, from whichever field it used."""
    if name in req.required_resources:
        return Answer(list(req.required_resources[name].items))
    if name in req.extra_resources:
        return Answer(list(req.extra_resources[name].items))
    return Answer(None)


def to_dicts(items: list[fnv1.Resource]) -> list[dict[str, Any]]:
    """Convert returned resources to plain dicts."""
    return [resource.struct_to_dict(item.resource) for item in items]
