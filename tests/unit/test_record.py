"""The placement record (function/record.py): each encoding reads back what it wrote.

The three encodings do not carry the same fields, and this file says which: CARRIES is the
table, and test_each_encoding_drops_exactly_what_the_table_says fails when an encoding gains
or loses a field, so that the table (and record.py's docstring) is changed with it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from typing import Any

import pytest
from crossplane.function import resource
from hypothesis import given, settings
from hypothesis import strategies as st

from function import record
from function.model import DNS_LABEL, NAME
from function.record import Held
from tests.unit.build import inventory

ALL = frozenset(f.name for f in dataclasses.fields(Held))
SHARED = ALL - {"snippets", "adopted"}
# Which fields of a Held each encoding carries. The status and the Reservations say where a
# machine is and what it holds; where its snippets went and whether it was adopted are known
# only from its Workspace (which exists whenever either matters).
CARRIES = {"annotations": ALL, "status": SHARED, "reservation": SHARED}


def wire(doc: dict[str, Any]) -> dict[str, Any]:
    """A document as the next call receives it: through a protobuf Struct (numbers are floats)."""
    return resource.struct_to_dict(resource.dict_to_struct(doc))


def through_annotations(held: Held) -> Held | None:
    return record.from_workspace(wire({"metadata": {"annotations": record.to_annotations(held)}}))


def through_status(held: Held) -> Held | None:
    return record.from_status(wire(record.to_status(held, None)))


def through_reservation(held: Held) -> Held | None:
    return record.from_reservation(wire(record.to_reservation(held)))


THROUGH = {
    "annotations": through_annotations,
    "status": through_status,
    "reservation": through_reservation,
}


def kept(held: Held, fields: frozenset[str]) -> Held:
    """The Held with only these fields, the others at their defaults."""
    defaults = Held(node="", vmid=0)
    return dataclasses.replace(
        held, **{f: getattr(defaults, f) for f in ALL - fields if f not in {"node", "vmid"}}
    )


names = st.from_regex(NAME, fullmatch=True)
addresses = st.builds(
    lambda ip, prefix: str(ipaddress.IPv4Interface((ip, prefix))),
    st.integers(0, 2**32 - 1),
    st.integers(1, 32),
)
# A valid Held, as placement makes one. Its devices are sorted: every reader sorts them.
helds = st.builds(
    Held,
    node=st.from_regex(DNS_LABEL, fullmatch=True),
    vmid=st.integers(record.MIN_VMID, record.MAX_VMID),
    devices=st.sets(names, max_size=4).map(lambda s: tuple(sorted(s))),
    address=st.none() | addresses,
    network=st.none() | names,
    snippets=st.none() | names,
    adopted=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(helds)
@pytest.mark.parametrize("encoding", sorted(THROUGH))
def test_round_trip(encoding: str, held: Held) -> None:
    assert THROUGH[encoding](held) == kept(held, CARRIES[encoding])


@settings(max_examples=300, deadline=None)
@given(helds)
def test_the_encodings_agree(held: Held) -> None:
    read = {name: through(held) for name, through in THROUGH.items()}
    assert all(r is not None for r in read.values())
    shared = {name: kept(r, SHARED) for name, r in read.items() if r is not None}
    assert shared["annotations"] == shared["status"] == shared["reservation"]


@pytest.mark.parametrize("encoding", sorted(THROUGH))
def test_each_encoding_drops_exactly_what_the_table_says(encoding: str) -> None:
    full = Held("pve", 200, ("coral", "rtx3070"), "10.0.0.5/24", "lan", "local", adopted=True)
    read = THROUGH[encoding](full)
    assert read is not None
    dropped = {f for f in ALL if getattr(read, f) != getattr(full, f)}
    assert dropped == set(ALL - CARRIES[encoding])


def test_the_status_reads_back_what_it_shows_people() -> None:
    # With the inventory, each device also shows its class and address; the reader takes the
    # mapping names only.
    held = Held("b", 200, ("coral0", "gpu0"), "10.0.0.5/24", "lan")
    shown = record.to_status(held, inventory())
    assert shown["deviceSummary"] == "coral-tpu:coral0,gpu-nvidia:gpu0"
    assert record.from_status(wire(shown)) == held


def test_devices_read_back_sorted_whatever_order_they_were_written_in() -> None:
    # The annotation keeps the order it was given (a fresh placement lists devices in the
    # order of the claim's requests); every reader sorts, so the record read back is sorted.
    held = Held("pve", 200, ("rtx3070", "coral"))
    assert record.to_annotations(held)[record.ANNOTATION_PREFIX + "devices"] == "rtx3070,coral"
    for through in THROUGH.values():
        got = through(held)
        assert got is not None
        assert got.devices == ("coral", "rtx3070")


# --- malformed stored values ----------------------------------------------------------------

P = record.ANNOTATION_PREFIX
GOOD_NOTES = {P + "node": "pve", P + "vmid": "200"}
GOOD_STATUS: dict[str, Any] = {"node": "pve", "vmId": 200.0}
GOOD_RESERVATION: dict[str, Any] = {"node": "pve", "vmId": 200, "devices": []}
PVE_200 = Held("pve", 200)


def workspace(notes: Any, module: Any = None) -> dict[str, Any]:
    ws: dict[str, Any] = {"metadata": {"annotations": notes}}
    if module is not None:
        ws["spec"] = {"forProvider": {"module": module}}
    return ws


@dataclasses.dataclass(frozen=True)
class Case:
    reason: str
    read: Any  # what is stored, as the encoding's reader takes it
    want: Held | None


MALFORMED = [
    # Without a node and a VMID Proxmox could have, there is no record.
    Case("no metadata", lambda: record.from_workspace({}), None),
    Case("annotations not a map", lambda: record.from_workspace(workspace(["x"])), None),
    Case(
        "annotation without a node",
        lambda: record.from_workspace(workspace({P + "vmid": "200"})),
        None,
    ),
    Case(
        "annotated node empty",
        lambda: record.from_workspace(workspace({**GOOD_NOTES, P + "node": ""})),
        None,
    ),
    *(
        Case(
            f"annotated VMID {vmid!r}",
            lambda vmid=vmid: record.from_workspace(workspace({**GOOD_NOTES, P + "vmid": vmid})),
            None,
        )
        for vmid in ["", "abc", "99", "1000000000", "-200", "2e2", "200.0", " 200", 200.5]
    ),
    Case("empty status", lambda: record.from_status({}), None),
    Case("status node a list", lambda: record.from_status({**GOOD_STATUS, "node": ["pve"]}), None),
    *(
        Case(
            f"status VMID {vmid!r}",
            lambda vmid=vmid: record.from_status({**GOOD_STATUS, "vmId": vmid}),
            None,
        )
        for vmid in [None, True, 0, 0.0, 99, 200.5, 1e10, float("nan"), float("inf"), "x", [200]]
    ),
    Case("reservation placement not a map", lambda: record.from_reservation("pve/200"), None),
    Case("reservation placement absent", lambda: record.from_reservation(None), None),
    Case(
        "reservation VMID out of range",
        lambda: record.from_reservation({**GOOD_RESERVATION, "vmId": 99}),
        None,
    ),
    Case(
        "reservation node empty",
        lambda: record.from_reservation({**GOOD_RESERVATION, "node": ""}),
        None,
    ),
    # A malformed field is ignored; the rest of the record stands.
    *(
        Case(
            f"{where} address {address!r} ignored",
            read,
            PVE_200,
        )
        for address in ["10.0.0.5", "300.1.1.1/24", "10.0.0.5/33", "fe80::1/64", "", 7, None]
        for where, read in [
            (
                "annotated",
                lambda a=address: record.from_workspace(
                    workspace({**GOOD_NOTES, P + "address": a})
                ),
            ),
            ("status", lambda a=address: record.from_status({**GOOD_STATUS, "address": a})),
            (
                "reservation",
                lambda a=address: record.from_reservation({**GOOD_RESERVATION, "address": a}),
            ),
        ]
    ),
    *(
        Case(f"{where} network {network!r} ignored", read, PVE_200)
        for network in ["", 5, ["lan"], None]
        for where, read in [
            (
                "annotated",
                lambda n=network: record.from_workspace(
                    workspace({**GOOD_NOTES, P + "network": n})
                ),
            ),
            ("status", lambda n=network: record.from_status({**GOOD_STATUS, "network": n})),
            (
                "reservation",
                lambda n=network: record.from_reservation({**GOOD_RESERVATION, "network": n}),
            ),
        ]
    ),
    Case(
        "annotated devices: empty names dropped",
        lambda: record.from_workspace(workspace({**GOOD_NOTES, P + "devices": ",,coral,"})),
        Held("pve", 200, ("coral",)),
    ),
    Case(
        "annotated devices not text",
        lambda: record.from_workspace(workspace({**GOOD_NOTES, P + "devices": ["coral"]})),
        PVE_200,
    ),
    Case(
        "status devices not a list",
        lambda: record.from_status({**GOOD_STATUS, "devices": "coral"}),
        PVE_200,
    ),
    Case(
        "status devices without a mapping",
        lambda: record.from_status(
            {
                **GOOD_STATUS,
                "devices": ["coral", {"mapping": ""}, {"mapping": 5.0}, {"node": "pve"}, None],
            }
        ),
        PVE_200,
    ),
    Case(
        "reservation devices not a list",
        lambda: record.from_reservation({**GOOD_RESERVATION, "devices": "coral"}),
        PVE_200,
    ),
    Case(
        "reservation devices that are not names",
        lambda: record.from_reservation(
            {**GOOD_RESERVATION, "devices": ["", None, 5, {"mapping": "coral"}, ["coral"]]}
        ),
        PVE_200,
    ),
    Case(
        "annotated adopted other than 'true'",
        lambda: record.from_workspace(workspace({**GOOD_NOTES, P + "adopted": "yes"})),
        PVE_200,
    ),
    Case(
        "annotated snippets empty, module broken",
        lambda: record.from_workspace(workspace({**GOOD_NOTES, P + "snippets": ""}, "{not json")),
        PVE_200,
    ),
    Case(
        "no snippets annotation: an older Workspace's module says where they are",
        lambda: record.from_workspace(
            workspace(
                GOOD_NOTES,
                json.dumps(
                    {
                        "resource": {
                            "proxmox_virtual_environment_file": {
                                "user_data": {"datastore_id": "local"}
                            }
                        }
                    }
                ),
            )
        ),
        Held("pve", 200, snippets="local"),
    ),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c.reason for c in MALFORMED])
def test_malformed_stored_values(case: Case) -> None:
    assert case.read() == case.want, case.reason
