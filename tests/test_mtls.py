"""Serving: mutual TLS from a certificates directory, one listener, a clear usage error, quiet logs.

Crossplane dials a function over mTLS with certificates from a Secret mounted as
a directory (tls.crt, tls.key, ca.crt). The certificates here are generated for
the test with `cryptography`: a CA, a server certificate for 127.0.0.1 and
localhost, a client certificate from the same CA, and a client certificate from
another CA that the function must refuse.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import crossplane.function.proto.v1.run_function_pb2 as fnv1
import crossplane.function.proto.v1.run_function_pb2_grpc as grpcv1
import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import (
    KEY,
    NS,
    basic_spec,
    desired_ws,
    fn_input,
    inventory_cm,
    inventory_data,
    status,
    with_inventory,
    xr,
)
from tools import xpsim

REFUSED = {grpc.StatusCode.UNAVAILABLE}
CALL_TIMEOUT = 10

# --- a small PKI ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, PEM-encoded."""

    cert: bytes
    key: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> Any:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )


@dataclass(frozen=True)
class Authority:
    """A certificate authority that issues server and client certificates."""

    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, common_name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            _builder(common_name, _name(common_name), key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(_name(common_name), key, cert)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = _builder(common_name, self.name, key).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


@dataclass(frozen=True)
class Pki:
    """What the tests need: the server's directory and the clients' credentials."""

    certs_dir: Path
    ca: bytes
    client: Issued
    stranger: Issued  # a client certificate from another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = Authority.create("fabric-test-ca")
    other = Authority.create("someone-else-ca")
    server = ca.issue("function-fabric", server=True)
    certs_dir = tmp_path_factory.mktemp("tls")
    (certs_dir / "tls.crt").write_bytes(server.cert)
    (certs_dir / "tls.key").write_bytes(server.key)
    (certs_dir / "ca.crt").write_bytes(ca.pem)
    return Pki(
        certs_dir=certs_dir,
        ca=ca.pem,
        client=ca.issue("crossplane", server=False),
        stranger=other.issue("crossplane", server=False),
    )


# --- clients --------------------------------------------------------------------------------


def _request() -> fnv1.RunFunctionRequest:
    return xpsim.request(xr("mtls-probe", basic_spec()), fn_input())


def _call(channel: grpc.Channel) -> fnv1.RunFunctionResponse:
    with channel:
        stub = grpcv1.FunctionRunnerServiceStub(channel)
        return stub.RunFunction(_request(), timeout=CALL_TIMEOUT)


def _tls(address: str, pki: Pki, identity: Issued | None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca,
        private_key=identity.key if identity else None,
        certificate_chain=identity.cert if identity else None,
    )
    return grpc.secure_channel(address, creds)


def _served(rsp: fnv1.RunFunctionResponse) -> None:
    # A first call asks for the inventory and the fleet: the function really ran.
    assert "inventory" in rsp.requirements.extra_resources
    assert "fleet" in rsp.requirements.extra_resources


def _refused(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        _call(channel)
    return err.value.code()


@contextlib.contextmanager
def _process(
    *args: str, env: dict[str, str] | None = None, logs: Path | None = None
) -> Iterator[tuple[str, Path | None]]:
    """The function in its own process; with `logs`, stdout and stderr go to that file."""
    with xpsim.launch("function.main", *args, env=env, log=logs) as running:
        yield running.address, logs


# --- mTLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_address(pki: Pki) -> Iterator[str]:
    with xpsim.serve("--tls-certs-dir", str(pki.certs_dir)) as address:
        yield address


def test_a_client_with_a_certificate_from_the_ca_is_served(tls_address, pki):
    _served(_call(_tls(tls_address, pki, pki.client)))


def test_a_client_without_a_certificate_is_refused(tls_address, pki):
    assert _refused(_tls(tls_address, pki, None)) in REFUSED


def test_a_client_with_another_cas_certificate_is_refused(tls_address, pki):
    assert _refused(_tls(tls_address, pki, pki.stranger)) in REFUSED


def test_a_plaintext_client_is_refused_by_the_tls_listener(tls_address):
    assert _refused(grpc.insecure_channel(tls_address)) in REFUSED


def test_the_certs_dir_can_come_from_the_environment(pki):
    # TLS_SERVER_CERTS_DIR is how Crossplane's function runtime passes the directory.
    env = {"TLS_SERVER_CERTS_DIR": str(pki.certs_dir)}
    with _process(env=env) as (address, _):
        _served(_call(_tls(address, pki, pki.client)))


# --- one listener, or none ------------------------------------------------------------------


def test_insecure_wins_over_certificates_with_a_single_plaintext_listener(pki):
    with xpsim.serve("--insecure", "--tls-certs-dir", str(pki.certs_dir)) as address:
        _served(_call(grpc.insecure_channel(address)))
        # Were there a TLS listener as well (SDK 0.15.1 opens both on one port when given
        # both), a valid mTLS client would be served too.
        assert _refused(_tls(address, pki, pki.client)) in REFUSED


def test_without_certificates_or_insecure_the_function_refuses_to_start():
    env = {k: v for k, v in os.environ.items() if k != "TLS_SERVER_CERTS_DIR"}
    env["PYTHONPATH"] = str(xpsim.ROOT)
    address = f"127.0.0.1:{xpsim.free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "function.main", "--address", address],
        cwd=xpsim.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr  # click's usage error
    assert "Usage:" in done.stderr
    assert "--tls-certs-dir" in done.stderr
    assert "--insecure" in done.stderr
    assert "Traceback" not in done.stderr


# --- logs -----------------------------------------------------------------------------------


# Distinctive strings that must reach the user-data (or the claim), and never the logs.
SSH_COMMENT = "walrus-laptop-7731"
ROLE = "quokka-role"
ROLE_TEXT = "QUOKKA-ROLE-PAYLOAD-5519"
SECRET_REF = "zebra-secret-8842"
SECRET_VALUE = "K10-secret-value-only-in-the-Secret-6120"
BAD_KEY_TEXT = "narwhal-not-a-key-2207"


def _site_role() -> str:
    body = {
        "write_files": [
            {"path": "/etc/quokka/payload", "permissions": "0600", "content": ROLE_TEXT},
            {"path": "/etc/quokka/token", "permissions": "0600", "content": "TOKEN"},
        ]
    }
    text = yaml.safe_dump(body, sort_keys=False)
    text = text.replace("TOKEN", "{{ secrets.k3s_token | json }}")
    return f"os: [debian, ubuntu]\nsecrets: [k3s_token]\n---\n{text}"


def _secretive_spec() -> dict[str, Any]:
    spec = basic_spec(roles=[ROLE])
    spec["bootstrap"] = {
        "adminUser": "admin",
        "sshAuthorizedKeys": [KEY.rsplit(" ", 1)[0] + " " + SSH_COMMENT],
        "secrets": [
            {"name": "k3s_token", "secretRef": {"namespace": NS, "name": SECRET_REF, "key": "tok"}}
        ],
    }
    return spec


def test_debug_logs_carry_no_user_data_and_no_secret_references(tmp_path):
    data = inventory_data(inventory_cm())
    data["templates"] = {f"roles/{ROLE}": _site_role()}
    cm = with_inventory(data)
    good = xr("quiet", _secretive_spec())
    bad_spec = copy.deepcopy(_secretive_spec())
    bad_spec["bootstrap"]["sshAuthorizedKeys"] = [BAD_KEY_TEXT]
    bad = xr("quiet-bad", bad_spec)
    # The Secret exists in the cluster; the function only ever refers to it.
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET_REF, "namespace": NS},
        "stringData": {"tok": SECRET_VALUE},
    }
    cluster = xpsim.Cluster([cm, good, bad, secret])
    with _process("--insecure", "--debug", logs=tmp_path / "function.log") as (address, logs):
        call = xpsim.stub(address)
        rsp = xpsim.settle(call, good, fn_input(), cluster.objects)
        rejected = xpsim.settle(call, bad, fn_input(), cluster.objects)
    # The strings reached the function and its output, so their absence from the logs means
    # something.
    module = desired_ws(rsp)["spec"]["forProvider"]["module"]
    for text in (SSH_COMMENT, ROLE_TEXT, SECRET_REF):
        assert text in module or text in str(desired_ws(rsp)), text
    assert status(rsp)["phase"] == "Scheduled"
    assert BAD_KEY_TEXT in status(rejected)["message"]
    for answer in (rsp, rejected):
        assert SECRET_VALUE.encode() not in answer.SerializeToString()
    assert logs is not None
    written = logs.read_text(errors="replace")
    assert "reconciled" in written, "the debug log was not captured"
    private = (SSH_COMMENT, ROLE, ROLE_TEXT, SECRET_REF, SECRET_VALUE, "k3s_token", BAD_KEY_TEXT)
    for text in (*private, "ssh-ed25519", "#cloud-config"):
        assert text not in written, f"{text!r} is in the function's logs"
