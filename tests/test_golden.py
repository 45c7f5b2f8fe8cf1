"""Whole-response tests: each example renders exactly as its golden file says.

tests/golden/<example>.yaml is what `crossplane render --include-function-results` of
Crossplane 2.0 prints for examples/xrs/<example>.yaml (tools/golden.py): the XR with its
status, every composed resource and the results. Each example goes through the function over
real gRPC, its requirements answered the 2.x way from the example inventory and fleet, and the
output is compared whole, so any change to what the function emits shows here as a diff
(-want +got). Regenerate after an intended change with `python -m tools.golden`.
"""

from __future__ import annotations

import json

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import pytest
import yaml

from function.fleet import is_container
from tools import golden, render, xpsim

EXAMPLES = render.examples()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_renders_exactly_as_its_golden_file(example, address):
    got = golden.rendered_text(xpsim.stub(address), example)
    path = golden.golden_path(example)
    want = path.read_text(encoding="utf-8") if path.exists() else ""
    if got != want:
        pytest.fail(golden.explain(example, want, got), pytrace=False)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_golden_text_holds_the_rendered_data_exactly(example, address):
    # What the file says, read back as YAML, is the response: no string folded or re-escaped.
    docs = golden.documents(xpsim.stub(address), example)
    assert list(yaml.safe_load_all(golden.text(example, docs))) == docs
    assert docs[0]["kind"] == xpsim.load_yaml(example)["kind"], "the XR comes first"


def test_every_golden_file_has_its_example():
    have = sorted(p.stem for p in golden.GOLDEN.glob("*.yaml"))
    assert have == sorted(p.stem for p in EXAMPLES), f"regenerate with `{golden.REGENERATE}`"


def test_the_examples_are_machines_then_containers():
    containers = [is_container(xpsim.load_yaml(p)) for p in EXAMPLES]
    assert containers == sorted(containers)
    assert any(containers), "make render shows a container too"


def workspace(module: dict) -> dict:
    return {
        "apiVersion": "tf.upbound.io/v1beta1",
        "kind": "Workspace",
        "metadata": {"annotations": {xpsim.RESOURCE_NAME_ANNOTATION: "workspace"}},
        "spec": {"forProvider": {"module": json.dumps(module, separators=(",", ":"))}},
    }


def test_a_difference_reads_as_a_diff_naming_the_way_to_regenerate():
    example = EXAMPLES[0]
    user_data = "#cloud-config\nhostname: a\npackages:\n- curl\n" + "# padding\n" * 40
    module = {"resource": {"vm": {"cores": 2, "name": "a", "user_data": user_data}}}
    want = golden.text(example, [workspace(module)])
    module["resource"]["vm"]["user_data"] = user_data.replace("- curl", "- wget")
    got = golden.text(example, [workspace(module)])
    message = golden.explain(example, want, got)
    lines = message.splitlines()
    assert lines[0].endswith("(-want +got):")
    assert f"--- tests/golden/{example.stem}.yaml (want)" in lines
    assert "+++ rendered now (got)" in lines
    # The module is one long line, shortened in the text diff and diffed again parsed.
    assert all(len(line) <= golden.LONG_LINE + 40 for line in lines)
    assert "The module of Workspace workspace, parsed (-want +got):" in lines
    assert "-      - curl" in lines
    assert "+      - wget" in lines
    assert "python -m tools.golden" in lines[-1]


def test_a_missing_golden_file_says_so():
    example = EXAMPLES[0]
    message = golden.explain(example, "", "---\nkind: X\n")
    assert message.startswith(f"tests/golden/{example.stem}.yaml is missing.")
    assert "+kind: X" in message.splitlines()


def test_literal_blocks_and_the_strings_pyyaml_would_misread():
    # Multi-line strings read as literal blocks; NEL and the Unicode separators, which
    # PyYAML's Python emitter writes raw, are escaped so they read back unchanged.
    doc = {"a": "line 1\nline 2\n", "b": "x\x85y\n", "c": "p\u2028q", "d": "trail \nx"}
    out = render.to_yaml([doc])
    assert "a: |\n  line 1\n  line 2\n" in out
    assert list(yaml.safe_load_all(out)) == [doc]


def test_documents_print_in_the_order_kubernetes_users_read():
    doc = {"status": {"b": 1, "a": 2}, "spec": {}, "metadata": {}, "kind": "K", "apiVersion": "v"}
    assert list(render.ordered(doc)) == ["apiVersion", "kind", "metadata", "spec", "status"]
    assert list(render.ordered(doc)["status"]) == ["a", "b"]


def test_the_summary_reads_like_kubectl_get_machines():
    xr = xpsim.load_yaml(EXAMPLES[0])
    devices = [
        {"class": "gpu-nvidia", "mapping": "rtx3070"},
        {"class": "coral-tpu", "mapping": "c"},
    ]
    warn = fnv1.Result(
        severity=fnv1.SEVERITY_WARNING,
        message="cpu waits for a restart",
        target=fnv1.TARGET_COMPOSITE_AND_CLAIM,
    )
    status = {"node": "n1", "vmId": 202.0, "phase": "Scheduled", "devices": devices}
    outcome = render.Outcome(
        xr,
        fnv1.RunFunctionResponse(results=[warn]),
        xpsim.Rendered(xr={"status": status}, composed=[], results=[]),
    )
    lines = render.summary([outcome]).splitlines()
    assert lines[0].split() == ["NAME", "NODE", "VMID", "IP", "DEVICES", "PHASE"]
    name = render.claim_name(xr)
    assert lines[1].split() == [
        name,
        "n1",
        "202",
        "<none>",
        "gpu-nvidia:rtx3070,coral-tpu:c",
        "Scheduled",
    ]
    assert lines[3] == "Warnings the claims show:"
    assert lines[5].split() == [name, "Warning", "cpu", "waits", "for", "a", "restart"]


def test_containers_get_their_own_table_like_kubectl_get_containers():
    machine, container = xpsim.load_yaml(EXAMPLES[0]), xpsim.load_yaml(EXAMPLES[-1])

    def outcome(xr: dict, vmid: float) -> render.Outcome:
        status = {"node": "n1", "vmId": vmid, "ip": "10.0.0.9", "phase": "Running"}
        rendered = xpsim.Rendered(xr={"status": status}, composed=[], results=[])
        return render.Outcome(xr, fnv1.RunFunctionResponse(), rendered)

    lines = render.summary([outcome(container, 205.0), outcome(machine, 200.0)]).splitlines()
    header = ["NAME", "NODE", "VMID", "IP", "DEVICES", "PHASE"]
    assert [line.split() for line in lines] == [
        header,
        [render.claim_name(machine), "n1", "200", "10.0.0.9", "<none>", "Running"],
        [],
        header,
        [render.claim_name(container), "n1", "205", "10.0.0.9", "<none>", "Running"],
        [],
        ["No", "claim", "shows", "a", "warning."],
    ]
