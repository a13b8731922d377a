"""The spool: a torn segment repaired, a failing spool reported, a removal cut short finished."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from holdgate.archive.backends import DirectoryBackend
from holdgate.archive.layout import Kind
from holdgate.archive.reading import verify
from holdgate.archive.records import RecordOptions, Submission, encode
from holdgate.archive.spool import Spool, SpoolWriter
from holdgate.archive.store import ArchiveStore
from holdgate.archive.uploads import Uploader
from tests.archive.canaries import archived_files, canary_flow, read_flows, settings_for


def test_a_torn_segment_is_repaired_on_start(
    tmp_path: Path, store_factory: Callable[..., ArchiveStore]
) -> None:
    settings = settings_for(tmp_path)
    settings.spool.mkdir(parents=True)
    options = RecordOptions(gateway="gw-test")
    flows = [canary_flow(i) for i in range(4)]
    records = [encode(Submission(f.get_state()), options) for f in flows]
    # What a crash mid-write leaves: three whole records, half of the fourth, no index lines.
    torn = b"".join(r.flow for r in records[:3]) + records[3].flow[: len(records[3].flow) // 2]
    (settings.spool / "seg-0000000007.mitm").write_bytes(torn)
    (settings.spool / "seg-0000000007.jsonl").write_bytes(records[0].index)
    store = store_factory(settings)
    assert store.drain(timeout=10)
    files = archived_files(settings.directory)
    (mitm,) = (blob for key, blob in files.items() if key.endswith(".mitm"))
    assert [f.id for f in read_flows(mitm)] == [f.id for f in flows[:3]]
    (index,) = (b for k, b in files.items() if k.endswith(".jsonl") and ".audit" not in k)
    assert [json.loads(line)["id"] for line in index.splitlines()] == [f.id for f in flows[:3]]
    assert verify(DirectoryBackend(settings.directory), settings.spool).ok


def test_an_unwritable_spool_is_reported_then_recovers(
    tmp_path: Path, store_factory: Callable[..., ArchiveStore]
) -> None:
    settings = settings_for(tmp_path)
    store = store_factory(settings)
    assert store.can_record()
    # The spool directory disappears under the gateway (a failed disk, an unmounted volume).
    moved = tmp_path / "spool-moved"
    settings.spool.rename(moved)
    settings.spool.write_text("not a directory")
    flow = canary_flow()
    store.submit(Submission(flow.get_state()))
    deadline = time.monotonic() + 10
    while store.can_record():
        assert time.monotonic() < deadline, "a failing spool was never reported"
        time.sleep(0.02)
    assert "cannot write the spool" in store.last_error
    settings.spool.unlink()
    moved.rename(settings.spool)
    deadline = time.monotonic() + 15
    while not store.can_record():
        assert time.monotonic() < deadline, "the spool never recovered"
        time.sleep(0.05)
    assert store.drain(timeout=10)
    (mitm,) = settings.directory.rglob("*.mitm")
    assert [f.id for f in read_flows(mitm.read_bytes())] == [flow.id]


def test_a_removal_cut_short_after_the_upload_is_finished(
    tmp_path: Path, store_factory: Callable[..., ArchiveStore]
) -> None:
    settings = settings_for(tmp_path)
    settings.spool.mkdir(parents=True)
    spool = Spool(settings.spool)
    backend = DirectoryBackend(settings.directory)
    flow = canary_flow()
    writer = SpoolWriter(
        spool, settings, RecordOptions(gateway="gw-test"), lambda: None, lambda *_: None
    )
    writer.write([Submission(flow.get_state())], rotate=True)
    (segment,) = spool.closed()
    uploader = Uploader(spool, backend, settings, "gw-test")
    manifest, data = uploader.seal(segment)
    uploader.store(segment, manifest, data)
    spool.path(segment, Kind.FLOWS).unlink()  # a writer killed inside Spool.remove
    store = store_factory(settings)
    assert store.drain(timeout=10)
    assert not spool.segments()
    (mitm,) = settings.directory.rglob("*.mitm")
    assert [f.id for f in read_flows(mitm.read_bytes())] == [flow.id]
    assert verify(backend, settings.spool).ok
