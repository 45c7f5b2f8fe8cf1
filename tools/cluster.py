"""A real cluster on one machine: etcd, kube-apiserver, Crossplane core and Fabric's function.

Everything runs as a local process inside a private network namespace that has nothing but
loopback, so every server is loopback-only by construction and no port clashes with anything
else on the machine. The pieces, all built from Go modules by tools/build-cluster-tools.sh:

- etcd and kube-apiserver with certificates made here (a CA, a serving certificate, an admin
  client certificate, a service-account key), like controller-runtime's envtest;
  kube-controller-manager with only its garbage collector (what deletes a deleted XR's composed
  resources) and namespace controllers;
- an in-memory OCI registry on localhost holding Fabric's package, built by
  `crossplane xpkg build` from package/; Crossplane core installs it as a user's
  `kubectl apply` of a Function would: its package manager pulls it, establishes the input CRD,
  and the Deployment runtime creates the function's Service, its TLS secrets and Deployment;
- the part of a node this machine lacks, played by this module: it starts the function the
  Deployment describes (`python -m function.main`, serving mTLS with the certificates core put
  in the function's TLS server secret) and marks the Deployment available, and it stands in for
  cluster DNS and kube-proxy with a loopback HTTP CONNECT proxy that core reaches through the
  standard HTTPS_PROXY variable (gRPC hands the proxy the Service's name unresolved), routing
  `function-fabric.crossplane-system:9443` to the function.

Core dials `FunctionRevision.status.endpoint` as in a cluster, with its own client certificate,
and the TLS handshake is end to end. Nothing in Crossplane or Fabric is patched or mocked.

    python -m tools.cluster up        # bring it up, install Fabric and the example claims, wait
    python -m tools.cluster docs      # the README's `kubectl get/describe machine` sections
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from tools import realtools

ROOT = realtools.ROOT
BUILD_COMMAND = "bash tools/build-cluster-tools.sh"
TOOLS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
    "crossplane-core-2.0",
    "crossplane-2.0",
    "registry",
)
NAMESPACE = "crossplane-system"  # Crossplane's namespace (the Helm chart's default)
CLAIMS_NS = "infra-machines"
FUNCTION = "function-fabric"
PACKAGE_TAG = "v0.0.0-cluster"
# Ports inside the private network namespace (nothing else listens there).
ETCD_PORT, ETCD_PEER_PORT = 2379, 2380
APISERVER_PORT = 6443
REGISTRY_PORT = 5000
PROXY_PORT = 3128
FUNCTION_PORT = 9443  # the port the function's container would serve on
CORE_METRICS_PORT = 8085  # the RBAC manager keeps controller-runtime's default, 8080
CORE_USER = f"system:serviceaccount:{NAMESPACE}:crossplane"


def missing_tools() -> list[str]:
    """Which of the tools this cluster needs are not built."""
    return [name for name in TOOLS if realtools.binary(name) is None]


def why_missing(names: list[str]) -> str:
    """A skip reason: what is missing and the commands that build it."""
    return (
        f"{', '.join(names)} not built in {realtools.home() / 'bin'}: run `{BUILD_COMMAND}` "
        f"(and `{realtools.BUILD_COMMAND}` for the Crossplane CLI)"
    )


def netns_unavailable() -> str | None:
    """Why a private network namespace cannot be made here, or None when it can."""
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "--net", "true"],  # noqa: S607 - util-linux, found on PATH above
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"cannot create a network namespace (needs root): {probe.stderr.strip()}"
    return None


# --- certificates -------------------------------------------------------------------------


def _certificates(out: Path) -> None:
    """A CA; the API server's serving cert; an admin client cert; the service-account key."""
    from cryptography import x509  # noqa: PLC0415 - a dev dependency, needed only here
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    now = dt.datetime.now(dt.UTC)

    def key_pem(key: Any) -> bytes:
        return bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def write(name: str, data: bytes) -> None:
        path = out / name
        path.write_bytes(data)
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fabric-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    write("ca.crt", ca.public_bytes(serialization.Encoding.PEM))

    def leaf(name: str, subject: x509.Name, *, server: bool) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName("kubernetes.default.svc"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        usage = x509.oid.ExtendedKeyUsageOID
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([usage.SERVER_AUTH if server else usage.CLIENT_AUTH]),
            critical=False,
        )
        cert = builder.sign(ca_key, hashes.SHA256())
        write(f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))
        write(f"{name}.key", key_pem(key))

    leaf(
        "apiserver", x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "apiserver")]), server=True
    )
    leaf(
        "admin",
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "fabric-test-admin"),
            ]
        ),
        server=False,
    )
    # Crossplane core authenticates as its ServiceAccount would; RBAC decides what it may do.
    leaf(
        "crossplane",
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:serviceaccounts"),
                x509.NameAttribute(
                    NameOID.ORGANIZATION_NAME, f"system:serviceaccounts:{NAMESPACE}"
                ),
                x509.NameAttribute(NameOID.COMMON_NAME, CORE_USER),
            ]
        ),
        server=False,
    )
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write("sa.key", key_pem(sa))
    write(
        "sa.pub",
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def _kubeconfig(certs: Path, user: str = "admin") -> dict[str, Any]:
    def b64(name: str) -> str:
        return base64.b64encode((certs / name).read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "fabric",
                "cluster": {
                    "server": f"https://127.0.0.1:{APISERVER_PORT}",
                    "certificate-authority-data": b64("ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate-data": b64(f"{user}.crt"),
                    "client-key-data": b64(f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "fabric", "context": {"cluster": "fabric", "user": "admin"}}],
        "current-context": "fabric",
    }


# --- the CONNECT proxy (cluster DNS + kube-proxy, for core's gRPC client) -------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _serve_proxy(listen: tuple[str, int], routes: dict[str, tuple[str, int]]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        match = re.fullmatch(r"CONNECT (\S+) HTTP/1\.[01]", line)
        target = routes.get(match[1]) if match else None
        if target is None:
            sys.stderr.write(f"proxy: refused {line!r}\n")
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, *listen)
    sys.stdout.write(f"proxy: serving on {listen[0]}:{listen[1]}, routes {sorted(routes)}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


def service_names(name: str, namespace: str, port: int) -> list[str]:
    """Every name a Service is dialled by, with its port (as cluster DNS resolves them)."""
    hosts = [
        f"{name}.{namespace}",
        f"{name}.{namespace}.svc",
        f"{name}.{namespace}.svc.cluster.local",
    ]
    return [f"{host}:{port}" for host in hosts]


# --- the cluster ----------------------------------------------------------------------------


def _say(text: str) -> None:
    sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()


class ClusterError(RuntimeError):
    """The cluster did not come up, or did not reach a wanted state in time."""


@dataclass
class Cluster:
    """The processes of one cluster, in a temp dir; `start()` then `install_fabric()`."""

    workdir: Path
    keep: bool = False
    log: Callable[[str], None] = field(default=lambda msg: _say(f"[cluster] {msg}"))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _netns: subprocess.Popen[bytes] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    # --- processes

    @property
    def bin(self) -> Path:
        """The tool cache's binaries."""
        return realtools.home() / "bin"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (client certificate of group system:masters)."""
        return self.workdir / "kubeconfig"

    def _in_netns(self, argv: list[str]) -> list[str]:
        assert self._netns is not None
        return ["nsenter", f"--net=/proc/{self._netns.pid}/ns/net", "--", *argv]

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        logfile: IO[bytes] = (self.workdir / "logs" / f"{name}.log").open("wb")
        full_env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **(env or {})}
        self.procs[name] = subprocess.Popen(  # noqa: S603 - the tool cache and this repo
            self._in_netns(argv),
            stdout=logfile,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=self.workdir,
            start_new_session=True,
        )
        logfile.close()

    def run(
        self, argv: list[str], *, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the cluster's network namespace."""
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        done = subprocess.run(  # noqa: S603 - the tool cache and this repo
            self._in_netns(argv),
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            msg = f"{' '.join(argv[:3])}… failed: {done.stderr.strip()[-2000:]}"
            raise ClusterError(msg)
        return done

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        """Run kubectl against the cluster; its stdout."""
        return self.run([str(self.bin / "kubectl"), *args], stdin=stdin, check=check).stdout

    def apply(self, *paths: Path | str) -> None:
        """`kubectl apply` (server-side) files or directories."""
        for path in paths:
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))

    def apply_docs(self, docs: list[dict[str, Any]]) -> None:
        """`kubectl apply` (server-side) objects."""
        self.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-",
            stdin=yaml.safe_dump_all(docs),
        )  # fmt: skip

    def get(self, kind: str, name: str | None = None, namespace: str | None = None) -> Any:
        """One object (None when absent), or every object of a kind (`items`)."""
        args = ["get", kind, "-o", "json"]
        if name:
            args.insert(2, name)
        args += ["-n", namespace] if namespace else (["-A"] if not name else [])
        out = self.run([str(self.bin / "kubectl"), *args], check=False)
        if out.returncode != 0:
            if "NotFound" in out.stderr or "not found" in out.stderr:
                return None
            raise ClusterError(out.stderr.strip())
        doc = json.loads(out.stdout)
        return doc if name else doc.get("items", [])

    def wait(
        self, what: str, check: Callable[[], Any], timeout: float = 180, every: float = 1
    ) -> Any:
        """Poll until `check()` is truthy; its value. A timeout names what was awaited."""
        deadline = time.monotonic() + timeout
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    tail = (self.workdir / "logs" / f"{name}.log").read_text(errors="replace")
                    msg = f"{name} exited ({proc.returncode}): {tail[-3000:]}"
                    raise ClusterError(msg)
            with contextlib.suppress(ClusterError):
                value = check()
                if value:
                    return value
            if time.monotonic() > deadline:
                msg = f"timed out waiting for {what}"
                raise ClusterError(msg)
            time.sleep(every)

    # --- bring-up

    def start(self) -> None:
        """etcd, the API server, the controller manager, Crossplane core, the registry."""
        missing = missing_tools()
        if missing:
            raise ClusterError(why_missing(missing))
        why = netns_unavailable()
        if why:
            raise ClusterError(why)
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        certs = self.workdir / "certs"
        certs.mkdir(exist_ok=True)
        began = time.monotonic()
        _certificates(certs)
        self.kubeconfig.write_text(yaml.safe_dump(_kubeconfig(certs)))
        self.kubeconfig.chmod(0o600)
        # The namespace holder: lo up, then wait; every process joins its network namespace.
        holder = ["unshare", "--net", sys.executable, "-c", _NETNS_HOLDER]
        self._netns = subprocess.Popen(  # noqa: S603 - util-linux, checked by netns_unavailable
            holder,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self._netns.stdout is not None
        if self._netns.stdout.readline().strip() != b"ready":
            msg = "the network namespace did not come up"
            raise ClusterError(msg)
        self.log(f"network namespace of pid {self._netns.pid}: loopback only")

        b = self.bin
        url = f"http://127.0.0.1:{ETCD_PORT}"
        peer = f"http://127.0.0.1:{ETCD_PEER_PORT}"
        self._spawn("etcd", [
            str(b / "etcd"), "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}", "--unsafe-no-fsync",
        ])  # fmt: skip
        self._spawn("kube-apiserver", [
            str(b / "kube-apiserver"),
            f"--etcd-servers={url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={APISERVER_PORT}",
            f"--cert-dir={self.workdir / 'apiserver'}",
            f"--tls-cert-file={certs / 'apiserver.crt'}",
            f"--tls-private-key-file={certs / 'apiserver.key'}",
            f"--client-ca-file={certs / 'ca.crt'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={certs / 'sa.pub'}",
            f"--service-account-signing-key-file={certs / 'sa.key'}",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
        ])  # fmt: skip
        self.wait(
            "the API server",
            lambda: (
                self.run(
                    [str(b / "kubectl"), "get", "--raw", "/readyz"], check=False
                ).stdout.strip()
                == "ok"
            ),
            timeout=120,
        )
        self.timings["apiserver ready"] = time.monotonic() - began
        self.log(f"API server ready after {self.timings['apiserver ready']:.0f} s")
        self._spawn("kube-controller-manager", [
            str(b / "kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--controllers=garbagecollector,namespace,clusterrole-aggregation",
            "--bind-address=127.0.0.1", "--secure-port=10257",
            "--leader-elect=false",
        ])  # fmt: skip
        self._spawn("registry", [str(b / "registry"), "-port", str(REGISTRY_PORT)])

        self._start_crossplane(certs)
        self.timings["crossplane started"] = time.monotonic() - began
        self.log("Crossplane core started")

    def _start_crossplane(self, certs: Path) -> None:
        b = self.bin
        # Crossplane: `core init` (its CRDs, the root CA and core's client certificate), then
        # `core start` with that certificate, as the Helm chart's init container and pod do.
        self.kubectl("create", "namespace", NAMESPACE)
        # The Helm chart's ServiceAccount: core reads it (its image pull secrets) for every
        # package Deployment it builds.
        self.kubectl("create", "serviceaccount", "crossplane", "-n", NAMESPACE)
        self.apply_docs(core_rbac())
        core_kubeconfig = self.workdir / "kubeconfig-crossplane"
        core_kubeconfig.write_text(yaml.safe_dump(_kubeconfig(certs, "crossplane")))
        core_kubeconfig.chmod(0o600)
        crds = realtools.home() / "crossplane-core-2.0" / "crds"
        tls = {
            "TLS_CA_SECRET_NAME": "crossplane-root-ca",
            "TLS_CLIENT_SECRET_NAME": "crossplane-tls-client",
            "POD_NAMESPACE": NAMESPACE,
            "POD_SERVICE_ACCOUNT": "crossplane",
        }
        env = {
            **os.environ,
            "KUBECONFIG": str(core_kubeconfig),
            **tls,
            "CRDS_PATH": str(crds),
            "WEBHOOK_ENABLED": "false",
        }
        # The init container's job. A CRD it has just created may not be served yet when a
        # later step uses it; the kubelet would restart the container, so run it again.
        for attempt in range(6):
            init = subprocess.run(  # noqa: S603 - the tool cache
                self._in_netns([str(b / "crossplane-core-2.0"), "core", "init"]),
                capture_output=True,
                text=True,
                env=env,
                timeout=180,
                check=False,
            )
            log = self.workdir / "logs" / f"crossplane-init-{attempt}.log"
            log.write_text(init.stdout + init.stderr)
            if init.returncode == 0:
                break
            time.sleep(2)
        else:
            msg = f"crossplane core init failed: {init.stderr[-3000:]}"
            raise ClusterError(msg)
        client_dir = self.workdir / "crossplane-tls-client"
        self._secret_to_dir(NAMESPACE, "crossplane-tls-client", client_dir)
        (self.workdir / "xpkg-cache").mkdir(exist_ok=True)
        # The RBAC manager (the chart's second Deployment) with its broad role: here the admin.
        self._spawn("crossplane-rbac-manager", [str(b / "crossplane-core-2.0"), "rbac", "start"])
        self._spawn(
            "crossplane",
            [str(b / "crossplane-core-2.0"), "core", "start", "--enable-webhooks=false", "--debug"],
            env={
                "KUBECONFIG": str(core_kubeconfig),
                "METRICS_PORT": str(CORE_METRICS_PORT),
                **tls,
                "TLS_CLIENT_CERTS_DIR": str(client_dir),
                "XPKG_CACHE_DIR": str(self.workdir / "xpkg-cache"),
                # Cluster DNS and kube-proxy: gRPC passes the Service name to the proxy.
                "HTTPS_PROXY": f"http://127.0.0.1:{PROXY_PORT}",
                "NO_PROXY": "127.0.0.1,localhost",
            },
        )

    def _secret_to_dir(self, namespace: str, name: str, out: Path) -> None:
        """A TLS Secret's keys as files (mode 0600), as a Pod's secret volume would mount them."""
        secret = self.wait(
            f"secret {namespace}/{name}",
            lambda: (s := self.get("secret", name, namespace)) and s.get("data") and s,
            timeout=120,
        )
        out.mkdir(parents=True, exist_ok=True)
        out.chmod(0o700)
        for key, value in secret["data"].items():
            path = out / key
            path.write_bytes(base64.b64decode(value))
            path.chmod(0o600)

    # --- Fabric, as a user installs it

    def push_package(self) -> str:
        """Build Fabric's xpkg with the real CLI and push it to the loopback registry."""
        cli = str(self.bin / "crossplane-2.0")
        out = self.workdir / "function-fabric.xpkg"
        self.run([cli, "xpkg", "build", "-f", str(ROOT / "package"), "-o", str(out)])
        ref = f"127.0.0.1:{REGISTRY_PORT}/fabric/{FUNCTION}:{PACKAGE_TAG}"
        self.wait(
            "the registry",
            lambda: (
                self.run([cli, "xpkg", "push", "-f", str(out), ref], check=False).returncode == 0
            ),
            timeout=60,
        )
        return ref

    def install_fabric(self, *, examples: bool = True) -> None:
        """Install Fabric: cluster/, the provider-terraform CRDs, the XRD, the function.

        Then the Composition and (with `examples`) the inventory and the example claims'
        namespace and Secret.
        """
        began = time.monotonic()
        ref = self.push_package()
        self.apply(ROOT / "cluster")
        tf = provider_terraform_crds()
        self.apply(*tf)
        # Every reconcile lists XContainers too (one fleet): their XRD is part of the install.
        self.apply(ROOT / "xrds" / "xmachine.yaml", ROOT / "xrds" / "xcontainer.yaml")
        self.apply_docs(
            [
                {
                    "apiVersion": "pkg.crossplane.io/v1",
                    "kind": "Function",
                    "metadata": {"name": FUNCTION},
                    "spec": {"package": ref},
                }
            ]
        )
        self.apply(
            ROOT / "compositions" / "composition.yaml", ROOT / "compositions" / "container.yaml"
        )
        self.run_function()
        for xrd in ("xmachines.fabric.homelab.io", "xcontainers.fabric.homelab.io"):
            self.wait(f"the XRD {xrd} to be established and offered", self.offered(xrd), 120)
        if examples:
            self.kubectl("create", "namespace", CLAIMS_NS)
            self.apply(ROOT / "examples" / "inventory.yaml")
            secrets = sorted((ROOT / "examples" / "secrets").glob("*.yaml"))
            self.apply(*secrets)
        self.timings["fabric installed"] = time.monotonic() - began
        self.log(f"Fabric installed in {self.timings['fabric installed']:.0f} s")

    def offered(self, xrd: str) -> Callable[[], bool]:
        """A check for `wait`: the XRD is established and its kind offered."""
        return lambda: _conditions(self.get("xrd", xrd)).get("Offered") == "True"

    def run_function(self) -> None:
        """Play the kubelet for the function's Deployment: start what it describes."""

        def deployment() -> Any:
            for d in self.get("deployments", namespace=NAMESPACE):
                owners = d["metadata"].get("ownerReferences") or []
                if any(o["kind"] == "FunctionRevision" for o in owners):
                    return d
            return None

        dep = self.wait("the function's Deployment", deployment, timeout=240)
        pod = dep["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        certs_dir = env.get("TLS_SERVER_CERTS_DIR")
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        if certs_dir not in mounts:
            msg = f"the function's Deployment mounts no TLS_SERVER_CERTS_DIR: {sorted(env)}"
            raise ClusterError(msg)
        secret = volumes[mounts[certs_dir]]["secret"]["secretName"]
        local = self.workdir / "function-tls-server"
        self._secret_to_dir(NAMESPACE, secret, local)
        env["TLS_SERVER_CERTS_DIR"] = str(local)
        self._spawn(
            "function",
            [sys.executable, "-m", "function.main", "--address", f"127.0.0.1:{FUNCTION_PORT}"],
            env={**env, "PYTHONPATH": str(ROOT)},
        )
        routes = [
            f"{name}=127.0.0.1:{FUNCTION_PORT}"
            for svc in self.get("services", namespace=NAMESPACE)
            if svc["spec"].get("selector", {}) == pod.get("metadata", {}).get("labels", {})
            or svc["metadata"]["name"] == FUNCTION
            for port in svc["spec"]["ports"]
            for name in service_names(svc["metadata"]["name"], NAMESPACE, port["port"])
        ]
        if not routes:
            msg = "the function has no Service"
            raise ClusterError(msg)
        self._spawn("proxy", [sys.executable, "-m", "tools.cluster", "proxy", *routes],
                    env={"PYTHONPATH": str(ROOT)})  # fmt: skip
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status = {
            "observedGeneration": dep["metadata"]["generation"],
            "replicas": 1,
            "updatedReplicas": 1,
            "readyReplicas": 1,
            "availableReplicas": 1,
            "conditions": [
                {
                    "type": "Available",
                    "status": "True",
                    "reason": "MinimumReplicasAvailable",
                    "message": "the function runs as a local process (tools/cluster.py)",
                    "lastUpdateTime": now,
                    "lastTransitionTime": now,
                }
            ],
        }
        name = dep["metadata"]["name"]
        self.kubectl("patch", "deployment", name, "-n", NAMESPACE, "--subresource=status",
                     "--type=merge", "-p", json.dumps({"status": status}))  # fmt: skip
        self.wait(
            "the function revision to be healthy",
            lambda: any(
                _conditions(r).get("RevisionHealthy") == "True"
                and _conditions(r).get("RuntimeHealthy") == "True"
                for r in self.get("functionrevisions")
            ),
            timeout=180,
        )
        self.log(f"function {FUNCTION} serving mTLS; revision healthy")

    # --- teardown

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL after 10 s) and remove the temp dir."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._netns is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._netns.pid, signal.SIGKILL)
            self._netns.wait()
        self.procs.clear()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


_NETNS_HOLDER = """
import fcntl, signal, socket, struct, sys
s = socket.socket()
flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, struct.pack("16sh", b"lo", 0)))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))
print("ready", flush=True)
signal.pause()
"""


def _conditions(obj: Any) -> dict[str, str]:
    """Map each condition type of an object to its status."""
    if not obj:
        return {}
    return {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}


def core_rbac() -> list[dict[str, Any]]:
    """What the Helm chart grants core: its ClusterRoles, bound to its ServiceAccount.

    The chart's template is read from the pinned release (tools/build-cluster-tools.sh copies
    it) and rendered with the chart's defaults (the RBAC manager deployed: `crossplane`
    aggregates every ClusterRole labelled `rbac.crossplane.io/aggregate-to-crossplane`). The RBAC
    manager grants core access to an XRD's kinds; to a provider's kinds it does so when the
    provider package is installed, which this cluster does not do: one ClusterRole stands in
    for that grant on provider-terraform's Workspaces.
    """
    template = realtools.home() / "crossplane-core-2.0" / "clusterrole.yaml"
    lines = []
    for line in template.read_text().splitlines():
        if re.fullmatch(r"\s*\{\{-? (if \.Values\.rbacManager\.deploy|end) -?\}\}\s*", line):
            continue  # the chart's default: the RBAC manager is deployed
        if re.fullmatch(r'\s*\{\{- include "crossplane\.labels" .*\}\}\s*', line):
            continue
        lines.append(line.replace('{{ template "crossplane.name" . }}', "crossplane"))
    rendered = "\n".join(lines)
    if "{{" in rendered:
        msg = f"{template}: a template construct this renderer does not know"
        raise ClusterError(msg)
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    aggregate = {"rbac.crossplane.io/aggregate-to-crossplane": "true"}
    docs.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "crossplane:provider-terraform:stand-in", "labels": aggregate},
            "rules": [
                {
                    "apiGroups": ["tf.upbound.io", "tf.m.upbound.io"],
                    "resources": ["*"],
                    "verbs": ["*"],
                }
            ],
        }
    )
    docs.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "crossplane"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "crossplane",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "crossplane", "namespace": NAMESPACE}],
        }
    )
    return docs


