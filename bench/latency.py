"""End-to-end latency of Fabric against a no-op function on the same SDK, in one run.

Run with `python -m bench.latency`. For each (nodes, fleet) size it starts Fabric
(`python -m function.main --insecure`) and the no-op (`python -m bench.noop`) in
their own processes, builds one realistic steady-state request (one XMachine that
was rendered once and whose Workspace is applied, the inventory and the whole
fleet answered in `extra_resources`, as Crossplane 1.x does), and sends the very
same bytes to both over loopback gRPC:

- latency: a fixed number of sequential calls, alternating between the two
  servers so both see the same machine load; p50, p99 and their ratio;
- latency when no request repeats: the same calls, each with its own meta.tag, so that
  Fabric's response memo never answers and every call is a reconcile;
- throughput at concurrency 1 (from those calls) and 8 (threads, each with its
  own channel, as many calls per server as the sequential phase, in rounds that
  alternate between the servers);
- peak RSS of each server process (VmHWM from /proc/<pid>/status), after the
  sequential calls and again after the concurrent ones (8 large requests in
  flight at once weigh several MiB each, parsed, in any server).

It prints markdown tables. Numbers are only comparable within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import grpc
from crossplane.function import logging, resource

from bench import synthetic
from function import fleet, record, reservations
from function.fn import run
from function.main import MAX_MESSAGE_BYTES
from tools import xpsim

METHOD = "/apiextensions.fn.proto.v1.FunctionRunnerService/RunFunction"
SIZES = ((5, 10), (50, 100), (500, 1000))
CONCURRENCY = 8
# The concurrent phase alternates between the servers this many times (as the sequential one
# alternates call by call), so a burst of load on the machine weighs on both alike.
ROUNDS = 4
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]

Call = Callable[[bytes], bytes]


# --- the request --------------------------------------------------------------------------------


def _applied(workspace: dict[str, Any]) -> dict[str, Any]:
    """The Workspace as Crossplane observes it once provider-terraform applied it."""
    observed = copy.deepcopy(workspace)
    observed["metadata"].update(name="bench-ws", uid="ws-uid", resourceVersion="42")
    observed["status"] = {
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Available"},
            {"type": "Synced", "status": "True", "reason": "ReconcileSuccess"},
        ],
        "atProvider": {"outputs": {"vm_id": 5009, "node": "node-000", "ipv4": "10.0.1.9"}},
    }
    return observed


def steady_request(nodes: int, machines: int) -> fnv1.RunFunctionRequest:
    """The last machine of the fleet, settled (Reservations and Workspace applied), asked again.

    Every machine of the steady fleet holds its Reservations, so the table Crossplane returns
    lists three or so per machine, as in a real cluster.
    """
    log = logging.get_logger()
    call = lambda req: run(req, log)  # noqa: E731 - the in-process call xpsim expects
    inventory = synthetic.configmap(nodes)
    xrs = synthetic.fleet(machines, nodes, steady=True)
    me = xrs[-1]
    fn_input = xpsim.composition_input()
    first = xpsim.settle(call, me, fn_input, [inventory, *xrs])
    workspace = resource.struct_to_dict(first.desired.resources["workspace"].resource)
    me = {**me, "status": resource.struct_to_dict(first.desired.composite.resource)["status"]}
    mine = xpsim.composed(first, xpsim.RESERVATION_PREFIX)
    table = [
        body
        for xr in xrs[:-1]
        if (held := record.from_status(xr.get("status") or {})) is not None
        for body in reservations.manifests(fleet.machine_key(xr), held).values()
    ]
    cluster = xpsim.Cluster([inventory, *xrs[:-1], me, *table, *mine.values()])
    req = xpsim.request(me, fn_input, {"workspace": _applied(workspace), **mine})
    return xpsim.answer(req, call(req), cluster, v2=False)


def retagged(req: fnv1.RunFunctionRequest, count: int) -> list[bytes]:
    """The request `count` times, each with its own meta.tag: no two are the same request.

    Crossplane tags each request with a digest of its content, so a new tag stands for any
    change (a machine's status, a new Reservation): the response memo misses, while the
    caches of content that did not change (inventory, fleet records) still serve.
    """
    bodies = []
    for i in range(count):
        copy_ = fnv1.RunFunctionRequest()
        copy_.CopyFrom(req)
        copy_.meta.tag = f"bench-{i}"
        bodies.append(copy_.SerializeToString())
    return bodies


def check(rsp: fnv1.RunFunctionResponse) -> None:
    """The steady-state response must be the full answer: a Workspace and a Running machine."""
    fatal = [r.message for r in rsp.results if r.severity == fnv1.SEVERITY_FATAL]
    assert not fatal, fatal
    assert "workspace" in rsp.desired.resources
    phase = resource.struct_to_dict(rsp.desired.composite.resource)["status"]["phase"]
    assert phase == "Running", phase


# --- the servers --------------------------------------------------------------------------------


@dataclass
class Server:
    """A function process and a raw-bytes caller (the request is serialized once)."""

    name: str
    pid: int
    address: str

    def caller(self) -> tuple[grpc.Channel, Call]:
        """A new channel and a call that sends request bytes and returns response bytes."""
        channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        method = channel.unary_unary(METHOD)  # no serializers: bytes in, bytes out
        return channel, lambda body: method(body, timeout=60)

    def peak_rss_mib(self) -> float:
        """The process's peak resident set size (VmHWM) in MiB."""
        return _proc_status_kib(self.pid, "VmHWM") / 1024


def _proc_status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    msg = f"no {field} in /proc/{pid}/status"
    raise RuntimeError(msg)


@contextlib.contextmanager
def server(name: str, module: str, *args: str, root: Path | None = None) -> Iterator[Server]:
    """Start `python -m module --address ... *args` (from `root`, another checkout, if given)."""
    with xpsim.launch(module, *args, root=root) as running:
        yield Server(name, running.pid, running.address)


# --- measurements -------------------------------------------------------------------------------


@dataclass
class Stats:
    """What was measured for one server at one size."""

    p50: float  # seconds
    p99: float
    rps1: float
    rps8: float = 0.0
    rss1_mib: float = 0.0  # peak RSS after the sequential calls
    rss8_mib: float = 0.0  # peak RSS after the concurrent calls too
    fresh_p50: float = 0.0  # seconds, when no request repeats (every call a reconcile)


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def sequential(calls: dict[str, Call], bodies: list[bytes], count: int) -> dict[str, Stats]:
    """Alternate calls between the servers; per-call latency, p50/p99, throughput at c=1.

    The i-th call of each server sends bodies[i % len(bodies)]: one body is the steady state
    (answered from Fabric's response memo), distinct ones make every call a reconcile.
    """
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(count):
        for name, call in calls.items():
            start = time.perf_counter()
            call(bodies[i % len(bodies)])
            samples[name].append(time.perf_counter() - start)
    return {
        name: Stats(
            p50=statistics.median(times),
            p99=percentile(times, 99),
            rps1=len(times) / sum(times),
        )
        for name, times in samples.items()
    }


def throughput(servers: list[Server], body: bytes, per_thread: int) -> dict[str, float]:
    """Requests per second of each server at CONCURRENCY, over ROUNDS alternating rounds."""
    elapsed = dict.fromkeys((s.name for s in servers), 0.0)
    for _ in range(ROUNDS):
        for srv in servers:
            elapsed[srv.name] += concurrent(srv, body, per_thread)
    return {name: ROUNDS * CONCURRENCY * per_thread / took for name, took in elapsed.items()}


def concurrent(srv: Server, body: bytes, per_thread: int) -> float:
    """Seconds for CONCURRENCY threads, each with its own channel, to make per_thread calls."""
    callers = [srv.caller() for _ in range(CONCURRENCY)]
    for _, call in callers:
        call(body)  # connect before the clock starts
    start_line = threading.Barrier(CONCURRENCY + 1)

    def worker(call: Call) -> None:
        start_line.wait()
        for _ in range(per_thread):
            call(body)

    threads = [threading.Thread(target=worker, args=(call,)) for _, call in callers]
    for thread in threads:
        thread.start()
    start_line.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    for channel, _ in callers:
        channel.close()
    return elapsed


@dataclass
class Row:
    """One size: what was sent and what each server did with it."""

    nodes: int
    machines: int
    request_kib: float
    fabric: Stats
    noop: Stats
    baseline: Stats | None = None


def measure(nodes: int, machines: int, count: int, baseline: Path | None = None) -> Row:
    """Measure both servers (and a baseline checkout's Fabric), fresh processes, at one size."""
    req = steady_request(nodes, machines)
    body = req.SerializeToString()
    with contextlib.ExitStack() as stack:
        fabric = stack.enter_context(server("fabric", "function.main", "--insecure"))
        noop = stack.enter_context(server("noop", "bench.noop"))
        servers = [fabric, noop]
        if baseline is not None:
            servers.append(
                stack.enter_context(
                    server("baseline", "function.main", "--insecure", root=baseline)
                )
            )
        channels = {s.name: s.caller() for s in servers}
        calls = {name: call for name, (_, call) in channels.items()}
        rsp = fnv1.RunFunctionResponse.FromString(calls["fabric"](body))
        check(rsp)
        for _ in range(5):  # warm-up: first-call imports, caches, connections
            for call in calls.values():
                call(body)
        stats = sequential(calls, [body], count)
        for srv in (fabric, noop):
            stats[srv.name].rss1_mib = srv.peak_rss_mib()
        fresh = sequential(calls, retagged(req, count), count)
        for name, got in fresh.items():
            stats[name].fresh_p50 = got.p50
        # As many calls per server as the sequential phase makes, in every thread: at small
        # sizes fewer calls took a few milliseconds, and the ratio was mostly noise.
        for name, rps in throughput([fabric, noop], body, max(count // ROUNDS, 4)).items():
            stats[name].rps8 = rps
        for srv in (fabric, noop):
            stats[srv.name].rss8_mib = srv.peak_rss_mib()
        for channel, _ in channels.values():
            channel.close()
    return Row(
        nodes, machines, len(body) / 1024, stats["fabric"], stats["noop"], stats.get("baseline")
    )


# --- report -------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    """Two markdown tables: latency, then throughput and memory."""
    out = [
        (
            "| nodes | fleet | request KiB | Fabric p50 ms | no-op p50 ms | p50 ratio "
            "| Fabric p99 ms | no-op p99 ms | p99 ratio |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f, n = r.fabric, r.noop
        out.append(
            f"| {r.nodes} | {r.machines} | {r.request_kib:.0f} | {f.p50 * 1e3:.2f} "
            f"| {n.p50 * 1e3:.2f} | {f.p50 / n.p50:.2f} | {f.p99 * 1e3:.2f} "
            f"| {n.p99 * 1e3:.2f} | {f.p99 / n.p99:.2f} |"
        )
    out += [
        "",
        (
            "| nodes | fleet | Fabric req/s c=1 | no-op req/s c=1 | Fabric req/s c=8 "
            "| no-op req/s c=8 | Fabric peak RSS MiB c=1 | no-op c=1 | Fabric c=8 | no-op c=8 |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f, n = r.fabric, r.noop
        out.append(
            f"| {r.nodes} | {r.machines} | {f.rps1:.0f} | {n.rps1:.0f} | {f.rps8:.0f} "
            f"| {n.rps8:.0f} | {f.rss1_mib:.1f} | {n.rss1_mib:.1f} | {f.rss8_mib:.1f} "
            f"| {n.rss8_mib:.1f} |"
        )
    out += [
        "",
        "| nodes | fleet | no request repeats: Fabric p50 ms | no-op p50 ms | ratio |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f, n = r.fabric, r.noop
        out.append(
            f"| {r.nodes} | {r.machines} | {f.fresh_p50 * 1e3:.2f} | {n.fresh_p50 * 1e3:.2f} "
            f"| {f.fresh_p50 / n.fresh_p50:.2f} |"
        )
    if any(r.baseline for r in rows):
        out += [
            "",
            (
                "| nodes | fleet | Fabric p50 ms | baseline p50 ms | ratio | Fabric p99 ms "
                "| baseline p99 ms | ratio |"
            ),
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            f, b = r.fabric, r.baseline
            if b is not None:
                out.append(
                    f"| {r.nodes} | {r.machines} | {f.p50 * 1e3:.2f} | {b.p50 * 1e3:.2f} "
                    f"| {f.p50 / b.p50:.2f} | {f.p99 * 1e3:.2f} | {b.p99 * 1e3:.2f} "
                    f"| {f.p99 / b.p99:.2f} |"
                )
    return "\n".join(out)


def _size(text: str) -> tuple[int, int]:
    nodes, machines = text.split("x")
    return int(nodes), int(machines)


def main() -> None:
    """Parse arguments, measure every size, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=_size,
        nargs="+",
        default=list(SIZES),
        help="NODESxFLEET pairs, e.g. 5x10 50x100 500x1000",
    )
    parser.add_argument("--count", type=int, default=100, help="sequential calls per server")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. a git worktree of the previous main) whose Fabric is "
        "sent the same requests, in the same run",
    )
    args = parser.parse_args()
    logging.configure(level=logging.Level.DISABLED)  # the in-process request building is quiet
    rows = []
    for nodes, machines in args.sizes:
        rows.append(measure(nodes, machines, args.count, args.baseline))
        print(f"measured {nodes} nodes x {machines} machines", file=sys.stderr)
    print(table(rows))


if __name__ == "__main__":
    main()
