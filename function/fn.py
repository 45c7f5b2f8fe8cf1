"""The gRPC RunFunction: convert the request, decide, write the response. Thin by design."""

from __future__ import annotations

from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import crossplane.function.proto.v1.run_function_pb2_grpc as grpcv1
import grpc
import pydantic
from crossplane.function import logging, resource, response

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
MAX_FLEET = 5000
# A Composition has one input, so a handful of entries covers every Composition of a cluster.
MAX_INPUTS = 16
# Parsed step inputs (or why they are invalid), by their canonical protobuf bytes.
_INPUTS: memo.BoundedCache[bytes, FunctionInput | str] = memo.BoundedCache("inputs", MAX_INPUTS)
# Responses by a digest of their request's deterministic bytes. The response is a function of
# the request alone (DESIGN 6.4, byte-identical), and in a steady state Crossplane sends each
# machine the same request at every poll: answering it again costs a digest, not a reconcile.
# Bounded: a few responses per machine in flight, least recently used first out.
MAX_RESPONSES = 256
_RESPONSES: memo.BoundedCache[bytes, bytes] = memo.BoundedCache("responses", MAX_RESPONSES)


class FunctionRunner(grpcv1.FunctionRunnerServiceServicer):
    """A FunctionRunner handles gRPC RunFunctionRequests."""

    def __init__(self) -> None:
        """Create a new FunctionRunner."""
        self.log = logging.get_logger()

    async def RunFunction(  # noqa: N802 - the gRPC method name
        self, req: fnv1.RunFunctionRequest, _: grpc.aio.ServicerContext | None = None
    ) -> fnv1.RunFunctionResponse:
        """Run the function. Errors become results; no exception escapes to gRPC."""
        return run(req, self.log)


def run(req: fnv1.RunFunctionRequest, log: Any) -> fnv1.RunFunctionResponse:
    """Handle one request synchronously (also used by tests and benchmarks in-process)."""
    wire = req.SerializeToString(deterministic=True)
    key = memo.digest(wire)
    known = _RESPONSES.get(key)
    if known is not None:
        log.debug("reconciled", repeated=True)
        return fnv1.RunFunctionResponse.FromString(known)
    rsp = reconcile(req, log, len(wire))
    if any(r.severity == fnv1.SEVERITY_FATAL for r in rsp.results):
        return rsp
    answer = rsp.SerializeToString(deterministic=True)
    _RESPONSES.put(key, answer)
    # The answer as the memo will give it again: every answer to this request is then the
    # same message, down to the order gRPC serializes its maps in.
    return fnv1.RunFunctionResponse.FromString(answer)


def reconcile(
    req: fnv1.RunFunctionRequest, log: Any, size: int | None = None
) -> fnv1.RunFunctionResponse:
    """Reconcile afresh, past the response memo (tests compare the two).

    `size` is the request's serialized size, when the caller has it.
    """
    rsp = response.to(req)
    try:
        _run(req, rsp, log, req.ByteSize() if size is None else size)
    except Exception as exc:
        # Only the exception's type is logged: its text could quote claim data.
        log.error("internal error", error=type(exc).__name__)  # noqa: TRY400 - a traceback could quote claim data
        try:
            _internal_error(req, rsp, type(exc).__name__)
        except Exception:  # even holding failed: a fatal result changes nothing
            rsp = response.to(req)
            response.fatal(rsp, f"internal error in function-fabric ({type(exc).__name__})")
    return rsp


def _observed_workspace(req: fnv1.RunFunctionRequest) -> dict[str, Any] | None:
    if workspace.RESOURCE_NAME in req.observed.resources:
        return requirements.to_plain(req.observed.resources[workspace.RESOURCE_NAME].resource)
    return None


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


