"""A small stand-in for Crossplane's side of the function protocol.

The Crossplane CLI cannot be installed where Fabric is developed and tested, so
this module does what `crossplane render` and the composition controller do
with a function: build the RunFunctionRequest from an XR, the observed composed
resources and the step's input; answer the function's requirements from an
in-memory set of cluster objects, the 1.x way (`extra_resources`, label
selectors) or the 2.x way (`required_resources`); call again until the
requirements are stable, at most five times. It talks to the function over a
real gRPC channel, exactly as Crossplane does.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import crossplane.function.proto.v1.run_function_pb2_grpc as grpcv1
import grpc
import yaml
from crossplane.function import resource

ROOT = Path(__file__).resolve().parent.parent
MAX_CALLS = 5
# The composed resource names of Reservations (function/reservations.py PREFIX).
RESERVATION_PREFIX = "reservation-"


def load_yaml(path: Path | str) -> dict[str, Any]:
    """Read one YAML document from the repository."""
    return yaml.safe_load(Path(ROOT, path).read_text())


def composition_input(path: str = "compositions/composition.yaml") -> dict[str, Any]:
    """The function input of the fabric step of a Composition."""
    comp = load_yaml(path)
    for step in comp["spec"]["pipeline"]:
        if step["functionRef"]["name"] == "function-fabric":
            return step["input"]
    msg = f"{path} has no function-fabric step"
    raise ValueError(msg)


def _labels_match(obj: dict[str, Any], labels: dict[str, str]) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


@dataclass
class Cluster:
    """The objects a requirement can select."""

    objects: list[dict[str, Any]] = field(default_factory=list)

    def select(self, sel: fnv1.ResourceSelector, *, v2: bool) -> list[dict[str, Any]]:
        """The objects a selector matches; namespaces are honoured only by Crossplane 2.x."""
        out = []
        for obj in self.objects:
            if obj.get("apiVersion") != sel.api_version or obj.get("kind") != sel.kind:
                continue
            meta = obj.get("metadata") or {}
            if v2 and sel.HasField("namespace") and meta.get("namespace") != sel.namespace:
                continue
            which = sel.WhichOneof("match")
            if which == "match_name" and meta.get("name") != sel.match_name:
                continue
            if which == "match_labels" and not _labels_match(obj, dict(sel.match_labels.labels)):
                continue
            out.append(obj)
        return sorted(
            out, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])
        )


def request(
    xr: dict[str, Any],
    fn_input: dict[str, Any] | None,
    observed: dict[str, dict[str, Any]] | None = None,
    tag: str = "",
) -> fnv1.RunFunctionRequest:
    """A first-call request: the XR, its observed composed resources and the input."""
    req = fnv1.RunFunctionRequest(
        meta=fnv1.RequestMeta(tag=tag),
        observed=fnv1.State(composite=fnv1.Resource(resource=resource.dict_to_struct(xr))),
    )
    if fn_input is not None:
        req.input.CopyFrom(resource.dict_to_struct(fn_input))
    for name, obj in (observed or {}).items():
        req.observed.resources[name].resource.CopyFrom(resource.dict_to_struct(obj))
    return req


def answer(
    req: fnv1.RunFunctionRequest,
    rsp: fnv1.RunFunctionResponse,
    cluster: Cluster,
    *,
    v2: bool,
) -> fnv1.RunFunctionRequest:
    """The next request: the same one with the function's requirements answered."""
    nxt = fnv1.RunFunctionRequest()
    nxt.CopyFrom(req)
    nxt.ClearField("extra_resources")
    nxt.ClearField("required_resources")
    selectors = rsp.requirements.resources if v2 else rsp.requirements.extra_resources
    target = nxt.required_resources if v2 else nxt.extra_resources
    for name, sel in selectors.items():
        found = cluster.select(sel, v2=v2)
        target[name].SetInParent()
        for obj in found:
            target[name].items.add().resource.CopyFrom(resource.dict_to_struct(obj))
    return nxt


def _reqs_key(rsp: fnv1.RunFunctionResponse, *, v2: bool) -> bytes:
    reqs = rsp.requirements.resources if v2 else rsp.requirements.extra_resources
    return b"".join(
        name.encode() + reqs[name].SerializeToString(deterministic=True) for name in sorted(reqs)
    )


def converge(
    call: Any, req: fnv1.RunFunctionRequest, cluster: Cluster, *, v2: bool = False
) -> fnv1.RunFunctionResponse:
    """Call until the requirements are stable or a result is fatal, like Crossplane does."""
    rsp = call(req)
    for _ in range(MAX_CALLS - 1):
        if any(r.severity == fnv1.SEVERITY_FATAL for r in rsp.results):
            return rsp
        nxt = answer(req, rsp, cluster, v2=v2)
        again = call(nxt)
        if _reqs_key(again, v2=v2) == _reqs_key(rsp, v2=v2):
            return again
        req, rsp = nxt, again
    return rsp


