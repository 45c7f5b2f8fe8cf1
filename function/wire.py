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
from function.model import FunctionInput

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
    parsed = _INPUTS.get(key)
    if parsed is None:
        parsed = _validate_input(requirements.to_plain(req.input) if req.HasField("input") else {})
        _INPUTS.put(key, parsed)
    return parsed


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
    # Records hold only what the fleet is built from, read once per distinct content.
    found = requirements.fleet_resources(req)
    return None if found is None else fleet.records(found)


def _table(req: fnv1.RunFunctionRequest) -> reservations.Table | None:
    # Read once per distinct content, like the fleet.
    held = requirements.resources(req, requirements.RESERVATIONS)
    return None if held is None else reservations.table(held)


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
    rsp.results.append(
        fnv1.Result(severity=fnv1.SEVERITY_WARNING, message=warning, target=status.TARGET)
    )


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
    rsp.conditions.extend(report.conditions)
    for message in report.warnings:
        rsp.results.append(
            fnv1.Result(severity=fnv1.SEVERITY_WARNING, message=message, target=status.TARGET)
        )
    for message in report.notices:
        rsp.results.append(
            fnv1.Result(severity=fnv1.SEVERITY_NORMAL, message=message, target=status.TARGET)
        )
    rsp.meta.ttl.FromTimedelta(decision.ttl)


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
