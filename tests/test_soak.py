"""A bounded soak: one function process, several clients, mixed requests, steady memory.

Several threads, each with its own channel, send a mix of requests to one
function process over loopback for FABRIC_SOAK_SECONDS (60 by default): first
calls, valid claims (1.x and 2.x answers), invalid claims, broken inventories,
machines held with an observed Workspace, and a larger fleet. Fleet members
change between calls (a new status message, a new resourceVersion), as they do
in a cluster, so the function's caches keep seeing new content. The soak passes
when no call fails at the gRPC level, every response to a machine that has a
Workspace carries it, and the server's resident memory after warm-up stays flat.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import crossplane.function.proto.v1.run_function_pb2_grpc as grpcv1
import grpc
import pytest
from crossplane.function import logging

from bench.latency import steady_request
from function.fn import run
from function.main import MAX_MESSAGE_BYTES
from tests.conftest import (
    applied,
    basic_spec,
    fn_input,
    gpu_spec,
    inventory_cm,
    inventory_data,
    with_inventory,
    with_status,
    xr,
)
from tools import xpsim

pytestmark = [pytest.mark.soak, pytest.mark.slow]

SECONDS = float(os.environ.get("FABRIC_SOAK_SECONDS", "60"))
CLIENTS = 6
SAMPLE_EVERY = 2.0  # seconds between RSS samples
WARM_UP = max(10.0, SECONDS / 4)
RSS_SLACK_MIB = 15.0
RSS_SLACK_RATIO = 0.20
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


# --- the requests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One kind of request, and whether its response must carry the Workspace."""

    name: str
    req: fnv1.RunFunctionRequest
    keeps_workspace: bool = False


def _call_inproc(req: fnv1.RunFunctionRequest) -> fnv1.RunFunctionResponse:
    return run(req, logging.get_logger())


def _answered(
    machine: dict[str, Any],
    objects: list[dict[str, Any]],
    *,
    observed: dict[str, Any] | None = None,
    v2: bool = False,
) -> fnv1.RunFunctionRequest:
    req = xpsim.request(machine, fn_input(), {"workspace": observed} if observed else None)
    return xpsim.answer(req, _call_inproc(req), xpsim.Cluster(objects), v2=v2)


