"""Signed segment heads: what makes a rewrite of the newest segment detectable.

The hash chain covers a segment once its successor names it; the newest one has no successor.
So each segment's manifest is also signed (Ed25519) by the gateway's archive key, kept in its
state directory (`archive.signing_key`, created 0600 at first start, never uploaded). Whoever can
write the bucket cannot sign: `holdgate archive verify --public-key` (or verify on the gateway's
host, which reads the key) checks every segment, the newest included.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from holdgate.archive.durable_files import fsync_dir, write_all
from holdgate.archive.layout import canonical_json, sha256_hex

SIGNATURE_FORMAT = "holdgate.archive.signature/v1"


class SigningKeyError(ValueError):
    """The signing key cannot be read or created."""


def load_or_create(path: Path) -> Ed25519PrivateKey:
    """The archive signing key at `path`, created (0600, exclusively) when absent."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create(path)  # another process created it first
        try:
            write_all(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path.parent)
        return key
    except OSError as e:
        raise SigningKeyError(f"{path}: {e.strerror or e}") from e
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except ValueError as e:
        raise SigningKeyError(f"{path}: not a PEM private key") from e
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: not an Ed25519 key")
    return loaded


def public_pem(key: Ed25519PrivateKey) -> bytes:
    """The public half, as PEM: what auditors give `holdgate archive verify --public-key`."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public(data: bytes) -> Ed25519PublicKey:
    """A public key from PEM (a private key's PEM is accepted too)."""
    try:
        loaded = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise SigningKeyError("not a PEM public or private key") from e
        loaded = private.public_key()
    if not isinstance(loaded, Ed25519PublicKey):
        raise SigningKeyError("not an Ed25519 key")
    return loaded


def key_id(public: Ed25519PublicKey) -> str:
    """A short name of the key: the first 16 hex digits of the SHA-256 of its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_hex(raw)[:16]


def _statement(gateway: str, seq: int, manifest_sha256: str) -> bytes:
    return canonical_json(
        {
            "format": SIGNATURE_FORMAT,
            "gateway": gateway,
            "seq": seq,
            "manifest_sha256": manifest_sha256,
        }
    )


def sign(key: Ed25519PrivateKey, gateway: str, seq: int, manifest: bytes) -> bytes:
    """The signature object of one segment (deterministic: Ed25519 and canonical JSON)."""
    digest = sha256_hex(manifest)
    signature = key.sign(_statement(gateway, seq, digest))
    return canonical_json(
        {
            "format": SIGNATURE_FORMAT,
            "gateway": gateway,
            "seq": seq,
            "manifest_sha256": digest,
            "key": key_id(key.public_key()),
            "signature": base64.b64encode(signature).decode("ascii"),
        }
    )


def check(public: Ed25519PublicKey, data: bytes, gateway: str, seq: int, manifest: bytes) -> str:
    """Why a signature object does not vouch for this manifest ("" when it does)."""
    import json

    try:
        doc = json.loads(data)
        signature = base64.b64decode(doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        return "unreadable signature object"
    if doc.get("key") != key_id(public):
        return f"signed by key {doc.get('key')!r}, not {key_id(public)!r}"
    try:
        public.verify(signature, _statement(gateway, seq, sha256_hex(manifest)))
    except InvalidSignature:
        return "the signature does not match the manifest (rewritten after signing?)"
    return ""
