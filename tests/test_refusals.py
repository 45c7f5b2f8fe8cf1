"""docs/refusals.md, kept true: every documented refusal is sent to the function over gRPC.

The catalogue's tables have the columns Case, Where, Input and Message. Input is a YAML flow
value applied to a known-good starting point chosen by Where (a JSON merge patch, RFC 7386, in
which a key ending in `+` appends to a list); Message is text the claim must show. Each row is
one test: the message must appear on the claim (a warning event, the status message or a
condition message), and nothing may be FATAL.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import pydantic
import pytest
import yaml

from function.model import MachineSpec
from tests.conftest import (
    applied,
    basic_spec,
    desired_ws,
    fn_input,
    inventory_cm,
    inventory_data,
    reconcile,
    status,
    with_inventory,
    with_status,
    xr,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "refusals.md"
COLUMNS = ["Case", "Where", "Input", "Message"]


@dataclass(frozen=True)
class Row:
    """One documented refusal."""

    case: str
    where: str
    patch: Any
    message: str


def _code(cell: str) -> str:
    match = re.fullmatch(r"`(.*)`", cell.strip())
    assert match, f"{cell!r}: Input and Message cells are one code span each"
    return match.group(1)


def catalogue(text: str) -> list[Row]:
    """Every row of every table whose header is exactly COLUMNS."""
    rows: list[Row] = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if [c.strip() for c in line.strip().strip("|").split("|")] != COLUMNS:
            continue
        for row in lines[index + 2 :]:
            if not row.startswith("|"):
                break
            cells = [c.strip() for c in row.strip().strip("|").split("|")]
            assert len(cells) == len(COLUMNS), f"{row!r}: want {len(COLUMNS)} cells"
            case, where, patch, message = cells
            assert where in SENDERS, f"{case}: Where is {where!r}; known: {sorted(SENDERS)}"
            rows.append(Row(case, where, yaml.safe_load(_code(patch)), _code(message)))
    return rows


def merge(target: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386); a key ending in + appends the patch's list items."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.endswith("+"):
            out[key[:-1]] = [*out.get(key[:-1], []), *copy.deepcopy(value)]
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def claim_facing(rsp: fnv1.RunFunctionResponse) -> list[str]:
    """Everything the claim shows: events aimed at it, its conditions, status.message."""
    out = [r.message for r in rsp.results if r.target == fnv1.TARGET_COMPOSITE_AND_CLAIM]
    out += [c.message for c in rsp.conditions if c.target == fnv1.TARGET_COMPOSITE_AND_CLAIM]
    out.append(str(status(rsp).get("message", "")))
    return out


def placed(call):
    """A running machine: (XR with status, observed Workspace, first response)."""
    machine = xr("running", basic_spec())
    first = reconcile(call, machine)
    assert desired_ws(first) is not None, first.results
    return with_status(machine, first), applied(first), first


def _claim(call, row: Row) -> fnv1.RunFunctionResponse:
    return reconcile(call, xr("refused", merge(basic_spec(), row.patch)))


def _namespaced_claim(call, row: Row) -> fnv1.RunFunctionResponse:
    machine = xr("refused", merge(basic_spec(), row.patch), namespaced=True)
    return reconcile(call, machine, v2=True)


def _claim_name(call, row: Row) -> fnv1.RunFunctionResponse:
    return reconcile(call, xr(str(row.patch), basic_spec()))


def _inventory(call, row: Row) -> fnv1.RunFunctionResponse:
    machine = xr("refused", basic_spec())
    if row.where == "inventory":
        cm = with_inventory(merge(inventory_data(inventory_cm()), row.patch))
    elif row.where == "inventory text":
        cm = inventory_cm()
        cm["data"]["inventory.yaml"] += str(row.patch) + "\n"
    else:
        cm = merge(inventory_cm(), row.patch)
    return reconcile(call, machine, [cm, machine])


# The rest concern the request as a whole or a machine that exists: shown on a running one.


def _function_input(call, row: Row) -> fnv1.RunFunctionResponse:
    machine, observed, _ = placed(call)
    return reconcile(call, machine, observed=observed, inp=merge(fn_input(), row.patch))


def _fleet(call, row: Row) -> fnv1.RunFunctionResponse:
    machine, observed, _ = placed(call)
    others = [xr(f"other-{i}", {"class": "small"}) for i in range(row.patch["machines"])]
    return reconcile(call, machine, [inventory_cm(), *others, machine], observed=observed)


def _workspace(call, row: Row) -> fnv1.RunFunctionResponse:
    machine, observed, _ = placed(call)
    return reconcile(call, machine, observed=merge(observed, row.patch))


SENDERS = {
    "claim": _claim,
    "namespaced claim": _namespaced_claim,
    "claim name": _claim_name,
    "inventory": _inventory,
    "inventory text": _inventory,
    "inventory ConfigMap": _inventory,
    "function input": _function_input,
    "fleet": _fleet,
    "Workspace": _workspace,
}


def send(call, row: Row) -> fnv1.RunFunctionResponse:
    """Send a row's input through the function, from the starting point its Where names."""
    return SENDERS[row.where](call, row)


