"""One reconcile, as data: parsed request in, a decision out.

The decision is the desired Workspace (new, or the observed one held as it is),
a report for the claim, readiness and how soon to be called again. Every path
that cannot render a Workspace while one exists holds the existing one: a running
VM is never deleted or replaced because of a bad claim, a broken inventory or a
bug (invariant 1, docs/invariants.md).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import pydantic

from function import (
    backupspec,
    fleet,
    memo,
    record,
    render,
    reservations,
    restart,
    status,
    workspace,
    yamlio,
)
from function.demand import Demand, Spec, check_secret_namespaces, resolve
from function.errors import FabricError, canonical, describe
from function.model import DNS_LABEL, FunctionInput, Inventory, intent
from function.outcome import Kind, Phase, Reason, Refusal
from function.placement import Outcome, Placement, assign
from function.requirements import Answer

MAX_INVENTORY_BYTES = 1 << 20
MAX_CACHED_INVENTORIES = 8  # distinct inventory texts kept parsed
WAIT = dt.timedelta(seconds=30)
PROVISIONING = dt.timedelta(minutes=1)
STEADY = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Request:
    """What the function was given, already converted to plain data."""

    xr: dict[str, Any]
    observed_ws: dict[str, Any] | None
    fn_input: FunctionInput
    inventory: Answer
    fleet: fleet.Fleet | None  # None until Crossplane answers
    # Every Reservation in the cluster (None until Crossplane answers), and this machine's
    # own observed ones by composed resource name.
    reservations: reservations.Table | None = None
    own_reservations: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def reserves(self) -> bool:
        """Whether this machine allocates through Reservations: cluster-scoped XRs only."""
        return not fleet.obj(self.xr.get("metadata")).get("namespace")


@dataclass
class Decision:
    """What to respond."""

    report: status.Report
    desired_ws: dict[str, Any] | None = None
    desired_reservations: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    ready: bool = False
    ttl: dt.timedelta = WAIT
    xr_status: dict[str, Any] = dataclasses.field(default_factory=dict)  # set by decide, last


# --- identity and inputs ----------------------------------------------------------------------


def machine_of(xr: dict[str, Any]) -> render.Machine:
    """Who this machine is; the hostname is the claim's (or XR's) name."""
    meta = xr.get("metadata") or {}
    key = fleet.machine_key(xr)
    hostname = key.rsplit("/", 1)[-1]
    claim_namespace = fleet.home_namespace(key)
    return render.Machine(
        key=key,
        hostname=hostname,
        xr_name=str(meta.get("name", "")),
        xr_uid=str(meta.get("uid", "")),
        namespace=meta.get("namespace") or None,
        claim_namespace=claim_namespace,
    )


def _check_hostname(machine: render.Machine) -> None:
    if not re.match(DNS_LABEL, machine.hostname):
        msg = (
            f"metadata.name: {machine.hostname!r} cannot be a hostname; accepted: a DNS label "
            "(lowercase letters, digits and '-', at most 63 characters)"
        )
        raise Refusal(Phase.INVALID, Reason.INVALID_NAME, msg)


def parse_spec(xr: dict[str, Any]) -> Spec:
    """Validate the claim spec; a Refusal names every bad field."""
    try:
        return fleet.spec_model(xr).model_validate(canonical(intent(xr.get("spec") or {})))
    except pydantic.ValidationError as err:
        raise Refusal(Phase.INVALID, Reason.INVALID_SPEC, describe("spec", err)) from None


class _NotYaml(Exception):  # noqa: N818 - carries the loader's message to parse_inventory
    """The inventory text is not YAML."""


@memo.memoize("inventories", MAX_CACHED_INVENTORIES)
def _inventory_of(text: str) -> Inventory:
    """Load and validate inventory text, once per distinct text.

    Every call of every machine carries the same ConfigMap, and loading it was most
    of a call's time. The model is frozen and a pure function of the text; failures
    are not cached (memoize never keeps an exception), so they are reported as before.
    """
    try:
        data = yamlio.load_strict(text)
    except Exception as exc:
        raise _NotYaml(str(exc)) from None
    return Inventory.model_validate(data)


def parse_inventory(answer: Answer, fn_input: FunctionInput) -> Inventory:
    """Find and validate the inventory ConfigMap; a Refusal says what is wrong with it."""
    src = fn_input.inventory
    selector = ",".join(f"{k}={v}" for k, v in sorted(src.match_labels.items()))
    if not answer.arrived:
        msg = "waiting for Crossplane to fetch the inventory"
        raise Refusal(Phase.PENDING, Reason.WAITING_FOR_INVENTORY, msg)
    found = answer.items or []
    if src.namespace:
        found = [cm for cm in found if (cm.get("metadata") or {}).get("namespace") == src.namespace]
    if len(found) != 1:
        names = ", ".join(sorted(str((c.get("metadata") or {}).get("name")) for c in found))
        what = f"{len(found)} ConfigMaps ({names})" if found else "no ConfigMap"
        msg = f"inventory: {what} found with labels {selector}; accepted: exactly one"
        raise Refusal(Phase.PENDING, Reason.INVENTORY_UNAVAILABLE, msg)
    text = (found[0].get("data") or {}).get(src.key)
    name = (found[0].get("metadata") or {}).get("name")
    if not isinstance(text, str):
        msg = f"inventory: ConfigMap {name} has no key {src.key!r}"
        raise Refusal(Phase.PENDING, Reason.INVENTORY_INVALID, msg)
    if len(text.encode()) > MAX_INVENTORY_BYTES:
        msg = f"inventory: ConfigMap {name} key {src.key} is over {MAX_INVENTORY_BYTES} bytes"
        raise Refusal(Phase.PENDING, Reason.INVENTORY_INVALID, msg)
    try:
        return _inventory_of(text)
    except _NotYaml as exc:
        msg = f"inventory: ConfigMap {name} key {src.key} is not valid YAML: {exc}"
        msg = msg.replace("\n", " ")
        raise Refusal(Phase.PENDING, Reason.INVENTORY_INVALID, msg) from None
    except pydantic.ValidationError as err:
        msg = f"inventory: ConfigMap {name} is invalid: {describe('', err)}"
        raise Refusal(Phase.PENDING, Reason.INVENTORY_INVALID, msg) from None


# --- placement --------------------------------------------------------------------------------


def _me(
    xr: dict[str, Any],
    observed_ws: dict[str, Any] | None,
    spec: Spec,
    table: reservations.Table | None = None,
    own: dict[str, dict[str, Any]] | None = None,
) -> fleet.Member:
    if observed_ws is not None:
        # The Workspace is where the VM is; only its own record says where. A status can be
        # stale or edited, and rendering from it could move or replace the VM: without a
        # readable record in the Workspace, hold it instead.
        held = record.from_workspace(observed_ws)
        if held is None:
            msg = "the observed Workspace carries no Fabric placement; it is held unchanged"
            raise Refusal(Phase.HELD, Reason.UNEXPECTED_WORKSPACE, msg)
    elif spec.adopt is not None:
        # Nothing applied yet: an adoption's placement is what the claim says the guest has,
        # worked out again each time (and checked against every other holder).
        held = None
    else:
        held = _attempt(xr, table, own or {})
    return fleet.identified(xr, spec, held)


def _attempt(
    xr: dict[str, Any],
    table: reservations.Table | None,
    own: dict[str, dict[str, Any]],
) -> record.Held | None:
    """The placement a machine without a Workspace is trying to hold, if it may keep trying.

    Its own observed Reservations say it best; else its status (the last attempt, perhaps not
    applied yet). An attempt of which the table shows any part held by another machine is
    dropped: that machine's apply landed first, so this one places again around it.
    """
    key = fleet.machine_key(xr)
    attempt = reservations.Table.of(list(own.values())).placements.get(key)
    if attempt is None:
        attempt = record.from_status(fleet.obj(xr.get("status")))
    if attempt is not None and table is not None and table.taken_from(key, attempt):
        return None
    return attempt


def drift(spec: Spec, demand: Demand, placement: Placement) -> list[str]:
    """Claim edits that would change a placed machine's placement: said, not done."""
    notes = []
    if demand.pin and demand.pin != placement.node:
        notes.append(
            f"spec.placement.node is {demand.pin} but the machine lives on {placement.node}; "
            "moving a machine is an explicit act (delete and re-create the claim)"
        )
    wanted = sum(d.count for d in demand.devices)
    if demand.adopt is not None:
        if tuple(sorted(demand.adopt.devices)) != placement.devices:
            notes.append(
                f"spec.adopt.devices lists {', '.join(sorted(demand.adopt.devices)) or 'none'}; "
                f"the machine holds {', '.join(placement.devices) or 'none'} as it was adopted"
            )
    elif wanted != len(placement.devices):
        notes.append(
            f"spec.devices asks for {wanted} device(s); the machine holds {len(placement.devices)} "
            "and keeps them until it is re-created"
        )
    if spec.network is not None and placement.network and spec.network.name != placement.network:
        notes.append(
            f"spec.network.name is {spec.network.name} but the machine is on {placement.network}; "
            "it stays there until it is re-created"
        )
    held_address = placement.address or "dhcp"
    if demand.address not in ("auto", held_address):
        notes.append(
            f"spec.network.address is {demand.address} but the machine has {held_address}; "
            "it keeps it until it is re-created"
        )
    return notes


