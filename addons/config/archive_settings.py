"""The `archive:` section of the gateway configuration: schema, parsing, validation.

Also which requests count as privileged for `require_for`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MIB = 1024 * 1024
_READ_VERBS = frozenset({"get", "list", "watch"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PRIVILEGED_SUBRESOURCES = frozenset(
    {"exec", "attach", "portforward", "proxy", "ephemeralcontainers"}
)


class RequireFor(StrEnum):
    """Which requests the gateway refuses while the spool cannot be written."""

    PRIVILEGED = "privileged"
    ALL = "all"
    NONE = "none"


class Durability(StrEnum):
    """Which responses wait until their record is fsynced (`fsync_before_response`)."""

    ALL = "all"  # `true`: every response
    PRIVILEGED = "privileged"  # writes, exec and other power, held and denied requests
    NONE = "none"  # `false`: released once the record is in the writer's pipe


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
    # The Ed25519 key that signs each segment's manifest (archive/signing.py); None: unsigned
    # (only where settings are built by hand, e.g. in tests; from_dict always sets it).
    signing_key: Path | None = None
    capture_bytes: int = 1 * MIB
    fsync_before_response: Durability = Durability.PRIVILEGED
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
        fsync = data.get("fsync_before_response", "privileged")
        if fsync not in (True, False, "privileged"):
            raise ArchiveSettingsError(
                ("fsync_before_response",), "must be true, false or privileged"
            )
        return cls(
            directory=directory,
            signing_key=_path(data, "signing_key", base_dir, state_dir / "archive-signing-key.pem"),
            spool=spool,
            s3=s3,
            rotate_bytes=_number(data, "rotate_bytes", 4 * MIB, integer=True, minimum=1),
            rotate_seconds=_number(data, "rotate_seconds", 30.0, minimum=0.01),
            require_for=RequireFor(require),
            audit_webhook=webhook,
            capture_bytes=_number(data, "capture_bytes", MIB, integer=True, minimum=0),
            fsync_before_response=Durability.ALL
            if fsync is True
            else Durability.NONE
            if fsync is False
            else Durability.PRIVILEGED,
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
        "signing_key": _PATH_TEXT,
        "fsync_before_response": {"oneOf": [{"type": "boolean"}, {"const": "privileged"}]},
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


def waits_for_fsync(durability: Durability, metadata: Mapping[str, Any]) -> bool:
    """Whether a response waits until its record is fsynced, from the flow's holdgate metadata.

    Under `privileged`: every flow but an allowed read (held, denied, refused and unclassified
    flows wait too).
    """
    if durability is not Durability.PRIVILEGED:
        return durability is Durability.ALL
    decision = metadata.get("decision")
    request = metadata.get("request")
    if not isinstance(decision, Mapping) or not isinstance(request, Mapping):
        return True
    action = str(decision.get("action", ""))
    return action != "allow" or "hold" in metadata or is_privileged(request, action)


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
