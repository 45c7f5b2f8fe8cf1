"""Golden files: each example XR's whole render, as `crossplane render` prints it.

tests/golden/<example>.yaml holds what `crossplane render --include-function-results` of
Crossplane 2.0 prints for examples/xrs/<example>.yaml with the example inventory and fleet:
the XR with its status, every composed resource (a Workspace's module kept as the JSON string
it is) and the function's results. tools/xpsim.py stands in for the CLI
(tests/test_real_crossplane.py holds it equal to the real one). Keys are sorted, as the CLI
prints them; multi-line strings are literal blocks. tests/test_golden.py renders each example
over gRPC and compares the text whole.

Regenerate after an intended change, then review `git diff tests/golden/`:

    python -m tools.golden              # every example
    python -m tools.golden gpu-worker   # one (an XR file or an example's name)
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from tools import render, xpsim

GOLDEN = xpsim.ROOT / "tests" / "golden"
VERSION = (2, 0)
REGENERATE = "python -m tools.golden"
# Diff lines longer than this are shortened; the module's own diff follows, parsed.
LONG_LINE = 240


def golden_path(example: Path) -> Path:
    """tests/golden/<example>.yaml."""
    return GOLDEN / f"{example.stem}.yaml"


def header(example: Path) -> str:
    """What a golden file says about itself."""
    return (
        f"# {render.shown(example)} as `crossplane render --include-function-results` of\n"
        f"# Crossplane {VERSION[0]}.{VERSION[1]} prints it, with examples/inventory.yaml and"
        " the example fleet\n"
        "# (tools/xpsim.py, held to the real CLI by tests/test_real_crossplane.py). Keys sorted.\n"
        f"# Checked by tests/test_golden.py. Do not edit: regenerate with `{REGENERATE}`.\n"
    )


def documents(call: render.Call, example: Path) -> list[dict[str, Any]]:
    """The documents the CLI prints for one example: the XR, composed resources, results."""
    outcome = render.render(
        call, xpsim.load_yaml(example), render.fleet_and_inventory(), v2=VERSION >= (2, 0)
    )
    out = outcome.rendered
    return [render.ordered(render.plain(d)) for d in (out.xr, *out.composed, *out.results)]


def text(example: Path, docs: Iterable[dict[str, Any]]) -> str:
    """A golden file's whole text."""
    return header(example) + render.to_yaml(docs)


def rendered_text(call: render.Call, example: Path) -> str:
    """What tests/golden/<example>.yaml must hold, rendered now."""
    return text(example, documents(call, example))


# --- telling a difference -----------------------------------------------------------------------


def _shorten(line: str) -> str:
    if len(line) <= LONG_LINE:
        return line
    body = line.rstrip("\n")
    return f"{body[: LONG_LINE - 40]}… [{len(body)} characters, shortened]\n"


def _diff(want: str, got: str, want_name: str, got_name: str) -> str:
    lines = difflib.unified_diff(
        want.splitlines(keepends=True),
        got.splitlines(keepends=True),
        fromfile=want_name,
        tofile=got_name,
    )
    return "".join(_shorten(line if line.endswith("\n") else line + "\n") for line in lines)


def _load_all(stream: str) -> list[Any]:
    try:
        return [d for d in yaml.safe_load_all(stream) if d is not None]
    except yaml.YAMLError:
        return []


def _modules(docs: Sequence[Any]) -> dict[str, Any]:
    found = {}
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        module = ((doc.get("spec") or {}).get("forProvider") or {}).get("module")
        if not isinstance(module, str):
            continue
        meta = doc.get("metadata") or {}
        name = (meta.get("annotations") or {}).get(xpsim.RESOURCE_NAME_ANNOTATION, "?")
        try:
            found[f"{doc.get('kind')} {name}"] = json.loads(module)
        except ValueError:
            found[f"{doc.get('kind')} {name}"] = module
    return found


def explain(example: Path, want: str, got: str) -> str:
    """Why a render does not match its golden file: a unified diff, -want +got.

    A Workspace's module is one long JSON line; when it differs, its parsed form is diffed
    too, so the changed Terraform attribute or user-data line shows.
    """
    path = render.shown(golden_path(example))
    if not want:
        intro = f"{path} is missing."
    else:
        intro = f"{render.shown(example)} renders differently from {path} (-want +got):"
    parts = [intro, _diff(want, got, f"{path} (want)", "rendered now (got)")]
    want_modules = _modules(_load_all(want))
    for key, module in _modules(_load_all(got)).items():
        if key in want_modules and want_modules[key] != module:
            parts.append(f"The module of {key}, parsed (-want +got):")
            parts.append(
                _diff(
                    render.to_yaml([render.ordered(want_modules[key])]),
                    render.to_yaml([render.ordered(module)]),
                    f"{path} (want)",
                    "rendered now (got)",
                )
            )
    parts.append(
        f"If the change is intended, regenerate with `{REGENERATE}` (or "
        f"`{REGENERATE} {example.stem}`) and review `git diff tests/golden/`."
    )
    return "\n".join(parts)


# --- the command --------------------------------------------------------------------------------


def write(paths: Sequence[Path]) -> list[Path]:
    """Render each example through the function and write its golden file; return the changed."""
    GOLDEN.mkdir(parents=True, exist_ok=True)
    changed = []
    with xpsim.serve("--insecure") as address:
        call = xpsim.stub(address)
        for example in paths:
            path = golden_path(example)
            new = rendered_text(call, example)
            if not path.exists() or path.read_text(encoding="utf-8") != new:
                path.write_text(new, encoding="utf-8")
                changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> None:
    """Regenerate the golden files."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "xrs", nargs="*", metavar="EXAMPLE", help="an example XR or its name (default: all)"
    )
    args = parser.parse_args(argv)
    paths = [render.resolve(a) for a in args.xrs] if args.xrs else render.examples()
    outside = [p for p in paths if p not in render.examples()]
    if outside:
        msg = f"golden files are kept for the examples only, not {render.shown(outside[0])}"
        raise SystemExit(msg)
    written = write(paths)
    for path in written:
        sys.stdout.write(f"wrote {render.shown(path)}\n")
    examples = {p.stem for p in render.examples()}
    for stale in sorted(p for p in GOLDEN.glob("*.yaml") if p.stem not in examples):
        stale.unlink()  # its example is gone
        sys.stdout.write(f"removed {render.shown(stale)}\n")
    sys.stdout.write(
        f"{len(written)} golden file(s) written, {len(paths) - len(written)} already up to date;"
        " review `git diff tests/golden/`\n"
    )


if __name__ == "__main__":
    main()
