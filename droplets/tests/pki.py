"""A throwaway certificate authority for tests that need TLS material."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Issued:
    cert_pem: str
    key_pem: str


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool, usage=None, ip=None):
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


class TestCA:
    __test__ = False  # not a pytest test class

    def __init__(self, name: str = "test-ca") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = _cert(name, self.key, None, None, ca=True)
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue_client(self, name: str = "control-plane") -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(
            name, key, self.cert.subject, self.key, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH
        )
        return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))
