"""Compose one `#cloud-config` document for a machine from the template library.

Order: base (or the NixOS bootstrap) → device templates, by class → role templates,
in claim order. Each template is rendered and parsed on its own, then merged as
data: mappings recurse, lists append items not already present, scalars: the later
template wins. The result is dumped once by the YAML serializer, so no template can
break another's syntax, and the same facts always give the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from function import secrets, yamlio
from function.cloudinit import library, nixos
from function.cloudinit.facts import GuestFacts
from function.cloudinit.library import Template
from function.errors import FabricError, show_value
from function.memo import BoundedCache

HEADER = "#cloud-config\n"
# A budget rather than a Proxmox limit (snippets take more): past 64 KiB a template went wrong,
# and the secrets Terraform splices in later still have to fit beside the document.
MAX_USER_DATA_BYTES = 64 * 1024
BASE = "base"
NIXOS = "nixos"
# Keys NixOS cannot honour through cloud-init: packages and services come from the flake.
_NIXOS_REFUSED = (
    "apt",
    "packages",
    "package_update",
    "package_upgrade",
    "package_reboot_if_required",
    "snap",
)
_NIXOS_UNIT_DIR = "/etc/systemd/system"


MAX_CACHED_DOCUMENTS = 512  # one per machine of a large fleet is plenty: each is < 64 KiB
_documents: BoundedCache[str, str] = BoundedCache("documents", MAX_CACHED_DOCUMENTS)


def compose(facts: GuestFacts) -> str:
    """Render the user-data for a machine, once per distinct facts.

    Crossplane calls for every machine again and again with the same facts, and
    rendering was most of a small call's time. The key is the facts' repr, which
    spells out every value exactly; refusals raise every time (never cached).
    """
    return _documents.get_or_compute(repr(facts), lambda: _compose(facts))


def _compose(facts: GuestFacts) -> str:
    """Render the user-data for a machine as one `#cloud-config` document.

    Args:
        facts: the checked values the document may depend on.

    Returns:
        The document's text; the same facts always give the same text.

    Raises:
        FabricError: unknown os family or role, a template that does not support the os
            family, a missing bootstrap secret, a template error, reserved text in a
            value, or a document over MAX_USER_DATA_BYTES.
    """
    _check_family(facts.os_family)
    _check_reserved(facts)
    chosen = select(facts, library.catalog(facts.site_templates))
    _check_secrets(facts, chosen)
    context = _context(facts, chosen)
    doc: dict[str, Any] = {}
    if facts.os_family == NIXOS:
        doc = nixos.user_data(facts, extra_groups=_admin_groups(chosen))
    for template in chosen:
        part = _render_part(template, context, facts.os_family)
        _check_paths(doc, part, template)
        doc = merge(doc, part, template.key)
    text = HEADER + yamlio.dump(doc)
    secrets.check_plain(text)
    _check_size(text, facts)
    return text


def available_roles(site_templates: Mapping[str, str]) -> list[str]:
    """Names of the roles a claim may ask for: the built-in ones plus the site's."""
    return _named(library.catalog(site_templates), "roles/")


def available_devices(site_templates: Mapping[str, str]) -> list[str]:
    """Device classes that have a template (other classes need nothing in the guest)."""
    return _named(library.catalog(site_templates), "devices/")


def _named(catalog: Mapping[str, Template], prefix: str) -> list[str]:
    """The names of a catalog's templates of one kind ("roles/" or "devices/"), sorted."""
    return sorted(key.removeprefix(prefix) for key in catalog if key.startswith(prefix))


def select(facts: GuestFacts, catalog: Mapping[str, Template]) -> list[Template]:
    """The templates that apply to the machine, in merge order.

    Raises:
        FabricError: an unknown role, or a template that does not support the os family.
    """
    family = facts.os_family
    chosen = [] if family == NIXOS else [catalog[BASE]]
    for device_class in sorted({d.device_class for d in facts.devices}):
        template = catalog.get(f"devices/{device_class}")
        if template is None:
            continue  # a device without a template needs nothing inside the guest
        if family not in template.os_families:
            if family == NIXOS:
                continue  # on NixOS the flake configures devices, using machine.json
            raise FabricError(_unsupported(template, family))
        chosen.append(template)
    chosen += _role_templates(facts.roles, family, catalog)
    return chosen


