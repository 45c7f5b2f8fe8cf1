"""Scheduler benchmark: how placement time grows with fleet size and node count.

Run with `python -m bench.scheduler`. For every (fleet, nodes) pair it times
`function.placement.assign` for the LAST machine of the fleet in two cases:

- steady: every other machine holds a placement (the common reconcile);
- worst: every machine is pending, so the whole fleet is placed in order first.

It prints the median of a few repeats and the ratio time / (fleet x nodes),
normalized to the smallest case: a ratio that stays at or below 1 as the sizes
grow shows the cost grows no worse than linearly in fleet size x node count.
The fleet is parsed before timing: only placement is measured.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import crossplane.function.proto.v1.run_function_pb2 as fnv1
from crossplane.function import resource

from bench import synthetic
from function import fleet, wire
from function.demand import resolve
from function.model import Defaults, Inventory
from function.placement import Outcome, assign

FLEETS = (10, 100, 1000)
NODES = (5, 50, 500)
MIN_SECONDS = 0.3  # keep repeating a fast case at least this long...
MAX_REPEATS = 200  # ...but no more than this many times


@dataclass(frozen=True)
class Case:
    """One measured configuration."""

    machines: int
    nodes: int
    steady: float  # seconds, median
    worst: float


def prepared(machines: int, nodes: int, *, steady: bool) -> tuple[Inventory, list[fleet.Member]]:
    """The inventory model and the fleet members, as the pipeline would hand them to assign.

    The fleet is read the way the function reads Crossplane's answer (wire.fleet_of), so
    machines with the same intent share a parsed spec, as they do in production.
    """
    inv = Inventory.model_validate(synthetic.inventory(nodes))
    xrs = synthetic.fleet(machines, nodes, steady=steady)
    answer = fnv1.Resources(items=[fnv1.Resource(resource=resource.dict_to_struct(x)) for x in xrs])
    return inv, fleet.build(wire.fleet_of(answer), fleet.member(xrs[-1]))


def run_once(inv: Inventory, members: list[fleet.Member]) -> tuple[float, Outcome]:
    """Time one assign() for the last member."""
    defaults = Defaults()
    me = members[-1]
    assert me.spec is not None
    demand = resolve(me.spec, inv, defaults)
    start = time.perf_counter()
    outcome = assign(inv, defaults, members, me, demand)
    return time.perf_counter() - start, outcome


def median_time(machines: int, nodes: int, *, steady: bool, repeats: int) -> float:
    """The median time of at least `repeats` calls (more for fast cases, up to MIN_SECONDS).

    Each call rebuilds its ledger, as in production. Small cases are repeated
    longer so that the smallest case, which every ratio is normalized to, is not noise.
    """
    inv, members = prepared(machines, nodes, steady=steady)
    run_once(inv, members)  # warm-up: imports, bounded parse caches
    times: list[float] = []
    while len(times) < repeats or (sum(times) < MIN_SECONDS and len(times) < MAX_REPEATS):
        seconds, outcome = run_once(inv, members)
        assert outcome.placement is not None, outcome.unschedulable
        times.append(seconds)
    return statistics.median(times)


def measure(repeats: int, fleets: tuple[int, ...], nodes: tuple[int, ...]) -> list[Case]:
    """Measure every (fleet, nodes) pair."""
    cases = []
    for machines in fleets:
        for count in nodes:
            steady = median_time(machines, count, steady=True, repeats=repeats)
            worst = median_time(machines, count, steady=False, repeats=repeats)
            cases.append(Case(machines, count, steady, worst))
    return cases


def table(cases: list[Case]) -> str:
    """A markdown table with times in ms and per-(fleet x nodes) ratios to the smallest case."""
    base = cases[0]
    unit_steady = base.steady / (base.machines * base.nodes)
    unit_worst = base.worst / (base.machines * base.nodes)
    lines = [
        "| fleet | nodes | steady ms | steady ratio | worst ms | worst ratio |",
        "|------:|------:|----------:|-------------:|---------:|------------:|",
    ]
    for case in cases:
        size = case.machines * case.nodes
        lines.append(
            f"| {case.machines} | {case.nodes} | {case.steady * 1e3:.2f} "
            f"| {case.steady / size / unit_steady:.3f} | {case.worst * 1e3:.2f} "
            f"| {case.worst / size / unit_worst:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (median)")
    parser.add_argument("--fleets", type=int, nargs="+", default=list(FLEETS))
    parser.add_argument("--nodes", type=int, nargs="+", default=list(NODES))
    args = parser.parse_args()
    cases = measure(args.repeats, tuple(args.fleets), tuple(args.nodes))
    print(table(cases))
    print(
        "\nratio = (time / (fleet x nodes)) / (same for the smallest case); "
        "<= 1 means no worse than linear in fleet x nodes"
    )


if __name__ == "__main__":
    main()