# What `crossplane render` prints, modelled on its source (cmd/crank/render/render.go, v1.16 to
# v2.0) and checked against the real CLIs by tests/test_real_crossplane.py.
CONDITION_TIME = "2024-01-01T00:00:00Z"
RESOURCE_NAME_ANNOTATION = "crossplane.io/composition-resource-name"
SYSTEM_CONDITIONS = {"Ready", "Synced", "Healthy", "Responsive"}
SEVERITY_NAMES = {
    fnv1.SEVERITY_NORMAL: "SEVERITY_NORMAL",
    fnv1.SEVERITY_WARNING: "SEVERITY_WARNING",
}
CONDITION_STATUS = {
    fnv1.STATUS_CONDITION_TRUE: "True",
    fnv1.STATUS_CONDITION_FALSE: "False",
    fnv1.STATUS_CONDITION_UNKNOWN: "Unknown",
}


@dataclass(frozen=True)
class Rendered:
    """What `crossplane render -r` prints: the XR with its status, composed resources, results."""

    xr: dict[str, Any]
    composed: list[dict[str, Any]]
    results: list[dict[str, Any]]

    def workspace(self) -> dict[str, Any] | None:
        """The one composed Workspace, if the function emitted one."""
        found = [c for c in self.composed if c.get("kind") == "Workspace"]
        return found[0] if found else None


def rendered(
    xr: dict[str, Any],
    rsp: fnv1.RunFunctionResponse,
    *,
    version: tuple[int, int],
    step: str = "fabric",
) -> Rendered:
    """The documents `crossplane render -r` of Crossplane `version` prints for this response.

    Versions differ in the XR's conditions: before 1.17 the function's conditions are dropped
    (the protocol had none); before 2.0 the XR's Ready condition ignores the function's
    composite readiness and follows the composed resources' alone.
    """
    return Rendered(
        xr=_rendered_xr(xr, rsp, version=version),
        composed=[
            _rendered_composed(xr, name, rsp.desired.resources[name], version=version)
            for name in sorted(rsp.desired.resources)
        ],
        results=[
            {
                "apiVersion": "render.crossplane.io/v1beta1",
                "kind": "Result",
                "message": r.message,
                "severity": SEVERITY_NAMES[r.severity],
                "step": step,
            }
            for r in rsp.results
        ],
    )


def _rendered_xr(
    xr: dict[str, Any], rsp: fnv1.RunFunctionResponse, *, version: tuple[int, int]
) -> dict[str, Any]:
    desired = resource.struct_to_dict(rsp.desired.composite.resource)
    meta = {"name": xr["metadata"]["name"]}
    if xr["metadata"].get("namespace"):
        meta["namespace"] = xr["metadata"]["namespace"]
    # In the order Kubernetes users read: apiVersion, kind, metadata, then the rest.
    out = {"apiVersion": xr["apiVersion"], "kind": xr["kind"], "metadata": meta}
    out.update((k, v) for k, v in desired.items() if k not in out)
    ready = rsp.desired.composite.ready if version >= (2, 0) else fnv1.READY_UNSPECIFIED
    unready = sorted(n for n, r in rsp.desired.resources.items() if r.ready != fnv1.READY_TRUE)
    conditions = [{"type": "Ready", "status": "True", "reason": "Available"}]
    if ready == fnv1.READY_FALSE or (ready == fnv1.READY_UNSPECIFIED and unready):
        conditions = [{"type": "Ready", "status": "False", "reason": "Creating"}]
        if ready == fnv1.READY_UNSPECIFIED:
            conditions[0]["message"] = f"Unready resources: {', '.join(unready)}"
    conditions += [
        {
            "type": c.type,
            "status": CONDITION_STATUS[c.status],
            "reason": c.reason,
            **({"message": c.message} if c.message else {}),
        }
        for c in rsp.conditions
        if c.type not in SYSTEM_CONDITIONS and version >= (1, 17)
    ]
    status = out.setdefault("status", {})
    status["conditions"] = [{**c, "lastTransitionTime": CONDITION_TIME} for c in conditions]
    return out


