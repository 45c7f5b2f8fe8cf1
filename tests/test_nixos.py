"""NixOS user-data: identity, the flake ref, the facts file and the transient bootstrap unit."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from function.cloudinit import DeviceFact, GuestFacts, NetworkFact, compose, nixos

try:
    from cloudinit.config.schema import get_schema, validate_cloudconfig_schema
except ImportError:  # Debian's python3 package lives outside the virtualenv's path
    sys.path.append("/usr/lib/python3/dist-packages")
    from cloudinit.config.schema import get_schema, validate_cloudconfig_schema

pytestmark = pytest.mark.filterwarnings("ignore:Passing a schema to Validator:DeprecationWarning")

ROOT = Path(__file__).resolve().parent.parent
SW_BIN = "/run/current-system/sw/bin/"
FLAKE = "git+https://git.example/fabric?ref=main#gpu-worker-1"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOaXf8Vq me@laptop"


def make_facts(**changes: Any) -> GuestFacts:
    base = GuestFacts(
        machine="infra-machines/gpu-worker-1",
        hostname="gpu-worker-1",
        admin_user="admin",
        ssh_keys=(KEY,),
        timezone="UTC",
        os_family="nixos",
        devices=(
            DeviceFact("gpu-nvidia", "rtx3070", "pci", ("10de:2484", "10de:228b"), "RTX 3070"),
        ),
        network=NetworkFact(
            name="k3s-cluster",
            address="10.40.0.101/24",
            gateway="10.40.0.1",
            dns_servers=("10.40.0.1", "1.1.1.1"),
            domain="home.arpa",
            vlan=40,
        ),
        flake_ref=FLAKE,
    )
    return dataclasses.replace(base, **changes)


def user_data(facts: GuestFacts) -> dict[str, Any]:
    text = compose(facts)
    assert text.startswith("#cloud-config\n")
    cfg = yaml.safe_load(text)
    validate_cloudconfig_schema(cfg, get_schema(), strict=True)
    return cfg


def files_of(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["path"]: entry for entry in cfg["write_files"]}


def test_identity():
    cfg = user_data(make_facts())
    assert cfg["hostname"] == "gpu-worker-1"
    assert cfg["fqdn"] == "gpu-worker-1.home.arpa"
    (admin,) = cfg["users"]
    assert admin == {
        "name": "admin",
        "groups": ["wheel"],
        "shell": SW_BIN + "bash",
        "lock_passwd": True,
        "ssh_authorized_keys": [KEY],
    }
    # No sudo rule: cloud-init would append an includedir to NixOS's store-owned /etc/sudoers.
    assert "sudo" not in admin
    # Nothing that edits store-owned files or needs apt.
    assert not {"apt", "packages", "ssh_pwauth", "timezone", "manage_etc_hosts"} & set(cfg)


def test_bootstrap_is_a_transient_unit_with_full_paths():
    cfg = user_data(make_facts())
    assert cfg["runcmd"] == [nixos.bootstrap_command()]
    (command,) = cfg["runcmd"]
    assert isinstance(command, list), "list form: cloud-init single-quotes every argument"
    assert command[0] == SW_BIN + "systemd-run"
    assert "--unit=fabric-bootstrap" in command
    assert "--no-block" in command
    options = [arg for arg in command[1:] if arg.startswith("--")]
    program = command[1 + len(options) :]
    assert program == [SW_BIN + "bash", "/var/lib/fabric/bootstrap.sh"]
    assert FLAKE not in json.dumps(cfg["runcmd"]), "the ref travels in a file, not argv"


def test_files_written():
    facts = make_facts()
    files = files_of(user_data(facts))
    assert files["/etc/fabric/flake-ref"]["content"] == FLAKE + "\n"
    script = files["/var/lib/fabric/bootstrap.sh"]
    assert script["permissions"] == "0755"
    assert script["content"] == nixos.BOOTSTRAP_SCRIPT
    assert script["content"].startswith("#!" + SW_BIN + "bash\n")
    assert SW_BIN + 'nixos-rebuild switch --refresh --flake "$ref"' in script["content"]
    for entry in files.values():
        assert not entry["path"].startswith("/etc/systemd/"), "NixOS owns /etc/systemd/system"
        assert "defer" not in entry, "NixOS's cloud-init has no write-files-deferred"


def test_machine_facts_file():
    facts = make_facts(roles=())
    content = files_of(user_data(facts))["/etc/fabric/machine.json"]["content"]
    data = json.loads(content)
    assert data == nixos.machine_facts(facts)
    assert data["machine"] == "infra-machines/gpu-worker-1"
    assert data["hostname"] == "gpu-worker-1"
    assert data["fqdn"] == "gpu-worker-1.home.arpa"
    assert data["roles"] == []
    assert data["devices"] == [
        {
            "class": "gpu-nvidia",
            "mapping": "rtx3070",
            "bus": "pci",
            "ids": ["10de:2484", "10de:228b"],
            "model": "RTX 3070",
        }
    ]
    assert data["network"] == {
        "name": "k3s-cluster",
        "address": "10.40.0.101/24",
        "gateway": "10.40.0.1",
        "dns_servers": ["10.40.0.1", "1.1.1.1"],
        "domain": "home.arpa",
        "vlan": 40,
    }
    assert data["flake_ref"] == FLAKE
    assert data["version"] == 1
    assert content == json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def test_without_flake_only_identity():
    cfg = user_data(make_facts(flake_ref=None, network=None))
    assert "runcmd" not in cfg
    assert "fqdn" not in cfg
    assert list(files_of(cfg)) == ["/etc/fabric/machine.json"]
    assert cfg["users"][0]["name"] == "admin"


def test_without_keys_the_user_has_no_key_list():
    cfg = user_data(make_facts(ssh_keys=()))
    assert "ssh_authorized_keys" not in cfg["users"][0]


def test_deterministic():
    assert compose(make_facts()) == compose(make_facts())


def test_nixos_module_imports_first():
    # The NixOS renderer lives inside function.cloudinit; each may be imported first.
    for module in ("function.cloudinit.nixos", "function.cloudinit", "function.cloudinit.composer"):
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=ROOT)


# --- the bootstrap script, run for real against stand-ins for nixos-rebuild and sleep ----------


def _fake_system(tmp_path: Path, ref: str, failures: int) -> tuple[Path, Path]:
    """A copy of the script pointing at a fake /run/current-system/sw/bin and flake-ref file."""
    sw_bin = tmp_path / "sw-bin"
    sw_bin.mkdir()
    log = tmp_path / "log"
    log.mkdir()
    (log / "count").write_text("0\n")
    # Only shell builtins: the script's PATH holds nothing else but these stand-ins.
    (sw_bin / "nixos-rebuild").write_text(
        "#!/bin/sh\n"
        f"read n < {log}/count; n=$((n + 1)); echo $n > {log}/count\n"
        f'for a in "$@"; do printf "%s\\0" "$a"; done > {log}/argv\n'
        f"[ $n -gt {failures} ]\n"
    )
    (sw_bin / "sleep").write_text(f'#!/bin/sh\necho "$1" >> {log}/sleeps\n')
    for tool in sw_bin.iterdir():
        tool.chmod(0o755)
    ref_file = tmp_path / "flake-ref"
    ref_file.write_text(ref + "\n")
    script = nixos.BOOTSTRAP_SCRIPT.replace("/run/current-system/sw/bin", str(sw_bin)).replace(
        nixos.FLAKE_REF_PATH, str(ref_file)
    )
    path = tmp_path / "bootstrap.sh"
    path.write_text(script)
    return path, log


def _run(script: Path) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run(
        [bash, str(script)], check=False, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "ref",
    [FLAKE, "github:me/fleet#x", "git+https://h/r?ref=main#a $(touch /tmp/pwned) ; `id` \"q' *"],
)
def test_bootstrap_retries_with_backoff_and_passes_ref_as_one_argument(tmp_path, ref):
    script, log = _fake_system(tmp_path, ref, failures=5)
    run = _run(script)
    assert run.returncode == 0, run.stderr
    assert (log / "count").read_text() == "6\n"
    assert (log / "argv").read_text().split("\0")[:-1] == ["switch", "--refresh", "--flake", ref]
    assert (log / "sleeps").read_text().split() == ["10", "20", "40", "80", "160"]
    assert f"switched to {ref}" in run.stdout


def test_bootstrap_backoff_is_capped_and_gives_up(tmp_path):
    script, log = _fake_system(tmp_path, FLAKE, failures=10_000)
    run = _run(script)
    assert run.returncode == 1
    assert "giving up after 200 attempts" in run.stderr
    sleeps = [int(s) for s in (log / "sleeps").read_text().split()]
    assert len(sleeps) == 199
    assert max(sleeps) == 300


def test_bootstrap_refuses_empty_ref(tmp_path):
    script, log = _fake_system(tmp_path, "", failures=0)
    run = _run(script)
    assert run.returncode == 1
    assert "is empty" in run.stderr
    assert (log / "count").read_text() == "0\n"


def test_bootstrap_script_passes_shellcheck(tmp_path):
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    script = tmp_path / "bootstrap.sh"
    script.write_text(nixos.BOOTSTRAP_SCRIPT)
    subprocess.run([shellcheck, "--shell=bash", str(script)], check=True)


# --- the NixOS module for target flakes ------------------------------------------------------


def test_guest_module_parses():
    nix = shutil.which("nix-instantiate")
    if nix is None:
        pytest.skip("nix-instantiate is not installed (apt-get install nix-bin)")
    subprocess.run(
        [nix, "--parse", str(ROOT / "nixos" / "fabric-guest.nix")],
        check=True,
        capture_output=True,
    )


# The module evaluated without nixpkgs (none is available offline): the real file, called with
# a stand-in lib that applies mkIf/mkMerge/mkDefault the way the module system does, and the
# nixpkgs defaults and checks the cases need (tests/fixtures/nixos/eval-guest-module.nix says
# exactly what is emulated). Each case below failed on the module before its fix.
HARNESS = ROOT / "tests" / "fixtures" / "nixos" / "eval-guest-module.nix"


def _evaluate(
    configuration: str, *, upgrade_option: bool = True
) -> subprocess.CompletedProcess[str]:
    nix = shutil.which("nix-instantiate")
    if nix is None:
        pytest.skip("nix-instantiate is not installed (apt-get install nix-bin)")
    argv = [nix, "--readonly-mode", "--eval", "--strict", "--json", str(HARNESS)]
    argv += ["--arg", "configuration", configuration]
    argv += ["--arg", "hasUpgradeOption", "true" if upgrade_option else "false"]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def evaluate(configuration: str = "{ }", *, upgrade_option: bool = True) -> dict[str, Any]:
    run = _evaluate(configuration, upgrade_option=upgrade_option)
    assert run.returncode == 0, run.stderr
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def test_guest_module_defaults_evaluate_without_warnings():
    got = evaluate()
    assert got["failedAssertions"] == []
    # Before: nixpkgs warned that networkd (cloud-init's network) and dhcpcd could fight.
    assert got["warnings"] == []
    assert got["networking"] == {"hostName": "", "useDHCP": False, "useNetworkd": True}
    assert got["cloudInit"] == {"enable": True, "network": True}
    assert got["systemdServices"] == ["fabric-upgrade"]
    assert got["autoUpgrade"] == {"enable": False}


def test_guest_module_leaves_networking_alone_without_cloud_init_network():
    got = evaluate("{ services.cloud-init.network.enable = false; }")
    assert got["networking"]["useDHCP"] is True
    assert got["networking"]["useNetworkd"] is False
    assert got["warnings"] == []


def test_guest_module_with_proxmox_image_networking():
    # proxmox-image.nix sets networking.useDHCP = false (a plain definition).
    got = evaluate("{ networking.useDHCP = false; }")
    assert got["networking"]["useDHCP"] is False
    assert got["warnings"] == []


@pytest.mark.parametrize(
    "host_setting",
    [
        'nix.settings.experimental-features = "nix-command flakes";',
        'nix.settings.experimental-features = [ "nix-command" "flakes" "pipe-operators" ];',
    ],
)
def test_guest_module_adds_flakes_without_clashing_with_the_host(host_setting):
    # Before: the module set experimental-features as a list; the string form, which many
    # configurations use, then clashed with it and evaluation failed.
    got = evaluate(f"{{ {host_setting} }}")
    assert got["nixSettings"]["extra-experimental-features"] == ["nix-command", "flakes"]
    assert "experimental-features" in got["nixSettings"]


def test_guest_module_sets_only_extra_experimental_features():
    assert evaluate()["nixSettings"] == {"extra-experimental-features": ["nix-command", "flakes"]}


IMMUTABLE = 'users.mutableUsers = false; fabric.guest.adminUser = "admin";'
ADMIN_KEYS = f'fabric.guest.adminKeys = [ "{KEY}" ];'
USER_KEYS = f'users.users.admin.openssh.authorizedKeys.keys = [ "{KEY}" ];'
USER_KEY_FILES = 'users.users.admin.openssh.authorizedKeys.keyFiles = [ "/etc/admin.keys" ];'


@pytest.mark.parametrize(
    ("configuration", "refused"),
    [
        ("{ users.mutableUsers = false; }", True),
        # Before: declaring the user without keys passed the module's check.
        (f"{{ {IMMUTABLE} }}", True),
        (f"{{ {IMMUTABLE} {ADMIN_KEYS} }}", False),
        (f"{{ {IMMUTABLE} {USER_KEYS} }}", False),
        (f"{{ {IMMUTABLE} {USER_KEY_FILES} }}", False),
        ('{ fabric.guest.adminUser = "admin"; }', False),
        ("{ }", False),
    ],
)
def test_guest_module_immutable_users_need_an_admin_with_keys(configuration, refused):
    got = evaluate(configuration)
    failed = got["failedAssertions"]
    if refused:
        (message,) = failed
        assert message.startswith("fabric.guest: users.mutableUsers = false deletes the admin")
        assert "with keys" in message
    else:
        assert failed == []


def test_guest_module_declares_the_admin_with_its_keys():
    got = evaluate(f"{{ {IMMUTABLE} {ADMIN_KEYS} }}")
    assert got["users"] == {"admin": {"extraGroups": ["wheel"], "keyFiles": [], "keys": [KEY]}}


FLAKE_PIN = '{ fabric.guest.flake = "git+https://git.example/homelab?ref=main"; }'


def test_guest_module_flake_upgrades_do_not_add_upgrade():
    got = evaluate(FLAKE_PIN)
    # Before: upgrade was left at nixpkgs' default (true), which adds --upgrade.
    assert got["autoUpgrade"] == {
        "enable": True,
        "flake": "git+https://git.example/homelab?ref=main",
        "dates": "04:40",
        "randomizedDelaySec": "45min",
        "allowReboot": False,
        "upgrade": False,
    }
    assert got["systemdServices"] == []
    assert got["warnings"] == []


def test_guest_module_evaluates_on_nixpkgs_without_the_upgrade_option():
    # nixpkgs 24.11 (the README's pin) has no system.autoUpgrade.upgrade: setting it there
    # would fail with "The option ... does not exist".
    got = evaluate(FLAKE_PIN, upgrade_option=False)
    assert "upgrade" not in got["autoUpgrade"]
    assert got["autoUpgrade"]["enable"] is True


def test_guest_module_harness_rejects_undeclared_options():
    # The stand-in checks what the cases above rely on: an undeclared autoUpgrade option
    # and two clashing definitions both fail, as they do in the module system.
    run = _evaluate("{ system.autoUpgrade.upgrade = false; }", upgrade_option=False)
    assert run.returncode != 0
    assert "The option `system.autoUpgrade.upgrade' does not exist" in run.stderr
    run = _evaluate('{ networking.hostName = "a"; }')
    assert run.returncode == 0, run.stderr
    run = _evaluate('{ nix.settings.extra-experimental-features = "ca-derivations"; }')
    assert run.returncode != 0
    assert "conflicting definitions of nix.settings.extra-experimental-features" in run.stderr


def test_guest_module_allow_reboot_without_flake_warns():
    got = evaluate("{ fabric.guest.upgrade.allowReboot = true; }")
    (warning,) = got["warnings"]
    assert warning.startswith("fabric.guest.upgrade.allowReboot needs fabric.guest.flake")


def test_guest_module_disabled_sets_nothing():
    got = evaluate("{ fabric.guest.enable = false; }")
    assert got["cloudInit"] == {"enable": False, "network": False}
    assert got["nixSettings"] == {}
    assert got["systemdServices"] == []
    assert got["networking"] == {"hostName": "nixos", "useDHCP": True, "useNetworkd": False}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (FLAKE + "\n", ["switch", "--refresh", "--flake", FLAKE]),
        # Written by hand without a trailing newline: read fails, set -e must not end the unit.
        (FLAKE, ["switch", "--refresh", "--flake", FLAKE]),
        ("", None),
        (None, None),
    ],
)
def test_fabric_upgrade_reads_the_ref_the_owner_wrote(tmp_path, content, expected):
    script = evaluate()["fabricUpgradeScript"]
    sw_bin = tmp_path / "sw-bin"
    sw_bin.mkdir()
    (sw_bin / "nixos-rebuild").write_text(
        f'#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done > {tmp_path}/argv\n'
    )
    (sw_bin / "nixos-rebuild").chmod(0o755)
    ref_file = tmp_path / "flake-ref"
    if content is not None:
        ref_file.write_text(content)
    script = script.replace(nixos.FLAKE_REF_PATH, str(ref_file)).replace(
        "/run/current-system/sw/bin", str(sw_bin)
    )
    # NixOS's makeJobScript runs a unit's script under `set -e`.
    (tmp_path / "unit.sh").write_text("set -e\n" + script)
    run = _run(tmp_path / "unit.sh")
    assert run.returncode == 0, run.stderr
    argv = tmp_path / "argv"
    if expected is None:
        assert "nothing to do" in run.stdout
        assert not argv.exists()
    else:
        assert argv.read_text().split("\0")[:-1] == expected


def test_guest_module_covers_the_contract():
    module = (ROOT / "nixos" / "fabric-guest.nix").read_text()
    for needle in (
        "services.cloud-init.enable = true",
        "services.cloud-init.network.enable",
        "services.qemuGuest.enable = true",
        "system.autoUpgrade",
        "randomizedDelaySec",
        "allowReboot",
        nixos.FLAKE_REF_PATH,
        "users.mutableUsers",
        "wheelNeedsPassword",
        "restartIfChanged = false",
    ):
        assert needle in module, needle
    readme = (ROOT / "nixos" / "README.md").read_text()
    for needle in ("proxmox-image.nix", "proxmox.cloudInit.enable", "qmrestore", "qm template"):
        assert needle in readme, needle
