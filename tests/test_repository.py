"""The repository as a reader meets it: every file its text names exists, the core is free of
protobuf, and README explains every condition reason."""

from __future__ import annotations

import re
import subprocess

from function.outcome import Reason
from tests.crd import ROOT

# A path the repository's text names as one of its own files (docs/x.md, function/y.py, ...).
REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:docs|tests|function|tools|bench|fabric_discover|examples|xrds|compositions"
    r"|cluster|nixos|package)/[\w./-]*\w\.(?:md|py|yaml|sh|nix|env|json))"
)


def test_every_document_the_repository_names_is_in_it() -> None:
    """Comments, docstrings and docs cite files of the repository only, and each one exists."""
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    this = "tests/test_repository.py"  # its own examples and message are not citations
    texts = [
        n
        for n in listed
        if re.search(r"\.(py|md|yaml|sh|nix|j2|toml)$|^Makefile$", n) and n != this
    ]
    missing = {
        (name, ref)
        for name in texts
        for ref in REPO_PATH.findall((ROOT / name).read_text(encoding="utf-8"))
        if not (ROOT / ref).exists()
    }
    assert texts
    assert missing == set()
    design = [n for n in texts if "DESIGN" in (ROOT / n).read_text(encoding="utf-8")]
    assert design == [], "DESIGN.md is not in the repository: cite docs/invariants.md"


def test_only_the_edge_touches_protobuf() -> None:
    """Data flows one way: the request is read and the response written at the edge; admission,
    placement and rendering see plain data (README's Layout, wire.py)."""
    sdk = re.compile(r"^\s*(?:import|from)\s+(?:google\.protobuf|crossplane\.function)\b", re.M)
    touching = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "function").rglob("*.py")
        if sdk.search(p.read_text(encoding="utf-8"))
    )
    edge = ["function/fn.py", "function/main.py", "function/requirements.py", "function/wire.py"]
    assert touching == edge


def test_the_readme_explains_every_condition_reason() -> None:
    """Alerts match on reasons: README's table lists exactly those outcome.Reason names."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("Every condition reason Fabric sets", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    listed = {name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert listed == {reason.value for reason in Reason}
