"""The cloud-init template library: built-in and site templates, their metadata, rendering.

A template is two YAML documents in one text (templates/README.md has the full format):
plain YAML metadata (os families, secrets, admin groups), a line `---`, then the
cloud-config fragment with Jinja2 placeholders. Every placeholder must end in the
`json` filter: the sandbox refuses any other output, so a value from a claim can only
ever reach the YAML as a quoted JSON scalar, never as YAML syntax.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from function import memo, yamlio
from function.errors import FabricError, show_value
from function.model import TEMPLATE_KEY

OS_FAMILIES = ("debian", "nixos", "ubuntu")
BUILTIN = "built-in"
SITE = "site"
SUFFIX = ".yaml.j2"
_META_KEYS = frozenset({"os", "secrets", "admin_groups", "description"})
# Secret names as Terraform identifiers, minus a trailing or doubled "_": then no secret's
# marker (__FABRIC_SECRET_<name>__) can be part of another's, and plain text replacement of
# markers is unambiguous.
_IDENT = re.compile(r"^[a-z](?:_?[a-z0-9]){0,61}$")
_GROUP = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)
# Characters PyYAML refuses or reads as line breaks; JSON leaves them raw with
# ensure_ascii=False, so they are escaped to keep the scalar's value exact.
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")


@dataclass(frozen=True)
class Template:
    """One parsed template: who may use it and the Jinja2 body that renders its fragment."""

    key: str  # "base", "roles/<name>" or "devices/<class>"
    source: str  # built-in | site
    os_families: tuple[str, ...]
    secrets: tuple[str, ...] = ()
    admin_groups: tuple[str, ...] = ()
    description: str = ""
    body: str = ""

    @property
    def label(self) -> str:
        """How messages name the template: "role k3s-node", "device template devices/x"."""
        kind, _, name = self.key.partition("/")
        if kind == "roles":
            return f"role {name}"
        if kind == "devices":
            return f"device template {self.key}"
        return f"template {self.key}"


class JsonText(str):
    """Text produced by the json filter; the only thing a placeholder may output."""

    __slots__ = ()


def to_json(value: Any) -> JsonText:
    """Serialize a value as JSON, which YAML reads back as exactly that value."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError naming the missing variable
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return JsonText(_YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text))


def shell_quote(value: Any) -> str:
    """Quote a value (or each item of a list) as one shell word; pipe it into json next."""
    if isinstance(value, jinja2.Undefined):
        str(value)
    if isinstance(value, list | tuple):
        return " ".join(shlex.quote(str(item)) for item in value)
    return shlex.quote(str(value))


def _only_json(value: Any) -> Any:
    # Jinja calls finalize on every {{ }} output: anything that did not come out of the
    # json filter could be YAML or shell syntax, so it is refused at render time.
    if isinstance(value, JsonText):
        return value
    msg = f"every placeholder must end with '| json'; got the raw value {show_value(value)}"
    raise jinja2.TemplateError(msg)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_only_json,
    )
    env.filters["json"] = to_json
    env.filters["tojson"] = to_json  # the built-in one HTML-escapes; ours is plain JSON
    env.filters["shquote"] = shell_quote
    return env


_ENV = _environment()


@memo.memoize("templates", 256)
def _compile(body: str) -> jinja2.Template:
    return _ENV.from_string(body)


def parse(key: str, text: str, source: str) -> Template:
    """Split a template text into metadata and body and check the metadata.

    Raises:
        FabricError: no separator, metadata not a mapping, unknown keys or bad values.
    """
    where = f"{source} template {key}"
    match = _SEPARATOR.search(text)
    if match is None:
        msg = f"{where} has no metadata: start it with e.g. 'os: [debian, ubuntu]' and a line '---'"
        raise FabricError(msg)
    try:
        meta = yamlio.load_strict(text[: match.start()]) or {}
    except yaml.YAMLError as exc:
        msg = f"{where}: metadata is not valid YAML: {_yaml_problem(exc)}"
        raise FabricError(msg) from None
    if not isinstance(meta, dict):
        msg = f"{where}: metadata must be a mapping with keys {', '.join(sorted(_META_KEYS))}"
        raise FabricError(msg)
    unknown = sorted(str(k) for k in meta if k not in _META_KEYS)
    if unknown:
        msg = (
            f"{where}: unknown metadata key(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(sorted(_META_KEYS))}"
        )
        raise FabricError(msg)
    return Template(
        key=key,
        source=source,
        os_families=_families(where, meta.get("os")),
        secrets=_names(where, "secrets", meta.get("secrets"), _IDENT),
        admin_groups=_names(where, "admin_groups", meta.get("admin_groups"), _GROUP),
        description=str(meta.get("description") or ""),
        body=text[match.end() :],
    )