def _place(req: Request, spec: Spec, demand: Demand, inv: Inventory) -> Outcome:
    if req.fleet is None:
        msg = "waiting for Crossplane to list the fleet"
        raise Refusal(Phase.PENDING, Reason.WAITING_FOR_FLEET, msg)
    if req.reserves and req.reservations is None:
        msg = "waiting for Crossplane to list the reservations"
        raise Refusal(Phase.PENDING, Reason.WAITING_FOR_RESERVATIONS, msg)
    me = _me(req.xr, req.observed_ws, spec, req.reservations, req.own_reservations)
    other = fleet.same_name(req.fleet, me)
    if other is not None:
        kind = "Container" if other.is_container else "Machine"
        msg = (
            f"metadata.name: a {kind} named {other.key} exists already, and Machines and "
            "Containers share one space of names (their hostnames); accepted: another name"
        )
        raise Refusal(Phase.INVALID, Reason.INVALID_NAME, msg)
    members = fleet.build(req.fleet, me)
    taken: dict[reservations.Thing, str] = {}
    if req.reservations is not None:
        # What the table shows placed counts as placed, whatever the members' statuses say
        # yet; and nobody is given what another machine holds.
        table = req.reservations
        members = [
            m if m.held is not None or m.key == me.key else _confirmed(m, table) for m in members
        ]
        taken = {t: k for t, k in table.holder.items() if k != me.key}
    return assign(inv, req.fn_input.defaults, members, me, demand, reserved=taken)


