"""TLS material of the simulated apiserver: a CA and a server certificate, reused when present."""

from __future__ import annotations

import datetime
import ipaddress
import os
import pathlib
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DNS_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
IP_ADDRESSES = ("127.0.0.1",)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the PEM files live."""

    ca_cert: pathlib.Path
    ca_key: pathlib.Path
    cert: pathlib.Path
    key: pathlib.Path

    @classmethod
    def in_dir(cls, cert_dir: pathlib.Path) -> TlsFiles:
        """The standard file names inside cert_dir."""
        return cls(
            cert_dir / "ca.crt",
            cert_dir / "ca.key",
            cert_dir / "apiserver.crt",
            cert_dir / "apiserver.key",
        )

    def server_context(self) -> ssl.SSLContext:
        """A server-side context presenting the certificate (HTTP/1.1 only: WebSocket exec)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        context.set_alpn_protocols(["http/1.1"])
        return context


def _write_private(path: pathlib.Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    path.chmod(0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _alt_names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in DNS_NAMES]
    ips = set(IP_ADDRESSES)
    try:
        ipaddress.ip_address(host)
        ips.add(host)
    except ValueError:
        if host and host not in DNS_NAMES:
            names.append(x509.DNSName(host))
    names.extend(x509.IPAddress(ipaddress.ip_address(ip)) for ip in sorted(ips))
    return names


def _usable(files: TlsFiles, host: str) -> bool:
    """Present, unexpired, and naming the host."""
    if not all(p.exists() for p in (files.ca_cert, files.ca_key, files.cert, files.key)):
        return False
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    if cert.not_valid_after_utc < datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1):
        return False
    return all(name in sans for name in _alt_names(host))


def ensure_tls(cert_dir: pathlib.Path, host: str = "127.0.0.1") -> TlsFiles:
    """Create (or reuse) the CA and the server certificate in cert_dir; key files are 0600."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    files = TlsFiles.in_dir(cert_dir)
    if _usable(files, host):
        return files
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    if files.ca_cert.exists() and files.ca_key.exists():
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        loaded = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{files.ca_key} is not an EC key")
        ca_key = loaded
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "holdgate-sandbox-ca")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650))
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(files.ca_key, _key_pem(ca_key))
        files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_alt_names(host)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(files.key, _key_pem(key))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files
