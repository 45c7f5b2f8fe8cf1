"""The fleet: every XMachine, who it is, when it came, what it holds.

Placement is a deterministic function of (inventory, fleet), so each reconcile
rebuilds the same picture from the XMachines Crossplane hands us: machines that
hold a placement (recorded in their status, or for this machine in its observed
Workspace) keep it; the rest are pending and are placed in (creationTimestamp,
key) order.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, NoReturn

import pydantic

from function import record
from function.demand import check_secret_namespaces
from function.errors import FabricError, canonical
from function.memo import BoundedCache
from function.model import CONTAINER_KIND, ContainerSpec, MachineSpec, intent
from function.record import Held, obj

CLAIM_NAME = "crossplane.io/claim-name"
CLAIM_NAMESPACE = "crossplane.io/claim-namespace"
# The parts of an XMachine the fleet is built from (see member()); the rest is never read.
RECORD_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
RECORD_METADATA = ("name", "namespace", "uid", "creationTimestamp", "labels")
MAX_FLEET = 5000  # machines and containers a request may list (wire.py refuses more)
MAX_SPECS = 4096  # distinct intents; machines of one kind share one
# Parsed specs by their intent's digest (wire.py computes it): every machine of one intent
# shares one frozen spec, which placement then resolves once per call.
_SPECS: BoundedCache[bytes, tuple[MachineSpec | ContainerSpec | None]] = BoundedCache(
    "specs", MAX_SPECS
)


@dataclass(frozen=True)
class Member:
    """One machine of the fleet, as seen by this reconcile."""

    key: str  # claim namespace/name, or the XR name (namespace/name for a namespaced XR)
    created: str  # creationTimestamp; RFC 3339 in UTC sorts as text
    spec: MachineSpec | ContainerSpec | None  # None when the spec does not validate
    held: Held | None
    # An XContainer (a Proxmox LXC) rather than an XMachine (a VM): known from the XR's kind
    # even when its spec does not validate. Placement treats both alike; views count them apart.
    is_container: bool

    @property
    def order(self) -> tuple[str, str]:
        """The global order in which pending machines are placed."""
        return (self.created, self.key)


def machine_key(xr: dict[str, Any]) -> str:
    """The name users know a machine by: the claim's namespace/name when there is a claim."""
    meta = obj(xr.get("metadata"))
    labels = obj(meta.get("labels"))
    if labels.get(CLAIM_NAME) and labels.get(CLAIM_NAMESPACE):
        return f"{labels[CLAIM_NAMESPACE]}/{labels[CLAIM_NAME]}"
    claim_ref = obj(obj(xr.get("spec")).get("claimRef"))
    if claim_ref.get("name") and claim_ref.get("namespace"):
        return f"{claim_ref['namespace']}/{claim_ref['name']}"
    if meta.get("namespace"):
        return f"{meta['namespace']}/{meta.get('name', '')}"
    return str(meta.get("name", ""))


def is_container(xr: dict[str, Any]) -> bool:
    """Whether an XR is an XContainer; every other XR of the fleet is a machine."""
    return xr.get("kind") == CONTAINER_KIND


def spec_model(xr: dict[str, Any]) -> type[MachineSpec] | type[ContainerSpec]:
    """The model of an XR's spec: XContainers are containers, everything else a machine."""
    return ContainerSpec if is_container(xr) else MachineSpec


def parse_spec(xr: dict[str, Any]) -> MachineSpec | ContainerSpec | None:
    """Parse an XR's spec, or None when it does not validate (the owner sees why itself)."""
    spec = xr.get("spec") or {}
    if not isinstance(spec, dict):
        return None
    with contextlib.suppress(pydantic.ValidationError, TypeError, ValueError):
        return spec_model(xr).model_validate(canonical(intent(spec)))
    return None


def member(xr: dict[str, Any]) -> Member:
    """Build a fleet member from an XMachine as Crossplane returned it."""
    if isinstance(xr, Record):
        return xr.member
    return _member(xr, parse_spec(xr))


def home_namespace(key: str) -> str | None:
    """The namespace a machine's claim (or namespaced XR) lives in, from its key."""
    return key.split("/", 1)[0] if "/" in key else None