def _confirmed(member: fleet.Member, table: reservations.Table) -> fleet.Member:
    held = table.confirmed(member.key)
    return member if held is None else dataclasses.replace(member, held=held)


def _resolve(
    spec: Spec, inv: Inventory, fn_input: FunctionInput, machine: render.Machine
) -> Demand:
    """Admission: everything that refuses a claim, before it is placed in any view."""
    try:
        check_secret_namespaces(spec, machine.namespace or machine.claim_namespace)
        demand = resolve(spec, inv, fn_input.defaults)
    except FabricError as err:
        raise Refusal(Phase.INVALID, Reason.INVALID_SPEC, str(err)) from None
    if demand.pin is not None and inv.node(demand.pin) is None:
        known = ", ".join(n.name for n in inv.nodes)
        msg = f"spec.placement.node: {demand.pin!r} is not a node; accepted: {known}"
        raise Refusal(Phase.INVALID, Reason.INVALID_SPEC, msg)
    return demand


def decide(req: Request) -> Decision:
    """Run one reconcile and decide what to respond."""
    report = status.Report()
    decision = Decision(report)
    machine = machine_of(req.xr)
    inv: Inventory | None = None
    try:
        _check_hostname(machine)
        spec = parse_spec(req.xr)
        inv = parse_inventory(req.inventory, req.fn_input)
        report.backup = backupspec.machine_status(spec, inv)
        demand = _resolve(spec, inv, req.fn_input, machine)
        outcome = _place(req, spec, demand, inv)
        if outcome.placement is None:
            raise _unschedulable(outcome)
        report.placement = outcome.placement
        subject = render.Subject(machine, spec, demand, inv, req.fn_input)
        _placed(decision, req, subject, outcome.placement)
    except Refusal as refusal:
        _held(decision, req, refusal)
    decision.xr_status = status.xr_status(report, inv, req.observed_ws, decision.desired_ws)
    return decision