def check_roles(roles: list[str], family: str, site_templates: Mapping[str, str]) -> None:
    """Refuse a role the library lacks or that the image's os family cannot take.

    Admission calls this before placement, so a claim that rendering would refuse is
    refused before it holds anything, in its own view and in every other machine's.
    """
    _role_templates(roles, family, library.catalog(site_templates))


def _role_templates(
    roles: tuple[str, ...] | list[str], family: str, catalog: Mapping[str, Template]
) -> list[Template]:
    chosen = []
    for role in roles:
        template = catalog.get(f"roles/{role}")
        if template is None:
            known = ", ".join(_named(catalog, "roles/"))
            msg = f"unknown role {role!r} in spec.roles; known roles: {known}"
            raise FabricError(msg)
        if family not in template.os_families:
            raise FabricError(_unsupported(template, family))
        chosen.append(template)
    return chosen


def _unsupported(template: Template, family: str) -> str:
    if family == NIXOS and template.key.startswith("roles/"):
        return (
            f"{template.label} does not support os family {family}; on NixOS, roles belong "
            "in the flake (spec.nix.flakeRef)"
        )
    return (
        f"{template.label} does not support os family {family}; "
        f"it supports {', '.join(template.os_families)}"
    )


def merge(left: Any, right: Any, where: str, path: str = "") -> Any:
    """Merge `right` into `left` without changing either: see the module docstring.

    Raises:
        FabricError: the two sides disagree on whether a key holds a mapping, a list
            or a scalar.
    """
    if isinstance(left, dict) and isinstance(right, dict):
        out = dict(left)
        for key, value in right.items():
            child = f"{path}.{key}" if path else str(key)
            out[key] = merge(left[key], value, where, child) if key in left else value
        return out
    if isinstance(left, list) and isinstance(right, list):
        out_list = list(left)
        seen = {_identity(item) for item in left}
        for item in right:
            ident = _identity(item)
            if ident not in seen:
                seen.add(ident)
                out_list.append(item)
        return out_list
    if isinstance(left, dict | list) or isinstance(right, dict | list):
        msg = (
            f"template {where} makes {path} a {_kind(right)}, but an earlier template "
            f"made it a {_kind(left)}"
        )
        raise FabricError(msg)
    return right


def _identity(item: Any) -> str:
    # JSON with sorted keys tells 1 from true and ignores mapping order, which == does not.
    return json.dumps(item, sort_keys=True, default=str)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    return "scalar"


def _check_family(family: str) -> None:
    if family not in library.OS_FAMILIES:
        msg = f"os family {family!r} is unknown; accepted: {', '.join(library.OS_FAMILIES)}"
        raise FabricError(msg)


# Where each fact comes from in the claim, so a refusal names the field the user wrote.
_CLAIM_FIELDS = {
    "hostname": "metadata.name",
    "admin_user": "spec.bootstrap.adminUser",
    "ssh_keys": "spec.bootstrap.sshAuthorizedKeys",
    "flake_ref": "spec.nix.flakeRef",
    "roles": "spec.roles",
    "network": "spec.network",
}


def _claim_path(path: str) -> str:
    head = re.match(r"[a-z_]*", path)
    field = _CLAIM_FIELDS.get(head.group(0)) if head else None
    return field + path[head.end() :] if head and field else path


def _check_reserved(facts: GuestFacts) -> None:
    # A claim value holding marker text would let Terraform splice a secret into it.
    for path, value in _fact_strings(facts, ""):
        if secrets.MARKER_PREFIX in value:
            msg = (
                f"{_claim_path(path)}: {show_value(value)} contains {secrets.MARKER_PREFIX}, "
                "which is reserved for Fabric's secret markers; accepted: any text without it"
            )
            raise FabricError(msg)


def _fact_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            if field.name == "site_templates":
                continue  # checked per template, where a whole-value marker is legitimate
            child = f"{path}.{field.name}" if path else field.name
            yield from _fact_strings(getattr(value, field.name), child)
    elif isinstance(value, tuple | list):
        for index, item in enumerate(value):
            yield from _fact_strings(item, f"{path}[{index}]")