ROWS = catalogue(DOC.read_text(encoding="utf-8"))


@pytest.mark.parametrize("row", ROWS, ids=[r.case for r in ROWS])
def test_documented_refusal_shows_its_message_on_the_claim(call, row):
    rsp = send(call, row)
    fatal = [r.message for r in rsp.results if r.severity == fnv1.SEVERITY_FATAL]
    assert not fatal, f"{row.case}: FATAL never reaches the claim: {fatal}"
    shown = claim_facing(rsp)
    assert any(row.message in m for m in shown), (
        f"{row.case}: want {row.message!r} on the claim; it shows {shown}"
    )


def test_the_catalogue_is_not_empty_and_cases_are_unique():
    cases = [r.case for r in ROWS]
    assert len(cases) >= 40, f"{len(cases)} rows: did a table header change?"
    assert len(cases) == len(set(cases)), "case names are test ids: keep them unique"


def _model_in(annotation: Any) -> type[pydantic.BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    if isinstance(annotation, typing.ForwardRef | types.NoneType):
        return None
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def claim_fields(model: type[pydantic.BaseModel], prefix: str = "spec") -> list[str]:
    """Every leaf field of the claim spec, by the name users write (spec.devices.count)."""
    out = []
    for name, info in model.model_fields.items():
        path = f"{prefix}.{info.alias or name}"
        nested = _model_in(info.annotation)
        out += claim_fields(nested, path) if nested is not None else [path]
    return out


def test_every_claim_field_has_a_documented_refusal():
    documented = " ".join(
        re.sub(r"\[\d+\]", "", r.message) for r in ROWS if r.where.endswith("claim")
    )
    missing = [f for f in claim_fields(MachineSpec) if f not in documented]
    assert not missing, f"claim fields with no refusal in {DOC.name}: {missing}"


def test_claim_cannot_reference_another_namespaces_secret(call):
    """A claim in one namespace names a Secret in another: the cluster-scoped Workspace reads
    any namespace's Secret, so this would put e.g. the Proxmox credentials into the claim
    owner's VM. Refused for claims and namespaced XRs alike (render._check_secret_namespaces)."""
    spec = basic_spec(roles=["k3s-server"])
    spec["bootstrap"]["secrets"] = [
        {
            "name": "k3s_token",
            "secretRef": {
                "namespace": "crossplane-system",
                "name": "proxmox-credentials",
                "key": "credentials.json",
            },
        }
    ]
    rsp = reconcile(call, xr("thief", spec, namespace="team-a"))
    got = status(rsp)
    assert got["phase"] == "Invalid", f"accepted: {got}"
    assert "spec.bootstrap.secrets[0].secretRef.namespace" in got["message"]


def test_inventory_wide_refusal_does_not_quote_the_inventory(call):
    row = next(r for r in ROWS if r.case == "duplicate node")
    message = status(send(call, row))["message"]
    assert ": : " not in message, message
    assert "{'nodes'" not in message, message
