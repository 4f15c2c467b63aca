"""Certificates the tests make (a CA, a server and a client certificate, and a CA nobody
uses), the TLS settings of a server that uses them, and such servers in this process.

The ``pki`` fixture reaches every test module through tests/conftest.py.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from varstore.api.config import Security, TlsFiles
from varstore.api.server import RunningServer, start_server
from varstore.api.store import Store
from varstore.eventstore.memory import MemoryRecorder

__all__ = ["ADMIN", "Pki", "pki", "serving", "tls"]

#: The admin token of the test servers that ask for one.
ADMIN = "admin-token-0123456789abcdef"


# -- certificates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate (PEM)."""

    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes
    other_ca: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "varstore tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki() -> Pki:
    """New certificates for a test module (shared through tests/conftest.py)."""
    ca_key, other_key, server_key, client_key = _key(), _key(), _key(), _key()
    ca = _certificate("varstore test CA", ca_key, None, ca=True)
    other = _certificate("someone else's CA", other_key, None, ca=True)
    issuer = (ca.subject, ca_key)
    server = _certificate("localhost", server_key, issuer, server=True)
    client = _certificate("alice", client_key, issuer)
    return Pki(
        _pem(ca),
        _pem(server),
        _pem_key(server_key),
        _pem(client),
        _pem_key(client_key),
        _pem(other),
    )


# -- servers -----------------------------------------------------------------------------------


@contextmanager
def serving(security: Security) -> Iterator[RunningServer]:
    """A server in this process (memory log) with ``security``, on a free loopback port."""
    running = start_server(Store(MemoryRecorder()), security=security)
    try:
        yield running
    finally:
        running.stop(grace=1.0)


def tls(pki: Pki, *, mtls: bool = False) -> TlsFiles:
    """The server side of ``pki``; with ``mtls``, clients must show a certificate of its CA."""
    return TlsFiles(pki.server_cert, pki.server_key, pki.ca if mtls else None)
