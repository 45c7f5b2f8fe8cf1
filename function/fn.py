"""The gRPC RunFunction: a repeated request answered from memory, else read, decide, write.

Reading and writing protobuf is wire.py's; deciding is pipeline.py's (a machine or a
container) or homelab.py's (the fleet view). This module only routes a request between
them and keeps one promise: no exception escapes to gRPC, and one that happens while a
Workspace exists holds it as it is.
"""

from __future__ import annotations

from typing import Any, Protocol

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import crossplane.function.proto.v1.run_function_pb2_grpc as grpcv1
import grpc
from crossplane.function import logging, response

from function import homelab, memo, pipeline, requirements, wire

# Responses by a digest of their request's deterministic bytes. The response is a function of
# the request alone (invariant 4 of docs/invariants.md: byte-identical), and in a steady state
# Crossplane sends each machine the same request at every poll: answering it again costs a
# digest, not a reconcile. Not by meta.tag, though Crossplane derives it from the content too:
# its requirement loop keeps the first round's tag for the round that carries the inventory.
# Bounded: a few responses per machine in flight, least recently used first out.
MAX_RESPONSES = 256
_RESPONSES: memo.BoundedCache[bytes, bytes] = memo.BoundedCache("responses", MAX_RESPONSES)


class Log(Protocol):
    """What the function logs through: the SDK's structlog logger, or any with these two."""

    def debug(self, event: str, **fields: Any) -> Any:
        """Log at debug level (per call; off unless --debug)."""

    def error(self, event: str, **fields: Any) -> Any:
        """Log an error (an internal error's type, never claim data)."""


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


def run(req: fnv1.RunFunctionRequest, log: Log) -> fnv1.RunFunctionResponse:
    """Handle one request synchronously (also used by tests and benchmarks in-process)."""
    request_bytes = req.SerializeToString(deterministic=True)
    key = memo.digest(request_bytes)
    known = _RESPONSES.get(key)
    if known is not None:
        log.debug("reconciled", repeated=True)
        return fnv1.RunFunctionResponse.FromString(known)
    rsp = reconcile(req, log, len(request_bytes))
    if any(r.severity == fnv1.SEVERITY_FATAL for r in rsp.results):
        return rsp
    answer = rsp.SerializeToString(deterministic=True)
    _RESPONSES.put(key, answer)
    # The answer as the memo will give it again: every answer to this request is then the
    # same message, down to the order gRPC serializes its maps in.
    return fnv1.RunFunctionResponse.FromString(answer)


def reconcile(
    req: fnv1.RunFunctionRequest, log: Log, size: int | None = None
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
            wire.internal_error(req, rsp, type(exc).__name__)
        except Exception:  # even holding failed: a fatal result changes nothing
            rsp = response.to(req)
            response.fatal(rsp, f"internal error in function-fabric ({type(exc).__name__})")
    return rsp


def _run(req: fnv1.RunFunctionRequest, rsp: fnv1.RunFunctionResponse, log: Log, size: int) -> None:
    fn_input = wire.parse_input(req)
    if isinstance(fn_input, str):
        wire.refuse(req, rsp, fn_input)
        return
    requirements.declare(rsp, fn_input.inventory)
    refused = wire.too_big(req, size)
    if refused is not None:
        wire.refuse(req, rsp, refused)
        return
    xr = wire.composite(req)
    if homelab.is_homelab(xr):
        wire.write_homelab(rsp, wire.homelab_view(req, xr, fn_input))
        return
    decision = pipeline.decide(wire.machine_request(req, xr, fn_input))
    wire.write(rsp, decision)
    log.debug("reconciled", phase=decision.report.phase.value)