def _families(where: str, value: Any) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not value
        or any(v not in OS_FAMILIES for v in value)
        or len(set(value)) != len(value)
    ):
        msg = (
            f"{where}: metadata os is {show_value(value)}; accepted: a non-empty list "
            f"of distinct os families from {', '.join(OS_FAMILIES)}"
        )
        raise FabricError(msg)
    return tuple(sorted(value))


def _names(where: str, field: str, value: Any, pattern: re.Pattern[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(v, str) and pattern.match(v) for v in value
    ):
        msg = (
            f"{where}: metadata {field} is {show_value(value)}; accepted: a list of names "
            f"matching {pattern.pattern}"
        )
        raise FabricError(msg)
    return tuple(sorted(set(value)))


@memo.memoize("builtin-templates", 1)
def builtin() -> Mapping[str, Template]:
    """The templates shipped with the function, by key ("base", "roles/x", "devices/y")."""
    root = resources.files("function.cloudinit") / "templates"
    found: dict[str, Template] = {}
    for kind in ("", "roles", "devices"):
        folder = root / kind if kind else root
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if not entry.name.endswith(SUFFIX) or not entry.is_file():
                continue
            name = entry.name.removesuffix(SUFFIX)
            key = f"{kind}/{name}" if kind else name
            found[key] = parse(key, entry.read_text(encoding="utf-8"), BUILTIN)
    return found


def catalog(site_templates: Mapping[str, str]) -> dict[str, Template]:
    """Built-in templates overlaid by site templates (a site template replaces a built-in)."""
    merged = dict(builtin())
    for key in sorted(site_templates):
        if not re.match(TEMPLATE_KEY, key):
            msg = f"site template key {key!r} is invalid; accepted: roles/<name> or devices/<class>"
            raise FabricError(msg)
        merged[key] = _parse_site(key, site_templates[key])
    return merged


@memo.memoize("site-templates", 128)
def _parse_site(key: str, text: str) -> Template:
    return parse(key, text, SITE)


def render(template: Template, context: Mapping[str, Any]) -> dict[str, Any]:
    """Render a template's body with the context and parse it as one YAML mapping.

    Raises:
        FabricError: a Jinja2 error (syntax, undefined name, raw placeholder), invalid
            YAML, or a document that is not a mapping.
    """
    where = f"{template.source} template {template.key}"
    try:
        text = _compile(template.body).render(context)
    except jinja2.TemplateError as exc:
        msg = f"{where}: {exc.message or type(exc).__name__}"
        raise FabricError(msg) from None
    try:
        data = _parse_rendered(text)
    except yaml.YAMLError as exc:
        msg = f"{where}: rendered text is not valid YAML: {_yaml_problem(exc)}"
        raise FabricError(msg) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        msg = f"{where}: must render to a YAML mapping of cloud-config keys, got a {kind}"
        raise FabricError(msg)
    return data


@memo.memoize("rendered-yaml", 512)
def _parse_rendered(text: str) -> Any:
    # Crossplane reconciles the same machine over and over with the same facts, so the same
    # rendered text comes back; the strict (pure Python) loader is the slow part of composing.
    # Callers never mutate the result: merge() copies what it changes.
    return yamlio.load_strict(text)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        problem = str(exc.problem)
        if "line" in problem:  # the strict loader's duplicate-key message names it already
            return problem
        return f"{problem} (line {exc.problem_mark.line + 1})"
    return str(exc)