def _hold_observed(req: fnv1.RunFunctionRequest, rsp: fnv1.RunFunctionResponse) -> None:
    """Desire exactly what is observed: the Workspace and the Reservations, as they are.

    Crossplane deletes an observed composed resource the response leaves out, so whatever
    this call cannot decide about it keeps unchanged: the VM, and what it holds.
    """
    rsp.desired.ClearField("resources")
    observed = _observed_workspace(req)
    if observed is not None:
        resource.update(
            rsp.desired.resources[workspace.RESOURCE_NAME], workspace.held_copy(observed)
        )
    for name, body in _observed_reservations(req).items():
        resource.update(rsp.desired.resources[name], workspace.held_copy(body))
        rsp.desired.resources[name].ready = fnv1.READY_TRUE


def _internal_error(req: fnv1.RunFunctionRequest, rsp: fnv1.RunFunctionResponse, what: str) -> None:
    """Hold the observed Workspace if there is one; otherwise fail without touching anything."""
    del rsp.results[:]
    observed = _observed_workspace(req)
    message = f"internal error in function-fabric ({what}); nothing was changed"
    if observed is None:
        response.fatal(rsp, message)
        return
    _hold_observed(req, rsp)
    rsp.results.append(
        fnv1.Result(severity=fnv1.SEVERITY_WARNING, message=message, target=status.TARGET)
    )


def _parse_input(req: fnv1.RunFunctionRequest) -> FunctionInput | str:
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


def _run(req: fnv1.RunFunctionRequest, rsp: fnv1.RunFunctionResponse, log: Any, size: int) -> None:
    fn_input = _parse_input(req)
    if isinstance(fn_input, str):
        _refuse(req, rsp, fn_input)
        return
    requirements.declare(rsp, fn_input.inventory)
    if size > MAX_REQUEST_BYTES:
        _refuse(req, rsp, f"request is {size} bytes; the limit is {MAX_REQUEST_BYTES}")
        return
    fleet_answer = requirements.fleet_resources(req)
    if fleet_answer is not None and len(fleet_answer.items) > MAX_FLEET:
        _refuse(req, rsp, f"fleet has {len(fleet_answer.items)} machines; the limit is {MAX_FLEET}")
        return
    held = requirements.resources(req, requirements.RESERVATIONS)
    xr = requirements.to_plain(req.observed.composite.resource)
    if homelab.is_homelab(xr):
        view = homelab.view(
            fn_input,
            requirements.answer(req, requirements.INVENTORY),
            None if fleet_answer is None else fleet.records(fleet_answer),
            None if held is None else reservations.table(held),
            homelab=xr,
            observed_backups=_observed(req, backups.RESOURCE_NAME),
        )
        homelab.respond(rsp, view)
        return
    request = pipeline.Request(
        xr=xr,
        observed_ws=_observed_workspace(req),
        fn_input=fn_input,
        inventory=requirements.answer(req, requirements.INVENTORY),
        # Records hold only what the fleet is built from, read once per distinct content.
        fleet=None if fleet_answer is None else fleet.records(fleet_answer),
        # Read once per distinct content, like the fleet.
        reservations=None if held is None else reservations.table(held),
        own_reservations=_observed_reservations(req),
    )
    decision = pipeline.decide(request)
    _respond(rsp, decision)
    log.debug(
        "reconciled",
        machine=pipeline.machine_of(request.xr).key,
        phase=decision.report.phase,
        node=decision.report.placement.node if decision.report.placement else "",
    )


def _refuse(req: fnv1.RunFunctionRequest, rsp: fnv1.RunFunctionResponse, message: str) -> None:
    """A problem with the function's own configuration or the request as a whole."""
    observed = _observed_workspace(req)
    if observed is None:
        response.fatal(rsp, message)
        return
    _hold_observed(req, rsp)
    rsp.results.append(
        fnv1.Result(
            severity=fnv1.SEVERITY_WARNING,
            message=f"the machine is held as it is: {message}",
            target=status.TARGET,
        )
    )


def _respond(rsp: fnv1.RunFunctionResponse, decision: pipeline.Decision) -> None:
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
