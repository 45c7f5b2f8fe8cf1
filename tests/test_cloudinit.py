"""The cloud-init composer and its template library, checked against cloud-init's own schema."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from function import secrets
from function.cloudinit import (
    MAX_USER_DATA_BYTES,
    DeviceFact,
    GuestFacts,
    NetworkFact,
    available_devices,
    available_roles,
    compose,
    composer,
    library,
    nixos,
)
from function.errors import FabricError

try:
    from cloudinit.config.schema import get_schema, validate_cloudconfig_schema
except ImportError:  # Debian's python3 package lives outside the virtualenv's path
    sys.path.append("/usr/lib/python3/dist-packages")
    from cloudinit.config.schema import get_schema, validate_cloudconfig_schema

SCHEMA = get_schema()
# cloud-init 22.4 calls an API that jsonschema 4.x deprecates; the validation itself is fine.
pytestmark = pytest.mark.filterwarnings("ignore:Passing a schema to Validator:DeprecationWarning")
ROOT = Path(__file__).resolve().parent.parent


def _known_keys(schema: dict[str, Any]) -> set[str]:
    # cloud-init 22.4's strict mode does not flag unknown top-level keys; collect the keys its
    # modules define so a typo in a template still fails the tests.
    keys: set[str] = set()
    for part in schema["allOf"]:
        name = part["$ref"].rsplit("/", 1)[-1]
        keys.update(schema["$defs"][name].get("properties", {}))
    return keys


KNOWN_KEYS = _known_keys(SCHEMA)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOaXf8Vq me@laptop"
DEVICES = {
    "gpu-nvidia": DeviceFact(
        "gpu-nvidia", "rtx3070", "pci", ("10de:2484", "10de:228b"), "RTX 3070"
    ),
    "gpu-amd": DeviceFact("gpu-amd", "rx6600", "pci", ("1002:73ff",), "RX 6600"),
    "coral-tpu": DeviceFact("coral-tpu", "coral", "usb", ("1a6e:089a",), "Coral USB"),
}
ROLES = ("k3s-server", "k3s-node", "docker-host")
ALL_SECRETS = ("k3s_token", "k3s_url")


def make_facts(**changes: Any) -> GuestFacts:
    base = GuestFacts(
        machine="infra-machines/worker-1",
        hostname="worker-1",
        admin_user="admin",
        ssh_keys=(KEY,),
        timezone="Europe/Berlin",
        os_family="debian",
        network=NetworkFact(
            name="k3s-cluster",
            address="10.40.0.100/24",
            gateway="10.40.0.1",
            dns_servers=("10.40.0.1",),
            domain="home.arpa",
            vlan=40,
        ),
        secrets=ALL_SECRETS,
    )
    return dataclasses.replace(base, **changes)


def validate(text: str) -> dict[str, Any]:
    """Parse user-data and check it the way cloud-init would, strictly."""
    assert text.startswith("#cloud-config\n")
    assert text.count("\n---") == 0, "one document only"
    cfg = yaml.safe_load(text)
    assert isinstance(cfg, dict)
    validate_cloudconfig_schema(cfg, SCHEMA, strict=True)
    unknown = sorted(set(cfg) - KNOWN_KEYS)
    assert not unknown, f"keys cloud-init does not know: {unknown}"
    return cfg


def site(os_families: str, body: str, meta: str = "") -> str:
    return f"os: [{os_families}]\n{meta}---\n{body}"


# --- every allowed combination validates ------------------------------------------------------

DEVICE_SETS = [(), *((name,) for name in DEVICES), tuple(DEVICES)]
ROLE_SETS = [(), *((name,) for name in ROLES), ("k3s-node", "docker-host")]


@pytest.mark.parametrize("family", ["debian", "ubuntu"])
@pytest.mark.parametrize("device_set", DEVICE_SETS, ids=lambda d: "+".join(d) or "no-device")
@pytest.mark.parametrize("role_set", ROLE_SETS, ids=lambda r: "+".join(r) or "no-role")
def test_debian_family_combinations_validate(family, device_set, role_set):
    facts = make_facts(
        os_family=family,
        devices=tuple(DEVICES[d] for d in device_set),
        roles=role_set,
    )
    cfg = validate(compose(facts))
    assert cfg["hostname"] == "worker-1"
    assert cfg["fqdn"] == "worker-1.home.arpa"
    assert cfg["users"][0]["name"] == "admin"
    assert cfg["users"][0]["ssh_authorized_keys"] == [KEY]
    assert "qemu-guest-agent" in cfg["packages"]
    assert all(isinstance(entry, list) for entry in cfg["runcmd"]), "runcmd is list-form only"
    scripts = [f["path"] for f in cfg["write_files"] if f["path"].startswith("/var/lib/fabric/")]
    for name in (*device_set, *role_set):
        if name not in ("k3s-server", "k3s-node") and (name, family) != ("gpu-amd", "debian"):
            assert f"/var/lib/fabric/setup/{name}.sh" in scripts


@pytest.mark.parametrize("device_set", DEVICE_SETS, ids=lambda d: "+".join(d) or "no-device")
@pytest.mark.parametrize("flake", [None, "git+https://git.example/fabric?ref=main#gpu-worker-1"])
def test_nixos_combinations_validate(device_set, flake):
    facts = make_facts(
        os_family="nixos", devices=tuple(DEVICES[d] for d in device_set), flake_ref=flake
    )
    cfg = validate(compose(facts))
    # Devices on NixOS are the flake's business: no apt, no packages, just the facts file.
    assert not {"apt", "packages", "package_update", "power_state"} & set(cfg)
    facts_file = next(f for f in cfg["write_files"] if f["path"] == "/etc/fabric/machine.json")
    assert [d["class"] for d in json.loads(facts_file["content"])["devices"]] == list(device_set)


def test_every_builtin_template_is_exercised():
    keys = set(library.builtin())
    assert keys == {"base"} | {f"devices/{d}" for d in DEVICES} | {f"roles/{r}" for r in ROLES}
    for template in library.builtin().values():
        assert template.description
        assert template.os_families


# --- disallowed combinations are refused, naming template and os family ------------------------


@pytest.mark.parametrize("role", ROLES)
def test_nixos_refuses_roles(role):
    facts = make_facts(os_family="nixos", roles=(role,), flake_ref="github:me/fleet#worker-1")
    with pytest.raises(FabricError) as err:
        compose(facts)
    assert str(err.value) == (
        f"role {role} does not support os family nixos; on NixOS, roles belong in the flake "
        "(spec.nix.flakeRef)"
    )


@pytest.mark.parametrize(
    ("family", "key", "supported", "expected"),
    [
        (
            "debian",
            "roles/only-ubuntu",
            "ubuntu",
            "role only-ubuntu does not support os family debian; it supports ubuntu",
        ),
        (
            "ubuntu",
            "devices/gpu-nvidia",
            "debian",
            (
                "device template devices/gpu-nvidia does not "
                "support os family ubuntu; it supports debian"
            ),
        ),
        (
            "debian",
            "roles/nix-thing",
            "nixos",
            "role nix-thing does not support os family debian; it supports nixos",
        ),
    ],
)
def test_site_templates_refused_for_other_families(family, key, supported, expected):
    name = key.split("/")[1]
    facts = make_facts(
        os_family=family,
        site_templates={key: site(supported, "bootcmd: [[true]]\n")},
        roles=(name,) if key.startswith("roles/") else (),
        devices=(DEVICES[name],) if key.startswith("devices/") else (),
    )
    with pytest.raises(FabricError, match="^" + expected + "$"):
        compose(facts)


def test_nixos_skips_device_templates_but_applies_nixos_site_templates():
    extra = site("nixos, debian", "write_files:\n  - path: /etc/coral-note\n    content: hi\n")
    facts = make_facts(
        os_family="nixos",
        devices=(DEVICES["coral-tpu"], DEVICES["gpu-nvidia"]),
        site_templates={"devices/coral-tpu": extra},
    )
    cfg = validate(compose(facts))
    paths = [f["path"] for f in cfg["write_files"]]
    assert "/etc/coral-note" in paths
    assert not any("gpu-nvidia" in p for p in paths)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "packages: [htop]\n",
            (
                "role nixy sets packages, which cloud-init cannot do on os family "
                "nixos; packages and services belong in the flake"
            ),
        ),
        ("apt: {preserve_sources_list: true}\n", "role nixy sets apt"),
        (
            "write_files:\n  - {path: /etc/systemd/system/x.service, content: x}\n",
            (
                "role nixy: write_files[0] writes /etc/systemd/system/x.service, but NixOS owns "
                "/etc/systemd/system"
            ),
        ),
        (
            "write_files:\n  - {path: /etc/x, content: x, defer: true}\n",
            "role nixy: write_files[0] uses defer",
        ),
    ],
)
def test_nixos_refuses_what_it_cannot_do(body, expected):
    facts = make_facts(
        os_family="nixos", roles=("nixy",), site_templates={"roles/nixy": site("nixos", body)}
    )
    with pytest.raises(FabricError) as err:
        compose(facts)
    assert str(err.value).startswith(expected)


def test_conflicting_roles_refused():
    with pytest.raises(FabricError, match=r"role k3s-node writes /etc/rancher/k3s/config\.yaml"):
        compose(make_facts(roles=("k3s-server", "k3s-node")))


# --- other refusals ------------------------------------------------------------------------------


def test_unknown_role_lists_known_ones():
    facts = make_facts(roles=("k8s-node",), site_templates={"roles/mine": site("debian", "")})
    with pytest.raises(FabricError) as err:
        compose(facts)
    assert str(err.value) == (
        "unknown role 'k8s-node' in spec.roles; known roles: docker-host, k3s-node, "
        "k3s-server, mine"
    )


def test_device_without_template_is_fine():
    nic = DeviceFact("nic-intel", "x710", "pci", ("8086:1572",))
    cfg = validate(compose(make_facts(devices=(nic,))))
    assert cfg == validate(compose(make_facts())) | {"write_files": cfg["write_files"]}


def test_unknown_os_family():
    with pytest.raises(FabricError, match="os family 'arch' is unknown; accepted: debian, nixos"):
        compose(make_facts(os_family="arch"))


@pytest.mark.parametrize(
    ("role", "declared", "expected"),
    [
        (
            "k3s-server",
            (),
            "role k3s-server needs bootstrap secret k3s_token (spec.bootstrap.secrets)",
        ),
        (
            "k3s-node",
            (),
            "role k3s-node needs bootstrap secrets k3s_token, k3s_url (spec.bootstrap.secrets)",
        ),
        (
            "k3s-node",
            ("k3s_token",),
            "role k3s-node needs bootstrap secret k3s_url (spec.bootstrap.secrets)",
        ),
    ],
)
def test_missing_secret(role, declared, expected):
    with pytest.raises(FabricError) as err:
        compose(make_facts(roles=(role,), secrets=declared))
    assert str(err.value) == expected


def test_size_limit():
    big = "x" * 40_000
    templates = {
        f"roles/big{i}": site("debian", f"write_files:\n  - path: /big{i}\n    content: {big}\n")
        for i in (1, 2)
    }
    with pytest.raises(FabricError) as err:
        compose(make_facts(roles=("big1", "big2"), site_templates=templates))
    message = str(err.value)
    assert "over the limit of 65536 bytes (64 KiB)" in message
    size = int(message.split("user-data is ")[1].split(" bytes", maxsplit=1)[0])
    assert size > MAX_USER_DATA_BYTES
    # One of them alone fits.
    validate(compose(make_facts(roles=("big1",), site_templates=templates)))


# --- template format -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bootcmd: [[true]]\n", "site template roles/x has no metadata: start it with"),
        ("os: debian\n---\n", "site template roles/x: metadata os is 'debian'; accepted"),
        ("os: [windows]\n---\n", "metadata os is ['windows']"),
        ("os: [debian]\nsecret: [a]\n---\n", "unknown metadata key(s) secret; accepted:"),
        ("os: [debian]\nsecrets: [Bad-Name]\n---\n", "metadata secrets is ['Bad-Name']"),
        ("os: [debian]\nsecrets: [tok_]\n---\n", "metadata secrets is ['tok_']"),
        ("os: [debian]\nsecrets: [a__b]\n---\n", "metadata secrets is ['a__b']"),
        ("os: [debian]\nadmin_groups: ['a b']\n---\n", "metadata admin_groups is ['a b']"),
        ("os: [debian\n---\n", "metadata is not valid YAML"),
        ("- os\n---\n", "metadata must be a mapping"),
        (
            "os: [debian]\n---\nbootcmd: {{ hostname }}\n",
            "every placeholder must end with '| json'; got the raw value 'worker-1'",
        ),
        ("os: [debian]\n---\nbootcmd: {{ hostname | upper }}\n", "every placeholder must end"),
        ("os: [debian]\n---\nbootcmd: {{ nosuch | json }}\n", "'nosuch' is undefined"),
        (
            "os: [debian]\n---\nbootcmd: {{ secrets.k3s_token | json }}\n",
            "has no attribute 'k3s_token'",
        ),
        ("os: [debian]\n---\nbootcmd: {% if %}\n", "site template roles/x:"),
        (
            "os: [debian]\n---\n[a, b]\n",
            "must render to a YAML mapping of cloud-config keys, got a list",
        ),
        (
            "os: [debian]\n---\na: 1\na: 2\n",
            "rendered text is not valid YAML: duplicate key 'a' at line 3",
        ),
        ("os: [debian]\n---\n{{ ''.__class__ | json }}: 1\n", "site template roles/x:"),
        ("os: [debian]\n---\nruncmd: {{ [1] | json }}\n", None),
        (
            "os: [debian]\n---\nruncmd: x\n",
            "template roles/x makes runcmd a scalar, but an earlier template made it a list",
        ),
    ],
)
def test_template_errors_name_the_template(text, expected):
    facts = make_facts(roles=("x",), site_templates={"roles/x": text})
    if expected is None:
        compose(facts)  # renders; the schema is the tests' job, not the composer's
        return
    with pytest.raises(FabricError) as err:
        compose(facts)
    assert expected in str(err.value)


def test_site_template_replaces_builtin():
    replacement = site(
        "debian", "write_files:\n  - path: /etc/rancher/k3s/server-url\n    content: fixed\n"
    )
    facts = make_facts(
        roles=("k3s-node",), secrets=(), site_templates={"roles/k3s-node": replacement}
    )
    cfg = validate(compose(facts))
    assert {"path": "/etc/rancher/k3s/server-url", "content": "fixed"} in cfg["write_files"]


def test_available_roles_and_devices():
    templates = {"roles/backup": site("debian", ""), "devices/hba": site("debian", "")}
    assert available_roles({}) == ["docker-host", "k3s-node", "k3s-server"]
    assert available_roles(templates) == ["backup", "docker-host", "k3s-node", "k3s-server"]
    assert available_devices(templates) == ["coral-tpu", "gpu-amd", "gpu-nvidia", "hba"]


# --- merge semantics -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right", "merged"),
    [
        ({"a": {"b": 1, "c": 2}}, {"a": {"c": 3, "d": 4}}, {"a": {"b": 1, "c": 3, "d": 4}}),
        ({"l": [1, 2]}, {"l": [2, 3, 3]}, {"l": [1, 2, 3]}),
        ({"l": [1]}, {"l": [True, "1"]}, {"l": [1, True, "1"]}),
        (
            {"l": [{"a": 1, "b": 2}]},
            {"l": [{"b": 2, "a": 1}, {"a": 2}]},
            {"l": [{"a": 1, "b": 2}, {"a": 2}]},
        ),
        (
            {"l": [["sh", "x"]]},
            {"l": [["sh", "x"], ["sh", "y"]]},
            {"l": [["sh", "x"], ["sh", "y"]]},
        ),
        ({"s": "a"}, {"s": "b"}, {"s": "b"}),
        ({"s": True}, {"s": None}, {"s": None}),
        ({}, {"n": {"x": [1]}}, {"n": {"x": [1]}}),
    ],
)
def test_merge_rules(left, right, merged):
    before = json.dumps([left, right])
    assert composer.merge(left, right, "t") == merged
    assert json.dumps([left, right]) == before, "merge changes neither side"


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        (
            {"a": {"b": 1}},
            {"a": [1]},
            "template t makes a a list, but an earlier template made it a mapping",
        ),
        (
            {"a": {"b": [1]}},
            {"a": {"b": "x"}},
            "makes a.b a scalar, but an earlier template made it a list",
        ),
        ({"a": 1}, {"a": {"b": 1}}, "makes a a mapping, but an earlier template made it a scalar"),
    ],
)
def test_merge_type_conflicts(left, right, expected):
    with pytest.raises(FabricError, match=expected):
        composer.merge(left, right, "t")


def test_merge_through_site_templates():
    one = site(
        "debian",
        "timezone: UTC\npackages: [qemu-guest-agent, htop]\n"
        "ntp: {enabled: true, servers: [ntp1.example]}\n",
    )
    two = site(
        "debian",
        "timezone: Etc/UTC\npackages: [htop, jq]\nntp: {servers: [ntp2.example], "
        "pools: [pool.example]}\n",
    )
    cfg = validate(
        compose(
            make_facts(roles=("one", "two"), site_templates={"roles/one": one, "roles/two": two})
        )
    )
    assert cfg["timezone"] == "Etc/UTC"  # scalar: later wins (base said Europe/Berlin)
    assert cfg["packages"] == ["qemu-guest-agent", "htop", "jq"]  # lists append, no duplicates
    assert cfg["ntp"] == {  # mappings recurse
        "enabled": True,
        "servers": ["ntp1.example", "ntp2.example"],
        "pools": ["pool.example"],
    }
    # Roles merge in claim order.
    swapped = validate(
        compose(
            make_facts(roles=("two", "one"), site_templates={"roles/one": one, "roles/two": two})
        )
    )
    assert swapped["timezone"] == "UTC"
    assert swapped["packages"] == ["qemu-guest-agent", "htop", "jq"]


def test_admin_groups_are_the_union_of_the_templates():
    facts = make_facts(devices=(DEVICES["coral-tpu"], DEVICES["gpu-amd"]), roles=("docker-host",))
    cfg = validate(compose(facts))
    assert cfg["users"][0]["groups"] == ["adm", "docker", "plugdev", "render", "sudo", "video"]


# --- determinism -------------------------------------------------------------------------------


def test_deterministic_in_process():
    facts = make_facts(devices=tuple(DEVICES.values()), roles=("k3s-node", "docker-host"))
    assert compose(facts) == compose(facts)
    reordered = make_facts(devices=tuple(reversed(DEVICES.values())), roles=facts.roles)
    merged = yaml.safe_load(compose(reordered))
    # Device templates merge by class, whatever order the devices come in.
    assert merged["runcmd"] == yaml.safe_load(compose(facts))["runcmd"]


def test_deterministic_across_processes():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from tests.test_cloudinit import make_facts, DEVICES;"
        "from function.cloudinit import compose;"
        "f = make_facts(devices=tuple(DEVICES.values()), roles=('k3s-node', 'docker-host'));"
        "sys.stdout.write(compose(f))"
    )
    outputs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", code, str(ROOT)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd=ROOT,
        )
        outputs.add(run.stdout)
    assert len(outputs) == 1
    facts = make_facts(devices=tuple(DEVICES.values()), roles=("k3s-node", "docker-host"))
    assert outputs == {compose(facts)}


# --- secret markers ------------------------------------------------------------------------------


def test_markers_are_whole_plain_scalars():
    text = compose(make_facts(roles=("k3s-node",)))
    cfg = validate(text)
    files = {f["path"]: f for f in cfg["write_files"]}
    assert files["/etc/rancher/k3s/token"]["content"] == secrets.marker("k3s_token")
    assert files["/etc/rancher/k3s/server-url"]["content"] == secrets.marker("k3s_url")
    assert files["/etc/rancher/k3s/token"]["permissions"] == "0600"
    assert "token-file: /etc/rancher/k3s/token" in files["/etc/rancher/k3s/config.yaml"]["content"]
    assert secrets.markers_in(text) == ["k3s_token", "k3s_url"]
    for line in text.splitlines():
        if secrets.MARKER_PREFIX in line:
            assert line.endswith(
                ("content: __FABRIC_SECRET_k3s_token__", "content: __FABRIC_SECRET_k3s_url__")
            )


def test_marker_substitution_gives_valid_yaml():
    # What Terraform will do: replace the marker with a JSON string of the secret's value.
    text = compose(make_facts(roles=("k3s-node",)))
    token = 'K10abc::server:"quoted" \\ back\nslash ${x} %{y} &a *a'
    url = "https://10.40.0.10:6443"
    filled = text.replace(secrets.marker("k3s_token"), json.dumps(token)).replace(
        secrets.marker("k3s_url"), json.dumps(url)
    )
    files = {f["path"]: f["content"] for f in validate(filled)["write_files"]}
    assert files["/etc/rancher/k3s/token"] == token
    assert files["/etc/rancher/k3s/server-url"] == url


def test_marker_helpers():
    assert secrets.marker("k3s_token") == "__FABRIC_SECRET_k3s_token__"
    assert secrets.MARKER_PREFIX == "__FABRIC_SECRET_"
    text = "a: __FABRIC_SECRET_b__\nc: __FABRIC_SECRET_a___\n- __FABRIC_SECRET_b__\n"
    assert secrets.markers_in(text) == ["a_", "b"]
    assert secrets.markers_in("nothing here __FABRIC_SECRET_") == []


@pytest.mark.parametrize(
    ("meta", "body", "expected"),
    [
        (
            "secrets: [tok]\n",
            "write_files:\n  - {path: /x, content: {{ ('t=' ~ secrets.tok) | json }}}\n",
            (
                "site template roles/x: write_files[0].content holds a secret marker inside a "
                "larger value; a secret must be a whole YAML value"
            ),
        ),
        (
            "secrets: [tok]\n",
            "write_files:\n  - {path: /x, content: {{ (secrets.tok ~ '\n') | json }}}\n",
            "inside a larger value",
        ),
        ("secrets: [tok]\n", "bootcmd: [[echo, {{ secrets.tok | json }}]]\n", None),
        ("secrets: [tok]\n", "{{ secrets.tok | json }}: 1\n", "holds a secret marker in a key"),
        (
            "",
            "write_files:\n  - {path: /x, content: __FABRIC_SECRET_tok__}\n",
            (
                "site template roles/x: write_files[0].content uses secret tok, which it does not "
                "declare (declared: none)"
            ),
        ),
    ],
)
def test_marker_placement_is_checked(meta, body, expected):
    facts = make_facts(
        roles=("x",), secrets=("tok",), site_templates={"roles/x": site("debian", body, meta)}
    )
    if expected is None:
        text = compose(facts)
        assert secrets.markers_in(text) == ["tok"]
        return
    with pytest.raises(FabricError) as err:
        compose(facts)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"ssh_keys": ("ssh-ed25519 AAAA me__FABRIC_SECRET_k3s_token__",)},
        {"flake_ref": "github:me/fleet#__FABRIC_SECRET_k3s_token__", "os_family": "nixos"},
        {"devices": (DeviceFact("gpu-nvidia", "m", "pci", (), "__FABRIC_SECRET_x__"),)},
    ],
)
def test_reserved_marker_text_in_facts_is_refused(changes):
    with pytest.raises(FabricError, match="which is reserved for Fabric's secret markers"):
        compose(make_facts(**changes))


def test_check_plain_refuses_quoted_markers():
    with pytest.raises(FabricError, match="is not a plain YAML value"):
        secrets.check_plain("a: '__FABRIC_SECRET_x__'\n")
    with pytest.raises(FabricError, match="is not a plain YAML value"):
        secrets.check_plain("a: b __FABRIC_SECRET_x__\n")
    secrets.check_plain("a: __FABRIC_SECRET_x__\n- __FABRIC_SECRET_y__\n")


# --- claim strings stay inert ------------------------------------------------------------------

NASTY = [
    "quote \" and ' both",
    "${var.secret} and $${x}",
    "%{ if true }x%{ endif }",
    "a; reboot",
    "$(reboot) `reboot`",
    "line1\nline2: injected\n- item",
    "&anchor *alias",
    "*a",
    "{a: b} [c, d] # comment",
    "-",
    "? key",
    "\u2028 \u2029 \x85 \x7f \ufeff end",
    "null",
    "0o755",
    "ünïcödé ✓ 🚀",
]


@pytest.mark.parametrize("value", NASTY)
def test_values_reach_yaml_exactly(value):
    nasty_key = f"ssh-ed25519 AAAAC3Nza x{value}"
    facts = make_facts(
        machine=value,
        hostname=value,
        admin_user=value,
        ssh_keys=(nasty_key,),
        timezone=value,
        roles=("x",),
        devices=(DeviceFact("coral-tpu", value, "usb", (value,), value),),
        network=NetworkFact(name=value, address=value, domain=value),
        site_templates={
            "roles/x": site(
                "debian",
                "write_files:\n"
                "  - {path: /etc/x, content: {{ machine | json }}}\n"
                "runcmd:\n"
                "  - [usermod, -aG, plugdev, {{ admin_user | json }}]\n"
                "  - [sh, -c, {{ ('printf %s ' ~ (hostname | shquote)) | json }}]\n",
            )
        },
    )
    text = compose(facts)
    cfg = yaml.safe_load(text)
    assert cfg["hostname"] == value
    assert cfg["fqdn"] == f"{value}.{value}"
    assert cfg["timezone"] == value
    assert cfg["users"][0]["name"] == value
    assert cfg["users"][0]["ssh_authorized_keys"] == [nasty_key]
    files = {f["path"]: f["content"] for f in cfg["write_files"]}
    assert files["/etc/x"] == value
    machine = json.loads(files["/etc/fabric/machine.json"])
    assert machine["machine"] == value
    assert machine["devices"][0] == {
        "class": "coral-tpu",
        "mapping": value,
        "bus": "usb",
        "ids": [value],
        "model": value,
    }
    assert machine["network"]["name"] == value
    assert [value] not in cfg["runcmd"]
    assert ["usermod", "-aG", "plugdev", value] in cfg["runcmd"]
    shell = cfg["runcmd"][-1]
    assert shell[:2] == ["sh", "-c"]
    if "\x00" not in value:
        printed = subprocess.run(shell, capture_output=True, text=True, check=True).stdout
        assert printed == value, "shquote keeps the value one inert shell word"
    # No claim value can introduce a YAML anchor, alias, tag or document marker.
    assert not any(line.startswith(("---", "...", "%")) for line in text.splitlines()[1:])


@pytest.mark.parametrize("value", NASTY)
def test_flake_ref_reaches_nixos_files_exactly(value):
    cfg = yaml.safe_load(compose(make_facts(os_family="nixos", flake_ref=value, roles=())))
    files = {f["path"]: f["content"] for f in cfg["write_files"]}
    assert files["/etc/fabric/flake-ref"] == value + "\n"
    assert json.loads(files["/etc/fabric/machine.json"])["flake_ref"] == value
    assert cfg["runcmd"] == [nixos.bootstrap_command()], "the ref never reaches a command line"


# --- the shell the templates ship -------------------------------------------------------------


@pytest.mark.parametrize("family", ["debian", "ubuntu"])
def test_template_shell_passes_shellcheck(tmp_path, family):
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    facts = make_facts(
        os_family=family, devices=tuple(DEVICES.values()), roles=("k3s-node", "docker-host")
    )
    cfg = validate(compose(facts))
    scripts = [f["content"] for f in cfg["write_files"] if f["content"].startswith("#!/bin/sh")]
    scripts += [
        "#!/bin/sh\n" + entry[2] + "\n" for entry in cfg["runcmd"] if entry[:2] == ["sh", "-c"]
    ]
    assert len(scripts) >= 4
    for index, script in enumerate(scripts):
        path = tmp_path / f"script{index}.sh"
        path.write_text(script)
        run = subprocess.run([shellcheck, str(path)], capture_output=True, text=True, check=False)
        assert run.returncode == 0, script + run.stdout


def _shell_texts(cfg: dict[str, Any]) -> list[str]:
    """Every piece of shell the user-data runs: setup scripts and shell-form runcmd entries."""
    texts = [f["content"] for f in cfg["write_files"] if f["content"].startswith("#!/bin/sh")]
    for entry in cfg["runcmd"]:
        if isinstance(entry, str):
            texts.append(entry)
        elif entry[:2] == ["sh", "-c"]:
            texts.append(entry[2])
    return texts


def _command_lines(cfg: dict[str, Any], word: str) -> list[str]:
    pattern = re.compile(rf"(?<![\w-]){re.escape(word)}(?![\w-])")
    return [
        line.strip()
        for text in _shell_texts(cfg)
        for line in text.splitlines()
        if pattern.search(line) and not line.strip().startswith("#")
    ]


def _everything(family: str) -> dict[str, Any]:
    facts = make_facts(
        os_family=family, devices=tuple(DEVICES.values()), roles=("k3s-node", "docker-host")
    )
    return validate(compose(facts))


@pytest.mark.parametrize("family", ["debian", "ubuntu"])
def test_every_apt_get_waits_for_the_dpkg_lock(family):
    # apt-daily and unattended-upgrades may hold the lock at first boot; apt-get without a
    # lock timeout fails at once and set -e ends the setup script.
    calls = _command_lines(_everything(family), "apt-get")
    assert calls, "the built-in templates install packages with apt-get"
    for line in calls:
        assert "apt-get -o DPkg::Lock::Timeout=600 " in line, line


@pytest.mark.parametrize("family", ["debian", "ubuntu"])
def test_setup_needs_no_package_of_the_running_kernel(family):
    # linux-headers-$(uname -r) and linux-modules-extra-$(uname -r) leave the archive once
    # the distribution moves to a newer kernel ABI, and templates are kept for months.
    for text in _shell_texts(_everything(family)):
        assert not re.search(r"linux-[a-z-]+-\$\(uname -r\)", text), text


def test_ubuntu_drivers_installs_the_headless_server_driver():
    # Without --gpgpu, ubuntu-drivers picks the desktop driver and its X stack.
    lines = _command_lines(_everything("ubuntu"), "ubuntu-drivers")
    installs = [line for line in lines if "ubuntu-drivers install" in line]
    assert installs, lines
    for line in installs:
        assert "ubuntu-drivers install --gpgpu" in line, line


@pytest.mark.parametrize("family", ["debian", "ubuntu"])
def test_gpu_templates_reboot_into_the_new_kernel(family):
    cfg = _everything(family)
    assert cfg["power_state"]["mode"] == "reboot"
    assert cfg["power_state"]["condition"] is True


# --- the setup scripts, run for real against stand-ins for apt-get, dpkg and uname -------------

_DPKG_HEADER = (
    "Desired=Unknown/Install/Remove/Purge/Hold\n"
    "| Status=Not/Inst/Conf-files/Unpacked/halF-conf/Half-inst/trig-aWait/Trig-pend\n"
    "|/ Err?=(none)/Reinst-required (Status,Err: uppercase=bad)\n"
    "||/ Name Version Architecture Description\n"
    "+++-====-=======-============-===========\n"
)
# Stand-ins: every call is logged as one line of arguments; $FAKE holds their state.
_STUBS = {
    "apt-get": """#!/bin/sh
