"""Recorded Proxmox VE API answers, served on loopback as pveproxy serves them.

`tests/fixtures/proxmox` holds one file per API path (`nodes/pve/status.json` is the answer to
`GET /api2/json/nodes/pve/status`). The server checks the `Authorization: PVEAPIToken=...`
header and answers `{"data": ...}`; a path it has no answer for gets 501, as pveproxy answers a
method it does not know, and is remembered, so a test can show exactly what a client asked for.

Two clients read it: fabric-discover (proxmoxer, tests/test_discovery.py) and the real bpg/proxmox
provider, which reads a guest's configuration when Terraform imports or refreshes it
(tests/test_adoption.py). It serves GET only: nothing that reads it may change anything.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "proxmox"
API_PREFIX = "/api2/json"


@dataclass
class FakeProxmox:
    """Recorded answers by API path, failures by path prefix, and the paths asked for."""

    answers: dict[str, Any]
    token: str
    failures: dict[str, tuple[int, str]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    protocol: str = "http"
    port: int = 0

    @classmethod
    def recorded(cls, token: str, root: Path = FIXTURES) -> FakeProxmox:
        """The answers recorded under `root`, accepting API token `token` (user!name=secret)."""
        answers = {}
        for path in sorted(root.rglob("*.json")):
            api_path = "/" + path.relative_to(root).with_suffix("").as_posix()
            answers[api_path] = json.loads(path.read_text())["data"]
        return cls(answers=answers, token=token)

    @property
    def url(self) -> str:
        """The API's base URL, as a client is configured with it."""
        return f"{self.protocol}://127.0.0.1:{self.port}/"

    def failure(self, path: str) -> tuple[int, str] | None:
        """The failure configured for a path, if any."""
        return next((f for p, f in self.failures.items() if path.startswith(p)), None)

    def asked(self, prefix: str) -> list[str]:
        """The paths asked for that start with `prefix`, in order."""
        return [p for p in self.requests if p.startswith(prefix)]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        fake = self.server.fake
        path = urlsplit(self.path).path.removeprefix(API_PREFIX).rstrip("/")
        fake.requests.append(path)
        if self.headers.get("Authorization") != f"PVEAPIToken={fake.token}":
            self._reply(401, "authentication failure", None)
        elif (failure := fake.failure(path)) is not None:
            self._reply(*failure, None)
        elif path not in fake.answers:
            fake.unanswered.append(path)
            self._reply(501, f"Method 'GET {path}' not implemented", None)
        else:
            self._reply(200, "OK", _answer(fake, path, parse_qs(urlsplit(self.path).query)))

    def _refuse(self) -> None:
        # Whatever reads recorded answers must not write: a write is a failure the test sees.
        path = urlsplit(self.path).path.removeprefix(API_PREFIX)
        self.server.fake.unanswered.append(f"{self.command} {path}")
        self._reply(501, f"Method '{self.command} {path}' not implemented", None)

    do_POST = do_PUT = do_DELETE = _refuse  # noqa: N815 - http.server's naming

    def _reply(self, status: int, reason: str, data: Any) -> None:
        # bytes stand for whatever a wrong server sends (a login page, a proxy error).
        body = data if isinstance(data, bytes) else json.dumps({"data": data}).encode()
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


# GET /cluster/resources?type=vm lists guests only, as pvestatd's resource list is filtered.
RESOURCE_TYPES = {"vm": ("qemu", "lxc"), "storage": ("storage",), "node": ("node",)}


def _answer(fake: FakeProxmox, path: str, query: dict[str, list[str]]) -> Any:
    data = fake.answers[path]
    wanted = query.get("type", [None])[0]
    if path == "/cluster/resources" and wanted in RESOURCE_TYPES:
        return [item for item in data if item.get("type") in RESOURCE_TYPES[wanted]]
    return data


class _Server(ThreadingHTTPServer):
    fake: FakeProxmox


def tls_context(folder: Path) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1, kept in `folder`."""
    from cryptography import x509  # noqa: PLC0415 - a dev dependency, needed only for TLS
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pve.homelab.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


@contextlib.contextmanager
def serve(fake: FakeProxmox, context: ssl.SSLContext | None = None) -> Iterator[FakeProxmox]:
    """Serve `fake` on a free loopback port (over TLS with `context`) while the block runs."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = fake
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
        fake.protocol = "https"
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
