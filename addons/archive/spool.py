"""The local spool: segments being written (fsynced per batch), closed, waiting for upload.

One gateway per spool (a lock); a segment a crash left open is repaired on the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from holdgate.archive.durable_files import atomic_write, fsync_dir, write_all
from holdgate.archive.flow_format import split_records
from holdgate.archive.layout import DATA_KINDS, SEQ_DIGITS, Kind, canonical_json
from holdgate.archive.records import (
    RecordOptions,
    Submission,
    describe,
    encode,
    fallback_record,
)
from holdgate.config.archive_settings import ArchiveSettings

log = logging.getLogger("holdgate.archive")


# Records waiting in memory while the spool cannot be written; beyond this, can_record() is False.
MAX_PENDING = 10_000


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
        for number, suffix, _entry in self._segment_files():
            found.setdefault(number, set()).add(suffix)
        return found

    def backlog(self) -> list[tuple[str, float, int]]:
        """Closed segments not yet uploaded, oldest first: (seg-N, closed at, bytes)."""
        files: dict[int, list[tuple[str, os.DirEntry[str]]]] = {}
        for number, suffix, entry in self._segment_files():
            files.setdefault(number, []).append((suffix, entry))
        out = []
        for number in sorted(files):
            closed = [entry for suffix, entry in files[number] if suffix == "closed.json"]
            if not closed:
                continue
            closed_at, size = 0.0, 0
            for _suffix, entry in files[number]:
                with contextlib.suppress(OSError):
                    size += entry.stat().st_size
            with contextlib.suppress(OSError):
                closed_at = closed[0].stat().st_mtime
            out.append((closed[0].name.removesuffix(".closed.json"), closed_at, size))
        return out

    def _segment_files(self) -> Iterator[tuple[int, str, os.DirEntry[str]]]:
        """(segment, suffix, entry) of every segment file."""
        try:
            entries = list(os.scandir(self.root))
        except (FileNotFoundError, NotADirectoryError):
            return  # no spool (yet, or its volume is gone)
        for entry in entries:
            name = entry.name
            if not name.startswith("seg-"):
                continue
            number, _, suffix = name[4:].partition(".")
            if number.isdigit() and suffix:
                yield int(number), suffix, entry

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
        # Segments left unclosed when the spool failed (a full disk): closed once it works.
        self.torn: set[int] = set()

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
        """Close the open segment and any the spool's failures left; report what could not be
        written or closed."""
        self.write((), rotate=True)
        self.repair_torn()
        if self.torn:
            log.error(
                "archive: spool segments %s could not be closed (%s): they stay in %s until a "
                "start finds them; on a throwaway volume their flows are lost",
                ", ".join(map(str, sorted(self.torn))),
                self.error,
                self.spool.root,
            )
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
                    sub.encoded = fallback_record(sub.state, self.options.gateway)
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
                    write_all(segment.fds[kind], data)
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
        if self.torn:
            self.repair_torn()

    def repair_torn(self) -> None:
        """Close the segments the spool's failures left open, as a start would (Spool.recover),
        so that they are uploaded now rather than after a restart."""
        for number in sorted(self.torn):
            try:
                ids = self.spool.recover(
                    number, self.options.gateway, self.settings.audit_webhook is not None
                )
            except OSError as e:
                self.error = f"cannot close spool segment {number}: {e}"
                return
            self.torn.discard(number)
            log.warning(
                "archive: spool segment %d, left open when the spool failed, closed with %d flows",
                number,
                len(ids),
            )
            if ids:
                self.on_close()

    def _failed(self, error: OSError, batch: list[Submission]) -> None:
        if self.healthy:
            log.error("archive: cannot write the spool %s: %s", self.spool.root, error)
        self.healthy = False
        self.error = f"cannot write the spool {self.spool.root}: {error}"
        segment, self._segment = self._segment, None
        if segment is not None:
            # Leave the torn segment behind: repaired once the spool works again.
            self.torn.add(segment.number)
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
            self.torn.add(segment.number)
            return
        self.on_close()
        if self.torn:
            self.repair_torn()
