"""The audit archive's storage: spool, segments, uploader, S3 and directory backends, hash chain.

Flows arrive as copies of their mitmproxy state. A writer sanitizes them (credentials masked,
metadata other than holdgate's dropped), appends them to a segment in the local spool
(mitmproxy's native flow format, an index line per flow, Kubernetes audit events) and fsyncs
each batch. Segments rotate by size and age. An uploader thread seals each closed segment with
a manifest that holds the SHA-256 of its objects and of the previous segment's manifest (a
hash chain), and puts the objects into S3 (or a local archive directory) under idempotent keys
`PREFIX/YYYY/MM/DD/HH/GATEWAY-SEQ.{mitm,jsonl,audit.jsonl,manifest.json}`. A segment leaves
the spool only once every object of it is stored, so an unreachable S3 delays, never drops.

The gateway runs all of this in a child process (`serve`, fed by addons/archive.py), so that
none of it competes with mitmproxy's event loop; `ArchiveStore` also runs in-process (tests,
tools). No mitmproxy hooks here. Reading the archive back (`scan`, `verify`, `fetch`) is at the
end; `holdgate archive verify` and `holdgate replay` are in addons/archive_cli.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pickle
import queue
import re
import select
import signal
import ssl
import struct
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from mitmproxy.io import tnetstring
from mitmproxy.net import encoding

from addons import audit_events

log = logging.getLogger("holdgate.archive")

MIB = 1024 * 1024
MANIFEST_FORMAT = "holdgate.archive/v1"
SEQ_DIGITS = 10
MASK = b"<masked>"
# Audit events carry request and response objects up to this size; larger ones are noted.
AUDIT_OBJECT_LIMIT = 256 * 1024
# Records waiting in memory while the spool cannot be written; beyond this, can_record() is False.
MAX_PENDING = 10_000
_READ_VERBS = frozenset({"get", "list", "watch"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PRIVILEGED_SUBRESOURCES = frozenset(
    {"exec", "attach", "portforward", "proxy", "ephemeralcontainers"}
)


# --- settings ----------------------------------------------------------------------------------


class RequireFor(StrEnum):
    """Which requests the gateway refuses while the spool cannot be written."""

    PRIVILEGED = "privileged"
    ALL = "all"
    NONE = "none"


class ArchiveSettingsError(ValueError):
    """An invalid `archive:` setting; `location` is its path below `archive`."""

    def __init__(self, location: tuple[str, ...], message: str) -> None:
        self.location = location
        where = ".".join(("archive", *location))
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class ObjectLock:
    """S3 Object Lock retention applied to every archived object."""

    mode: str
    days: int


@dataclass(frozen=True, slots=True)
class S3Settings:
    """Where and how archived objects go to S3 (or an S3-compatible store)."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"
    sse: str | None = None
    kms_key_id: str | None = None
    object_lock: ObjectLock | None = None


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Where Kubernetes audit events are POSTed (an audit webhook, e.g. Falco's k8saudit)."""

    url: str
    ca: Path | None = None
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    """The parsed `archive:` section of the gateway configuration."""

    directory: Path
    spool: Path
    s3: S3Settings | None = None
    rotate_bytes: int = 4 * MIB
    rotate_seconds: float = 30.0
    require_for: RequireFor = RequireFor.PRIVILEGED
    audit_webhook: WebhookSettings | None = None
    capture_bytes: int = 1 * MIB
    fsync_before_response: bool = True
    mask_headers: tuple[str, ...] = ()
    retry_initial: float = 1.0
    retry_max: float = 60.0

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any] | None, base_dir: Path, state_dir: Path
    ) -> ArchiveSettings:
        """Parse and validate the `archive:` mapping; relative paths are relative to `base_dir`."""
        data = {} if data is None else data
        if not isinstance(data, Mapping):
            raise ArchiveSettingsError((), "must be a mapping")
        _known(data, ARCHIVE_SCHEMA, ())
        directory = _path(data, "directory", base_dir, state_dir / "archive")
        spool = _path(data, "spool", base_dir, state_dir / "spool")
        s3 = _s3(data["s3"]) if data.get("s3") is not None else None
        webhook = _webhook(data["audit_webhook"], base_dir) if data.get("audit_webhook") else None
        retry = data.get("upload_retry") or {}
        if not isinstance(retry, Mapping):
            raise ArchiveSettingsError(("upload_retry",), "must be a mapping")
        _known(retry, ARCHIVE_SCHEMA["properties"]["upload_retry"], ("upload_retry",))
        require = data.get("require_for", "privileged")
        if require not in {r.value for r in RequireFor}:
            raise ArchiveSettingsError(
                ("require_for",), f"{require!r} is not one of privileged, all, none"
            )
        mask_headers = data.get("mask_headers", [])
        if not isinstance(mask_headers, list) or not all(isinstance(h, str) for h in mask_headers):
            raise ArchiveSettingsError(("mask_headers",), "must be a list of header names")
        fsync = data.get("fsync_before_response", True)
        if not isinstance(fsync, bool):
            raise ArchiveSettingsError(("fsync_before_response",), "must be true or false")
        return cls(
            directory=directory,
            spool=spool,
            s3=s3,
            rotate_bytes=_number(data, "rotate_bytes", 4 * MIB, integer=True, minimum=1),
            rotate_seconds=_number(data, "rotate_seconds", 30.0, minimum=0.01),
            require_for=RequireFor(require),
            audit_webhook=webhook,
            capture_bytes=_number(data, "capture_bytes", MIB, integer=True, minimum=0),
            fsync_before_response=fsync,
            mask_headers=tuple(h.lower() for h in mask_headers),
            retry_initial=_number(
                retry, "initial_seconds", 1.0, minimum=0.01, location=("upload_retry",)
            ),
            retry_max=_number(retry, "max_seconds", 60.0, minimum=0.01, location=("upload_retry",)),
        )

    @property
    def destination(self) -> str:
        """Where segments end up, for log lines."""
        if self.s3 is None:
            return str(self.directory)
        prefix = f"/{self.s3.prefix}" if self.s3.prefix else ""
        return f"s3://{self.s3.bucket}{prefix}"


_PATH_TEXT = {"type": "string", "minLength": 1}

ARCHIVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "The audit archive: every flow, masked, to a local spool, then S3 or a directory.",
    "properties": {
        "directory": {
            **_PATH_TEXT,
            "description": "The local archive when no s3 is configured (default: STATE/archive).",
        },
        "spool": {**_PATH_TEXT, "description": "The local spool (default: STATE/spool)."},
        "s3": {
            "type": "object",
            "additionalProperties": False,
            "required": ["bucket"],
            "properties": {
                "bucket": {"type": "string", "minLength": 1},
                "prefix": {"type": "string"},
                "endpoint_url": {"type": "string", "pattern": "^https?://"},
                "region": {"type": "string", "minLength": 1},
                "addressing_style": {"enum": ["path", "virtual", "auto"]},
                "sse": {"enum": ["AES256", "aws:kms"]},
                "kms_key_id": {"type": "string", "minLength": 1},
                "object_lock": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["mode", "days"],
                    "properties": {
                        "mode": {"enum": ["GOVERNANCE", "COMPLIANCE"]},
                        "days": {"type": "integer", "minimum": 1, "maximum": 36500},
                    },
                },
            },
            "description": "Credentials come from the environment (the boto3 default chain).",
        },
        "rotate_bytes": {"type": "integer", "minimum": 1},
        "rotate_seconds": {"type": "number", "minimum": 0.01},
        "require_for": {
            "enum": ["privileged", "all", "none"],
            "description": "Which requests are refused while the spool cannot be written.",
        },
        "audit_webhook": {
            "oneOf": [
                {"type": "string", "pattern": "^https?://"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["url"],
                    "properties": {
                        "url": {"type": "string", "pattern": "^https?://"},
                        "ca": {"type": "string"},
                        "timeout": {"type": "number", "exclusiveMinimum": 0},
                    },
                },
            ],
            "description": "POST Kubernetes audit events (EventList) here, e.g. Falco's k8saudit.",
        },
        "capture_bytes": {"type": "integer", "minimum": 0},
        "fsync_before_response": {"type": "boolean"},
        "mask_headers": {"type": "array", "items": {"type": "string"}},
        "upload_retry": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "initial_seconds": {"type": "number", "minimum": 0.01},
                "max_seconds": {"type": "number", "minimum": 0.01},
            },
        },
    },
}


def _known(data: Mapping[str, Any], schema: Mapping[str, Any], location: tuple[str, ...]) -> None:
    for key in data:
        if key not in schema["properties"]:
            raise ArchiveSettingsError((*location, str(key)), "unknown field")


def _path(data: Mapping[str, Any], key: str, base: Path, default: Path) -> Path:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or not value:
        raise ArchiveSettingsError((key,), "must be a path")
    return (base / value).resolve()


def _number(
    data: Mapping[str, Any],
    key: str,
    default: float,
    *,
    integer: bool = False,
    minimum: float = 0,
    location: tuple[str, ...] = (),
) -> Any:
    value = data.get(key, default)
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or value < minimum:
        kind = "an integer" if integer else "a number"
        raise ArchiveSettingsError((*location, key), f"must be {kind} >= {minimum}")
    return value


def _text(data: Mapping[str, Any], key: str, location: tuple[str, ...]) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ArchiveSettingsError((*location, key), "must be a non-empty string")
    return value


def _s3(data: Any) -> S3Settings:
    where = ("s3",)
    if not isinstance(data, Mapping):
        raise ArchiveSettingsError(where, "must be a mapping")
    schema = ARCHIVE_SCHEMA["properties"]["s3"]
    _known(data, schema, where)
    bucket = _text(data, "bucket", where)
    if bucket is None:
        raise ArchiveSettingsError((*where, "bucket"), "required")
    prefix = data.get("prefix", "")
    if not isinstance(prefix, str):
        raise ArchiveSettingsError((*where, "prefix"), "must be a string")
    endpoint = _text(data, "endpoint_url", where)
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ArchiveSettingsError(
                (*where, "endpoint_url"), f"{endpoint!r} is not an http(s) URL"
            )
    style = data.get("addressing_style", "auto")
    if style not in ("path", "virtual", "auto"):
        raise ArchiveSettingsError(
            (*where, "addressing_style"), f"{style!r} is not path, virtual or auto"
        )
    sse = data.get("sse")
    if sse not in (None, "AES256", "aws:kms"):
        raise ArchiveSettingsError((*where, "sse"), f"{sse!r} is not AES256 or aws:kms")
    kms = _text(data, "kms_key_id", where)
    if kms is not None and sse != "aws:kms":
        raise ArchiveSettingsError((*where, "kms_key_id"), "needs sse: aws:kms")
    lock = None
    if data.get("object_lock") is not None:
        raw = data["object_lock"]
        lwhere = (*where, "object_lock")
        if not isinstance(raw, Mapping):
            raise ArchiveSettingsError(lwhere, "must be a mapping with mode and days")
        _known(raw, schema["properties"]["object_lock"], lwhere)
        mode = raw.get("mode")
        if mode not in ("GOVERNANCE", "COMPLIANCE"):
            raise ArchiveSettingsError(
                (*lwhere, "mode"), f"{mode!r} is not GOVERNANCE or COMPLIANCE"
            )
        days = _number(raw, "days", 0, integer=True, minimum=1, location=lwhere)
        lock = ObjectLock(mode, days)
    return S3Settings(
        bucket=bucket,
        prefix=prefix.strip("/"),
        endpoint_url=endpoint,
        region=_text(data, "region", where),
        addressing_style=style,
        sse=sse,
        kms_key_id=kms,
        object_lock=lock,
    )


