"""The real tools that judge what Fabric emits, as built by `make tools` (tools/build-tools.sh).

Where they are (FABRIC_TOOLS, default ~/.cache/fabric-tools), which versions are pinned
(tools/versions.env, the one place a version is written), and the three Crossplane CLI lines
Fabric is verified with. Nothing here builds a tool: a missing one is reported with the command
that builds it, and the tests decide whether that is a skip or (under CI) a failure.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_COMMAND = "make tools"


def versions() -> dict[str, str]:
    """The pinned versions, read from tools/versions.env (shell `NAME=value` lines)."""
    out = {}
    for line in (ROOT / "tools" / "versions.env").read_text().splitlines():
        match = re.fullmatch(r"([A-Z0-9_]+)=(\S+)", line.strip())
        if match:
            out[match[1]] = match[2]
    return out


VERSIONS = versions()
BPG_VERSION = VERSIONS["BPG_VERSION"]
TERRAFORM_VERSION = VERSIONS["TERRAFORM_VERSION"]


def home() -> Path:
    """The tool cache, outside the repository."""
    default = Path.home() / ".cache" / "fabric-tools"
    return Path(os.environ.get("FABRIC_TOOLS", default))


def binary(name: str) -> Path | None:
    """The built tool `name` (e.g. `terraform`, `crossplane-2.0`), or None when not built."""
    path = home() / "bin" / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def missing(name: str) -> str:
    """Why a test cannot run: the tool and the command that builds it."""
    return f"{name} is not built in {home() / 'bin'}: run `{BUILD_COMMAND}`"


def plugin_dir() -> Path:
    """The `terraform init -plugin-dir` tree holding the pinned bpg/proxmox provider."""
    return home() / "tf-plugins"


def validate_cache() -> Path:
    """`crossplane beta validate`'s cache, with an empty entry for the offline Crossplane image."""
    return home() / "validate-cache"


# `beta validate` always adds the Crossplane image as a dependency and pulls it unless its cache
# directory exists. tools/build-tools.sh fills this one with the pinned release's core CRDs.
OFFLINE_CROSSPLANE_IMAGE = f"offline/crossplane:{VERSIONS['CROSSPLANE_V2']}"


@dataclass(frozen=True)
class CrossplaneCLI:
    """One Crossplane CLI line: the binary, how it renders, how it takes required resources."""

    name: str
    version: str
    render: tuple[str, ...]
    resources_flag: str
    # The requirement protocol this line answers (2.x: `required_resources`).
    v2: bool

    def release(self) -> tuple[int, int]:
        """(major, minor) of the pinned version: what the CLI's behaviour depends on."""
        major, minor = self.version.lstrip("v").split(".")[:2]
        return int(major), int(minor)

    def path(self) -> Path | None:
        """The built binary, or None."""
        return binary(self.name)


CLIS = (
    # `crossplane beta render`: the command the design card names for local tests (CLI <= 1.16).
    CrossplaneCLI(
        "crossplane-1.16",
        VERSIONS["CROSSPLANE_V1_16"],
        ("beta", "render"),
        "--extra-resources",
        v2=False,
    ),
    CrossplaneCLI(
        "crossplane-1.20",
        VERSIONS["CROSSPLANE_V1_20"],
        ("render",),
        "--extra-resources",
        v2=False,
    ),
    # The homelab runs Crossplane v2.0.
    CrossplaneCLI(
        "crossplane-2.0",
        VERSIONS["CROSSPLANE_V2"],
        ("render",),
        "--required-resources",
        v2=True,
    ),
)


# Third-party reference files (CRDs, schemas) beside the checkout; never copied into the project.
REFERENCE = ROOT.parent / "shared" / "reference"
