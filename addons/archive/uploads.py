"""The spool's deliveries: sealed segments into the archive, audit events to the webhook.

Both run as background threads that retry with backoff and never block traffic.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from holdgate.archive import audit_events, signing
from holdgate.archive.backends import Backend, BackendError, ObjectConflict, StoredObject
from holdgate.archive.durable_files import atomic_write
from holdgate.archive.layout import (
    CONTENT_TYPES,
    DATA_KINDS,
    MANIFEST_FORMAT,
    Kind,
    canonical_json,
    object_key,
    parse_key,
    sha256_hex,
    signature_key,
)
from holdgate.archive.records import iso_time
from holdgate.archive.spool import Spool
from holdgate.config.archive_settings import ArchiveSettings, WebhookSettings

log = logging.getLogger("holdgate.archive")


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


_S3_CODE = re.compile(r"An error occurred \((\w+)\)")


def error_kind(message: str) -> str:
    """S3's error code in a failure message, else `connection` or `other`."""
    if m := _S3_CODE.search(message):
        return m.group(1)
    lowered = message.lower()
    if "connect" in lowered or "endpoint" in lowered or "timed out" in lowered:
        return "connection"
    return "other"


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
        # For health: failed attempts by error kind (S3's code), and the last success (epoch).
        self.errors_by_kind: dict[str, int] = {}
        self.last_success = 0.0
        self.signer: Ed25519PrivateKey | None = None
        if settings.signing_key is not None:
            try:
                self.signer = signing.load_or_create(settings.signing_key)
            except signing.SigningKeyError as e:
                # Archive anyway (no audit is worse than an unsigned one); verify will say so.
                log.error("archive: segments will not be signed: %s", e)

    def run(self) -> None:
        """Upload until stopped; one last pass on the way out."""
        delay = self.settings.retry_initial
        while True:
            final = self.stopping.is_set()
            try:
                self.upload_ready()
            except HandedOver:
                break
            except Exception as e:
                if not isinstance(e, BackendError):  # the store unreachable is expected; not this
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
        kind = error_kind(message)
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1
        if message != self.error:
            # Error, not warning: while uploads fail, nothing reaches the audit archive.
            log.error(
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
            self.last_success = time.time()
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
                    self._put_signature(manifest, data)
                    return
                raise BackendError(f"spool segment {segment} lost its {kind} file") from None
            if sha256_hex(blob) != obj["sha256"]:
                raise BackendError(f"spool segment {segment} changed after sealing ({kind})")
            self._put_once(obj["key"], blob, obj["sha256"], CONTENT_TYPES[kind])
        self._put_once(manifest["key"], data, sha256_hex(data), CONTENT_TYPES[Kind.MANIFEST])
        self._put_signature(manifest, data)

    def _put_signature(self, manifest: Mapping[str, Any], data: bytes) -> None:
        """The gateway's signature of the manifest, beside it (the same bytes on every retry)."""
        if self.signer is None:
            return
        signed = signing.sign(self.signer, self.gateway, int(manifest["seq"]), data)
        key = signature_key(str(manifest["key"]))
        self._put_once(key, signed, sha256_hex(signed), CONTENT_TYPES[Kind.SIGNATURE])

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
