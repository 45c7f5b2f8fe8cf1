"""The image: the Dockerfile built by a real Docker daemon and run the ways Crossplane runs it.

The image is built from the unchanged Dockerfile (only its `# syntax=` line is dropped: it would
pull a frontend image) with BuildKit, then run twice over real gRPC on loopback:

- as Crossplane's function runtime runs it in a cluster: its own entrypoint and command, the
  certificates mounted read-only (tls.crt, tls.key, ca.crt) and named by TLS_SERVER_CERTS_DIR,
  Crossplane's default user (2000:2000), no privilege escalation and, as the Dockerfile promises
  it works, a read-only root filesystem; RunFunction over mTLS;
- as `crossplane render`'s Docker runtime runs it: the image's own user, command `--insecure`;
  RunFunction over plain gRPC, for every example XR.

Each run also checks the process (a non-root uid, one listener on the port) and that
`docker stop` ends it with SIGTERM, cleanly and well within the grace period.

Where it runs: the machine has no container registry. `tools/docker-env.sh` (run by the
`docker_daemon` fixture below when the tests run as root) installs Debian's docker.io, starts a
dockerd with no bridge and no iptables, and tags a debootstrapped stand-in for the Dockerfile's
base image; the fixture stops that dockerd again at the end if it started it. Containers and
builds use `--network host` (the daemon has no other network) and listen on 127.0.0.1 only. Set
FABRIC_DOCKER_SETUP=0 to never run the script. Without a daemon or the base image the tests skip,
naming what is missing; under CI they fail instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import grpc
import pytest
import yaml

from tests.conftest import Call, desired_ws, messages, reconcile, status
from tests.test_mtls import Authority, Issued
from tools import xpsim

pytestmark = pytest.mark.slow

ROOT = xpsim.ROOT
DOCKERFILE = ROOT / "Dockerfile"
SETUP = ROOT / "tools" / "docker-env.sh"
SETUP_COMMAND = "bash tools/docker-env.sh"
# Debian's 20.10 client drives the daemon's built-in BuildKit; a newer client would want buildx.
DOCKER = "/usr/bin/docker"
IMAGE = "fabric-local/function-fabric:test"
EXAMPLE_XRS = sorted((ROOT / "examples" / "xrs").glob("*.yaml"))
# What Crossplane's function runtime does by default (internal/controller/pkg/runtime).
CROSSPLANE_USER = "2000:2000"
CERTS_DIR = "/tls/server"
IMAGE_USER = "65532:65532"
# `docker stop -t`: SIGTERM, then SIGKILL after this many seconds (Kubernetes waits 30).
GRACE = 10
BUILD_TIMEOUT = 1800
TIMEOUT = 120


def unavailable(what: str) -> None:
    """A missing tool fails the run in CI and skips it elsewhere (as conftest.require_tool)."""
    msg = f"{what}; set it up with `{SETUP_COMMAND}` (as root)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def docker(
    *args: str, timeout: float = TIMEOUT, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the Docker client; a failure shows the command and what it printed."""
    done = subprocess.run(
        [DOCKER, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )
    if check and done.returncode != 0:
        pytest.fail(f"docker {shlex.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done


def daemon_answers() -> bool:
    if not Path(DOCKER).exists():
        return False
    return docker("version", "--format", "{{.Server.Version}}", check=False).returncode == 0


def dockerfile_base() -> str:
    """The base image the Dockerfile builds on: its first FROM with global ARG defaults."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    args = dict(re.findall(r"(?m)^ARG\s+(\w+)=(\S+)", text))
    first = re.search(r"(?im)^FROM\s+(\S+)", text)
    assert first, "the Dockerfile has no FROM"
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], first.group(1))


# --- the daemon and the image -------------------------------------------------------------------


def run_setup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SETUP), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def docker_daemon() -> Iterator[None]:
    """A daemon that answers, with the Dockerfile's base image; started here if need be."""
    answered = daemon_answers()
    started = False
    try:
        if os.environ.get("FABRIC_DOCKER_SETUP", "1") != "0" and os.geteuid() == 0:
            started = not answered
            setup = run_setup("up")
            print(setup.stderr)
            if setup.returncode != 0:
                unavailable(f"tools/docker-env.sh failed:\n{setup.stderr[-3000:]}")
        if not Path(DOCKER).exists():
            unavailable(f"{DOCKER} is not installed (Debian's docker.io)")
        if not daemon_answers():
            unavailable("no Docker daemon answers (dockerd is not running)")
        base = dockerfile_base()
        if docker("image", "inspect", base, check=False).returncode != 0:
            unavailable(f"the Dockerfile's base image {base} is not in the local store")
        yield
    finally:
        if started:  # leave the machine as it was: stop only what this fixture started
            stopped = run_setup("stop")
            print(stopped.stderr)


@pytest.fixture(scope="module")
def image(docker_daemon: None) -> str:
    """The image, built from the Dockerfile as it is, with BuildKit and no registry."""
    # A `# syntax=` directive would make BuildKit pull the dockerfile frontend image: drop it.
    dockerfile = re.sub(
        r"(?im)^#\s*syntax\s*=.*\n", "", DOCKERFILE.read_text(encoding="utf-8"), count=1
    )
    start = time.monotonic()
    built = docker(
        "build", "--network", "host", "--progress", "plain", "-t", IMAGE, "-f", "-", ".",
        stdin=dockerfile,
        timeout=BUILD_TIMEOUT,
        check=False,
    )  # fmt: skip
    if built.returncode != 0:
        pytest.fail(f"docker build failed ({built.returncode}):\n{built.stderr[-6000:]}")
    print(f"docker build: {time.monotonic() - start:.1f} s")
    return IMAGE


# --- containers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Container:
    """A running container of the image and the loopback address it serves on."""

    id: str
    address: str

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def inspect(self) -> dict[str, Any]:
        return json.loads(docker("inspect", self.id).stdout)[0]

    def exec(self, *args: str) -> str:
        return docker("exec", self.id, *args).stdout

    def logs(self) -> str:
        done = docker("logs", self.id, check=False)
        return done.stdout + done.stderr


def wait_until_listening(box: Container) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = box.inspect()["State"]
        if not state["Running"]:
            pytest.fail(f"the container exited with {state['ExitCode']}:\n{box.logs()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", box.port), 0.2):
            return
        time.sleep(0.1)
    pytest.fail(f"the container did not listen on {box.address} within 60 s:\n{box.logs()}")


@contextlib.contextmanager
def container(image: str, options: list[str], args: list[str]) -> Iterator[Container]:
    """`docker run` the image on the host network, serving on a free loopback port.

    `args` replace the image's command (CMD), as a Deployment's `args` or `crossplane render`
    do; there is no init process (`--init`): the function is PID 1, as in a pod.
    """
    address = f"127.0.0.1:{xpsim.free_port()}"
    name = f"fabric-test-{uuid.uuid4().hex[:12]}"
    run = ["run", "-d", "--name", name, "--network", "host", *options, image]
    cid = docker(*run, *args, "--address", address).stdout.strip()
    box = Container(cid, address)
    try:
        wait_until_listening(box)
        yield box
    finally:
        docker("rm", "-f", cid, check=False)


# --- what every run checks ----------------------------------------------------------------------


def process_status(box: Container) -> dict[str, str]:
    """/proc/1/status of the container: PID 1 is the function itself."""
    text = box.exec("cat", "/proc/1/status")
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def assert_runs_as(box: Container, uid: int, gid: int) -> None:
    cmdline = box.exec("cat", "/proc/1/cmdline").split("\0")
    assert "/venv/bin/function" in cmdline, cmdline
    proc = process_status(box)
    # Real, effective, saved and filesystem ids, and no way to gain privileges.
    assert proc["Uid"].split() == [str(uid)] * 4, proc["Uid"]
    assert proc["Gid"].split() == [str(gid)] * 4, proc["Gid"]
    assert proc["NoNewPrivs"].strip() == "1"
    assert box.exec("id", "-u").strip() == str(uid)


# Inside the container (same uid as PID 1, so its fds are readable): the listening TCP sockets on
# PORT, from the network namespace's tables (the host's: --network host), and which belong to PID 1.
LISTENERS = """
import glob, json, os, socket, struct, sys
port = int(sys.argv[1])
owned = set()
for fd in glob.glob("/proc/1/fd/*"):
    target = os.readlink(fd)
    if target.startswith("socket:["):
        owned.add(target[8:-1])
found = []
for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
    with open(table) as rows:
        next(rows)
        for row in rows:
            f = row.split()
            host, hexport = f[1].rsplit(":", 1)
            if f[3] == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                # The kernel writes the address as 32-bit words in host (little-endian) order.
                words = [int(host[i : i + 8], 16) for i in range(0, len(host), 8)]
                ip = socket.inet_ntop(family, struct.pack("<%dI" % len(words), *words))
                found.append({"address": ip, "pid1": f[9] in owned})
print(json.dumps(found))
"""


def assert_one_listener(box: Container) -> None:
    found = json.loads(box.exec("python", "-c", LISTENERS, str(box.port)))
    # gRPC may listen on an IPv6 socket with the IPv4-mapped loopback address.
    assert len(found) == 1, found
    assert found[0]["pid1"], found
    assert found[0]["address"] in {"127.0.0.1", "::ffff:127.0.0.1"}, found


def assert_stops_cleanly(box: Container) -> float:
    start = time.monotonic()
    docker("stop", "-t", str(GRACE), box.id, timeout=GRACE + 60)
    took = time.monotonic() - start
    state = box.inspect()["State"]
    logs = box.logs()
    # The SDK's SIGTERM handler stops the server (letting calls finish) and the CLI returns: exit
    # 0. 137 would be the SIGKILL at the end of the grace period (PID 1 does not die of an
    # unhandled SIGTERM); 143 a SIGTERM nobody handled.
    assert state["ExitCode"] == 0, (state, logs)
    assert not state["OOMKilled"]
    assert took < GRACE / 2, f"docker stop took {took:.1f} s of a {GRACE} s grace period"
    assert "Traceback" not in logs, logs
    print(f"docker stop: {took:.2f} s (grace {GRACE} s), exit {state['ExitCode']}")
    return took


def load_xr(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def assert_workspace(rsp: fnv1.RunFunctionResponse) -> dict[str, Any]:
    ws = desired_ws(rsp)
    assert ws is not None, messages(rsp)
    assert ws["kind"] == "Workspace", ws["kind"]
    assert status(rsp)["phase"] == "Scheduled", status(rsp)
    return ws


# --- the image ----------------------------------------------------------------------------------


def test_the_image_is_configured_as_the_dockerfile_says(image):
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == IMAGE_USER
    assert config["Entrypoint"] == ["/venv/bin/function"]
    assert config["Cmd"] == ["--address", "0.0.0.0:9443"]
    assert "9443/tcp" in config["ExposedPorts"]


def test_the_image_holds_no_discovery_code(image):
    """fabric_discover (the workstation CLI) is neither importable nor a script in the image."""
    probe = (
        "import importlib.util, pathlib; "
        "print(importlib.util.find_spec('function') is not None); "
        "print(importlib.util.find_spec('fabric_discover') is not None); "
        "print(sorted(str(p) for p in pathlib.Path('/venv').rglob('fabric*discover*')))"
    )
    ran = docker("run", "--rm", "--network", "none", "--entrypoint", "/venv/bin/python", image,
                 "-c", probe)  # fmt: skip
    assert ran.stdout.splitlines() == ["True", "False", "[]"], ran.stdout


@dataclass(frozen=True)
class Certs:
    """A certificates directory as Crossplane mounts it, and a client of the same CA."""

    directory: Path
    ca: bytes
    client: Issued


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    ca = Authority.create("fabric-image-test-ca")
    server = ca.issue("function-fabric", server=True)
    directory = tmp_path_factory.mktemp("image-tls")
    (directory / "tls.crt").write_bytes(server.cert)
    (directory / "tls.key").write_bytes(server.key)
    (directory / "ca.crt").write_bytes(ca.pem)
    # A Secret volume's defaults: files 0644 owned by root, readable by the pod's user.
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)
    return Certs(directory, ca.pem, ca.issue("crossplane", server=False))


def test_crossplane_runs_the_image_with_mtls(image, certs):
    options = [
        "--user", CROSSPLANE_USER,
        "--security-opt", "no-new-privileges",
        # The Dockerfile promises a runtime that never writes (bytecode is compiled at build).
        "--read-only",
        "-v", f"{certs.directory}:{CERTS_DIR}:ro",
        "-e", f"TLS_SERVER_CERTS_DIR={CERTS_DIR}",
    ]  # fmt: skip
    with container(image, options, []) as box:
        identity = grpc.ssl_channel_credentials(
            root_certificates=certs.ca,
            private_key=certs.client.key,
            certificate_chain=certs.client.cert,
        )
        call: Call = xpsim.stub(box.address, identity)
        ws = assert_workspace(reconcile(call, load_xr(ROOT / "examples" / "xrs" / "basic.yaml")))
        assert json.loads(ws["spec"]["forProvider"]["module"])["resource"]
        # Without a client certificate, or in plaintext, nothing is served.
        anonymous = grpc.ssl_channel_credentials(root_certificates=certs.ca)
        for refused in (xpsim.stub(box.address, anonymous), xpsim.stub(box.address)):
            with pytest.raises(grpc.RpcError) as err:
                refused(xpsim.request(load_xr(EXAMPLE_XRS[0]), None))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert_runs_as(box, 2000, 2000)
        assert_one_listener(box)
        assert_stops_cleanly(box)


def test_crossplane_render_runs_the_image_insecure(image, call):
    # crossplane render (cmd/crank/render/runtime_docker.go) creates the container with the
    # image's user and Cmd ["--insecure"] and publishes port 9443 on localhost; with host
    # networking the loopback address is passed instead.
    with container(image, ["--security-opt", "no-new-privileges"], ["--insecure"]) as box:
        in_image: Call = xpsim.stub(box.address)
        for path in EXAMPLE_XRS:
            xr = load_xr(path)
            served = reconcile(in_image, xr)
            assert_workspace(served)
            # The image answers exactly what the function from the source tree answers.
            here = reconcile(call, xr)
            assert served.SerializeToString(deterministic=True) == here.SerializeToString(
                deterministic=True
            ), path.name
        assert_runs_as(box, 65532, 65532)
        assert_one_listener(box)
        assert_stops_cleanly(box)