def _rendered_composed(
    xr: dict[str, Any], name: str, desired: fnv1.Resource, *, version: tuple[int, int]
) -> dict[str, Any]:
    out = resource.struct_to_dict(desired.resource)
    meta = out.setdefault("metadata", {})
    labels = xr["metadata"].get("labels") or {}
    if version < (2, 0):
        # 1.x: generateName and the composite label from the XR's name, whatever is set;
        # claim labels from the claimRef alone.
        labels = {}
        prefix = xr["metadata"]["name"]
        meta["generateName"] = f"{prefix}-"
    else:
        prefix = labels.get("crossplane.io/composite") or xr["metadata"]["name"]
    if not meta.get("name") and not meta.get("generateName"):
        meta["generateName"] = f"{prefix}-"
    if xr["metadata"].get("namespace"):
        meta["namespace"] = xr["metadata"]["namespace"]
    meta.setdefault("annotations", {})[RESOURCE_NAME_ANNOTATION] = name
    added = {"crossplane.io/composite": prefix}
    claim = (xr.get("spec") or {}).get("claimRef") or {}
    if labels.get("crossplane.io/claim-name") and labels.get("crossplane.io/claim-namespace"):
        added["crossplane.io/claim-name"] = labels["crossplane.io/claim-name"]
        added["crossplane.io/claim-namespace"] = labels["crossplane.io/claim-namespace"]
    elif claim:
        added["crossplane.io/claim-name"] = claim["name"]
        added["crossplane.io/claim-namespace"] = claim["namespace"]
    meta.setdefault("labels", {}).update(added)
    meta["ownerReferences"] = [
        {
            "apiVersion": xr["apiVersion"],
            "blockOwnerDeletion": True,
            "controller": True,
            "kind": xr["kind"],
            "name": xr["metadata"]["name"],
            "uid": xr["metadata"].get("uid", ""),
        }
    ]
    return out


def composed(rsp: fnv1.RunFunctionResponse, prefix: str) -> dict[str, dict[str, Any]]:
    """Desired composed resources whose names start with `prefix`, as plain data."""
    return {
        name: resource.struct_to_dict(rsp.desired.resources[name].resource)
        for name in sorted(rsp.desired.resources)
        if name.startswith(prefix)
    }


def settle(
    call: Any,
    xr: dict[str, Any],
    fn_input: dict[str, Any] | None,
    objects: list[dict[str, Any]],
    observed: dict[str, dict[str, Any]] | None = None,
    *,
    v2: bool = False,
    rounds: int = 3,
) -> fnv1.RunFunctionResponse:
    """Reconcile one XR as Crossplane's controller does, alone in the cluster, until it settles.

    Each round: the requirement calls (converge); then Crossplane applies what the response
    desires. Reservations it applies are observed by the next round and listed in the cluster
    (nobody else holds them here: contention is modelled by the churn tests); the rounds stop
    once nothing new was applied.
    """
    seen = dict(observed or {})
    cluster = list(objects)
    rsp = fnv1.RunFunctionResponse()
    for _ in range(rounds):
        rsp = converge(call, request(xr, fn_input, seen), Cluster(cluster), v2=v2)
        if any(r.severity == fnv1.SEVERITY_FATAL for r in rsp.results):
            return rsp
        fresh = {
            name: body
            for name, body in composed(rsp, RESERVATION_PREFIX).items()
            if name not in seen
        }
        if not fresh:
            return rsp
        seen.update(fresh)
        cluster += fresh.values()
    return rsp


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Running:
    """A served process: where it listens and its pid (for memory readings)."""

    address: str
    pid: int


@contextlib.contextmanager
def launch(
    module: str,
    *args: str,
    port: int | None = None,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    root: Path | None = None,
) -> Iterator[Running]:
    """Run `python -m module --address 127.0.0.1:PORT *args` until the block ends.

    `root`: the checkout to run it from (default: this one), e.g. a previous version.

    Its output (stdout and stderr) goes to `log`, or to a temporary file: a pipe nobody
    reads would fill up and stall the server after a few hundred calls.
    """
    port = port or free_port()
    address = f"127.0.0.1:{port}"
    cmd = [sys.executable, "-m", module, "--address", address, *args]
    root = root or ROOT
    full_env = {**os.environ, "PYTHONPATH": str(root), **(env or {})}
    with contextlib.ExitStack() as stack:
        sink: IO[bytes] = stack.enter_context(
            tempfile.TemporaryFile() if log is None else log.open("w+b")  # noqa: SIM115 - in the stack
        )
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            cmd, cwd=root, env=full_env, stdout=sink, stderr=subprocess.STDOUT
        )
        try:
            _wait_for(port, proc, sink)
            yield Running(address, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def serve(*args: str, port: int | None = None, log: Path | None = None) -> Iterator[str]:
    """Run the function as Crossplane would (its own process) and yield its address."""
    with launch("function.main", *args, port=port, log=log) as running:
        yield running.address


def _wait_for(port: int, proc: subprocess.Popen[bytes], sink: IO[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sink.flush()
            sink.seek(0)
            err = sink.read().decode(errors="replace")
            msg = f"{proc.args!r} exited with {proc.returncode}: {err}"
            raise RuntimeError(msg)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    msg = f"{proc.args!r} did not start listening within 30s"
    raise RuntimeError(msg)


def stub(address: str, credentials: grpc.ChannelCredentials | None = None) -> Any:
    """A RunFunction caller over a real channel."""
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, credentials)
    runner = grpcv1.FunctionRunnerServiceStub(channel)
    return lambda req: runner.RunFunction(req, timeout=30)
