"""The archive store as a whole: every flow masked in a directory archive, rotation by age."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from mitmproxy.test import tflow

from holdgate.archive.backends import DirectoryBackend
from holdgate.archive.layout import parse_key
from holdgate.archive.reading import verify
from holdgate.archive.records import Submission
from holdgate.archive.store import ArchiveStore
from tests.archive.canaries import (
    CANARY_BEARER,
    KUBE_GET,
    archived_files,
    assert_no_canary,
    canary_flow,
    holdgate_meta,
    read_flows,
    settings_for,
)


def test_directory_archive_holds_every_flow_masked(
    tmp_path: Path, store_factory: Callable[..., ArchiveStore]
) -> None:
    settings = settings_for(tmp_path, rotate_bytes=20_000)
    store = store_factory(settings)
    flows = [canary_flow(i) for i in range(30)]
    denied = canary_flow(100, action="deny", rule="deny-prod")
    held = canary_flow(
        101,
        action="approve",
        rule="approve-exec",
        hold={"state": "approved", "reviews": [{"reviewer": "local:ann", "approve": True}]},
    )
    errored = tflow.tflow(err=True)
    errored.metadata["holdgate"] = holdgate_meta(kube=KUBE_GET)
    websocket = tflow.twebsocketflow()
    websocket.request.headers["Authorization"] = f"Bearer {CANARY_BEARER}"
    websocket.metadata["holdgate"] = holdgate_meta(kube={**KUBE_GET, "subresource": "exec"})
    everything = [*flows, denied, held, errored, websocket]
    live_states = [f.get_state() for f in everything]
    for n, flow in enumerate(everything, 1):
        assert store.submit(Submission(flow.get_state()))
        # One batch per flow, so that rotation by size is what splits the segments.
        deadline = time.monotonic() + 10
        while store.writer is not None and store.writer.written < n:
            assert time.monotonic() < deadline, "the writer stalled"
            time.sleep(0.001)
    assert store.drain(timeout=20)
    assert [f.get_state() for f in everything] == live_states  # the live flows are untouched

    files = archived_files(settings.directory)
    for key, blob in files.items():
        assert parse_key("", key) is not None, key
        assert_no_canary(blob, key)
    segments = sorted(k for k in files if k.endswith(".mitm"))
    assert len(segments) > 1  # rotated by size
    archived = [f for key in segments for f in read_flows(files[key])]
    assert [f.id for f in archived] == [f.id for f in everything]
    by_id = {f.id: f for f in archived}
    first = by_id[flows[0].id]
    assert first.request.headers["Authorization"] == "Bearer <masked>"
    assert first.request.headers["Cookie"] == "session=<masked>; theme=<masked>"
    assert "proxyauth" not in first.metadata
    assert set(first.metadata) == {"holdgate"}
    assert first.metadata["holdgate"]["decision"]["rule"] == "allow-reads"
    assert first.metadata["holdgate"]["timings"]["duration_ms"] > 0
    assert first.comment == flows[0].comment
    assert not first.modified()  # no _backup reached the archive
    assert by_id[held.id].marked and not first.marked
    assert by_id[errored.id].error is not None
    ws = by_id[websocket.id]
    assert ws.websocket is not None
    assert [m.content for m in ws.websocket.messages] == [
        m.content
        for m in websocket.websocket.messages  # type: ignore[union-attr]
    ]

    index = [
        json.loads(line)
        for key in sorted(k for k in files if k.endswith(".jsonl") and ".audit" not in k)
        for line in files[key].splitlines()
    ]
    assert [e["id"] for e in index] == [f.id for f in everything]
    assert index[0]["agent"] == "ci-bot" and index[0]["verb"] == "get"
    assert index[0]["url"].startswith("http://kubernetes.default.svc:443/api/v1/")
    assert {e["decision"] for e in index} == {"allow", "deny", "approve"}
    assert next(e for e in index if e["id"] == held.id)["outcome"] == "approved"
    audit = [
        json.loads(line)
        for key in sorted(k for k in files if k.endswith(".audit.jsonl"))
        for line in files[key].splitlines()
    ]
    assert {e["auditID"] for e in audit} == {f.id for f in everything}
    assert {e["stage"] for e in audit if e["auditID"] == websocket.id} == {
        "ResponseStarted",
        "ResponseComplete",
    }
    report = verify(DirectoryBackend(settings.directory), settings.spool)
    assert report.ok, report.problems
    assert report.flows == len(everything)


def test_segments_close_by_age_without_more_traffic(
    tmp_path: Path, store_factory: Callable[..., ArchiveStore]
) -> None:
    settings = settings_for(tmp_path, rotate_seconds=0.2)
    store = store_factory(settings)
    store.submit(Submission(canary_flow().get_state()))
    deadline = time.monotonic() + 10
    while not list(settings.directory.rglob("*.manifest.json")):
        assert time.monotonic() < deadline, "the segment never closed by age"
        time.sleep(0.05)


def test_a_segment_the_spool_could_not_close_is_uploaded_by_a_clean_stop(tmp_path: Path) -> None:
    """The spool fails while closing a segment (a full disk), then works again: a clean stop
    seals and uploads that segment too, so a throwaway spool loses nothing answered."""
    settings = settings_for(tmp_path)
    store = ArchiveStore(settings, "gw-test")
    store.start()
    first = [canary_flow(i) for i in range(3)]
    for flow in first:
        assert store.submit(Submission(flow.get_state()))
    deadline = time.monotonic() + 10
    while store.writer is not None and store.writer.written < len(first):
        assert time.monotonic() < deadline, "the writer stalled"
        time.sleep(0.01)
    [open_segment] = settings.spool.glob("seg-*.mitm")
    blocker = open_segment.with_name(open_segment.name.replace(".mitm", ".closed.json"))
    blocker.mkdir()  # closed.json cannot be written: the segment stays open
    try:
        store.rotate()
        assert store.writer is not None and not store.writer.healthy
    finally:
        blocker.rmdir()  # the disk has room again
    later = [canary_flow(i) for i in range(10, 13)]
    for flow in later:
        assert store.submit(Submission(flow.get_state()))
    store.stop()
    archived = [
        f.id
        for path in sorted(settings.directory.rglob("*.mitm"))
        for f in read_flows(path.read_bytes())
    ]
    assert sorted(archived) == sorted(f.id for f in first + later)
    assert not list(settings.spool.glob("seg-*"))
    assert verify(DirectoryBackend(settings.directory), settings.spool).ok
