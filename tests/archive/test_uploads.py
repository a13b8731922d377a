"""Uploads: the manifest chain, the handover of the spool at stop, the audit webhook."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from holdgate.archive.backends import DirectoryBackend
from holdgate.archive.reading import verify
from holdgate.archive.records import Submission
from holdgate.archive.store import ArchiveStore
from tests.archive.canaries import (
    archived_paths,
    assert_no_canary,
    canary_flow,
    read_flows,
    settings_for,
)


def test_chain_continues_when_the_spool_is_lost(
    tmp_path: Path, store_factory: Callable[..., ArchiveStore]
) -> None:
    settings = settings_for(tmp_path)
    first = store_factory(settings)
    first.submit(Submission(canary_flow(1).get_state()))
    assert first.drain(timeout=10)
    first.stop()
    shutil.rmtree(settings.spool)
    second = store_factory(settings)
    second.submit(Submission(canary_flow(2).get_state()))
    assert second.drain(timeout=10)
    manifests = [
        json.loads(p.read_bytes()) for p in archived_paths(settings.directory, ".manifest.json")
    ]
    assert [m["seq"] for m in manifests] == [1, 2]
    first_bytes = archived_paths(settings.directory, ".manifest.json")[0].read_bytes()
    assert manifests[1]["prev"] == {"seq": 1, "sha256": hashlib.sha256(first_bytes).hexdigest()}
    assert verify(DirectoryBackend(settings.directory), settings.spool).ok


class _HungBackend(DirectoryBackend):
    """An archive directory whose puts hang until released, as an S3 that stopped answering."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.hung = threading.Event()
        self.release = threading.Event()

    def put(self, key: str, data: bytes, sha256: str, content_type: str) -> None:
        self.hung.set()
        self.release.wait(10)
        super().put(key, data, sha256, content_type)


def _spool_files(spool: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(spool.iterdir()) if p.is_file()}


def test_a_stop_past_its_deadline_leaves_the_spool_to_the_next_writer(
    tmp_path: Path, store_factory: Callable[..., ArchiveStore]
) -> None:
    settings = settings_for(tmp_path)
    backend = _HungBackend(settings.directory)
    store = ArchiveStore(settings, "gw-test", backend=backend)
    store.start()
    flow = canary_flow()
    store.submit(Submission(flow.get_state()))
    assert store.rotate(timeout=10)
    assert backend.hung.wait(10)
    uploader = store.uploader
    assert uploader is not None
    store.stop(timeout=0.2)  # the spool is free for the next writer now
    left = _spool_files(settings.spool)
    backend.release.set()  # the put under way returns after the spool was let go
    uploader.join(10)
    assert not uploader.is_alive()
    assert _spool_files(settings.spool) == left
    successor = store_factory(settings)
    assert successor.drain(timeout=10)
    (mitm,) = settings.directory.rglob("*.mitm")
    assert [f.id for f in read_flows(mitm.read_bytes())] == [flow.id]
    assert verify(DirectoryBackend(settings.directory), settings.spool).ok


class _Webhook:
    """An audit webhook on loopback that refuses its first `failures` POSTs."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.changed = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with hook.changed:
                    hook.attempts += 1
                    ok = hook.attempts > hook.failures
                    if ok:
                        hook.bodies.append(json.loads(body))
                    hook.changed.notify_all()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/k8s-audit"

    def wait_for(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """The events received once there are `count` of them."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while sum(len(b["items"]) for b in self.bodies) < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"webhook got {self.bodies!r}"
                self.changed.wait(remaining)
        return [item for body in self.bodies for item in body["items"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_audit_events_reach_the_webhook_despite_failures(
    tmp_path: Path, store_factory: Callable[..., ArchiveStore]
) -> None:
    hook = _Webhook(failures=2)
    try:
        settings = settings_for(tmp_path, audit_webhook=hook.url)
        store = store_factory(settings)
        flows = [canary_flow(i) for i in range(5)]
        plain = canary_flow(99, kube=None)  # not a kubernetes target: no audit event
        for flow in [*flows, plain]:
            store.submit(Submission(flow.get_state()))
        assert store.drain(timeout=10)
        events = hook.wait_for(5, timeout=15)
    finally:
        hook.close()
    assert hook.attempts >= 3
    assert [e["auditID"] for e in events] == [f.id for f in flows]
    assert all(
        b["kind"] == "EventList" and b["apiVersion"] == "audit.k8s.io/v1" for b in hook.bodies
    )
    assert events[0]["annotations"]["holdgate.dev/rule"] == "allow-reads"
    assert_no_canary(json.dumps(events).encode(), "webhook")
    deadline = time.monotonic() + 5
    while list((settings.spool / "outbox").glob("*")):
        assert time.monotonic() < deadline, "delivered events stayed in the outbox"
        time.sleep(0.05)