def _unschedulable(outcome: Outcome) -> Refusal:
    return Refusal(Phase.UNSCHEDULABLE, Reason.UNSCHEDULABLE, outcome.unschedulable or "")


def _check_origin(spec: Spec, placement: Placement) -> None:
    """Hold an edit that would turn an adopted guest into a created machine, or back.

    Either would render a module that replaces the VM (a clone block on an imported VM is
    bpg #1988), and a changed adopt.node or adopt.vmid is another guest.
    """
    if placement.adopted and spec.adopt is None:
        msg = (
            "spec.adopt: removed, but this machine is an adopted guest that Fabric never cloned; "
            "accepted: spec.adopt as it was (node and vmid of the guest)"
        )
        raise Refusal(Phase.HELD, Reason.INVALID_SPEC, msg)
    if not placement.adopted and spec.adopt is not None:
        msg = "spec.adopt: added, but Fabric created this machine itself; accepted: no spec.adopt"
        raise Refusal(Phase.HELD, Reason.INVALID_SPEC, msg)
    if spec.adopt is not None and (spec.adopt.node, spec.adopt.vmid) != (
        placement.node,
        placement.vmid,
    ):
        msg = (
            f"spec.adopt: names VMID {spec.adopt.vmid} on {spec.adopt.node}, but this claim "
            f"adopted VMID {placement.vmid} on {placement.node}; accepted: that guest (adopting "
            "another one is a new claim)"
        )
        raise Refusal(Phase.HELD, Reason.INVALID_SPEC, msg)


def _placed(
    decision: Decision, req: Request, subject: render.Subject, placement: Placement
) -> None:
    report = decision.report
    spec, demand, inv = subject.spec, subject.demand, subject.inv
    if req.observed_ws is not None:
        _check_origin(spec, placement)
    for note in drift(spec, demand, placement):
        report.warn(note)
    if inv.node(placement.node) is None:
        report.warn(f"the inventory no longer lists node {placement.node}; the machine stays there")
    try:
        decision.desired_ws = render.workspace_manifest(subject, placement)
    except FabricError as err:
        phase = Phase.HELD if req.observed_ws is not None else Phase.INVALID
        raise Refusal(phase, Reason.INVALID_SPEC, str(err)) from None
    shrink = workspace.disk_shrink(req.observed_ws, decision.desired_ws)
    if shrink is not None:
        had, asked = shrink
        msg = (
            f"spec.disk: {asked}Gi is smaller than the machine's disk of {had}Gi, and a disk "
            f"cannot shrink; accepted: {had}Gi or more"
        )
        raise Refusal(Phase.HELD, Reason.INVALID_SPEC, msg)
    for change in workspace.taken_over(req.observed_ws, decision.desired_ws):
        report.warn(
            f"Fabric takes over {change} of the adopted guest: the next apply sets it from "
            "the claim (a CPU or memory change takes effect when the guest next restarts)"
        )
    power = workspace.power_change(req.observed_ws, decision.desired_ws)
    if power is not None:
        report.warn(power)
    policy = getattr(spec, "restart_policy", "OnNextBoot")
    for note in restart.announcements(policy, req.observed_ws, decision.desired_ws):
        report.warn(note)
    for what in workspace.create_only_changes(req.observed_ws, decision.desired_ws):
        report.warn(
            f"the claim changed the machine's {what}; the running guest keeps what it was "
            "created with (its host keys too): the change takes effect only when the machine "
            "is re-created"
        )
    where = f"node {placement.node}, VMID {placement.vmid}"
    report.condition(Kind.SCHEDULED, ok=True, reason=Reason.PLACED, message=f"placed on {where}")
    report.condition(
        Kind.VALID, ok=True, reason=Reason.SPEC_VALID, message="the claim is valid and applied"
    )
    if placement.adopted and placement.fresh:
        report.notice(
            f"adopting the existing guest {placement.vmid} on node {placement.node}: Terraform "
            "imports it and changes nothing on it until spec.adopt.manage names a field"
        )
    elif placement.fresh:
        others = list(placement.considered[1:4])
        alt = f" (also fitted: {', '.join(others)})" if others else ""
        report.notice(f"placed on {where}{alt}")
    report.phase = Phase.SCHEDULED
    if req.reserves and _reserving(decision, req, subject.machine.key, placement.held()):
        return
    seen = status.read_provisioning(req.observed_ws, req.xr)
    report.provisioned(seen)
    report.phase = seen.phase
    decision.ready = seen.ready
    decision.ttl = STEADY if decision.ready else PROVISIONING


