"""What the function asks Crossplane for on every call, and how it reads the answers.

Crossplane 1.x reads only `requirements.extra_resources` and answers in
`req.extra_resources`; it cannot select a ConfigMap by name, so the inventory is
selected by labels. Crossplane 2.x reads both fields and answers in
`required_resources`. The function writes both and reads both, and asks for the
same things on every call: Crossplane stops calling once two calls agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
from google.protobuf import struct_pb2

from function import reservations
from function.model import API_VERSION, CONTAINER_KIND, MACHINE_KIND, InventorySource

INVENTORY = "inventory"
FLEET = "fleet"
CONTAINERS = "containers"
RESERVATIONS = "reservations"


def _selectors(source: InventorySource) -> dict[str, fnv1.ResourceSelector]:
    inventory = fnv1.ResourceSelector(
        api_version="v1",
        kind="ConfigMap",
        match_labels=fnv1.MatchLabels(labels=dict(sorted(source.match_labels.items()))),
    )
    if source.namespace:
        inventory.namespace = source.namespace
    # An empty label selector matches every XMachine (in every namespace).
    fleet = fnv1.ResourceSelector(api_version=API_VERSION, kind=MACHINE_KIND)
    fleet.match_labels.SetInParent()
    containers = fnv1.ResourceSelector(api_version=API_VERSION, kind=CONTAINER_KIND)
    containers.match_labels.SetInParent()
    # Every Reservation (cluster-scoped; reservations.py), likewise by an empty selector.
    held = fnv1.ResourceSelector(api_version=reservations.API_VERSION, kind=reservations.KIND)
    held.match_labels.SetInParent()
    return {INVENTORY: inventory, FLEET: fleet, CONTAINERS: containers, RESERVATIONS: held}


def declare(rsp: fnv1.RunFunctionResponse, source: InventorySource) -> None:
    """Ask for the inventory and the fleet in both the 1.x and the 2.x field."""
    for name, selector in _selectors(source).items():
        rsp.requirements.extra_resources[name].CopyFrom(selector)
        rsp.requirements.resources[name].CopyFrom(selector)


@dataclass(frozen=True)
class Answer:
    """Crossplane's answer to one requirement, as plain objects: None until it has answered."""

    items: list[dict[str, Any]] | None

    @property
    def arrived(self) -> bool:
        """Whether Crossplane resolved the requirement (possibly to nothing)."""
        return self.items is not None


def answer(req: fnv1.RunFunctionRequest, name: str) -> Answer:
    """The resources Crossplane returned for a requirement, from whichever field it used."""
    found = resources(req, name)
    return Answer(None if found is None else to_dicts(list(found.items)))


def fleet_resources(req: fnv1.RunFunctionRequest) -> fnv1.Resources | None:
    """Every XMachine and XContainer, as one answer; None until Crossplane answered both."""
    machines, containers = resources(req, FLEET), resources(req, CONTAINERS)
    if machines is None or containers is None:
        return None
    if not containers.items:
        return machines  # the same message, so the same digest as before containers existed
    return fnv1.Resources(items=[*machines.items, *containers.items])


def resources(req: fnv1.RunFunctionRequest, name: str) -> fnv1.Resources | None:
    """Crossplane's answer to a requirement as the protobuf message, None if not answered."""
    if name in req.required_resources:
        return req.required_resources[name]
    if name in req.extra_resources:
        return req.extra_resources[name]
    return None


def to_dicts(items: list[fnv1.Resource]) -> list[dict[str, Any]]:
    """Convert returned resources to plain dicts."""
    return [to_plain(item.resource) for item in items]


# --- reading Structs fast -------------------------------------------------------------------


def to_plain(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain data: exactly what the SDK's `resource.struct_to_dict` returns.

    The SDK goes through protobuf's generic JSON printer, which looks up field
    descriptors for every value; reading the Struct's oneofs directly is several
    times faster, and with a fleet of a thousand XMachines that conversion was the
    largest cost of a call. The result is the same: keys in the Struct's iteration
    order, every number a float (3 arrives as 3.0), an unset value None, and NaN or
    infinity refused with ValueError as the SDK refuses them.
    """
    return {key: plain_value(value) for key, value in struct.fields.items()}


def plain_value(value: struct_pb2.Value) -> Any:
    """One Struct value as plain data (see to_plain)."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "struct_value":
        return to_plain(value.struct_value)
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            msg = f"Fail to serialize {number} for Value.number_value"
            raise ValueError(msg)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "list_value":
        return [plain_value(item) for item in value.list_value.values]
    return None  # null_value, or no kind set
