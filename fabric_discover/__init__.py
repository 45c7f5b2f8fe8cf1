"""Inventory discovery: read a Proxmox VE cluster, merge manual overrides, emit the ConfigMap.

The pieces, in the order data flows through them:

- `proxmox` reads the API with proxmoxer into plain frozen records (no Fabric concepts);
- `merge` turns those records plus the overrides file into an inventory dict that
  `function.model.Inventory` accepts;
- `cli` is the `fabric-discover` command: flags, token handling, printing or applying.

Discovery is "hybrid": the API is the source of facts it can know (nodes, capacity, storage,
resource mappings, guests, templates and the disks they boot from); the overrides file adds
what only a person knows (device classes, why a node is off limits, reserved memory, catalogs).

A package of its own beside `function` (which never imports it), so the function's image holds
none of it; from `function` it uses only the model, its error wording and the strict YAML loader.
"""

from __future__ import annotations

import sys
from pathlib import Path


class DiscoveryError(Exception):
    """A problem the user can fix; the message names the API path or the overrides field."""


def read_text(name: str | Path, what: str, error: type[DiscoveryError] = DiscoveryError) -> str:
    """A file's text (`-`: standard input), or `error` saying which file could not be read."""
    try:
        if str(name) == "-":
            return sys.stdin.read()
        return Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{what}: cannot read: {exc}"
        raise error(msg) from None
