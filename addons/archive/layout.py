"""What the archive holds and under which keys: object kinds, keys, manifest hashing.

Each sealed segment is stored under idempotent keys
`PREFIX/YYYY/MM/DD/HH/GATEWAY-SEQ.{mitm,jsonl,audit.jsonl,manifest.json,sig}`; its manifest
holds the SHA-256 of its objects and of the previous segment's manifest (a hash chain), and the
`.sig` object the gateway's signature of the manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

MANIFEST_FORMAT = "holdgate.archive/v1"
SEQ_DIGITS = 10


class Kind(StrEnum):
    """The objects of one archived segment, by file extension."""

    FLOWS = "mitm"
    INDEX = "jsonl"
    AUDIT = "audit.jsonl"
    MANIFEST = "manifest.json"
    SIGNATURE = "sig"  # the gateway's signature of the manifest (archive/signing.py)


DATA_KINDS = (Kind.FLOWS, Kind.INDEX, Kind.AUDIT)
CONTENT_TYPES = {
    Kind.FLOWS: "application/octet-stream",
    Kind.INDEX: "application/x-ndjson",
    Kind.AUDIT: "application/x-ndjson",
    Kind.MANIFEST: "application/json",
    Kind.SIGNATURE: "application/json",
}
_KEY = re.compile(
    r"(?P<hour>\d{4}/\d{2}/\d{2}/\d{2})/(?P<gateway>[A-Za-z0-9][A-Za-z0-9_.-]*)"
    rf"-(?P<seq>\d{{{SEQ_DIGITS}}})\.(?P<kind>mitm|jsonl|audit\.jsonl|manifest\.json|sig)"
)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What an archive key says: gateway, segment number, object kind, hour directory."""

    gateway: str
    seq: int
    kind: Kind
    hour: str


def object_key(prefix: str, gateway: str, seq: int, opened: float, kind: Kind) -> str:
    """The idempotent key of one object: PREFIX/YYYY/MM/DD/HH/GATEWAY-SEQ.EXT."""
    hour = datetime.fromtimestamp(opened, UTC).strftime("%Y/%m/%d/%H")
    key = f"{hour}/{gateway}-{seq:0{SEQ_DIGITS}d}.{kind}"
    return f"{prefix}/{key}" if prefix else key


def signature_key(manifest_key: str) -> str:
    """The key of a segment's signature object, beside its manifest."""
    return manifest_key.removesuffix(f".{Kind.MANIFEST}") + f".{Kind.SIGNATURE}"


def parse_key(prefix: str, key: str) -> KeyInfo | None:
    """Read an archive key back; None for keys holdgate does not write."""
    rest = key
    if prefix:
        if not key.startswith(prefix + "/"):
            return None
        rest = key[len(prefix) + 1 :]
    m = _KEY.fullmatch(rest)
    if m is None:
        return None
    return KeyInfo(m["gateway"], int(m["seq"]), Kind(m["kind"]), m["hour"])


def sha256_hex(data: bytes) -> str:
    """SHA-256 as lower-case hex."""
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, compact): what manifests hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
