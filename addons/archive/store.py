"""The audit archive of one gateway: spool writer, uploader and webhook, run together.

Flows arrive as copies of their mitmproxy state. A writer sanitizes them (credentials masked,
metadata other than holdgate's dropped; `records`), appends them to a segment in the local
spool (mitmproxy's native flow format, an index line per flow, Kubernetes audit events; `spool`)
and fsyncs each batch. Segments rotate by size and age. An uploader
thread seals each closed segment with a manifest that holds the SHA-256 of its objects and of the
previous segment's manifest (a hash chain), and puts the objects into S3 (or a local archive
directory) under idempotent keys (`uploads`, `backends`, `layout`). A segment leaves the spool only once every object of it is stored, so an
unreachable S3 delays, never drops.

The gateway runs all of this in a child process (`writer`, fed by `addon`), so that none of it
competes with mitmproxy's event loop; `ArchiveStore` also runs in-process (tests, tools). No
mitmproxy hooks here. Reading the archive back (`scan`, `verify`, `fetch`) is in `reading`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from holdgate.archive.backends import Backend, make_backend
from holdgate.archive.records import RecordOptions, Submission
from holdgate.archive.spool import MAX_PENDING, Spool, SpoolWriter
from holdgate.archive.uploads import Handover, Uploader, WebhookSender
from holdgate.config.archive_settings import ArchiveSettings

log = logging.getLogger("holdgate.archive")


class _Control:
    def __init__(self, action: str) -> None:
        self.action = action
        self.done = threading.Event()


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
            # Error: on a throwaway volume (emptyDir, tmpfs) these flows go with it.
            log.error(
                "archive: %d sealed segments could not be uploaded before the stop (%s); they "
                "stay in the spool %s for the next start: keep that volume",
                left,
                self.uploader.error or "stop timeout",
                self.spool.root,
            )
        self.spool.unlock()
        self.writer = self.thread = self.uploader = self.webhook = None

    def health(self) -> dict[str, Any]:
        """The spool's backlog and the uploads' record, for metrics (cheap enough each second)."""
        backlog = self.spool.backlog()
        uploader = self.uploader
        return {
            "backlog_segments": len(backlog),
            "backlog_bytes": sum(size for _, _, size in backlog),
            "oldest_waiting_since": min((at for _, at, _ in backlog if at), default=0.0),
            "upload_errors": dict(uploader.errors_by_kind) if uploader else {},
            "last_upload": uploader.last_success if uploader else 0.0,
        }

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