def identified(
    xr: dict[str, Any], spec: MachineSpec | ContainerSpec | None, held: Held | None
) -> Member:
    """The member an XR is, with the spec and the placement its reader found for it."""
    meta = obj(xr.get("metadata"))
    return Member(
        key=machine_key(xr),
        created=str(meta.get("creationTimestamp") or ""),
        spec=spec,
        held=held,
        is_container=is_container(xr),
    )


def _member(xr: dict[str, Any], spec: MachineSpec | ContainerSpec | None) -> Member:
    if spec is not None:
        # The machine's own reconcile refuses such a claim before placing it (admission):
        # no other machine may count it as pending either.
        try:
            check_secret_namespaces(spec, home_namespace(machine_key(xr)))
        except FabricError:
            spec = None
    return identified(xr, spec, record.from_status(obj(xr.get("status"))))


class Record(dict[str, Any]):
    """An XMachine of the fleet as plain data, with its fleet Member computed once.

    It holds only the fields the fleet is built from (RECORD_FIELDS, and of the
    metadata RECORD_METADATA). Records are shared between calls, so they are
    read-only. The Member is computed on first use, where fleet.build needs it, so
    a malformed XMachine fails at the same point of a call as it always did.
    """

    __slots__ = ("_member", "_spec_key")

    def __init__(self, data: dict[str, Any], spec_key: bytes | None) -> None:
        """Wrap converted data; spec_key identifies its intent, None when it has none."""
        super().__init__(data)
        self._spec_key = spec_key
        self._member: Member | None = None

    @property
    def member(self) -> Member:
        """The fleet Member of this XMachine."""
        if self._member is None:
            self._member = _member(self, _cached_spec(self._spec_key, self))
        return self._member

    def _read_only(self, *_: Any, **__: Any) -> NoReturn:
        msg = "fleet records are shared between calls and cannot be modified"
        raise TypeError(msg)

    __setitem__ = __delitem__ = __ior__ = _read_only  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]


class Fleet(list[dict[str, Any]]):
    """The fleet's Records in Crossplane's order, shared between calls, so read-only.

    build() needs the members deduplicated by key and sorted; that depends only on
    the Records, so it is done once per Fleet.
    """

    __slots__ = ("_ordered",)

    def __init__(self, items: list[Record]) -> None:
        """Hold the Records of one answer."""
        super().__init__(items)
        self._ordered: list[Member] | None = None

    def ordered(self) -> list[Member]:
        """Members with a key, in placement order.

        The last of each key and kind; of a Machine and a Container of one name, the one made
        first (see same_name).
        """
        if self._ordered is None:
            by_key: dict[tuple[str, bool], Member] = {}
            for xr in self:
                m = member(xr)
                if m.key:
                    # By kind as the XR says, not as its spec parses: an invalid Container
                    # must not stand in for the valid Machine of its name.
                    by_key[(m.key, m.is_container)] = m
            first: dict[str, Member] = {}
            for m in sorted(by_key.values(), key=lambda m: m.order):
                first.setdefault(m.key, m)
            self._ordered = list(first.values())
        return self._ordered

    def _read_only(self, *_: Any, **__: Any) -> NoReturn:
        msg = "a fleet is shared between calls and cannot be modified"
        raise TypeError(msg)

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only  # type: ignore[assignment]
    append = clear = extend = insert = _read_only  # type: ignore[assignment]
    pop = remove = reverse = sort = _read_only  # type: ignore[assignment]


def _cached_spec(key: bytes | None, xr: dict[str, Any]) -> MachineSpec | ContainerSpec | None:
    """parse_spec(xr), shared by every XMachine whose intent has these canonical bytes."""
    if key is None:
        return parse_spec(xr)
    return _SPECS.get_or_compute(key, lambda: (parse_spec(xr),))[0]


def same_name(xrs: Fleet, me: Member) -> Member | None:
    """A member of the other kind with this one's name, made before it: it keeps the name.

    Machines and Containers share one space of names, which are their hostnames. The one made
    first keeps it whether or not its spec is valid now: it is the one every other reconcile
    sees under that name (Fleet.ordered), and it may hold a placement from before a bad edit.
    """
    return next(
        (m for m in xrs.ordered() if m.key == me.key and m.is_container != me.is_container),
        None,
    )


def build(xrs: Fleet, me: Member) -> list[Member]:
    """The fleet as a list, this machine's own view of itself replacing its fleet copy."""
    return [*(m for m in xrs.ordered() if m.key != me.key), me]
