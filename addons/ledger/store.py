"""The ledger of what agents created, so leftovers can be reported and reaped. No mitmproxy here.

Kept in SQLite beside the local archive (`<state>/ledger.sqlite`), or with replicas in the
shared state store (ledger/shared.py); every entry is also on its flow's metadata, so it
reaches the archive and survives the gateway.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from holdgate.kube.protobuf import MAGIC, ProtobufError, decode_envelope, object_meta
from holdgate.kube.request_info import KubeRequest

LABEL_MANAGED = "holdgate.dev/managed"
ANNOTATION_AGENT = "holdgate.dev/agent"
ANNOTATION_RUN = "holdgate.dev/run-id"
ANNOTATION_EXPIRES = "holdgate.dev/expires"
# Every label and annotation under this prefix is the gateway's: agents' own are dropped.
OWNED_PREFIX = "holdgate.dev/"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS created (
    uid TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    agent TEXT NOT NULL,
    run_id TEXT NOT NULL,
    target TEXT NOT NULL,
    api_group TEXT NOT NULL,
    api_version TEXT NOT NULL,
    kind TEXT NOT NULL,
    resource TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    expires_at REAL,
    deleted_at REAL,
    deleted_by TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS created_run ON created (run_id);
CREATE INDEX IF NOT EXISTS created_agent ON created (agent);
CREATE INDEX IF NOT EXISTS created_name ON created (name, namespace);
"""


def ledger_path(state_dir: Path) -> Path:
    """Where the ledger is kept (beside the local archive)."""
    return state_dir / "ledger.sqlite"


@dataclass(frozen=True, slots=True)
class Created:
    """One object an agent created."""

    uid: str
    created_at: float
    agent: str
    run_id: str
    target: str
    api_group: str
    api_version: str
    kind: str
    resource: str
    namespace: str
    name: str
    expires_at: float | None = None
    deleted_at: float | None = None
    deleted_by: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form for flow metadata and `holdgate resources --json`."""
        return asdict(self)

    @property
    def path(self) -> str:
        """The object's API path."""
        prefix = (
            f"/apis/{self.api_group}/{self.api_version}"
            if self.api_group
            else f"/api/{self.api_version}"
        )
        where = f"/namespaces/{quote(self.namespace, safe='')}" if self.namespace else ""
        return f"{prefix}{where}/{self.resource}/{quote(self.name, safe='')}"

    def expired(self, now: float) -> bool:
        """Whether its TTL has run out."""
        return self.expires_at is not None and now >= self.expires_at

    @property
    def where(self) -> str:
        """kind/name -n namespace, for reports."""
        return f"{self.resource}/{self.name}" + (f" -n {self.namespace}" if self.namespace else "")

    @property
    def reap_rank(self) -> int:
        """Namespaces go last: what they hold is deleted (and recorded) one by one first."""
        return 1 if not self.namespace else 0


@dataclass(frozen=True, slots=True)
class Filter:
    """Which ledger entries a report or a reap covers."""

    agent: str | None = None
    run_id: str | None = None
    target: str | None = None
    expired: bool = False
    older_than: float | None = None  # seconds
    include_deleted: bool = False


def object_namespace(kube: KubeRequest) -> str:
    """The namespace an object lives in (the apiserver puts a namespace "in" itself; it is not)."""
    return "" if kube.resource == "namespaces" and not kube.api_group else kube.namespace


def _response_object(body: bytes) -> tuple[str, dict[str, Any]] | None:
    """(kind, metadata) of an apiserver answer, JSON or protobuf."""
    if body.startswith(MAGIC):
        try:
            envelope = decode_envelope(body)
            return envelope.kind, object_meta(envelope)
        except ProtobufError:
            return None
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
        return None
    return str(obj.get("kind", "")), obj["metadata"]


def created_from_response(
    kube: KubeRequest,
    target: str,
    agent: str,
    run_id: str,
    body: bytes,
    ttl: float | None,
    now: float,
) -> Created | None:
    """The ledger entry for a successful create, from the apiserver's answer (JSON or protobuf)."""
    answer = _response_object(body)
    if answer is None:
        return None
    kind, meta = answer
    uid, name = meta.get("uid"), meta.get("name")
    if not isinstance(uid, str) or not isinstance(name, str) or not uid or not name:
        return None
    return Created(
        uid=uid,
        created_at=now,
        agent=agent,
        run_id=run_id,
        target=target,
        api_group=kube.api_group,
        api_version=kube.api_version,
        kind=kind,
        resource=kube.resource,
        namespace=str(meta.get("namespace", "") or object_namespace(kube)),
        name=name,
        expires_at=now + ttl if ttl else None,
    )