printf '%s\\n' "$*" >> "$FAKE/apt-get.log"
if [ -s "$FAKE/apt-get.failures" ]; then
  n=$(cat "$FAKE/apt-get.failures")
  if [ "$n" -gt 0 ]; then echo $((n - 1)) > "$FAKE/apt-get.failures"; exit 100; fi
fi
""",
    "dpkg": f"""#!/bin/sh
case "$1" in
  --print-architecture) echo amd64 ;;
  -l)
    printf '{_DPKG_HEADER}'
    found=1
    while read -r status name rest; do
      case "$name" in $2) echo "$status  $name $rest"; found=0 ;; esac
    done < "$FAKE/installed"
    exit $found ;;
  *) exit 2 ;;
esac
""",
    "uname": '#!/bin/sh\n[ "$1" = -r ] && cat "$FAKE/uname"\n',
    "ubuntu-drivers": """#!/bin/sh
printf '%s APT_CONFIG=%s\\n' "$*" "$(cat "$APT_CONFIG")" >> "$FAKE/ubuntu-drivers.log"
cat "$FAKE/driver" >> "$FAKE/installed"
""",
    "curl": "#!/bin/sh\necho key\n",
    "gpg": "#!/bin/sh\ncat > /dev/null\n",
    "sleep": '#!/bin/sh\necho "$1" >> "$FAKE/sleeps"\n',
    "udevadm": "#!/bin/sh\n",
}


def _run_setup(
    tmp_path: Path,
    family: str,
    device: str,
    *,
    uname: str = "6.1.0-18-amd64",
    installed: str = "",
    driver: str = "",
    apt_failures: int = 0,
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run one device's rendered setup script with stand-ins; return it and apt-get's calls."""
    cfg = validate(compose(make_facts(os_family=family, devices=(DEVICES[device],))))
    (script,) = [f["content"] for f in cfg["write_files"] if f["path"].endswith(f"/{device}.sh")]
    fake, stubs = tmp_path / "fake", tmp_path / "bin"
    for directory in (fake, stubs, fake / "keyrings", fake / "sources", fake / "run"):
        directory.mkdir(parents=True)
    for prefix, target in (
        ("/usr/share/keyrings/", fake / "keyrings"),
        ("/etc/apt/sources.list.d/", fake / "sources"),
        ("/run/", fake / "run"),
    ):
        script = script.replace(prefix, f"{target}/")
    # Nothing may reach the real system: no absolute path outside the sandbox is left.
    assert not re.search(r"(?<![\w./-])/(etc|usr|run|var|lib|boot)/", script), script
    for name, text in _STUBS.items():
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    awk = shutil.which("awk")
    assert awk is not None
    (stubs / "awk").symlink_to(awk)
    (stubs / "cat").symlink_to(shutil.which("cat") or "/bin/cat")
    (fake / "uname").write_text(uname + "\n")
    (fake / "installed").write_text(installed)
    (fake / "driver").write_text(driver)
    (fake / "apt-get.failures").write_text(f"{apt_failures}\n")
    (tmp_path / "setup.sh").write_text(script)
    run = subprocess.run(
        ["/bin/sh", str(tmp_path / "setup.sh")],
        env={"PATH": str(stubs), "FAKE": str(fake), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    log = fake / "apt-get.log"
    calls = log.read_text().splitlines() if log.exists() else []
    for call in calls:
        assert call.startswith("-o DPkg::Lock::Timeout=600 "), call
    return run, [call.removeprefix("-o DPkg::Lock::Timeout=600 ") for call in calls]


@pytest.mark.parametrize(
    ("uname", "flavour"),
    [
        ("6.1.0-18-amd64", "amd64"),
        ("6.1.0-18-cloud-amd64", "cloud-amd64"),
        ("6.12.38+deb13-amd64", "amd64"),
        ("6.12.38+deb13-cloud-amd64", "cloud-amd64"),
    ],
)
def test_debian_nvidia_installs_the_newest_kernel_and_headers(tmp_path, uname, flavour):
    run, calls = _run_setup(tmp_path, "debian", "gpu-nvidia", uname=uname)
    assert run.returncode == 0, run.stderr
    assert calls == [
        "update",
        f"install -y linux-image-{flavour} linux-headers-{flavour}",
        "install -y nvidia-driver firmware-misc-nonfree nvidia-container-toolkit",
    ]


UBUNTU_KERNEL = (
    "ii linux-image-6.8.0-31-generic 6.8.0-31.31 amd64 kernel\n"
    "ii linux-image-virtual 6.8.0-31.31 amd64 meta\n"
    "ii linux-image-unsigned-6.8.0-31-generic 6.8.0-31.31 amd64 kernel\n"
    "rc linux-image-generic 6.8.0-20.20 amd64 meta\n"
)


def test_ubuntu_nvidia_installs_the_server_driver_and_its_tools(tmp_path):
    driver = "ii nvidia-headless-no-dkms-580-server 580.95.05-0ubuntu1 amd64 NVIDIA headless\n"
    run, calls = _run_setup(
        tmp_path, "ubuntu", "gpu-nvidia", installed=UBUNTU_KERNEL, driver=driver
    )
    assert run.returncode == 0, run.stderr
    assert calls == [
        "update",
        "install -y ubuntu-drivers-common nvidia-container-toolkit",
        # The newest kernel of the image's meta package, for which ubuntu-drivers picks modules.
        "install -y linux-image-virtual",
        "install -y nvidia-utils-580-server",
    ]
    # ubuntu-drivers runs apt-get itself: it gets the lock timeout through APT_CONFIG.
    log = (tmp_path / "fake" / "ubuntu-drivers.log").read_text()
    assert log == 'install --gpgpu APT_CONFIG=DPkg::Lock::Timeout "600";\n'


def test_ubuntu_nvidia_fails_when_ubuntu_drivers_installed_nothing(tmp_path):
    # ubuntu-drivers exits 0 even when its apt-get fails; the script must not go on quietly.
    run, calls = _run_setup(tmp_path, "ubuntu", "gpu-nvidia", installed=UBUNTU_KERNEL)
    assert run.returncode == 1
    assert "ubuntu-drivers install --gpgpu installed no driver" in run.stderr
    assert not any("nvidia-utils" in call for call in calls)


@pytest.mark.parametrize(
    ("installed", "package"),
    [
        ("ii linux-image-virtual 6.8.0.51.51 amd64 meta\n", "linux-image-generic"),
        (
            "ii linux-image-virtual-hwe-22.04 6.8.0.51.51~22.04.1 amd64 meta\n",
            "linux-image-generic-hwe-22.04",
        ),
        ("rc linux-image-virtual-hwe-22.04 1 amd64 meta\n", "linux-image-generic"),
        ("", "linux-image-generic"),
    ],
)
def test_ubuntu_amd_installs_the_generic_kernel_of_the_images_series(tmp_path, installed, package):
    run, calls = _run_setup(tmp_path, "ubuntu", "gpu-amd", installed=installed)
    assert run.returncode == 0, run.stderr
    assert calls == [f"install -y {package}"]


def test_apt_get_is_retried_while_a_lock_is_held(tmp_path):
    # DPkg::Lock::Timeout does not cover the lists lock of apt-get update.
    run, calls = _run_setup(tmp_path, "debian", "coral-tpu", apt_failures=2)
    assert run.returncode == 0, run.stderr
    assert calls == ["update", "update", "update", "install -y libedgetpu1-std"]
    assert (tmp_path / "fake" / "sleeps").read_text().split() == ["30", "30"]


def test_apt_get_gives_up_after_five_tries(tmp_path):
    run, calls = _run_setup(tmp_path, "debian", "coral-tpu", apt_failures=100)
    assert run.returncode != 0
    assert calls == ["update"] * 5