def _placed(
    machine: dict[str, Any], others: list[dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The machine once settled: its status written back, its Workspace applied."""
    rsp = xpsim.settle(_call_inproc, machine, fn_input(), [inventory_cm(), *others, machine])
    return with_status(machine, rsp), applied(rsp)


def _broken(text: str) -> dict[str, Any]:
    cm = inventory_cm()
    cm["data"]["inventory.yaml"] = text
    return cm


def cases() -> list[Case]:
    """Every kind of request the soak sends."""
    cm = inventory_cm()
    peers = [xr(f"peer-{i}", basic_spec(), created=f"2026-11-01T09:00:0{i}Z") for i in range(4)]
    valid = xr("soak-valid", basic_spec())
    namespaced = xr("soak-v2", basic_spec(), namespaced=True)
    gpu = xr("soak-gpu", gpu_spec())
    held, workspace = _placed(xr("soak-held", basic_spec()), peers)
    bad_edit = copy.deepcopy(held)
    bad_edit["spec"]["memory"] = "lots"
    no_vmids = inventory_data(cm)
    del no_vmids["vmids"]
    second = copy.deepcopy(cm)
    second["metadata"]["name"] = "another-inventory"
    return [
        Case("first-call", xpsim.request(valid, fn_input())),
        Case("valid", _answered(valid, [cm, *peers, valid])),
        Case("valid-v2", _answered(namespaced, [cm, *peers, namespaced], v2=True)),
        Case("gpu", _answered(gpu, [cm, *peers, gpu])),
        Case("bad-claim", _answered(xr("soak-bad", basic_spec(memory="lots")), [cm, *peers])),
        Case("bad-name", _answered(xr("Soak_Bad", basic_spec()), [cm, *peers])),
        Case("broken-yaml", _answered(valid, [_broken("nodes: [\n"), valid])),
        Case("invalid-inventory", _answered(valid, [with_inventory(no_vmids), valid])),
        Case("two-inventories", _answered(valid, [cm, second, valid])),
        Case("held", _answered(held, [cm, *peers, held], observed=workspace), True),
        Case(
            "held-bad-edit", _answered(bad_edit, [cm, *peers, bad_edit], observed=workspace), True
        ),
        Case(
            "held-broken-inventory",
            _answered(held, [_broken("{"), *peers, held], observed=workspace),
            True,
        ),
        Case("large-fleet", steady_request(50, 100), True),
    ]


def churned(
    req: fnv1.RunFunctionRequest, rng: random.Random, serial: int
) -> fnv1.RunFunctionRequest:
    """A copy in which one fleet member changed, as a status write changes it in a cluster."""
    out = fnv1.RunFunctionRequest()
    out.CopyFrom(req)
    answers = [*out.extra_resources.values(), *out.required_resources.values()]
    items = [item for answer in answers for item in answer.items]
    members = [i for i in items if _kind(i.resource) == "XMachine"]
    if members:
        target = rng.choice(members).resource
        if rng.random() < 0.5:
            meta = target.fields["metadata"].struct_value
            meta.fields["resourceVersion"].string_value = str(serial)
        else:
            state = target.fields["status"].struct_value
            state.fields["message"].string_value = f"soak change {serial}"
    return out


def _kind(obj: Any) -> str:
    # `in` first: indexing a protobuf map inserts the key.
    return obj.fields["kind"].string_value if "kind" in obj.fields else ""


# --- the server and its memory ----------------------------------------------------------------


@contextlib.contextmanager
def function_process(log: Path) -> Iterator[tuple[str, int]]:
    """The function in its own process (insecure, as Crossplane's Development runtime)."""
    with xpsim.launch("function.main", "--insecure", log=log) as running:
        yield running.address, running.pid


def rss_mib(pid: int) -> float:
    """The process's resident set size now (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    msg = f"no VmRSS for {pid}"
    raise RuntimeError(msg)


# --- the load ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the clients saw, shared between threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    def answered(self, case: Case, rsp: fnv1.RunFunctionResponse) -> None:
        with self.lock:
            self.calls[case.name] += 1
            if case.keeps_workspace and "workspace" not in rsp.desired.resources:
                self.lost.append(f"{case.name}: {[r.message for r in rsp.results]}")

    def failed(self, case: Case, error: str) -> None:
        with self.lock:
            self.calls[case.name] += 1
            self.errors.append(f"{case.name}: {error}")


def client(address: str, pool: list[Case], seed: int, until: float, tally: Tally) -> None:
    """Send requests round-robin from a shuffled pool until the deadline."""
    rng = random.Random(seed)
    order = pool[:]
    rng.shuffle(order)
    serial = itertools.count(seed * 1_000_000)
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = grpcv1.FunctionRunnerServiceStub(channel)
        for case in itertools.cycle(order):
            if time.monotonic() >= until:
                return
            req = churned(case.req, rng, next(serial)) if rng.random() < 0.5 else case.req
            try:
                tally.answered(case, stub.RunFunction(req, timeout=30))
            except grpc.RpcError as err:
                tally.failed(case, f"{err.code()}: {err.details()}")


def test_soak(tmp_path: Path) -> None:
    pool = cases()
    tally = Tally()
    with function_process(tmp_path / "function.log") as (address, pid):
        start = time.monotonic()
        until = start + SECONDS
        threads = [
            threading.Thread(target=client, args=(address, pool, seed, until, tally), daemon=True)
            for seed in range(1, CLIENTS + 1)
        ]
        for thread in threads:
            thread.start()
        samples: list[tuple[float, float]] = []
        while any(t.is_alive() for t in threads):
            samples.append((time.monotonic() - start, rss_mib(pid)))
            time.sleep(SAMPLE_EVERY)
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - start
    after_warm_up = next(rss for at, rss in samples if at >= WARM_UP)
    last = samples[-1][1]
    total = sum(tally.calls.values())
    summary = (
        f"{total} calls in {elapsed:.0f}s ({total / elapsed:.0f}/s) from {CLIENTS} clients; "
        f"RSS MiB: start {samples[0][1]:.1f}, after warm-up {after_warm_up:.1f}, "
        f"last {last:.1f}, max {max(rss for _, rss in samples):.1f}; "
        f"calls per kind {dict(sorted(tally.calls.items()))}"
    )
    print(summary)
    assert not tally.errors, f"{len(tally.errors)} gRPC errors, first {tally.errors[:3]}; {summary}"
    assert not tally.lost, f"Workspace dropped: {tally.lost[:3]}; {summary}"
    assert set(tally.calls) == {case.name for case in pool}, summary
    allowed = max(after_warm_up * (1 + RSS_SLACK_RATIO), after_warm_up + RSS_SLACK_MIB)
    assert last <= allowed, f"RSS grew from {after_warm_up:.1f} to {last:.1f} MiB; {summary}"
