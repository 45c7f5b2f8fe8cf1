"""Everything protobuf, in and out: the request read into plain data, the decision written.

The only module besides the adapter (fn.py) that touches RunFunctionRequest and
RunFunctionResponse: what it reads goes to the pipeline (or the Homelab's view) as plain
data, and what they decide comes back here to be written. Crossplane deletes an observed
composed resource that a response leaves out, so every answer that cannot decide about
the machine desires exactly what is observed (`hold_observed`).
"""

from __future__ import annotations

from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import pydantic
from crossplane.function import resource, response
from google.protobuf import struct_pb2

from function import (
    backups,
    fleet,
    homelab,
    memo,
    pipeline,
    requirements,
    reservations,
    status,
    workspace,
)
from function.errors import canonical, describe
from function.model import CROSSPLANE_SPEC_FIELDS, FunctionInput

# Conditions and events land on the XR and on its claim: `kubectl describe machine` shows them.
TARGET = fnv1.TARGET_COMPOSITE_AND_CLAIM
MAX_REQUEST_BYTES = 8 << 20
# A Composition has one input, so a handful of entries covers every Composition of a cluster.
MAX_INPUTS = 16
# Parsed step inputs (or why they are invalid), by their canonical protobuf bytes.
_INPUTS: memo.BoundedCache[bytes, FunctionInput | str] = memo.BoundedCache("inputs", MAX_INPUTS)


# --- reading --------------------------------------------------------------------------------


def parse_input(req: fnv1.RunFunctionRequest) -> FunctionInput | str:
    """The step input, parsed once per distinct input (every call of a Composition repeats it).

    The model is frozen and a pure function of the input's content, which the
    canonical bytes identify, so a cached parse is the parse.
    """
    key = req.input.SerializeToString(deterministic=True) if req.HasField("input") else b""
    return _INPUTS.get_or_compute(
        key,
        lambda: _validate_input(requirements.to_plain(req.input) if req.HasField("input") else {}),
    )


def _validate_input(raw: dict[str, Any]) -> FunctionInput | str:
    try:
        return FunctionInput.model_validate(canonical(raw))
    except pydantic.ValidationError as err:
        return f"function input is invalid: {describe('input', err)}"


def too_big(req: fnv1.RunFunctionRequest, size: int) -> str | None:
    """Why the request as a whole is refused (its size, its fleet), or None."""
    if size > MAX_REQUEST_BYTES:
        return f"request is {size} bytes; the limit is {MAX_REQUEST_BYTES}"
    found = requirements.fleet_resources(req)
    if found is not None and len(found.items) > fleet.MAX_FLEET:
        return f"fleet has {len(found.items)} machines; the limit is {fleet.MAX_FLEET}"
    return None


def composite(req: fnv1.RunFunctionRequest) -> dict[str, Any]:
    """The observed composite resource (an XMachine, an XContainer or a Homelab)."""
    return requirements.to_plain(req.observed.composite.resource)


def _fleet(req: fnv1.RunFunctionRequest) -> fleet.Fleet | None:
    found = requirements.fleet_resources(req)
    return None if found is None else fleet_of(found)


def _table(req: fnv1.RunFunctionRequest) -> reservations.Table | None:
    held = requirements.resources(req, requirements.RESERVATIONS)
    return None if held is None else table_of(held)


def machine_request(
    req: fnv1.RunFunctionRequest, xr: dict[str, Any], fn_input: FunctionInput
) -> pipeline.Request:
    """What the pipeline decides a machine's (or a container's) answer from."""
    return pipeline.Request(
        xr=xr,
        observed_ws=_observed(req, workspace.RESOURCE_NAME),
        fn_input=fn_input,
        inventory=requirements.answer(req, requirements.INVENTORY),
        fleet=_fleet(req),
        reservations=_table(req),
        own_reservations=_observed_reservations(req),
    )


def homelab_view(
    req: fnv1.RunFunctionRequest, xr: dict[str, Any], fn_input: FunctionInput
) -> homelab.View:
    """The Homelab's fleet view, from the same answers every machine reads."""
    return homelab.view(
        fn_input,
        requirements.answer(req, requirements.INVENTORY),
        _fleet(req),
        _table(req),
        homelab=xr,
        observed_backups=_observed(req, backups.RESOURCE_NAME),
    )


def _observed(req: fnv1.RunFunctionRequest, name: str) -> dict[str, Any] | None:
    if name in req.observed.resources:
        return requirements.to_plain(req.observed.resources[name].resource)
    return None


def _observed_reservations(req: fnv1.RunFunctionRequest) -> dict[str, dict[str, Any]]:
    return {
        name: requirements.to_plain(observed.resource)
        for name, observed in sorted(req.observed.resources.items())
        if name.startswith(reservations.PREFIX)
    }


