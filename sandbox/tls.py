"""The sandbox certificate authority and nginx's server certificate.

A private CA (EC P-256, 10 years) signs a 90-day server certificate for DNS
`localhost` and IP 127.0.0.1, so clients verify TLS for real against
$STATE/tls/ca.crt instead of switching verification off.  The server certificate
is re-issued when fewer than 30 days are left (the guide's smoke suite checks
certificate validity, and a short-lived cert keeps that check honest).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import config

CA_DAYS = 3650
SERVER_DAYS = 90
RENEW_BEFORE_DAYS = 30


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _ensure_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bool]:
    cert = _load_cert(config.CA_CERT)
    if cert is not None and config.CA_KEY.exists() and cert.not_valid_after_utc > _now():
        key = serialization.load_pem_private_key(config.CA_KEY.read_bytes(), None)
        return cert, key, False
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "architect-deploy sandbox"),
            x509.NameAttribute(NameOID.COMMON_NAME, "architect-deploy sandbox CA"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(config.CA_KEY, key)
    config.CA_CERT.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, True


def _server_cert_ok(ca: x509.Certificate) -> bool:
    cert = _load_cert(config.SERVER_CERT)
    if cert is None or not config.SERVER_KEY.exists():
        return False
    if cert.issuer != ca.subject:
        return False
    return cert.not_valid_after_utc - _now() > dt.timedelta(days=RENEW_BEFORE_DAYS)


def ensure_certificates() -> bool:
    """Create the CA and server certificate as needed. Returns True if the server cert changed."""
    config.TLS_DIR.mkdir(parents=True, exist_ok=True)
    ca, ca_key, ca_new = _ensure_ca()
    if not ca_new and _server_cert_ok(ca):
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(config.SERVER_KEY, key)
    # Full chain is unnecessary (clients trust the CA directly); leaf only.
    config.SERVER_CERT.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


def server_cert_days_left() -> float | None:
    cert = _load_cert(config.SERVER_CERT)
    if cert is None:
        return None
    return (cert.not_valid_after_utc - _now()).total_seconds() / 86400


def client_context() -> ssl.SSLContext:
    """An SSL context that trusts only the sandbox CA (for httpx verify=...)."""
    return ssl.create_default_context(cafile=str(config.CA_CERT))