def _webhook(data: Any, base: Path) -> WebhookSettings:
    where = ("audit_webhook",)
    raw: Mapping[str, Any] = {"url": data} if isinstance(data, str) else data
    if not isinstance(raw, Mapping):
        raise ArchiveSettingsError(where, "must be a URL or a mapping with url")
    schema = ARCHIVE_SCHEMA["properties"]["audit_webhook"]["oneOf"][1]
    _known(raw, schema, where)
    url = raw.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ArchiveSettingsError(where, f"{url!r} is not an http(s) URL")
    ca = None
    if raw.get("ca"):
        ca = (base / str(raw["ca"])).resolve()
        if not ca.is_file():
            raise ArchiveSettingsError((*where, "ca"), f"CA file {ca} not found")
    timeout = _number(raw, "timeout", 10.0, minimum=0.001, location=where)
    return WebhookSettings(url=str(url), ca=ca, timeout=timeout)


def is_privileged(request: Mapping[str, Any], action: str) -> bool:
    """Whether a request counts as privileged for `require_for: privileged`.

    Held requests, Kubernetes verbs other than get/list/watch, exec/attach/portforward/proxy,
    and plain HTTP methods other than GET/HEAD/OPTIONS.
    """
    if action == "approve":
        return True
    kube = request.get("kubernetes")
    if isinstance(kube, Mapping):
        if kube.get("subresource") in _PRIVILEGED_SUBRESOURCES or kube.get("verb") == "proxy":
            return True
        return kube.get("verb") not in _READ_VERBS
    return str(request.get("method") or "").upper() not in _SAFE_METHODS


# --- keys --------------------------------------------------------------------------------------


class Kind(StrEnum):
    """The objects of one archived segment, by file extension."""

    FLOWS = "mitm"
    INDEX = "jsonl"
    AUDIT = "audit.jsonl"
    MANIFEST = "manifest.json"