def provider_terraform_crds() -> list[Path]:
    """provider-terraform's CRDs from the shared reference files (no provider runs)."""
    ref = ROOT.parent / "shared" / "reference" / "provider-terraform"
    return sorted(ref.glob("tf.*.yaml"))


@contextlib.contextmanager
def running(*, keep: bool = False, examples: bool = True) -> Iterator[Cluster]:
    """A started cluster with Fabric installed; stopped (and its temp dir removed) after."""
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="fabric-cluster-")), keep=keep)
    try:
        cluster.start()
        cluster.install_fabric(examples=examples)
        yield cluster
    finally:
        cluster.stop()


# --- CLI ------------------------------------------------------------------------------------


def _proxy_main(routes: list[str]) -> None:
    table: dict[str, tuple[str, int]] = {}
    for route in routes:
        name, _, target = route.partition("=")
        host, _, port = target.rpartition(":")
        table[name] = (host, int(port))
    asyncio.run(_serve_proxy(("127.0.0.1", PROXY_PORT), table))


def _interrupt(signum: int, frame: object) -> None:
    del signum, frame
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """The CLI: `up`, `docs` (and the internal `proxy`)."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="bring a cluster up with Fabric and the example claims")
    up.add_argument("--keep", action="store_true", help="keep the temp dir (logs) afterwards")
    sub.add_parser("docs", help="rewrite README's `kubectl get/describe machine` sections")
    proxy = sub.add_parser("proxy", help="(internal) the CONNECT proxy, inside the namespace")
    proxy.add_argument("routes", nargs="+", help="service-host:port=127.0.0.1:port")
    args = parser.parse_args(argv)
    # SIGTERM stops the cluster as Ctrl-C does (the context managers' cleanup runs).
    signal.signal(signal.SIGTERM, _interrupt)
    if args.command == "proxy":
        _proxy_main(args.routes)
        return 0
    missing = missing_tools()
    if missing:
        sys.stderr.write(why_missing(missing) + "\n")
        return 2
    if args.command == "up":
        with running(keep=args.keep) as cluster:
            apply_examples(cluster)
            _say(cluster.kubectl("get", "machines", "-n", CLAIMS_NS))
            _say(cluster.kubectl("get", "containers", "-n", CLAIMS_NS))
            _say(f"logs in {cluster.workdir / 'logs'}; press Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
        return 0
    return regenerate_docs()


def apply_examples(cluster: Cluster) -> None:
    """Apply every example claim, one at a time in ORDER, each placed before the next."""
    for stem in ORDER:
        apply_claims(cluster, [EXAMPLES[stem][0]])


def apply_claims(cluster: Cluster, paths: list[Path]) -> None:
    """Apply claims and wait for each to be placed or refused.

    A claim is a Machine or a Container; each is waited for as its own kind.
    """
    cluster.apply(*paths)
    for path in paths:
        claim = yaml.safe_load(path.read_text())
        kind, name = str(claim["kind"]).lower(), str(claim["metadata"]["name"])

        def done(kind: str = kind, name: str = name) -> bool:
            return settled(cluster.get(kind, name, CLAIMS_NS))

        cluster.wait(f"{kind} {name} to settle", done, timeout=300)


def settled(claim: Any) -> bool:
    """Placed with its Workspace composed, or refused: what a reconcile converges to.

    Crossplane copies the XR's status fields and its conditions to the claim in separate
    steps, so the phase alone can show up before the condition that explains it.
    """
    if not claim:
        return False
    status = claim.get("status") or {}
    phase = status.get("phase")
    kinds = {c.get("type") for c in status.get("conditions") or []}
    explained = "Valid" if phase == "Held" else "Scheduled"
    return explained in kinds and phase in {
        "Scheduled",
        "Provisioning",
        "Running",
        "Unschedulable",
        "Invalid",
        "Held",
    }


# --- README --------------------------------------------------------------------------------

README = ROOT / "README.md"
DOCS_BEGIN = "<!-- captured by `make cluster-docs` (python -m tools.cluster docs): do not edit -->"
DOCS_END = "<!-- end of captured output -->"


def capture_docs(cluster: Cluster) -> str:
    """Capture `kubectl get machines`, `get containers` and `describe machine` as README Markdown.

    The examples plus a second GPU claim, refused while the first holds the GPU.
    """
    second = yaml.safe_load((ROOT / "examples" / "claims" / "gpu-worker.yaml").read_text())
    second["metadata"]["name"] = "gpu-worker-2"
    cluster.apply_docs([second])
    cluster.wait(
        "gpu-worker-2 to be refused",
        lambda: settled(cluster.get("machine", "gpu-worker-2", CLAIMS_NS)),
        timeout=300,
    )
    get = cluster.kubectl("get", "machines", "-n", CLAIMS_NS)
    containers = cluster.kubectl("get", "containers", "-n", CLAIMS_NS)
    describe = cluster.kubectl("describe", "machine", "gpu-worker-2", "-n", CLAIMS_NS)
    placed = cluster.kubectl("describe", "machine", "gpu-worker-1", "-n", CLAIMS_NS)
    return "\n".join(
        [
            DOCS_BEGIN,
            "```",
            f"$ kubectl get machines -n {CLAIMS_NS}",
            get.rstrip(),
            "",
            f"$ kubectl get containers -n {CLAIMS_NS}",
            containers.rstrip(),
            "```",
            "",
            "A second GPU claim, refused while gpu-worker-1 holds the only GPU:",
            "",
            "```",
            f"$ kubectl describe machine gpu-worker-2 -n {CLAIMS_NS}",
            describe.rstrip(),
            "```",
            "",
            "and the machine holding it (no provider-terraform runs in this cluster, so its",
            "Workspace is never applied and the claim stays `Provisioning`):",
            "",
            "```",
            f"$ kubectl describe machine gpu-worker-1 -n {CLAIMS_NS}",
            placed.rstrip(),
            "```",
            DOCS_END,
        ]
    )


HOMELAB_BEGIN = "<!-- homelab captured by `make cluster-docs`: do not edit -->"
HOMELAB_END = "<!-- end of captured homelab -->"


def install_homelab(cluster: Cluster) -> None:
    """Install the Homelab composite as a user does, and wait for its fleet view."""
    cluster.apply(ROOT / "xrds" / "homelab.yaml")
    # No claim kind: the XRD is Established, never Offered.
    cluster.wait(
        "the Homelab XRD",
        lambda: (
            _conditions(cluster.get("xrd", "homelabs.fabric.homelab.io")).get("Established")
            == "True"
        ),
        timeout=120,
    )
    cluster.apply(ROOT / "compositions" / "homelab.yaml", ROOT / "examples" / "homelab.yaml")

    def viewed() -> bool:
        found = cluster.get("homelab", "homelab")
        return bool(found and (found.get("status") or {}).get("summary"))

    cluster.wait("the Homelab's fleet view", viewed, timeout=300)


def capture_homelab(cluster: Cluster) -> str:
    """`kubectl get homelab` and `kubectl describe homelab` as README Markdown."""
    get = cluster.kubectl("get", "homelab")
    describe = cluster.kubectl("describe", "homelab", "homelab")
    return "\n".join(
        [
            HOMELAB_BEGIN,
            "```",
            "$ kubectl get homelab",
            get.rstrip(),
            "```",
            "",
            "```",
            "$ kubectl describe homelab homelab",
            describe.rstrip(),
            "```",
            HOMELAB_END,
        ]
    )


def _replace(text: str, begin: str, end: str, captured: str) -> str:
    head, rest = text.split(begin, 1)
    return head + captured + rest.split(end, 1)[1]


def regenerate_docs() -> int:
    """Bring a cluster up, apply the examples, and rewrite README's captured sections."""
    text = README.read_text()
    for begin, end in ((DOCS_BEGIN, DOCS_END), (HOMELAB_BEGIN, HOMELAB_END)):
        if begin not in text or end not in text:
            sys.stderr.write(f"README.md has no {begin!r} … {end!r} section\n")
            return 1
    with running() as cluster:
        apply_examples(cluster)
        captured = capture_docs(cluster)
        install_homelab(cluster)
        homelab = capture_homelab(cluster)
    text = _replace(text, DOCS_BEGIN, DOCS_END, captured)
    README.write_text(_replace(text, HOMELAB_BEGIN, HOMELAB_END, homelab))
    _say("README.md: kubectl get/describe machine and homelab sections rewritten")
    return 0


def _examples() -> dict[str, tuple[Path, Path]]:
    """Each example by its stem: its claim, and the XR Crossplane makes of it.

    The XR is the one examples/xrs/ writes out for `crossplane render`. Machines, then containers.
    """
    xrs = ROOT / "examples" / "xrs"
    machines = {p.stem: (p, xrs / p.name) for p in (ROOT / "examples" / "claims").glob("*.yaml")}
    containers = {
        p.stem: (ROOT / "examples" / "containers" / p.name, p)
        for p in (xrs / "containers").glob("*.yaml")
    }
    return machines | containers


EXAMPLES = _examples()


def _created(stem: str) -> str:
    xr = yaml.safe_load(EXAMPLES[stem][1].read_text())
    return str(xr["metadata"]["creationTimestamp"])


# The example claims in the order their example XRs were created: the order the golden renders
# (tests/golden/) place them in, placement being greedy in creation order.
ORDER = sorted(EXAMPLES, key=_created)


if __name__ == "__main__":
    raise SystemExit(main())