def _check_secrets(facts: GuestFacts, chosen: list[Template]) -> None:
    declared = set(facts.secrets)
    for template in chosen:
        missing = [name for name in template.secrets if name not in declared]
        if missing:
            noun = "secret" if len(missing) == 1 else "secrets"
            msg = (
                f"{template.label} needs bootstrap {noun} {', '.join(missing)} "
                "(spec.bootstrap.secrets)"
            )
            raise FabricError(msg)


def _admin_groups(chosen: list[Template]) -> list[str]:
    return sorted({group for t in chosen for group in t.admin_groups})


def _context(facts: GuestFacts, chosen: list[Template]) -> dict[str, Any]:
    """What every template may use (templates/README.md lists it)."""
    facts_data = nixos.machine_facts(facts)
    return {
        "machine": facts.machine,
        "hostname": facts.hostname,
        "fqdn": facts_data["fqdn"],
        "domain": facts.network.domain if facts.network else None,
        "admin_user": facts.admin_user,
        "admin_groups": _admin_groups(chosen),
        "ssh_keys": list(facts.ssh_keys),
        "timezone": facts.timezone,
        "os_family": facts.os_family,
        "roles": list(facts.roles),
        "devices": facts_data["devices"],
        "network": facts_data["network"],
        "flake_ref": facts.flake_ref,
        "machine_json": nixos.machine_json(facts),
    }


def _render_part(template: Template, context: Mapping[str, Any], family: str) -> dict[str, Any]:
    """Render one template and check its fragment on its own, where errors can name it."""
    part = library.render(template, _template_context(context, template))
    secrets.check_whole(part, f"{template.source} template {template.key}", set(template.secrets))
    if family == NIXOS:
        _check_nixos_part(template, part)
    return part


def _template_context(context: Mapping[str, Any], template: Template) -> dict[str, Any]:
    _, _, device_class = template.key.partition("devices/")
    return {
        **context,
        "template": template.key,
        # Only the secrets the template declared: any other name is an undefined variable.
        "secrets": {name: secrets.marker(name) for name in template.secrets},
        "class_devices": [d for d in context["devices"] if d["class"] == device_class]
        if device_class
        else [],
    }


def _check_nixos_part(template: Template, part: Mapping[str, Any]) -> None:
    for key in _NIXOS_REFUSED:
        if key in part:
            msg = (
                f"{template.label} sets {key}, which cloud-init cannot do on os family "
                "nixos; packages and services belong in the flake"
            )
            raise FabricError(msg)
    for index, entry in enumerate(part.get("write_files") or []):
        if not isinstance(entry, dict):
            continue
        if entry.get("defer"):
            msg = (
                f"{template.label}: write_files[{index}] uses defer, which NixOS's "
                "cloud-init does not run (no write-files-deferred module)"
            )
            raise FabricError(msg)
        target = str(entry.get("path", ""))
        if target == _NIXOS_UNIT_DIR or target.startswith(_NIXOS_UNIT_DIR + "/"):
            msg = (
                f"{template.label}: write_files[{index}] writes {target}, but NixOS owns "
                f"{_NIXOS_UNIT_DIR}; use a transient unit (systemd-run) or the flake"
            )
            raise FabricError(msg)


def _check_paths(doc: Mapping[str, Any], part: Mapping[str, Any], template: Template) -> None:
    # Two different entries for one path would leave whichever cloud-init writes last.
    earlier = {
        entry.get("path"): entry
        for entry in doc.get("write_files") or []
        if isinstance(entry, dict)
    }
    for entry in part.get("write_files") or []:
        if not isinstance(entry, dict):
            continue
        other = earlier.get(entry.get("path"))
        if other is not None and _identity(other) != _identity(entry):
            msg = (
                f"{template.label} writes {entry.get('path')}, which an earlier template "
                "writes differently; only one template may own a file"
            )
            raise FabricError(msg)


def _check_size(text: str, facts: GuestFacts) -> None:
    size = len(text.encode("utf-8"))
    if size > MAX_USER_DATA_BYTES:
        keys = sum(len(k.encode("utf-8")) for k in facts.ssh_keys)
        msg = (
            f"user-data is {size} bytes, over the limit of {MAX_USER_DATA_BYTES} bytes "
            f"(64 KiB); spec.bootstrap.sshAuthorizedKeys contributes {keys} bytes, the "
            "templates for spec.roles and spec.devices the rest; accepted: fewer or shorter "
            "keys, fewer roles, or smaller site templates"
        )
        raise FabricError(msg)