# --- the fleet and the Reservations, read once per distinct content -------------------------
#
# Every reconcile of every machine receives the whole fleet and every Reservation, and in a
# steady state the same ones again and again. Converting each XR from protobuf and validating
# its spec cost most of a call with a large fleet, so both are read once per distinct content,
# keyed by a SHA-256 of deterministic protobuf bytes (a hit is by construction the same
# content): the fleet at three levels, the whole answer (a Fleet, members sorted once), each
# XR (a Record: when one changes only that one is read again) and each spec's intent without
# Crossplane's per-XR references (machines of one intent share one parsed spec, fleet.py);
# the Reservations as one Table. Bounded, least recently used first out (memo.py).

MAX_FLEETS = 4  # one answer is current at a time; a few more cover changes in flight
# Records take about 7 KB each. Every status write makes a new version of an XR, so after
# reading a new answer the cache keeps at most twice that fleet (its current records and as
# many older versions), and never fewer than MIN_RECORDS nor more than MAX_RECORDS.
MIN_RECORDS = 1024
MAX_RECORDS = 2 * fleet.MAX_FLEET
MAX_TABLES = 8
_FLEETS: memo.BoundedCache[bytes, fleet.Fleet] = memo.BoundedCache("fleets", MAX_FLEETS)
_RECORDS: memo.BoundedCache[bytes, fleet.Record] = memo.BoundedCache("records", MAX_RECORDS)
_TABLES: memo.BoundedCache[bytes, reservations.Table] = memo.BoundedCache(
    "reservation-tables", MAX_TABLES
)


def fleet_of(answer: fnv1.Resources) -> fleet.Fleet:
    """The fleet Crossplane returned, as a Fleet of Records read once per distinct content."""
    key = memo.digest(answer)
    found = _FLEETS.get(key)
    if found is None:
        found = fleet.Fleet([_record(item.resource) for item in answer.items])
        _FLEETS.put(key, found)
        _RECORDS.trim(max(MIN_RECORDS, 2 * len(found)))
    return found


def table_of(answer: fnv1.Resources) -> reservations.Table:
    """The Reservations Crossplane returned, as the table of who holds what."""
    return _TABLES.get_or_compute(
        memo.digest(answer),
        lambda: reservations.Table.of([requirements.to_plain(i.resource) for i in answer.items]),
    )


def _record(xr: struct_pb2.Struct) -> fleet.Record:
    # Keyed by the fields read only: a new resourceVersion or managedFields entry (every
    # write to an XR makes one) does not make another record.
    narrow = _narrowed(xr)
    return _RECORDS.get_or_compute(
        memo.digest(narrow),
        lambda: fleet.Record(requirements.to_plain(narrow), _intent_key(narrow.fields)),
    )


def _narrowed(xr: struct_pb2.Struct) -> struct_pb2.Struct:
    """The fields the fleet is built from (RECORD_FIELDS, RECORD_METADATA), values untouched.

    The other fields are never converted, so a number JSON cannot carry (NaN,
    infinity) there does not fail the call as the SDK's conversion would; objects
    read from Kubernetes never hold one.
    """
    out = struct_pb2.Struct()
    for name in fleet.RECORD_FIELDS:
        if name not in xr.fields:  # `in` first: indexing a proto map inserts the key
            continue
        value = xr.fields[name]
        if name == "metadata" and value.WhichOneof("kind") == "struct_value":
            meta, kept = value.struct_value.fields, out.fields[name].struct_value
            kept.SetInParent()  # an object, even when none of its fields is kept
            for key in fleet.RECORD_METADATA:
                if key in meta:
                    kept.fields[key].CopyFrom(meta[key])
        else:
            out.fields[name].CopyFrom(value)
    return out


def _intent_key(fields: Any) -> bytes | None:
    """The digest of the spec's intent, or None when the spec is not an object.

    Without a spec, parse_spec validates an empty intent; a spec that is not an
    object is not cached, so it fails (or not) exactly as it always did.
    """
    if "spec" not in fields:
        kind = fields["kind"].string_value if "kind" in fields else ""
        return b"\x00nospec:" + kind.encode()
    spec = fields["spec"]
    if spec.WhichOneof("kind") != "struct_value":
        return None
    wanted = struct_pb2.Struct()
    # One intent is a different spec for a container: the kind is part of the key.
    if "kind" in fields:
        wanted.fields["\x00kind"].CopyFrom(fields["kind"])
    for key, value in spec.struct_value.fields.items():
        if key not in CROSSPLANE_SPEC_FIELDS:
            wanted.fields[key].CopyFrom(value)
    return memo.digest(wanted)