def ownership_metadata(
    agent: str, run_id: str, expires_at: float | None
) -> dict[str, dict[str, str]]:
    """The labels and annotations the gateway puts on what an agent creates."""
    annotations = {ANNOTATION_AGENT: agent}
    if run_id:
        annotations[ANNOTATION_RUN] = run_id
    if expires_at is not None:
        annotations[ANNOTATION_EXPIRES] = dt.datetime.fromtimestamp(expires_at, dt.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
    return {"labels": {LABEL_MANAGED: "true"}, "annotations": annotations}


class ForeignMetadata(ValueError):
    """A body sets the gateway's metadata in a way the gateway cannot take out."""


def _owned(key: object) -> bool:
    return isinstance(key, str) and key.lower().startswith(OWNED_PREFIX)


def _drop_owned(meta: Any) -> list[str]:
    """Remove holdgate.dev/* labels and annotations from an object's metadata; their keys."""
    dropped: list[str] = []
    if not isinstance(meta, dict):
        return dropped
    for section in ("labels", "annotations"):
        values = meta.get(section)
        if isinstance(values, dict):
            for key in [k for k in values if _owned(k)]:
                del values[key]
                dropped.append(key)
    return dropped


def _drop_owned_in_document(document: Any) -> list[str]:
    if not isinstance(document, dict):
        return []
    dropped = _drop_owned(document.get("metadata"))
    # Workload templates (a Deployment's pods) carry metadata of their own.
    spec = document.get("spec")
    while isinstance(spec, dict):
        template = spec.get("template") or spec.get("jobTemplate")
        if not isinstance(template, dict):
            break
        dropped += _drop_owned(template.get("metadata"))
        spec = template.get("spec")
    return dropped


def _drop_owned_in_json_patch(operations: list[Any]) -> tuple[list[Any], list[str]]:
    kept: list[Any] = []
    dropped: list[str] = []
    for op in operations:
        if not isinstance(op, dict):
            raise ForeignMetadata("a JSON patch operation is not an object")
        paths = [p for p in (op.get("path"), op.get("from")) if isinstance(p, str)]
        named = [p for p in paths if "holdgate.dev~1" in p.lower()]
        if named:
            dropped += named
            continue
        value = op.get("value")
        path = op.get("path", "")
        if path.endswith(("/labels", "/annotations")) and isinstance(value, dict):
            for key in [k for k in value if _owned(k)]:
                del value[key]
                dropped.append(key)
        elif path.endswith("/metadata"):
            dropped += _drop_owned(value)
        elif path in ("", "/"):
            dropped += _drop_owned_in_document(value)
        kept.append(op)
    return kept, dropped


def strip_owned_metadata(body: bytes, media_type: str) -> tuple[bytes, list[str]]:
    """The body without the holdgate.dev/* labels and annotations an agent set, and their keys.

    JSON and YAML bodies (objects, merge and strategic-merge patches, apply configurations,
    JSON patches) are rewritten as JSON when they name any; protobuf bodies cannot be, so
    one that names the prefix raises ForeignMetadata, as does a body that cannot be read.
    """
    lowered = body.lower()
    if media_type == "application/vnd.kubernetes.protobuf":
        if OWNED_PREFIX.encode() in lowered:
            raise ForeignMetadata("a protobuf body sets holdgate.dev/ metadata")
        return body, []
    if b"holdgate" not in lowered and b"\\u" not in lowered and b"\\x" not in lowered:
        return body, []  # cannot name the prefix, even escaped
    try:
        document = yaml.safe_load(body) if media_type.endswith("yaml") else json.loads(body)
    except (ValueError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ForeignMetadata(f"the body cannot be read: {e}") from e
    if isinstance(document, list):
        document, dropped = _drop_owned_in_json_patch(document)
    else:
        dropped = _drop_owned_in_document(document)
    if not dropped:
        return body, []
    return json.dumps(document, separators=(",", ":")).encode(), dropped


def label_body(body: bytes, metadata: dict[str, dict[str, str]]) -> bytes | None:
    """The JSON create body with the ownership labels and annotations merged in, or None."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        return None
    for key, values in metadata.items():
        existing = meta.get(key) or {}
        if not isinstance(existing, dict):
            return None
        meta[key] = {**existing, **values}
    return json.dumps(obj, separators=(",", ":")).encode()


class Ledger:
    """SQLite-backed ledger of created objects."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def record(self, entry: Created) -> None:
        """Add an object (a re-create with the same uid is ignored)."""
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT OR IGNORE INTO created VALUES "
                "(:uid, :created_at, :agent, :run_id, :target, :api_group, :api_version, :kind, "
                ":resource, :namespace, :name, :expires_at, :deleted_at, :deleted_by)",
                entry.as_dict(),
            )

    def mark_deleted(self, uid: str, by: str, now: float | None = None) -> None:
        """Note that an object is gone (deleted by someone, or found missing)."""
        with closing(self._connect()) as db, db:
            db.execute(
                "UPDATE created SET deleted_at = ?, deleted_by = ? WHERE uid = ? AND deleted_at IS NULL",
                (now or time.time(), by, uid),
            )

    def mark_deleted_object(
        self, target: str, kube: KubeRequest, by: str, now: float | None = None
    ) -> list[Created]:
        """Note that the object a DELETE named is gone; returns the entries it closed."""
        with closing(self._connect()) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT * FROM created WHERE name = ? AND namespace = ? AND resource = ? "
                "AND api_group = ? AND target = ? AND deleted_at IS NULL",
                (kube.name, object_namespace(kube), kube.resource, kube.api_group, target),
            ).fetchall()
        closed = [Created(**dict(row)) for row in rows]
        for entry in closed:
            self.mark_deleted(entry.uid, by, now)
        return closed

    def find(self, where: Filter, now: float | None = None) -> list[Created]:
        """Entries matching a filter, oldest first."""
        now = now or time.time()
        return [e for e in self._all() if matches(e, where, now)]

    def _all(self) -> Iterator[Created]:
        with closing(self._connect()) as db:
            db.row_factory = sqlite3.Row
            for row in db.execute("SELECT * FROM created ORDER BY created_at"):
                yield Created(**dict(row))


def matches(entry: Created, where: Filter, now: float) -> bool:
    """Whether a ledger entry passes a filter."""
    if entry.deleted_at is not None and not where.include_deleted:
        return False
    if where.agent is not None and entry.agent != where.agent:
        return False
    if where.run_id is not None and entry.run_id != where.run_id:
        return False
    if where.target is not None and entry.target != where.target:
        return False
    if where.expired and not entry.expired(now):
        return False
    return where.older_than is None or now - entry.created_at >= where.older_than