DATA_KINDS = (Kind.FLOWS, Kind.INDEX, Kind.AUDIT)
_CONTENT_TYPES = {
    Kind.FLOWS: "application/octet-stream",
    Kind.INDEX: "application/x-ndjson",
    Kind.AUDIT: "application/x-ndjson",
    Kind.MANIFEST: "application/json",
}
_KEY = re.compile(
    r"(?P<hour>\d{4}/\d{2}/\d{2}/\d{2})/(?P<gateway>[A-Za-z0-9][A-Za-z0-9_.-]*)"
    rf"-(?P<seq>\d{{{SEQ_DIGITS}}})\.(?P<kind>mitm|jsonl|audit\.jsonl|manifest\.json)"
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


# --- backends ----------------------------------------------------------------------------------


class BackendError(Exception):
    """The archive store could not be reached or refused an operation (retried)."""


class ObjectConflict(BackendError):
    """A key already holds different content: holdgate never overwrites archived objects."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object in the archive store."""

    key: str
    size: int


class Backend(Protocol):
    """Where sealed segments are stored: S3 or a local directory."""

    prefix: str

    def describe(self) -> str:
        """A human-readable location."""
        ...

    def put(self, key: str, data: bytes, sha256: str, content_type: str) -> None:
        """Store one object."""
        ...

    def stored_sha256(self, key: str) -> str | None:
        """The SHA-256 of the object at `key`, or None when there is none."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes of one object."""
        ...

    def list(self) -> Iterator[StoredObject]:
        """Every object under the prefix."""
        ...


class DirectoryBackend:
    """The local archive directory (the embedded default): the same layout as S3."""

    prefix = ""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        """A human-readable location."""
        return str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise BackendError(f"key {key!r} escapes {self.root}")
        return path

    def put(self, key: str, data: bytes, sha256: str, content_type: str) -> None:
        """Store one object (atomically, read-only once written)."""
        path = self._path(key)
        try:
            atomic_write(path, data, mode=0o444)
        except OSError as e:
            raise BackendError(f"cannot write {path}: {e}") from e

    def stored_sha256(self, key: str) -> str | None:
        """The SHA-256 of the object at `key`, or None when there is none."""
        try:
            return hashlib.sha256(self._path(key).read_bytes()).hexdigest()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise BackendError(f"cannot read {key}: {e}") from e

    def get(self, key: str) -> bytes:
        """The bytes of one object."""
        try:
            return self._path(key).read_bytes()
        except OSError as e:
            raise BackendError(f"cannot read {key}: {e}") from e

    def list(self) -> Iterator[StoredObject]:
        """Every object under the archive directory."""
        if not self.root.is_dir():
            return
        for dirpath, _dirs, files in os.walk(self.root):
            for name in sorted(files):
                if name.startswith(".tmp-"):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                with contextlib.suppress(FileNotFoundError):
                    yield StoredObject(key, path.stat().st_size)


class S3Backend:
    """An S3 bucket (AWS, MinIO, SeaweedFS, Ceph...) through boto3, with SSE and Object Lock."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.prefix = settings.prefix
        self._client: Any = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        """A human-readable location."""
        prefix = f"/{self.prefix}" if self.prefix else ""
        endpoint = f" at {self.settings.endpoint_url}" if self.settings.endpoint_url else ""
        return f"s3://{self.settings.bucket}{prefix}{endpoint}"

    @property
    def client(self) -> Any:
        """The boto3 S3 client, created on first use (in the thread that needs it)."""
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                region = (
                    self.settings.region
                    or os.environ.get("AWS_REGION")
                    or os.environ.get("AWS_DEFAULT_REGION")
                    or "us-east-1"
                )
                self._client = boto3.client(
                    "s3",
                    endpoint_url=self.settings.endpoint_url,
                    region_name=region,
                    config=Config(
                        s3={"addressing_style": self.settings.addressing_style},
                        retries={"max_attempts": 2, "mode": "standard"},
                        connect_timeout=3,
                        read_timeout=30,
                    ),
                )
            return self._client

    def put(self, key: str, data: bytes, sha256: str, content_type: str) -> None:
        """Store one object with its checksum, encryption and retention."""
        s = self.settings
        params: dict[str, Any] = {
            "Bucket": s.bucket,
            "Key": key,
            "Body": data,
            "ContentType": content_type,
            "Metadata": {"sha256": sha256},
            # Object Lock needs an integrity checksum; the server checks it against the body.
            "ChecksumSHA256": base64.b64encode(bytes.fromhex(sha256)).decode(),
        }
        if s.sse:
            params["ServerSideEncryption"] = s.sse
            if s.kms_key_id:
                params["SSEKMSKeyId"] = s.kms_key_id
        if s.object_lock:
            params["ObjectLockMode"] = s.object_lock.mode
            params["ObjectLockRetainUntilDate"] = datetime.now(UTC) + timedelta(
                days=s.object_lock.days
            )
        self._call("put", key, lambda: self.client.put_object(**params))

    def stored_sha256(self, key: str) -> str | None:
        """The SHA-256 of the object at `key` (from its metadata), or None when there is none."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.settings.bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise BackendError(f"head {key}: {e}") from e
        except Exception as e:
            raise BackendError(f"head {key}: {e}") from e
        stored = (head.get("Metadata") or {}).get("sha256")
        return str(stored) if stored else hashlib.sha256(self.get(key)).hexdigest()

    def get(self, key: str) -> bytes:
        """The bytes of one object."""

        def read() -> bytes:
            body = self.client.get_object(Bucket=self.settings.bucket, Key=key)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        result: bytes = self._call("get", key, read)
        return result

    def list(self) -> Iterator[StoredObject]:
        """Every object under the prefix."""
        kwargs: dict[str, Any] = {"Bucket": self.settings.bucket}
        if self.prefix:
            kwargs["Prefix"] = self.prefix + "/"
        pages = self._call("list", self.prefix or "/", lambda: list(self._pages(kwargs)))
        for page in pages:
            for item in page.get("Contents", []):
                yield StoredObject(item["Key"], int(item["Size"]))

    def _pages(self, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield from self.client.get_paginator("list_objects_v2").paginate(**kwargs)

    def _call(self, what: str, key: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:  # botocore raises many unrelated exception types
            raise BackendError(f"{what} {key}: {e}") from e


def make_backend(settings: ArchiveSettings) -> Backend:
    """S3 when configured, else the local archive directory."""
    if settings.s3 is not None:
        return S3Backend(settings.s3)
    return DirectoryBackend(settings.directory)


# --- files -------------------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a file so that it is either absent or complete, durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}.{os.getpid()}.{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a directory entry (a created or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def sha256_hex(data: bytes) -> str:
    """SHA-256 as lower-case hex."""
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, compact): what manifests hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _json_line(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode() + b"\n"


def iso_time(timestamp: float | None) -> str | None:
    """UTC ISO 8601 with milliseconds, or None."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


# --- mitmproxy's native format ------------------------------------------------------------------


class Preserialized:
    """A state shared by many flows (a keep-alive connection's), serialized once."""

    __slots__ = ("_data", "state")

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self._data: bytes | None = None

    @property
    def data(self) -> bytes:
        """The state as a tnetstring (computed on first use)."""
        if self._data is None:
            self._data = dumps(self.state)
        return self._data


def dumps(value: Any) -> bytes:
    """Serialize a flow state as mitmproxy.io.tnetstring.dumps does, byte for byte, faster."""
    parts: list[bytes] = []
    _dump(value, parts)
    return b"".join(parts)


def _dump(v: Any, parts: list[bytes]) -> int:
    # Containers recurse; scalars are formatted inline (this runs for every archived flow).
    t = type(v)
    if t is dict:
        i = len(parts)
        parts.append(b"")
        size = 0
        # mitmproxy writes a mapping's items last to first.
        for key, item in reversed(v.items()):
            if type(key) is str:
                data = key.encode()
                atom = b"%d:%s;" % (len(data), data)
            else:
                atom = _atom(key)
            parts.append(atom)
            size += len(atom)
            ti = type(item)
            if ti is dict or ti is list or ti is tuple or ti is Preserialized:
                size += _dump(item, parts)
            else:
                atom = _atom(item)
                parts.append(atom)
                size += len(atom)
        head = b"%d:" % size
        parts[i] = head
        parts.append(b"}")
        return len(head) + size + 1
    if t is list or t is tuple:
        i = len(parts)
        parts.append(b"")
        size = 0
        for item in v:
            ti = type(item)
            if ti is tuple and len(item) == 2 and type(item[0]) is bytes and type(item[1]) is bytes:
                # A header: (name, value).
                name, value = item
                payload = b"%d:%s,%d:%s," % (len(name), name, len(value), value)
                atom = b"%d:%s]" % (len(payload), payload)
            elif ti is dict or ti is list or ti is tuple or ti is Preserialized:
                size += _dump(item, parts)
                continue
            else:
                atom = _atom(item)
            parts.append(atom)
            size += len(atom)
        head = b"%d:" % size
        parts[i] = head
        parts.append(b"]")
        return len(head) + size + 1
    if t is Preserialized:
        parts.append(v.data)
        return len(v.data)
    atom = _atom(v)
    parts.append(atom)
    return len(atom)


_NONE, _TRUE, _FALSE = b"0:~", b"4:true!", b"5:false!"


def _atom(v: Any) -> bytes:
    t = type(v)
    if t is str:
        data = v.encode()
        return b"%d:%s;" % (len(data), data)
    if t is bytes:
        return b"%d:%s," % (len(v), v)
    if v is None:
        return _NONE
    if v is True:
        return _TRUE
    if v is False:
        return _FALSE
    if isinstance(v, int):
        data = str(int(v)).encode()
        return b"%d:%s#" % (len(data), data)
    if isinstance(v, float):
        data = repr(float(v)).encode()
        return b"%d:%s^" % (len(data), data)
    if isinstance(v, bytes):
        return _atom(bytes(v))
    if isinstance(v, str):
        return _atom(str.__str__(v))
    if isinstance(v, list | tuple | dict):
        parts: list[bytes] = []
        _dump(dict(v.items()) if isinstance(v, dict) else list(v), parts)
        return b"".join(parts)
    raise ValueError(f"unserializable object: {v!r} ({type(v)})")


def connection_state(state: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """A flow state's client_conn or server_conn, whether shared (Preserialized) or plain."""
    conn = state.get(key)
    if isinstance(conn, Preserialized):
        return conn.state
    return conn if isinstance(conn, Mapping) else {}


# --- records -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Captured:
    """The (already masked) body chunks of a streamed response, bounded."""

    limit: int
    data: bytearray = field(default_factory=bytearray)
    total: int = 0

    def add(self, chunk: bytes) -> None:
        """Keep what fits under the limit; count everything."""
        self.total += len(chunk)
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def truncated(self) -> bool:
        """Whether more passed than was kept."""
        return self.total > len(self.data)


@dataclass(slots=True)
class Submission:
    """One flow handed to the writer: its state snapshot and what the addon knows beside it."""

    state: dict[str, Any]
    captured: Captured | None = None
    # (body, content type) as the gateway's request masker rendered it for storage.
    request_body: tuple[bytes, str] | None = None
    waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[bool]] | None = None
    # The built-in Secret mask, for when the gateway installed no request masker.
    builtin_mask: bool = True
    # The gateway's handle for this flow when the store runs in the writer process, and
    # whether a response waits for it (acknowledged at once, others in batches).
    token: int | None = None
    urgent: bool = False
    encoded: EncodedRecord | None = None
    acked: bool = False
    failure_reported: bool = False


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """One flow as written to a segment: flow record, index line, audit event lines."""

    flow_id: str
    time: float
    flow: bytes
    index: bytes
    audit: bytes


@dataclass(frozen=True, slots=True)
class RecordOptions:
    """How flows are sanitized and described."""

    gateway: str
    mask_headers: frozenset[bytes] = frozenset()
    capture_bytes: int = MIB


CREDENTIAL_HEADERS = frozenset(
    {b"authorization", b"proxy-authorization", b"cookie", b"set-cookie", b"x-amz-security-token"}
)
_AUTH_SCHEME = re.compile(rb"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
_QUERY_SECRETS = re.compile(
    rb"(?i)([?&](?:x-amz-security-token|x-amz-signature|access_token)=)[^&#]*"
)
_WITHHELD = b'{"holdgate":"body withheld from the archive: a Secret that could not be masked"}'


def mask_header_value(name: bytes, value: bytes) -> bytes:
    """A credential header's value with the secret parts replaced (scheme and cookie names kept)."""
    lname = name.lower()
    if lname in (b"authorization", b"proxy-authorization"):
        scheme, sep, _rest = value.strip().partition(b" ")
        return scheme + b" " + MASK if sep and _AUTH_SCHEME.match(scheme) else MASK
    if lname == b"cookie":
        parts = [p.strip() for p in value.split(b";") if p.strip()]
        return b"; ".join(
            p.partition(b"=")[0].strip() + b"=" + MASK if b"=" in p else MASK for p in parts
        )
    if lname == b"set-cookie":
        first, sep, attributes = value.partition(b";")
        cookie = first.partition(b"=")[0].strip() + b"=" + MASK if b"=" in first else MASK
        return cookie + sep + attributes
    return MASK


def _mask_headers(headers: Any, extra: frozenset[bytes]) -> Any:
    if not headers:
        return headers
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname in CREDENTIAL_HEADERS:
            value = mask_header_value(name, value)
        elif lname in extra:
            value = MASK
        out.append((name, value))
    return tuple(out)


def plain(value: Any, depth: int = 0) -> Any:
    """Plain data only (what metadata promises): anything else becomes its text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if depth > 32:
        return "<too deep>"
    if isinstance(value, list | tuple):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    return str(value)


def _header(headers: Any, name: bytes) -> str | None:
    for key, value in headers or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _set_header(headers: Any, name: bytes, value: bytes) -> tuple[tuple[bytes, bytes], ...]:
    out = [(k, v) for k, v in headers or () if k.lower() != name]
    out.append((name, value))
    return tuple(out)


def _decoded(message: Mapping[str, Any] | None) -> bytes | None:
    if not message or message.get("content") is None:
        return None
    content: bytes = message["content"]
    enc = _header(message.get("headers"), b"content-encoding")
    if enc and enc.strip().lower() not in ("identity", "none"):
        try:
            decoded = encoding.decode(content, enc.strip().lower())
        except (ValueError, KeyError):
            return None
        return decoded if isinstance(decoded, bytes) else decoded.encode()
    return content


def _secret_mask(body: bytes) -> bytes:
    """Fail-closed built-in mask of Secret values in a JSON document or JSON lines."""
    if not body:
        return body
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        pass
    else:
        return json.dumps(audit_events.mask_secret_fields(doc), separators=(",", ":")).encode()
    lines = []
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            return _WITHHELD
        lines.append(json.dumps(audit_events.mask_secret_fields(obj), separators=(",", ":")))
    if not lines:
        return _WITHHELD
    return ("\n".join(lines) + "\n").encode()


def _is_secret(request: Mapping[str, Any]) -> bool:
    kube = request.get("kubernetes") or {}
    body = request.get("body") or {}
    return kube.get("resource") == "secrets" or body.get("kind") == "Secret"


def sanitize_state(
    state: dict[str, Any], options: RecordOptions, sub: Submission
) -> dict[str, Any]:
    """Make a flow state fit for the archive (in place: it is the writer's own copy).

    Credential headers and query parameters are masked, metadata other than holdgate's is
    dropped (it may hold mitmproxy's `proxyauth` password), `_backup` is dropped, streamed
    bodies and WebSocket messages are bounded, timings are added, held flows are marked.
    """
    state["backup"] = None
    metadata = state.get("metadata") or {}
    holdgate = plain(metadata.get("holdgate"))
    holdgate = holdgate if isinstance(holdgate, dict) else {}
    state["metadata"] = {"holdgate": holdgate}
    request = state.get("request")
    response = state.get("response")
    facts = holdgate.get("request") or {}
    archive_notes: dict[str, Any] = {"gateway": options.gateway}
    if request:
        request["headers"] = _mask_headers(request.get("headers"), options.mask_headers)
        request["trailers"] = _mask_headers(request.get("trailers"), options.mask_headers)
        if request.get("path"):
            request["path"] = _QUERY_SECRETS.sub(rb"\1" + MASK, request["path"])
        if sub.request_body is not None:
            body, content_type = sub.request_body
            if body != request.get("content"):
                request["content"] = body
                request["headers"] = _set_header(
                    request["headers"], b"content-type", content_type.encode("latin-1")
                )
                request["headers"] = tuple(
                    (k, v) for k, v in request["headers"] if k.lower() != b"content-encoding"
                )
                archive_notes["request_body"] = "masked"
        elif sub.builtin_mask and _is_secret(facts) and request.get("content"):
            decoded = _decoded(request)
            request["content"] = _secret_mask(decoded) if decoded is not None else _WITHHELD
            request["headers"] = tuple(
                (k, v) for k, v in request["headers"] if k.lower() != b"content-encoding"
            )
            archive_notes["request_body"] = "masked (built-in Secret mask)"
    if response:
        response["headers"] = _mask_headers(response.get("headers"), options.mask_headers)
        response["trailers"] = _mask_headers(response.get("trailers"), options.mask_headers)
        captured = sub.captured
        if captured is not None and response.get("content") is None:
            content = bytes(captured.data)
            if captured.truncated:
                content += (
                    f"\n[holdgate: stream truncated in the archive after {len(captured.data)} "
                    f"of {captured.total} bytes]\n"
                ).encode()
            response["content"] = content
            archive_notes["stream"] = {
                "captured_bytes": len(captured.data),
                "total_bytes": captured.total,
                "truncated": captured.truncated,
            }
        if sub.builtin_mask and _is_secret(facts) and response.get("content"):
            decoded = _decoded(response)
            response["content"] = _secret_mask(decoded) if decoded is not None else _WITHHELD
            response["headers"] = tuple(
                (k, v) for k, v in response["headers"] if k.lower() != b"content-encoding"
            )
    websocket = state.get("websocket")
    if websocket and websocket.get("messages"):
        kept, size = [], 0
        for message in websocket["messages"]:
            size += len(message[2])
            if size > options.capture_bytes:
                break
            kept.append(message)
        dropped = len(websocket["messages"]) - len(kept)
        if dropped:
            note = (
                f"[holdgate: {dropped} further WebSocket messages not archived "
                f"(over {options.capture_bytes} bytes)]"
            ).encode()
            last = websocket["messages"][-1]
            # (type, from_client, content, timestamp, dropped, injected): text, injected.
            kept.append((1, False, note, last[3], False, True))
            archive_notes["websocket"] = {"kept": len(kept) - 1, "dropped": dropped}
        websocket["messages"] = kept
    holdgate["timings"] = _timings(state, holdgate)
    holdgate["archive"] = archive_notes
    decision = holdgate.get("decision") or {}
    if (holdgate.get("hold") or decision.get("action") == "approve") and not state.get("marked"):
        state["marked"] = ":lock:"
    return state


def _timings(state: Mapping[str, Any], holdgate: Mapping[str, Any]) -> dict[str, Any]:
    request = state.get("request") or {}
    response = state.get("response") or {}
    websocket = state.get("websocket") or {}
    error = state.get("error") or {}
    start = request.get("timestamp_start") or state.get("timestamp_created")
    end = (
        websocket.get("timestamp_end")
        or response.get("timestamp_end")
        or error.get("timestamp")
        or request.get("timestamp_end")
    )
    timings: dict[str, Any] = {
        "request_start": start,
        "request_end": request.get("timestamp_end"),
        "response_start": response.get("timestamp_start"),
        "response_end": response.get("timestamp_end"),
    }
    if websocket:
        timings["websocket_end"] = websocket.get("timestamp_end")
    if start and end:
        timings["duration_ms"] = round((end - start) * 1000, 3)
    hold = holdgate.get("hold") or {}
    if isinstance(hold, Mapping) and hold.get("waited_seconds") is not None:
        timings["hold_seconds"] = hold["waited_seconds"]
    return timings


def _text_of(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _agent_url(request: Mapping[str, Any], facts: Mapping[str, Any]) -> str:
    scheme = _text_of(request.get("scheme")) or "https"
    host = facts.get("host") or _text_of(request.get("host"))
    port = facts.get("port") or request.get("port")
    default = 443 if scheme == "https" else 80
    where = f"{host}:{port}" if port and port != default else str(host)
    return f"{scheme}://{where}{_text_of(request.get('path'))}"


def index_entry(state: Mapping[str, Any], gateway: str) -> dict[str, Any]:
    """The index line of one archived flow: what replay filters on."""
    holdgate = (state.get("metadata") or {}).get("holdgate") or {}
    facts = holdgate.get("request") or {}
    decision = holdgate.get("decision") or {}
    hold = holdgate.get("hold") if isinstance(holdgate.get("hold"), Mapping) else None
    kube = facts.get("kubernetes") or {}
    identity = facts.get("identity") or {}
    request = state.get("request") or {}
    response = state.get("response")
    error = state.get("error")
    ts = request.get("timestamp_start") or state.get("timestamp_created")
    return {
        "id": state.get("id"),
        "time": iso_time(ts),
        "ts": ts,
        "gateway": gateway,
        "agent": identity.get("agent") or None,
        "target": facts.get("target"),
        "method": _text_of(request.get("method")),
        "url": _agent_url(request, facts),
        "status": response.get("status_code") if response else None,
        "verb": kube.get("verb"),
        "resource": kube.get("resource"),
        "subresource": kube.get("subresource") or None,
        "namespace": kube.get("namespace") or None,
        "name": kube.get("name") or None,
        "rule": decision.get("rule"),
        "decision": decision.get("action"),
        "outcome": audit_events.hold_outcome(decision, hold) or None,
        "reviewers": audit_events.reviewers_of(hold),
        "marked": state.get("marked") or "",
        "websocket": bool(state.get("websocket")),
        "error": error.get("msg") if error else None,
        "comment": state.get("comment") or "",
    }


def _json_object(
    body: bytes | None, content_type: str | None, name: str, notes: dict[str, str]
) -> Any:
    if not body:
        return None
    if len(body) > AUDIT_OBJECT_LIMIT:
        notes[f"{name}-omitted"] = f"{len(body)} bytes, over {AUDIT_OBJECT_LIMIT}"
        return None
    if "json" not in (content_type or "") and body.lstrip()[:1] not in (b"{", b"["):
        notes[f"{name}-omitted"] = f"{content_type or 'unknown type'}, {len(body)} bytes"
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        notes[f"{name}-omitted"] = f"not JSON, {len(body)} bytes"
        return None


def audit_input(state: Mapping[str, Any], gateway: str) -> audit_events.AuditInput | None:
    """The audit-event facts of an archived flow to a kubernetes target; None for others."""
    holdgate = (state.get("metadata") or {}).get("holdgate") or {}
    facts = holdgate.get("request") or {}
    kube = facts.get("kubernetes")
    if not isinstance(kube, Mapping):
        return None
    request = state.get("request") or {}
    response = state.get("response")
    websocket = state.get("websocket")
    error = state.get("error")
    path = _text_of(request.get("path"))
    notes: dict[str, str] = {}
    streaming = audit_events.is_long_running(kube, path.partition("?")[2]) or bool(websocket)
    request_object = _json_object(
        _decoded(request), _header(request.get("headers"), b"content-type"), "request-object", notes
    )
    response_object = None
    if response and not streaming:
        response_object = _json_object(
            _decoded(response),
            _header(response.get("headers"), b"content-type"),
            "response-object",
            notes,
        )
    completed = None
    if websocket:
        completed = websocket.get("timestamp_end")
    elif response:
        completed = response.get("timestamp_end")
    if completed is None and error:
        completed = error.get("timestamp")
    peer = connection_state(state, "client_conn").get("peername")
    hold = holdgate.get("hold")
    exec_facts = facts.get("exec") or {}
    return audit_events.AuditInput(
        audit_id=str(state.get("id")),
        gateway=gateway,
        target=facts.get("target"),
        method=_text_of(request.get("method")),
        request_uri=path,
        kubernetes=kube,
        decision=holdgate.get("decision") or {},
        received=request.get("timestamp_start") or state.get("timestamp_created") or 0.0,
        hold=hold if isinstance(hold, Mapping) else None,
        identity=facts.get("identity"),
        source_ip=str(peer[0]) if peer else None,
        user_agent=_header(request.get("headers"), b"user-agent"),
        response_started=response.get("timestamp_start") if response else None,
        completed=completed,
        status_code=response.get("status_code") if response else None,
        request_object=request_object,
        response_object=response_object,
        notes=notes,
        exec_command=tuple(exec_facts.get("command") or ()),
        error=error.get("msg") if error else None,
        streaming=streaming,
    )


def describe(state: Mapping[str, Any], gateway: str) -> tuple[bytes, bytes]:
    """The index line and audit event lines of an archived flow state."""
    try:
        index = _json_line(index_entry(state, gateway))
    except Exception:
        log.exception("archive: cannot index flow %s", state.get("id"))
        index = _json_line({"id": state.get("id"), "gateway": gateway, "error": "unindexable"})
    try:
        facts = audit_input(state, gateway)
        events = audit_events.build_events(facts) if facts is not None else []
    except Exception:
        log.exception("archive: cannot build audit events for flow %s", state.get("id"))
        events = []
    return index, b"".join(_json_line(e) for e in events)


def encode(sub: Submission, options: RecordOptions) -> EncodedRecord:
    """Sanitize and serialize one submitted flow."""
    state = sanitize_state(sub.state, options, sub)
    flow = dumps(state)
    index, audit = describe(state, options.gateway)
    request = state.get("request") or {}
    ts = request.get("timestamp_start") or state.get("timestamp_created") or time.time()
    return EncodedRecord(str(state.get("id")), ts, flow, index, audit)


def split_records(data: bytes) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Each complete flow record of a segment: its exact bytes and its state.

    Stops at the first incomplete or unreadable record (a crash's torn tail).
    """
    view = memoryview(data)
    while view:
        try:
            state, rest = tnetstring.pop(view)
        except (ValueError, TypeError, IndexError):
            return
        if not isinstance(state, dict):
            return
        size = len(view) - len(rest)
        yield bytes(view[:size]), state
        view = rest


# --- the spool ---------------------------------------------------------------------------------


class Spool:
    """The local spool directory: segments being written, closed, sealed; the chain head."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.outbox = root / "outbox"
        self._lock_fd: int | None = None

    def lock(self, timeout: float = 0.0) -> None:
        """Take the spool for this process (one gateway per spool); OSError when taken.

        Waits up to `timeout` seconds: a killed gateway's writer may still be finishing.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise OSError(f"spool {self.root} is in use by another gateway process") from e
                time.sleep(0.05)
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the spool."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def path(self, segment: int, suffix: str) -> Path:
        """The file of a segment: suffix is a Kind, "closed.json" or "manifest.json"."""
        return self.root / f"seg-{segment:0{SEQ_DIGITS}d}.{suffix}"

    def segments(self) -> dict[int, set[str]]:
        """Every segment in the spool and the suffixes of its files."""
        found: dict[int, set[str]] = {}
        if not self.root.is_dir():
            return found
        for entry in os.scandir(self.root):
            name = entry.name
            if not name.startswith("seg-"):
                continue
            number, _, suffix = name[4:].partition(".")
            if number.isdigit() and suffix:
                found.setdefault(int(number), set()).add(suffix)
        return found

    def closed(self) -> list[int]:
        """Closed segments, oldest first: the uploader's work."""
        return sorted(n for n, s in self.segments().items() if "closed.json" in s)

    def unclosed(self) -> list[int]:
        """Segments without a closed marker: being written, or left by a crash."""
        return sorted(n for n, s in self.segments().items() if "closed.json" not in s)

    def next_segment(self) -> int:
        """A segment number never used in this spool."""
        numbers = list(self.segments())
        try:
            stored = int((self.root / "next-segment").read_text())
        except (OSError, ValueError):
            stored = 1
        return max([stored, *(n + 1 for n in numbers)])

    def remember_next(self, number: int) -> None:
        """Persist the next segment number."""
        atomic_write(self.root / "next-segment", f"{number}\n".encode())

    def read_chain(self) -> dict[str, Any] | None:
        """The chain head this spool has sealed: {"gateway", "seq", "sha256"}."""
        try:
            data = json.loads((self.root / "chain.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_chain(self, gateway: str, seq: int, sha256: str) -> None:
        """Persist the chain head."""
        atomic_write(
            self.root / "chain.json",
            canonical_json({"gateway": gateway, "seq": seq, "sha256": sha256}),
        )

    def remove(self, segment: int) -> None:
        """Delete a segment's files (the manifest last: it marks the segment as sealed)."""
        for suffix in (*DATA_KINDS, "closed.json", "manifest.json"):
            with contextlib.suppress(FileNotFoundError):
                self.path(segment, suffix).unlink()
        fsync_dir(self.root)

    def close_segment(self, segment: int, meta: Mapping[str, Any], webhook: bool) -> None:
        """Mark a segment closed (durably) and hand its audit events to the webhook outbox."""
        audit = self.path(segment, Kind.AUDIT)
        if webhook and audit.exists() and audit.stat().st_size:
            self.outbox.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.link(audit, self.outbox / audit.name)
            fsync_dir(self.outbox)
        atomic_write(self.path(segment, "closed.json"), canonical_json(dict(meta)))

    def recover(self, segment: int, gateway: str, webhook: bool) -> list[str]:
        """Close a segment a crash left open: cut a torn tail, rebuild index and audit lines.

        Returns the ids of the flows it holds.
        """
        flows_path = self.path(segment, Kind.FLOWS)
        try:
            data = flows_path.read_bytes()
        except FileNotFoundError:
            data = b""
        records = list(split_records(data))
        if not records:
            for suffix in DATA_KINDS:
                with contextlib.suppress(FileNotFoundError):
                    self.path(segment, suffix).unlink()
            return []
        good = sum(len(raw) for raw, _ in records)
        if good != len(data):
            log.warning(
                "archive: spool segment %d: cut a torn record (%d bytes) left by a crash",
                segment,
                len(data) - good,
            )
            with open(flows_path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        index, audit, times = [], [], []
        for _raw, state in records:
            line, events = describe(state, gateway)
            index.append(line)
            audit.append(events)
            request = state.get("request") or {}
            times.append(request.get("timestamp_start") or state.get("timestamp_created") or 0.0)
        atomic_write(self.path(segment, Kind.INDEX), b"".join(index))
        atomic_write(self.path(segment, Kind.AUDIT), b"".join(audit))
        opened = min(times)
        meta = {
            "segment": segment,
            "opened": opened,
            "closed": time.time(),
            "flows": len(records),
            "first": min(times),
            "last": max(times),
            "recovered": True,
        }
        self.close_segment(segment, meta, webhook)
        return [str(state.get("id")) for _raw, state in records]


@dataclass(slots=True)
class _OpenSegment:
    number: int
    opened: float
    fds: dict[Kind, int]
    sizes: dict[Kind, int]
    flows: int = 0
    first: float | None = None
    last: float | None = None


class _Control:
    def __init__(self, action: str) -> None:
        self.action = action
        self.done = threading.Event()


class SpoolWriter:
    """Appends records to the open segment, fsyncs per batch, rotates by size and age.

    Driven by one thread: `WriterThread` in the gateway's process, or the writer process's
    main loop.
    """

    def __init__(
        self,
        spool: Spool,
        settings: ArchiveSettings,
        options: RecordOptions,
        on_close: Callable[[], None],
        on_durable: Callable[[Sequence[Submission], bool], None],
    ) -> None:
        self.spool = spool
        self.settings = settings
        self.options = options
        self.on_close = on_close
        self.on_durable = on_durable
        self.healthy = True
        self.error = ""
        self.written = 0
        self._pending: list[Submission] = []
        self._segment: _OpenSegment | None = None
        self._retry_at = 0.0
        self._retry_delay = 0.2

    @property
    def pending(self) -> int:
        """Records accepted but not yet durable."""
        return len(self._pending)

    def write(self, batch: Sequence[Submission], rotate: bool = False) -> None:
        """Append a batch (fsynced once), then close the segment if it is due or `rotate`."""
        self._pending.extend(batch)
        if self._pending and time.monotonic() >= self._retry_at:
            self._write_pending()
        self._rotate_if_due(force=rotate)

    def close(self) -> None:
        """Close the open segment; report what could not be written."""
        self.write((), rotate=True)
        if self._pending:
            log.error(
                "archive: %d flows could not be written to the spool %s: %s",
                len(self._pending),
                self.spool.root,
                self.error,
            )
            self._acknowledge(self._pending, False)

    def wait_time(self) -> float | None:
        """Seconds until the writer has something to do without new records (None: never)."""
        waits = []
        if self._segment is not None:
            waits.append(self._segment.opened + self.settings.rotate_seconds - time.time())
        if self._pending:
            waits.append(self._retry_at - time.monotonic())
        return max(0.01, min(waits)) if waits else None

    def _open(self) -> _OpenSegment:
        number = self.spool.next_segment()
        self.spool.remember_next(number + 1)
        fds: dict[Kind, int] = {}
        try:
            for kind in DATA_KINDS:
                fds[kind] = os.open(
                    self.spool.path(number, kind), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
                )
            fsync_dir(self.spool.root)
        except OSError:
            for fd in fds.values():
                os.close(fd)
            raise
        return _OpenSegment(number, time.time(), fds, dict.fromkeys(DATA_KINDS, 0))

    def _write_pending(self) -> None:
        batch = self._pending
        for sub in batch:
            if sub.encoded is None:
                try:
                    sub.encoded = encode(sub, self.options)
                except Exception:
                    log.exception("archive: cannot encode flow %s", sub.state.get("id"))
                    sub.encoded = _fallback_record(sub.state, self.options.gateway)
        chunks = {
            kind: b"".join(getattr(sub.encoded, attr) for sub in batch if sub.encoded is not None)
            for kind, attr in ((Kind.FLOWS, "flow"), (Kind.INDEX, "index"), (Kind.AUDIT, "audit"))
        }
        segment = self._segment
        try:
            if segment is None:
                segment = self._segment = self._open()
            for kind, data in chunks.items():
                if data:
                    _write_all(segment.fds[kind], data)
            if chunks[Kind.FLOWS]:
                # Only the flows must be durable per batch: index and audit lines are rebuilt
                # from them when a crash leaves a segment open (Spool.recover).
                os.fdatasync(segment.fds[Kind.FLOWS])
        except OSError as e:
            self._failed(e, batch)
            return
        for kind, data in chunks.items():
            segment.sizes[kind] += len(data)
        times = [sub.encoded.time for sub in batch if sub.encoded is not None]
        segment.flows += len(batch)
        segment.first = min([segment.first, *times] if segment.first is not None else times)
        segment.last = max([segment.last, *times] if segment.last is not None else times)
        self.written += len(batch)
        self._pending = []
        if not self.healthy:
            log.warning("archive: spool %s is writable again", self.spool.root)
        self.healthy, self.error = True, ""
        self._retry_delay = 0.2
        self._acknowledge(batch, True)

    def _failed(self, error: OSError, batch: list[Submission]) -> None:
        if self.healthy:
            log.error("archive: cannot write the spool %s: %s", self.spool.root, error)
        self.healthy = False
        self.error = f"cannot write the spool {self.spool.root}: {error}"
        segment, self._segment = self._segment, None
        if segment is not None:
            # Leave the torn segment behind: it is repaired and uploaded on the next start.
            for fd in segment.fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, 5.0)
        if len(self._pending) > MAX_PENDING * 10:
            dropped = len(self._pending) - MAX_PENDING * 10
            log.error("archive: dropping %d unwritable records (spool still failing)", dropped)
            self._acknowledge(self._pending[:dropped], False)
            self._pending = self._pending[dropped:]
        self._acknowledge(batch, False)

    def _acknowledge(self, batch: Sequence[Submission], ok: bool) -> None:
        # A failure is reported once (to release waiting responses), success once more later.
        if ok:
            fresh = [sub for sub in batch if not sub.acked]
            for sub in fresh:
                sub.acked = True
        else:
            fresh = [sub for sub in batch if not sub.acked and not sub.failure_reported]
            for sub in fresh:
                sub.failure_reported = True
        if fresh:
            self.on_durable(fresh, ok)

    def _rotate_if_due(self, force: bool) -> None:
        segment = self._segment
        if segment is None:
            return
        due = (
            force
            or segment.sizes[Kind.FLOWS] >= self.settings.rotate_bytes
            or time.time() - segment.opened >= self.settings.rotate_seconds
        )
        if not due:
            return
        self._segment = None
        try:
            for fd in segment.fds.values():
                os.fsync(fd)
                os.close(fd)
            if segment.flows == 0:
                for kind in DATA_KINDS:
                    self.spool.path(segment.number, kind).unlink()
                return
            self.spool.close_segment(
                segment.number,
                {
                    "segment": segment.number,
                    "opened": segment.opened,
                    "closed": time.time(),
                    "flows": segment.flows,
                    "first": segment.first,
                    "last": segment.last,
                },
                self.settings.audit_webhook is not None,
            )
        except OSError as e:
            log.error("archive: cannot close spool segment %d: %s", segment.number, e)
            self.healthy, self.error = False, f"cannot close a spool segment: {e}"
            return
        self.on_close()


class WriterThread(threading.Thread):
    """Drives a SpoolWriter from a queue, for a store running inside the caller's process."""

    def __init__(self, writer: SpoolWriter) -> None:
        super().__init__(name="holdgate-archive-writer", daemon=True)
        self.writer = writer
        self.queue: queue.SimpleQueue[Submission | _Control] = queue.SimpleQueue()

    def run(self) -> None:
        """Write until told to stop."""
        while True:
            try:
                items = [self.queue.get(timeout=self.writer.wait_time())]
            except queue.Empty:
                items = []
            while len(items) < 2000:
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            controls = [i for i in items if isinstance(i, _Control)]
            batch = [i for i in items if isinstance(i, Submission)]
            stop = any(c.action == "stop" for c in controls)
            if stop:
                self.writer.write(batch)
                self.writer.close()
            else:
                self.writer.write(batch, rotate=bool(controls))
            for control in controls:
                control.done.set()
            if stop:
                return


def _fallback_record(state: Mapping[str, Any], gateway: str) -> EncodedRecord:
    """A minimal record for a flow that could not be encoded: never lose that it happened."""
    request = state.get("request") or {}
    entry = {"id": state.get("id"), "gateway": gateway, "error": "flow could not be archived"}
    for key in ("method", "host", "path"):
        entry[key] = _text_of(request.get(key))
    ts = request.get("timestamp_start") or time.time()
    return EncodedRecord(str(state.get("id")), ts, b"", _json_line(entry), b"")


def resolve_waiters(batch: Sequence[Submission], ok: bool) -> None:
    """Tell the event loops waiting for these flows whether they are durable."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[bool]]] = {}
    for sub in batch:
        if sub.waiter is not None:
            by_loop.setdefault(sub.waiter[0], []).append(sub.waiter[1])
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_resolve, futures, ok)


def _resolve(futures: list[asyncio.Future[bool]], ok: bool) -> None:
    for future in futures:
        if not future.done():
            future.set_result(ok)


# --- the uploader ------------------------------------------------------------------------------


class HandedOver(Exception):
    """The spool was handed over to the next writer: a background thread must stop changing it."""


class Handover:
    """Guards the background threads' changes to the spool until the store lets the spool go.

    Once `hand_over` returns no change is under way and none starts, though a thread may still
    wait on the network: the next writer can take the spool at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.done = threading.Event()

    def check(self) -> None:
        """HandedOver if the spool is no longer ours (before starting work on it)."""
        if self.done.is_set():
            raise HandedOver

    @contextlib.contextmanager
    def change(self) -> Iterator[None]:
        """Change the spool inside this block; HandedOver if it is no longer ours."""
        with self._lock:
            self.check()
            yield

    def hand_over(self) -> None:
        """Wait for a change under way to finish; refuse every later one."""
        with self._lock:
            self.done.set()


class Uploader(threading.Thread):
    """Seals closed segments into the hash chain and stores them, retrying with backoff."""

    def __init__(
        self,
        spool: Spool,
        backend: Backend,
        settings: ArchiveSettings,
        gateway: str,
        handover: Handover | None = None,
    ) -> None:
        super().__init__(name="holdgate-archive-uploader", daemon=True)
        self.spool = spool
        self.backend = backend
        self.settings = settings
        self.gateway = gateway
        self.handover = handover or Handover()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.progress = threading.Condition()
        self.uploaded = 0
        self.error = ""
        self.waiting = 0

    def run(self) -> None:
        """Upload until stopped; one last pass on the way out."""
        delay = self.settings.retry_initial
        while True:
            final = self.stopping.is_set()
            try:
                self.upload_ready()
            except HandedOver:
                break
            except BackendError as e:
                self._note_error(e, delay)
                if final:
                    break
                self.stopping.wait(delay)
                delay = min(delay * 2, self.settings.retry_max)
                continue
            except Exception as e:
                log.exception("archive: uploader error")
                self._note_error(e, delay)
                if final:
                    break
                self.stopping.wait(delay)
                delay = min(delay * 2, self.settings.retry_max)
                continue
            delay = self.settings.retry_initial
            if final:
                break
            self.wake.wait(5.0)
            self.wake.clear()

    def _note_error(self, error: Exception, delay: float) -> None:
        waiting = len(self.spool.closed())
        message = f"{error}"
        if message != self.error:
            log.warning(
                "archive: %s unavailable (%s); %d segments wait in the spool, retrying in %.1fs",
                self.backend.describe(),
                message,
                waiting,
                delay,
            )
        self.error, self.waiting = message, waiting
        with self.progress:
            self.progress.notify_all()

    def upload_ready(self) -> None:
        """Seal and store every closed segment, oldest first."""
        for segment in self.spool.closed():
            self.handover.check()
            manifest, data = self.seal(segment)
            self.store(segment, manifest, data)
            with self.handover.change():
                self.spool.remove(segment)
            self.uploaded += 1
            if self.error:
                log.info("archive: %s reachable again", self.backend.describe())
            self.error = ""
            with self.progress:
                self.progress.notify_all()
        self.waiting = 0
        with self.progress:
            self.progress.notify_all()

    def _head(self) -> tuple[int, str | None]:
        chain = self.spool.read_chain()
        if chain and chain.get("gateway") == self.gateway:
            return int(chain["seq"]), str(chain["sha256"])
        # A new or lost spool: continue the chain the archive already holds for this gateway.
        latest: StoredObject | None = None
        latest_seq = 0
        for obj in self.backend.list():
            info = parse_key(self.backend.prefix, obj.key)
            if (
                info
                and info.gateway == self.gateway
                and info.kind is Kind.MANIFEST
                and info.seq > latest_seq
            ):
                latest, latest_seq = obj, info.seq
        if latest is None:
            return 0, None
        return latest_seq, sha256_hex(self.backend.get(latest.key))

    def seal(self, segment: int) -> tuple[dict[str, Any], bytes]:
        """The segment's manifest: its objects' hashes and the previous manifest's hash."""
        path = self.spool.path(segment, "manifest.json")
        chain = self.spool.read_chain()
        if path.exists():
            data = path.read_bytes()
            manifest = json.loads(data)
            if chain is None or int(chain.get("seq", 0)) < manifest["seq"]:
                with self.handover.change():
                    self.spool.write_chain(self.gateway, manifest["seq"], sha256_hex(data))
            return manifest, data
        seq, previous = self._head()
        seq += 1
        meta = json.loads(self.spool.path(segment, "closed.json").read_bytes())
        opened = float(meta["opened"])
        objects = {}
        for kind in DATA_KINDS:
            blob = self.spool.path(segment, kind).read_bytes()
            objects[kind.name.lower()] = {
                "key": object_key(self.backend.prefix, self.gateway, seq, opened, kind),
                "sha256": sha256_hex(blob),
                "bytes": len(blob),
            }
        manifest = {
            "format": MANIFEST_FORMAT,
            "gateway": self.gateway,
            "seq": seq,
            "prev": None if previous is None else {"seq": seq - 1, "sha256": previous},
            "opened": iso_time(opened),
            "closed": iso_time(meta.get("closed")),
            "first": meta.get("first"),
            "last": meta.get("last"),
            "flows": meta.get("flows"),
            "objects": objects,
            "key": object_key(self.backend.prefix, self.gateway, seq, opened, Kind.MANIFEST),
        }
        data = canonical_json(manifest)
        with self.handover.change():
            atomic_write(path, data)
            self.spool.write_chain(self.gateway, seq, sha256_hex(data))
        return manifest, data

    def store(self, segment: int, manifest: Mapping[str, Any], data: bytes) -> None:
        """Put the segment's objects, then its manifest; objects already stored are skipped."""
        for kind in DATA_KINDS:
            obj = manifest["objects"][kind.name.lower()]
            try:
                blob = self.spool.path(segment, kind).read_bytes()
            except FileNotFoundError:
                # Spool.remove deletes data files first: a removal cut short (its writer was
                # killed) after the whole segment was stored, the manifest last.
                self.handover.check()
                if self.backend.stored_sha256(manifest["key"]) == sha256_hex(data):
                    return
                raise BackendError(f"spool segment {segment} lost its {kind} file") from None
            if sha256_hex(blob) != obj["sha256"]:
                raise BackendError(f"spool segment {segment} changed after sealing ({kind})")
            self._put_once(obj["key"], blob, obj["sha256"], _CONTENT_TYPES[kind])
        self._put_once(manifest["key"], data, sha256_hex(data), _CONTENT_TYPES[Kind.MANIFEST])

    def _put_once(self, key: str, data: bytes, sha256: str, content_type: str) -> None:
        self.handover.check()
        stored = self.backend.stored_sha256(key)
        if stored == sha256:
            return
        if stored is not None:
            raise ObjectConflict(
                f"{key} already holds different content (sha256 {stored}); is another "
                f"gateway named {self.gateway!r} writing to the same archive?"
            )
        self.backend.put(key, data, sha256, content_type)


# --- the audit webhook -------------------------------------------------------------------------


class WebhookSender(threading.Thread):
    """POSTs each closed segment's audit events as an EventList; retries, never blocks traffic."""

    BATCH = 500
    MAX_AGE = 24 * 3600.0

    def __init__(
        self,
        outbox: Path,
        settings: WebhookSettings,
        retry_initial: float,
        retry_max: float,
        handover: Handover | None = None,
    ) -> None:
        super().__init__(name="holdgate-archive-webhook", daemon=True)
        self.outbox = outbox
        self.settings = settings
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.handover = handover or Handover()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.sent = 0
        self.error = ""
        self._context = ssl.create_default_context(cafile=str(settings.ca)) if settings.ca else None

    def run(self) -> None:
        """Deliver until stopped."""
        delay = self.retry_initial
        while not self.stopping.is_set():
            try:
                self.deliver_ready()
            except HandedOver:
                return
            except OSError as e:
                if str(e) != self.error:
                    log.warning("archive: audit webhook %s: %s (retrying)", self.settings.url, e)
                self.error = str(e)
                self.stopping.wait(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            self.error, delay = "", self.retry_initial
            self.wake.wait(5.0)
            self.wake.clear()

    def deliver_ready(self) -> None:
        """Send every waiting file of events, oldest first."""
        if not self.outbox.is_dir():
            return
        for path in sorted(self.outbox.glob("*.audit.jsonl")):
            if time.time() - path.stat().st_mtime > self.MAX_AGE:
                log.error("archive: audit events %s undeliverable for a day; dropped", path.name)
                with self.handover.change():
                    path.unlink()
                continue
            lines = [line for line in path.read_bytes().splitlines() if line.strip()]
            while lines:
                batch, lines = lines[: self.BATCH], lines[self.BATCH :]
                self.handover.check()
                self.post([event for event in map(_event_or_none, batch) if event is not None])
                self.sent += len(batch)
                if lines:
                    with self.handover.change():
                        atomic_write(path, b"\n".join(lines) + b"\n")
            with self.handover.change():
                path.unlink()

    def post(self, events: list[dict[str, Any]]) -> None:
        """One EventList POST; OSError on any failure."""
        body = json.dumps(audit_events.event_list(events)).encode()
        request = urllib.request.Request(
            self.settings.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "holdgate-archive"},
        )
        with urllib.request.urlopen(
            request, timeout=self.settings.timeout, context=self._context
        ) as response:
            if not 200 <= response.status < 300:
                raise OSError(f"HTTP {response.status}")


def _event_or_none(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        log.error("archive: an unreadable audit event line was not sent: %r", line[:200])
        return None


# --- the store ---------------------------------------------------------------------------------


class ArchiveStore:
    """The archive of one gateway: accepts flow states, keeps them durable, uploads them."""

    def __init__(
        self,
        settings: ArchiveSettings,
        gateway: str,
        backend: Backend | None = None,
        on_durable: Callable[[Sequence[Submission], bool], None] = resolve_waiters,
    ) -> None:
        self.settings = settings
        self.gateway = gateway
        self.backend = backend or make_backend(settings)
        self.on_durable = on_durable
        # Flows found in segments a crash left open: written, maybe never acknowledged.
        self.recovered: set[str] = set()
        self.spool = Spool(settings.spool)
        self.options = RecordOptions(
            gateway=gateway,
            mask_headers=frozenset(h.encode() for h in settings.mask_headers),
            capture_bytes=settings.capture_bytes,
        )
        self.writer: SpoolWriter | None = None
        self.thread: WriterThread | None = None
        self.uploader: Uploader | None = None
        self.webhook: WebhookSender | None = None
        self.handover = Handover()
        self.error = ""

    def start(self, lock_timeout: float = 0.0, threaded: bool = True) -> None:
        """Lock the spool, recover what a crash left, start the writer and uploader threads.

        With `threaded=False` the caller drives `self.writer` from its own loop.
        """
        if self.writer is not None:
            return
        try:
            self.spool.lock(lock_timeout)
            for segment in self.spool.unclosed():
                ids = self.spool.recover(
                    segment, self.gateway, self.settings.audit_webhook is not None
                )
                self.recovered.update(ids)
                if ids:
                    log.info("archive: recovered %d flows from spool segment %d", len(ids), segment)
        except OSError as e:
            self.error = str(e)
            log.error("archive: the spool cannot be used: %s", e)
            return
        self.handover = Handover()
        self.uploader = Uploader(
            self.spool, self.backend, self.settings, self.gateway, self.handover
        )
        self.writer = SpoolWriter(
            self.spool, self.settings, self.options, self.uploader.wake.set, self.on_durable
        )
        if self.settings.audit_webhook is not None:
            self.webhook = WebhookSender(
                self.spool.outbox,
                self.settings.audit_webhook,
                self.settings.retry_initial,
                self.settings.retry_max,
                self.handover,
            )
            self.webhook.start()
            previous = self.uploader.wake.set
            webhook = self.webhook

            def wake_both() -> None:
                previous()
                webhook.wake.set()

            self.writer.on_close = wake_both
        if threaded:
            self.thread = WriterThread(self.writer)
            self.thread.start()
        self.uploader.start()
        log.info(
            "archive: spool %s, archive %s (%d segments waiting)",
            self.spool.root,
            self.backend.describe(),
            len(self.spool.closed()),
        )

    def submit(self, sub: Submission) -> bool:
        """Queue a flow for the spool (threaded stores); False when the store is not running."""
        if self.thread is None or not self.thread.is_alive():
            return False
        self.thread.queue.put(sub)
        return True

    def can_record(self) -> bool:
        """Whether flows can be written to the spool now."""
        writer = self.writer
        if writer is None or (self.thread is not None and not self.thread.is_alive()):
            return False
        queued = self.thread.queue.qsize() if self.thread is not None else 0
        return writer.healthy and writer.pending + queued < MAX_PENDING

    @property
    def last_error(self) -> str:
        """Why the spool cannot be written, if it cannot."""
        if self.writer is not None and self.writer.error:
            return self.writer.error
        return self.error or ("the archive is not running" if self.writer is None else "")

    def rotate(self, timeout: float = 10.0) -> bool:
        """Close the open segment (after everything submitted before); True when done in time."""
        return self._control("rotate", timeout)

    def _control(self, action: str, timeout: float) -> bool:
        thread = self.thread
        if thread is None:
            if self.writer is None:
                return False
            # Unthreaded: the caller is the thread that drives the writer.
            if action == "stop":
                self.writer.close()
            else:
                self.writer.write((), rotate=True)
            return True
        if not thread.is_alive():
            return False
        control = _Control(action)
        thread.queue.put(control)
        return control.done.wait(timeout)

    def drain(self, timeout: float = 30.0) -> bool:
        """Rotate and wait until the spool holds no closed segment; True when it is empty."""
        deadline = time.monotonic() + timeout
        if not self.rotate(timeout):
            return False
        return self.wait_uploaded(max(0.0, deadline - time.monotonic()))

    def wait_uploaded(self, timeout: float) -> bool:
        """Wait until the spool holds no closed segment; True when it is empty."""
        deadline = time.monotonic() + timeout
        uploader = self.uploader
        if uploader is None:
            return False
        uploader.wake.set()
        with uploader.progress:
            while self.spool.closed():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not uploader.is_alive():
                    return False
                uploader.progress.wait(min(remaining, 0.5))
        return True

    def stop(self, timeout: float = 10.0, upload: bool = True) -> None:
        """Close the open segment, try a last upload within `timeout`, stop the threads.

        Without `upload` (the writer of a killed gateway, whose successor waits for the spool)
        uploads stop where they are and closed segments wait in the spool for the next writer.
        """
        deadline = time.monotonic() + timeout
        if not upload:
            self.handover.hand_over()  # first: closing the segment must not start an upload
        if self.writer is not None:
            self._control("stop", timeout)
        if self.thread is not None:
            self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.uploader is not None:
            self.uploader.stopping.set()
            self.uploader.wake.set()
            self.uploader.join(max(0.0, deadline - time.monotonic()))
        if self.webhook is not None:
            self.webhook.stopping.set()
            self.webhook.wake.set()
            self.webhook.join(max(0.1, deadline - time.monotonic()))
        # A thread still waiting on the network must not touch the spool the next writer takes.
        self.handover.hand_over()
        left = len(self.spool.closed())
        if left and self.uploader is not None:
            log.warning(
                "archive: %d segments stay in the spool %s; they are uploaded on the next start",
                left,
                self.spool.root,
            )
        self.spool.unlock()
        self.writer = self.thread = self.uploader = self.webhook = None

    def status(self) -> dict[str, Any]:
        """What the archive is doing, for logs and health checks."""
        return {
            "can_record": self.can_record(),
            "error": self.last_error,
            "written": self.writer.written if self.writer else 0,
            "pending_records": self.writer.pending if self.writer else 0,
            "segments_waiting": len(self.spool.closed()),
            "uploaded": self.uploader.uploaded if self.uploader else 0,
            "upload_error": self.uploader.error if self.uploader else "",
            "webhook_error": self.webhook.error if self.webhook else "",
        }


# --- the writer process ------------------------------------------------------------------------
#
# The gateway runs the store in a child process so that encoding, fsync and uploads (boto3)
# never compete with mitmproxy's event loop for the GIL. Frames are length-prefixed pickles
# over the child's stdin and stdout (a private pipe between a process and its own child).
#
# gateway -> writer: ("start", settings, gateway) first, then
#   ("flow", token, state, client_conn, server_conn, captured, request_body, builtin_mask, wait)
#   with the connection states as pickles (shared by the flows of a connection),
#   ("rotate" | "drain", token, timeout), ("stop", timeout); end of file without "stop": the
#   gateway was killed.
# writer -> gateway: ("status", {...}), ("ack", ok, [tokens]), ("done", token, ok),
#   ("log", level, message).

FRAME_HEADER = struct.Struct("!I")
# Flows no response waits for are gathered this long (or this many) per fsync.
BATCH_WINDOW = 0.05
BATCH_MAX = 1000
WRITER_COMMAND = "import sys; from addons.archive_store import serve; sys.exit(serve())"


def frame(message: Any) -> bytes:
    """One message on the writer pipe."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME_HEADER.pack(len(data)) + data


def take_frames(buffer: bytearray) -> Iterator[Any]:
    """The complete messages at the start of `buffer`, consumed from it."""
    header = FRAME_HEADER.size
    while len(buffer) >= header:
        (size,) = FRAME_HEADER.unpack_from(buffer)
        if len(buffer) < header + size:
            return
        data = bytes(buffer[header : header + size])
        del buffer[: header + size]
        yield pickle.loads(data)


class _ForwardLogs(logging.Handler):
    def __init__(self, send: Callable[[Any], None]) -> None:
        super().__init__(logging.INFO)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.send(("log", record.levelno, record.getMessage()))


def serve(stdin_fd: int = 0, stdout_fd: int = 1) -> int:
    """The archive writer process: run a store for the gateway that started it.

    One thread reads the pipe and writes the spool (a batch is whatever arrived since the last
    fsync); the uploader and webhook threads run beside it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the gateway; it stops us
    out_lock = threading.Lock()
    gateway_gone = threading.Event()

    def send(message: Any) -> None:
        data = frame(message)
        with out_lock:
            if gateway_gone.is_set():
                return
            try:
                _write_all(stdout_fd, data)
            except OSError:
                # The gateway was killed (EPIPE): what its pipe still holds is written all the
                # same, and nobody reads our reports any more.
                gateway_gone.set()

    holdgate_log = logging.getLogger("holdgate")
    holdgate_log.addHandler(_ForwardLogs(send))
    holdgate_log.setLevel(logging.INFO)
    holdgate_log.propagate = False
    buffer = bytearray()
    while not buffer or len(buffer) < FRAME_HEADER.size + FRAME_HEADER.unpack_from(buffer)[0]:
        first = os.read(stdin_fd, 1 << 20)
        if not first:
            return 2
        buffer += first
    start = next(take_frames(buffer))
    if start[0] != "start":
        return 2
    _, settings, gateway = start
    acks: list[int] = []
    acks_lock = threading.Lock()

    def acknowledge(batch: Sequence[Submission], ok: bool) -> None:
        tokens = [sub.token for sub in batch if sub.token is not None]
        with acks_lock:
            if ok and not any(sub.urgent for sub in batch):
                acks.extend(tokens)  # nobody waits: the next status tick reports them
                return
            if ok:
                tokens, acks[:] = acks + tokens, []
        send(("ack", ok, tokens))

    def flush_acks() -> None:
        with acks_lock:
            tokens, acks[:] = list(acks), []
        if tokens:
            send(("ack", True, tokens))

    store = ArchiveStore(settings, gateway, on_durable=acknowledge)
    # Until the spool is ours (a killed gateway's writer may still be finishing), nothing is
    # read: flows wait in the pipe and the gateway refuses what needs a record.
    while True:
        send(
            ("status", {"can_record": False, "error": "the archive is starting", "starting": True})
        )
        store.start(lock_timeout=1.0, threaded=False)
        if store.writer is not None:
            break
        send(("status", {"can_record": False, "error": store.last_error}))
        if select.select([stdin_fd], [], [], 1.0)[0]:
            more = os.read(stdin_fd, 1 << 20)
            if not more:
                return 1  # the gateway is gone
            buffer += more
    stopped = threading.Event()

    def report_status() -> None:
        last: tuple[bool, str] | None = None
        while True:
            current = (store.can_record(), store.last_error)
            if current != last:
                send(("status", {"can_record": current[0], "error": current[1]}))
                last = current
            flush_acks()
            if stopped.wait(0.1):
                return

    threading.Thread(target=report_status, name="holdgate-archive-status", daemon=True).start()
    connections: dict[bytes, Preserialized] = {}
    # End of file without a stop: the gateway was killed. Its successor waits for the spool, so
    # uploads are left to it; an upload under way gets up to stop_timeout to finish.
    stop_timeout, upload = 2.0, False
    os.set_blocking(stdin_fd, False)
    finished = False
    batch: list[Submission] = []
    controls: list[tuple[str, int, float]] = []
    batch_due = 0.0
    while not finished and store.writer is not None:
        writer = store.writer
        waits = [w for w in (writer.wait_time(),) if w is not None]
        if batch:
            waits.append(batch_due - time.monotonic())
        select.select([stdin_fd], [], [], max(0.0, min(waits)) if waits else None)
        try:
            chunk: bytes | None = os.read(stdin_fd, 1 << 20)
        except BlockingIOError:
            chunk = None
        if chunk == b"":
            finished = True
        elif chunk:
            buffer += chunk
        urgent = False
        for message in take_frames(buffer):
            kind = message[0]
            if kind == "flow":
                _, token, state, client, server, captured, request_body, builtin, wait = message
                if str(state.get("id")) in store.recovered:
                    send(("ack", True, [token]))  # written before a crash, resent: keep one copy
                    continue
                state["client_conn"] = _connection(connections, client)
                state["server_conn"] = _connection(connections, server)
                if not batch:
                    batch_due = time.monotonic() + BATCH_WINDOW
                batch.append(Submission(state, captured, request_body, None, builtin, token, wait))
                urgent = urgent or wait
            elif kind in ("rotate", "drain"):
                controls.append(message)
            elif kind == "stop":
                stop_timeout, upload, finished = message[1], True, True
        # A response waits: write now. Otherwise gather flows for one fsync per window.
        if (
            urgent
            or controls
            or finished
            or len(batch) >= BATCH_MAX
            or (batch and time.monotonic() >= batch_due)
        ):
            writer.write(batch, rotate=bool(controls))
            batch = []
        else:
            writer.write((), rotate=False)  # age rotation and retries
        for kind, token, timeout in controls:
            if kind == "rotate":
                send(("done", token, True))
            else:
                threading.Thread(
                    target=lambda t=token, w=timeout: send(("done", t, store.wait_uploaded(w))),
                    daemon=True,
                ).start()
        controls = []
    store.stop(timeout=stop_timeout, upload=upload)
    stopped.set()
    flush_acks()
    send(("status", {"can_record": False, "error": "the archive writer stopped"}))
    return 0


def _connection(cache: dict[bytes, Preserialized], pickled: bytes) -> Preserialized:
    shared = cache.get(pickled)
    if shared is None:
        if len(cache) >= 4096:
            cache.clear()
        shared = cache[pickled] = Preserialized(pickle.loads(pickled))
    return shared


# --- reading the archive: catalog, verify, fetch ----------------------------------------------


@dataclass(slots=True)
class Segment:
    """The stored objects of one archived segment."""

    gateway: str
    seq: int
    objects: dict[Kind, StoredObject] = field(default_factory=dict)


@dataclass(slots=True)
class Catalog:
    """Everything under the archive prefix, grouped by segment."""

    segments: dict[tuple[str, int], Segment] = field(default_factory=dict)
    unknown: list[StoredObject] = field(default_factory=list)

    def gateways(self) -> list[str]:
        """Gateways with segments in the archive."""
        return sorted({g for g, _ in self.segments})


def scan(backend: Backend) -> Catalog:
    """List the archive."""
    catalog = Catalog()
    for obj in backend.list():
        info = parse_key(backend.prefix, obj.key)
        if info is None:
            catalog.unknown.append(obj)
            continue
        segment = catalog.segments.setdefault(
            (info.gateway, info.seq), Segment(info.gateway, info.seq)
        )
        if info.kind in segment.objects:
            # The same segment number under two hour directories.
            catalog.unknown.append(obj)
        else:
            segment.objects[info.kind] = obj
    return catalog


class Altered(Exception):
    """An archived object whose bytes do not match the hash its manifest records."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding of `verify`: missing, extra, altered, chain or pending."""

    kind: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind.upper()}: {self.where}: {self.detail}"


@dataclass(slots=True)
class VerifyReport:
    """What `holdgate archive verify` found."""

    location: str
    segments: int = 0
    flows: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No missing, extra, altered object and an unbroken chain."""
        return not any(p.kind != "pending" for p in self.problems)


Progress = Callable[[str, int], None]


def fetch(backend: Backend, key: str, sha256: str, progress: Progress | None = None) -> bytes:
    """Download an object and check it against its recorded hash (Altered when it differs)."""
    data = backend.get(key)
    if progress is not None:
        progress(key, len(data))
    actual = sha256_hex(data)
    if actual != sha256:
        raise Altered(f"sha256 {actual}, the manifest records {sha256}")
    return data


def read_manifest(
    backend: Backend, segment: Segment, progress: Progress | None = None
) -> tuple[dict[str, Any], bytes]:
    """A segment's manifest and its exact bytes (ValueError when unreadable)."""
    obj = segment.objects[Kind.MANIFEST]
    data = backend.get(obj.key)
    if progress is not None:
        progress(obj.key, len(data))
    manifest = json.loads(data)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError("not a holdgate manifest")
    if manifest.get("gateway") != segment.gateway or manifest.get("seq") != segment.seq:
        raise ValueError(
            f"says gateway {manifest.get('gateway')!r} seq {manifest.get('seq')}, not its key"
        )
    return manifest, data


def verify(
    backend: Backend, spool: Path | None = None, progress: Progress | None = None
) -> VerifyReport:
    """Check every object against its manifest and every manifest against the chain."""
    report = VerifyReport(location=backend.describe())
    catalog = scan(backend)
    for obj in catalog.unknown:
        report.problems.append(Problem("extra", obj.key, "not an object holdgate wrote"))
    local = _local_state(spool)
    for gateway in catalog.gateways():
        _verify_gateway(backend, catalog, gateway, local.get(gateway), report, progress)
    for gateway, (head, pending) in local.items():
        if gateway not in catalog.gateways() and head:
            seqs = sorted(pending)
            for seq in range(1, head + 1):
                kind = "pending" if seq in seqs else "missing"
                detail = (
                    "sealed in the spool, not uploaded yet" if seq in seqs else "not in the archive"
                )
                report.problems.append(Problem(kind, f"{gateway}-{seq:0{SEQ_DIGITS}d}", detail))
    return report


def _local_state(spool: Path | None) -> dict[str, tuple[int, set[int]]]:
    """From a gateway's spool: the chain head it sealed and the seqs still waiting there."""
    if spool is None or not spool.is_dir():
        return {}
    local = Spool(spool)
    chain = local.read_chain()
    if not chain:
        return {}
    pending = set()
    for segment, suffixes in local.segments().items():
        if "manifest.json" in suffixes:
            with contextlib.suppress(OSError, ValueError, KeyError):
                pending.add(
                    int(json.loads(local.path(segment, "manifest.json").read_bytes())["seq"])
                )
    return {str(chain["gateway"]): (int(chain["seq"]), pending)}


def _verify_gateway(
    backend: Backend,
    catalog: Catalog,
    gateway: str,
    local: tuple[int, set[int]] | None,
    report: VerifyReport,
    progress: Progress | None,
) -> None:
    segments = {seq: seg for (g, seq), seg in catalog.segments.items() if g == gateway}
    head, pending = local if local else (0, set())
    last = max([*segments, head])
    manifests: dict[int, tuple[dict[str, Any], bytes]] = {}
    for seq in range(1, last + 1):
        name = f"{gateway}-{seq:0{SEQ_DIGITS}d}"
        segment = segments.get(seq)
        if segment is None:
            if seq in pending:
                report.problems.append(
                    Problem("pending", name, "sealed in the spool, not uploaded yet")
                )
            else:
                report.problems.append(
                    Problem("missing", name, "segment not in the archive (all objects)")
                )
            continue
        if Kind.MANIFEST not in segment.objects:
            if seq in pending:
                report.problems.append(Problem("pending", name, "upload in progress"))
                continue
            report.problems.append(
                Problem("missing", f"{name}.{Kind.MANIFEST}", "manifest not in the archive")
            )
            for obj in segment.objects.values():
                report.problems.append(Problem("extra", obj.key, "not listed by any manifest"))
            continue
        try:
            manifest, data = read_manifest(backend, segment, progress)
        except (ValueError, BackendError) as e:
            key = segment.objects[Kind.MANIFEST].key
            report.problems.append(Problem("altered", key, f"unreadable manifest: {e}"))
            continue
        manifests[seq] = (manifest, data)
        report.segments += 1
        report.flows += int(manifest.get("flows") or 0)
        listed = {obj["key"] for obj in manifest["objects"].values()} | {manifest.get("key")}
        for obj in segment.objects.values():
            if obj.key not in listed:
                report.problems.append(Problem("extra", obj.key, f"not listed by manifest {seq}"))
        for kind in DATA_KINDS:
            entry = manifest["objects"].get(kind.name.lower())
            if entry is None:
                report.problems.append(Problem("altered", name, f"manifest lists no {kind} object"))
                continue
            stored = segment.objects.get(kind)
            if stored is None or stored.key != entry["key"]:
                report.problems.append(Problem("missing", entry["key"], "listed by its manifest"))
                continue
            try:
                fetch(backend, entry["key"], entry["sha256"], progress)
            except Altered as e:
                report.problems.append(Problem("altered", entry["key"], str(e)))
    for seq, (manifest, _data) in sorted(manifests.items()):
        name = f"{gateway}-{seq:0{SEQ_DIGITS}d}"
        prev = manifest.get("prev")
        if seq == 1:
            if prev is not None:
                report.problems.append(
                    Problem("chain", name, "the first segment names a predecessor")
                )
            continue
        if prev is None:
            report.problems.append(
                Problem("chain", name, "the chain restarts here (no predecessor hash)")
            )
            continue
        before = manifests.get(seq - 1)
        if before is None:
            continue  # already reported as missing or unreadable
        if prev.get("seq") != seq - 1 or prev.get("sha256") != sha256_hex(before[1]):
            report.problems.append(
                Problem("chain", name, f"predecessor hash does not match manifest {seq - 1}")
            )
    if local is None:
        report.notes.append(
            f"{gateway}: newest segment {last}; without the gateway's spool, removal of the "
            "newest segments cannot be detected"
        )