# --- writing --------------------------------------------------------------------------------


def hold_observed(req: fnv1.RunFunctionRequest, rsp: fnv1.RunFunctionResponse) -> None:
    """Desire exactly what is observed: the Workspace and the Reservations, as they are.

    Crossplane deletes an observed composed resource the response leaves out, so whatever
    this call cannot decide about it keeps unchanged: the VM, and what it holds.
    """
    rsp.desired.ClearField("resources")
    observed = _observed(req, workspace.RESOURCE_NAME)
    if observed is not None:
        resource.update(
            rsp.desired.resources[workspace.RESOURCE_NAME], workspace.held_copy(observed)
        )
    for name, body in _observed_reservations(req).items():
        resource.update(rsp.desired.resources[name], workspace.held_copy(body))
        rsp.desired.resources[name].ready = fnv1.READY_TRUE


def internal_error(req: fnv1.RunFunctionRequest, rsp: fnv1.RunFunctionResponse, what: str) -> None:
    """Hold the observed Workspace if there is one; otherwise fail without touching anything."""
    del rsp.results[:]
    message = f"internal error in function-fabric ({what}); nothing was changed"
    _hold_or_fail(req, rsp, fatal=message, warning=message)


def refuse(req: fnv1.RunFunctionRequest, rsp: fnv1.RunFunctionResponse, message: str) -> None:
    """A problem with the function's own configuration or the request as a whole."""
    warning = f"the machine is held as it is: {message}"
    _hold_or_fail(req, rsp, fatal=message, warning=warning)


def _hold_or_fail(
    req: fnv1.RunFunctionRequest, rsp: fnv1.RunFunctionResponse, *, fatal: str, warning: str
) -> None:
    """Hold what is observed and warn; with nothing observed, a FATAL result changes nothing."""
    if _observed(req, workspace.RESOURCE_NAME) is None:
        response.fatal(rsp, fatal)
        return
    hold_observed(req, rsp)
    rsp.results.append(fnv1.Result(severity=fnv1.SEVERITY_WARNING, message=warning, target=TARGET))


def write(rsp: fnv1.RunFunctionResponse, decision: pipeline.Decision) -> None:
    """Write a machine's decision: its Workspace and Reservations, status, conditions, events."""
    report = decision.report
    if decision.desired_ws is not None:
        desired = rsp.desired.resources[workspace.RESOURCE_NAME]
        resource.update(desired, decision.desired_ws)
        desired.ready = fnv1.READY_TRUE if decision.ready else fnv1.READY_FALSE
    for name, body in decision.desired_reservations.items():
        resource.update(rsp.desired.resources[name], body)
        rsp.desired.resources[name].ready = fnv1.READY_TRUE
    resource.update(rsp.desired.composite, {"status": decision.xr_status})
    rsp.desired.composite.ready = fnv1.READY_TRUE if decision.ready else fnv1.READY_FALSE
    rsp.conditions.extend(_condition(c) for c in report.conditions)
    for message in report.warnings:
        rsp.results.append(
            fnv1.Result(severity=fnv1.SEVERITY_WARNING, message=message, target=TARGET)
        )
    for message in report.notices:
        rsp.results.append(
            fnv1.Result(severity=fnv1.SEVERITY_NORMAL, message=message, target=TARGET)
        )
    rsp.meta.ttl.FromTimedelta(decision.ttl)


def _condition(condition: status.Condition) -> fnv1.Condition:
    state = fnv1.STATUS_CONDITION_TRUE if condition.ok else fnv1.STATUS_CONDITION_FALSE
    out = fnv1.Condition(type=condition.kind, status=state, reason=condition.reason, target=TARGET)
    if condition.message:
        out.message = condition.message
    return out


def write_homelab(rsp: fnv1.RunFunctionResponse, found: homelab.View) -> None:
    """Write the view as the Homelab's status; it composes only the backups Workspace."""
    rsp.desired.ClearField("resources")
    if found.backups is not None:
        desired = rsp.desired.resources[backups.RESOURCE_NAME]
        resource.update(desired, found.backups)
        desired.ready = fnv1.READY_TRUE
    resource.update(rsp.desired.composite, {"status": found.status})
    rsp.desired.composite.ready = fnv1.READY_TRUE if found.ready else fnv1.READY_FALSE
    if not found.ready and not found.waiting:
        message = str(found.status.get("message", ""))
        rsp.results.append(
            fnv1.Result(
                severity=fnv1.SEVERITY_WARNING, message=message, target=fnv1.TARGET_COMPOSITE
            )
        )
    rsp.meta.ttl.FromTimedelta(pipeline.STEADY if found.ready else pipeline.WAIT)