def _reserving(decision: Decision, req: Request, key: str, held: record.Held) -> bool:
    """Reserve what the placement holds; True while the Workspace must wait for it."""
    decision.desired_reservations = reservations.manifests(key, held)
    if req.observed_ws is not None:
        # Made before reservations existed, or raced then: the VM stays; say what clashes.
        for thing in req.reservations.taken_from(key, held) if req.reservations else []:
            holder = req.reservations.holder[thing] if req.reservations else ""
            decision.report.warn(
                f"{thing.kind} {thing.value} is reserved by {holder} as well; this machine keeps "
                "it, but one of the two must be re-created"
            )
        return False
    if reservations.all_observed(held, req.own_reservations):
        return False
    # The compare-and-swap: the Workspace follows once every Reservation is this machine's.
    decision.desired_ws = None
    what = ", ".join(f"{t.kind} {t.value}" for t in reservations.things(held))
    decision.report.condition(
        Kind.PROVISIONED,
        ok=False,
        reason=Reason.RESERVING,
        message=f"reserving {what}; the Workspace follows",
    )
    decision.ttl = WAIT
    return True


def _held(decision: Decision, req: Request, refusal: Refusal) -> None:
    report = decision.report
    report.message = refusal.message
    if req.observed_ws is not None:
        # Something exists: keep it exactly as it is and say why on the claim.
        decision.desired_ws = workspace.held_copy(req.observed_ws)
        held = record.from_workspace(req.observed_ws)
        if held is not None:
            report.placement = Placement.of_held(held)
        # What it holds is held as it is too: Crossplane deletes what a response leaves out.
        decision.desired_reservations = {
            name: workspace.held_copy(body) for name, body in req.own_reservations.items()
        }
        report.condition(
            Kind.VALID, ok=False, reason=refusal.reason, message=f"held as it is: {refusal.message}"
        )
        report.warn(f"the machine is held as it is: {refusal.message}")
        seen = status.read_provisioning(req.observed_ws, req.xr)
        report.provisioned(seen)
        decision.ready = seen.ready
        report.phase = Phase.HELD  # whatever the Workspace's state, the claim is not applied
        decision.ttl = PROVISIONING
        return
    # Nothing exists and nothing is held: a refused claim shows no node, VMID or address, which
    # other machines would otherwise read from its status as taken (invariant 9).
    report.placement = None
    report.phase = refusal.phase
    invalid = refusal.phase == Phase.INVALID
    scheduled = Reason.INVALID if invalid else refusal.reason
    report.condition(Kind.SCHEDULED, ok=False, reason=scheduled, message=refusal.message)
    if invalid:
        report.condition(Kind.VALID, ok=False, reason=refusal.reason, message=refusal.message)
    if not refusal.reason.waiting:
        report.warn(refusal.message)  # waiting for Crossplane is routine, not worth an event
    decision.ttl = WAIT
