"""The archive addon's hooks with a real writer process: durability, streams, WebSockets, errors."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pickle
import signal
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy import io as mitmio
from mitmproxy.io import tnetstring
from mitmproxy.test import tflow

from holdgate.archive.addon import Archive, ConnectionStates, WriterProcess, snapshot
from holdgate.archive.backends import DirectoryBackend
from holdgate.archive.flow_format import dumps, split_records
from holdgate.archive.reading import verify
from holdgate.archive.spool import Spool
from holdgate.archive.store import ArchiveStore
from holdgate.archive.writer import frame
from holdgate.config.archive_settings import ArchiveSettings
from tests.archive.canaries import (
    KUBE_GET,
    assert_no_canary,
    canary_flow,
    holdgate_meta,
    read_flows,
    settings_for,
)


@pytest.fixture
async def archive_factory() -> AsyncIterator[Callable[..., Archive]]:
    """Archives with a running writer process; all are stopped at the end."""
    started: list[Archive] = []

    def make(settings: ArchiveSettings, gateway: str = "gw-test") -> Archive:
        archive = Archive()
        archive.configure_settings(settings, gateway)
        started.append(archive)
        return archive

    yield make
    for archive in started:
        archive.done()


async def drain(archive: Archive) -> None:
    """Close the open segment and wait until it is archived."""
    assert archive.writer is not None
    assert await archive.writer.control("drain", 20)


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    """Poll a condition with a deadline, letting the event loop run."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def archived(settings: ArchiveSettings) -> list[http.HTTPFlow]:
    """Every flow in the archive directory, in segment order."""
    flows = []
    for path in sorted(settings.directory.rglob("*.mitm")):
        flows += read_flows(path.read_bytes())
    return flows


def spooled_ids(settings: ArchiveSettings) -> list[str]:
    """Flow ids in the spool's segments (written, not yet archived)."""
    ids = []
    for path in sorted(settings.spool.glob("seg-*.mitm")):
        ids += [str(state["id"]) for _raw, state in split_records(path.read_bytes())]
    return ids


async def test_response_waits_until_the_flow_is_durable(
    tmp_path: Path, archive_factory: Callable[..., Archive]
) -> None:
    settings = settings_for(tmp_path, fsync_before_response=True)
    archive = archive_factory(settings)
    flow = canary_flow()
    before = flow.get_state()
    await archive.response(flow)
    assert spooled_ids(settings) == [flow.id]  # fsynced before the response went on
    assert flow.get_state() == before  # the live flow is untouched
    assert "proxyauth" in flow.metadata
    await drain(archive)
    (stored,) = archived(settings)
    assert stored.request.headers["Authorization"] == "Bearer <masked>"
    assert "proxyauth" not in stored.metadata
    for path in settings.directory.rglob("*"):
        if path.is_file():
            assert_no_canary(path.read_bytes(), str(path))


async def test_streamed_bodies_are_kept_bounded_after_the_masking_modifier(
    tmp_path: Path, archive_factory: Callable[..., Archive]
) -> None:
    settings = settings_for(tmp_path, capture_bytes=64)
    archive = archive_factory(settings)

    def mask(data: bytes) -> bytes:
        return data.replace(b"secret", b"******")

    def split_lines(data: bytes) -> Iterable[bytes]:
        yield from data.splitlines(keepends=True)

    cases: list[tuple[Any, bytes]] = [
        (mask, b"******"),
        (split_lines, b"secret"),
        (True, b"secret"),
    ]
    flows = []
    for modifier, _ in cases:
        flow = canary_flow(kube={**KUBE_GET, "verb": "watch", "name": ""})
        response = flow.response
        assert response is not None
        response.stream = modifier
        archive.responseheaders(flow)
        stream = response.stream
        assert callable(stream)
        sent = []
        for i in range(10):
            out = stream(b'{"type":"ADDED","object":{"secret":%d}}\n' % i)
            sent.append(out if isinstance(out, bytes) else b"".join(out))
        end = stream(b"")
        sent.append(end if isinstance(end, bytes) else b"".join(end))
        response.data.content = None  # a streamed body is not kept by mitmproxy
        if modifier is mask:
            assert b"secret" not in b"".join(sent)  # the gateway's modifier still runs
        await archive.response(flow)
        flows.append(flow)
    await drain(archive)
    stored = {f.id: f for f in archived(settings)}
    for flow, (_modifier, visible) in zip(flows, cases, strict=True):
        stored_response = stored[flow.id].response
        assert stored_response is not None
        content = stored_response.raw_content or b""
        assert content.startswith(b'{"type":"ADDED","object":{"' + visible)
        assert b"[holdgate: stream truncated in the archive after 64 of" in content
        notes = stored[flow.id].metadata["holdgate"]["archive"]["stream"]
        assert notes["captured_bytes"] == 64 and notes["truncated"]


async def test_websocket_error_and_refused_connect_are_recorded_once(
    tmp_path: Path, archive_factory: Callable[..., Archive]
) -> None:
    settings = settings_for(tmp_path, capture_bytes=25)
    archive = archive_factory(settings)
    websocket = tflow.twebsocketflow()
    websocket.metadata["holdgate"] = holdgate_meta(kube={**KUBE_GET, "subresource": "exec"})
    await archive.response(websocket)  # the handshake: recorded at websocket_end instead
    archive.websocket_end(websocket)
    errored = tflow.tflow(err=True)
    archive.error(errored)
    archive.error(errored)
    refused = tflow.tflow(req=tflow.treq(method=b"CONNECT", path=b"", host="evil.example"))
    refused.request.headers["Proxy-Authorization"] = "Basic Q0FOQVJZOnB3"
    refused.response = http.Response.make(407, b"proxy authentication required")
    archive.http_connect_error(refused)
    answered = canary_flow()
    await archive.response(answered)
    archive.error(answered)  # e.g. the client went away after the response
    await drain(archive)
    stored = archived(settings)
    assert Counter(f.id for f in stored) == Counter(
        {websocket.id: 1, errored.id: 1, refused.id: 1, answered.id: 1}
    )
    by_id = {f.id: f for f in stored}
    messages = by_id[websocket.id].websocket.messages  # type: ignore[union-attr]
    assert [m.content for m in messages[:-1]] == [b"hello binary", b"hello text"]
    assert messages[-1].injected and b"1 further WebSocket messages" in messages[-1].content
    assert by_id[refused.id].request.headers["Proxy-Authorization"] == "Basic <masked>"
    assert by_id[errored.id].error is not None


async def test_refusal_when_the_spool_cannot_be_written(
    tmp_path: Path, archive_factory: Callable[..., Archive]
) -> None:
    settings = settings_for(tmp_path)
    archive = archive_factory(settings)
    read = {"kubernetes": {"verb": "get", "resource": "pods"}}
    write = {"kubernetes": {"verb": "delete", "resource": "pods"}}
    assert archive.can_record()
    assert archive.refusal_reason(write, "allow") is None
    moved = tmp_path / "spool-moved"
    settings.spool.rename(moved)
    settings.spool.write_text("a failed volume")
    try:
        await archive.response(canary_flow())
        await eventually(lambda: not archive.can_record(), "the writer to report the failure")
        reason = archive.refusal_reason(write, "allow")
        assert reason is not None and "cannot write the spool" in reason
        assert "archive.require_for: privileged" in reason
        assert archive.refusal_reason(read, "allow") is None
        assert archive.refusal_reason(read, "approve") is not None
        for require_for, refused in (("all", True), ("none", False)):
            archive.settings = settings_for(tmp_path, require_for=require_for)
            assert (archive.refusal_reason(read, "allow") is not None) is refused
        archive.settings = settings
    finally:
        settings.spool.unlink()
        moved.rename(settings.spool)
    await eventually(archive.can_record, "the spool to recover")
    await drain(archive)
    assert len(archived(settings)) == 1


async def test_request_bodies_as_the_gateway_masked_them(
    tmp_path: Path, archive_factory: Callable[..., Archive]
) -> None:
    settings = settings_for(tmp_path)
    archive = archive_factory(settings)
    archive.masked_by_gateway = True
    secret = {**KUBE_GET, "verb": "create", "resource": "secrets", "name": ""}
    noted, unnoted = canary_flow(1, kube=secret), canary_flow(2, kube=secret)
    for flow in (noted, unnoted):
        flow.request.content = b'{"kind":"Secret","stringData":{"k":"CANARY-body-3"}}'
        assert flow.response is not None
        flow.response.content = b'{"kind":"Secret","data":{"k":"hmac:0123456789abcdef"}}'
    archive.note_request_body(
        noted, b'{"kind":"Secret","stringData":{"k":"***"}}', "application/json"
    )
    await archive.response(noted)
    await archive.response(unnoted)
    await drain(archive)
    stored = {f.id: f for f in archived(settings)}
    assert stored[noted.id].request.content == b'{"kind":"Secret","stringData":{"k":"***"}}'
    assert b"withheld" in (stored[unnoted.id].request.content or b"")
    # Responses are the gateway's business then: its keyed-hash masks stay as they were.
    response = stored[noted.id].response
    assert response is not None and b"hmac:0123456789abcdef" in (response.content or b"")
    for path in settings.directory.rglob("*"):
        if path.is_file():
            assert b"CANARY-body-3" not in path.read_bytes()


async def test_a_spool_held_by_another_writer_is_waited_for(
    tmp_path: Path, archive_factory: Callable[..., Archive]
) -> None:
    settings = settings_for(tmp_path)
    other = Spool(settings.spool)
    other.lock()  # a killed gateway's writer, still finishing
    try:
        archive = archive_factory(settings)
        assert not archive.can_record()
        assert archive.writer is not None and "in use" in archive.writer.last_error
        flow = canary_flow()
        archive.error(flow)  # waits in the pipe until the spool is free
    finally:
        other.unlock()
    await eventually(archive.can_record, "the writer to take the spool")
    await drain(archive)
    assert [f.id for f in archived(settings)] == [flow.id]


async def test_a_killed_writer_is_replaced_and_nothing_is_lost_or_doubled(
    tmp_path: Path, archive_factory: Callable[..., Archive]
) -> None:
    settings = settings_for(tmp_path)
    archive = archive_factory(settings)
    assert archive.writer is not None and archive.writer.process is not None
    first = [canary_flow(i) for i in range(200)]
    for flow in first:
        archive.error(flow)  # nobody waits: the writer acknowledges these in batches
    # Kill it once it has written some: those are sent again and must not be archived twice.
    await eventually(lambda: bool(spooled_ids(settings)), "flows in the spool")
    os.kill(archive.writer.process.pid, signal.SIGKILL)
    killed = archive.writer.process
    await eventually(
        lambda: (
            archive.writer is not None
            and archive.writer.process is not killed
            and archive.can_record()
        ),
        "a new writer",
    )
    second = [canary_flow(1000 + i) for i in range(20)]
    for flow in second:
        await archive.response(flow)
    await drain(archive)
    counts = Counter(f.id for f in archived(settings))
    assert set(counts) == {f.id for f in first + second}
    assert set(counts.values()) == {1}
    assert verify(DirectoryBackend(settings.directory), settings.spool).ok


def test_a_killed_gateways_writer_writes_what_its_pipe_held_and_leaves_at_once(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    writer = WriterProcess(settings, "gw-test")
    writer.start()
    process = writer.process
    assert process is not None and process.stdin is not None and process.stdout is not None
    assert writer.can_record()
    connections = ConnectionStates()
    flows = [canary_flow(i) for i in range(30)]
    fd = process.stdin.fileno()
    os.set_blocking(fd, True)

    def send(token: int, flow: http.HTTPFlow) -> None:
        """A flow a response waits for: the writer acknowledges it as soon as it is durable."""
        conns = connections.get(flow.client_conn), connections.get(flow.server_conn)
        data = frame(("flow", token, snapshot(flow), *conns, None, None, True, True))
        with contextlib.suppress(BrokenPipeError):  # a writer that died reads nothing more
            os.write(fd, data)

    try:
        # What kill -9 of the gateway does to its writer: nobody reads the writer's reports
        # (EPIPE) and, once the writer has read what the gateway had written, end of file.
        process.stdout.close()
        send(1, flows[0])
        deadline = time.monotonic() + 10
        while spooled_ids(settings) != [flows[0].id]:  # acknowledged: into the dead pipe
            assert time.monotonic() < deadline, "the first flow never reached the spool"
            time.sleep(0.02)
        for token, flow in enumerate(flows[1:], start=2):
            send(token, flow)
        process.stdin.close()
        # It leaves the uploads to the next writer, which waits for the spool meanwhile.
        assert process.wait(5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert spooled_ids(settings) == [f.id for f in flows]
    assert not Spool(settings.spool).unclosed()  # closed, so fsynced
    assert not archived(settings)
    successor = ArchiveStore(settings, "gw-test")
    successor.start()
    try:
        assert successor.drain(timeout=10)
    finally:
        successor.stop(timeout=5)
    assert [f.id for f in archived(settings)] == [f.id for f in flows]
    assert verify(DirectoryBackend(settings.directory), settings.spool).ok


async def test_without_the_fsync_wait_a_response_waits_while_the_pipe_is_full(
    tmp_path: Path, archive_factory: Callable[..., Archive]
) -> None:
    settings = settings_for(tmp_path, fsync_before_response=False)
    archive = archive_factory(settings)
    writer = archive.writer
    assert writer is not None and writer.process is not None
    os.kill(writer.process.pid, signal.SIGSTOP)  # the writer reads nothing for a while
    try:
        flows = []
        while not writer._out:  # until the pipe is full and records wait in this process
            assert len(flows) < 200, "the pipe never filled"
            flow = canary_flow(len(flows))
            assert flow.response is not None
            flow.response.content = os.urandom(256 * 1024)
            flows.append(flow)
            await archive.response(flow)
        waiting = asyncio.create_task(archive.response(canary_flow(500)))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # its record is not in the pipe yet: not released
    finally:
        os.kill(writer.process.pid, signal.SIGCONT)
    await asyncio.wait_for(waiting, 15)
    await drain(archive)
    assert len(archived(settings)) == len(flows) + 1


async def test_by_default_privileged_responses_wait_for_the_fsync_and_reads_do_not(
    tmp_path: Path, archive_factory: Callable[..., Archive]
) -> None:
    settings = settings_for(tmp_path)  # fsync_before_response: privileged
    archive = archive_factory(settings)
    writer = archive.writer
    assert writer is not None and writer.process is not None
    create = {**KUBE_GET, "verb": "create", "name": ""}
    exec_ = {**KUBE_GET, "verb": "create", "subresource": "exec"}
    os.kill(writer.process.pid, signal.SIGSTOP)  # nothing gets fsynced for a while
    try:
        read = canary_flow(1)
        await asyncio.wait_for(archive.response(read), 5)  # released once in the writer's pipe
        waiting = {
            "write": asyncio.create_task(archive.response(canary_flow(2, kube=create))),
            "exec": asyncio.create_task(archive.response(canary_flow(3, kube=exec_))),
            "denied read": asyncio.create_task(
                archive.response(canary_flow(4, action="deny", rule="no"))
            ),
            "held read": asyncio.create_task(
                archive.response(canary_flow(5, action="approve", hold={"state": "approved"}))
            ),
            "unclassified": asyncio.create_task(archive.response(_unclassified(6))),
        }
        await asyncio.sleep(0.5)
        assert [what for what, task in waiting.items() if task.done()] == []
    finally:
        os.kill(writer.process.pid, signal.SIGCONT)
    await asyncio.wait_for(asyncio.gather(*waiting.values()), 15)
    await drain(archive)
    assert len(archived(settings)) == 6


def _unclassified(n: int) -> http.HTTPFlow:
    flow = canary_flow(n)
    flow.metadata["holdgate"] = {}
    return flow


async def test_stop_flushes_the_open_segment(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    archive = Archive()
    archive.configure_settings(settings, "gw-test")
    flows = [canary_flow(i) for i in range(5)]
    for flow in flows:
        await archive.response(flow)
    archive.done()
    assert [f.id for f in archived(settings)] == [f.id for f in flows]
    assert not list(settings.spool.glob("seg-*"))


async def test_metadata_that_does_not_pickle_is_archived_as_text(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    archive = Archive()
    archive.configure_settings(settings, "gw-test")
    flow = canary_flow(1)
    flow.metadata["holdgate"]["lock"] = threading.Lock()
    await archive.response(flow)
    archive.done()
    [stored] = archived(settings)
    assert stored.id == flow.id
    assert stored.metadata["holdgate"]["lock"].startswith("<unlocked _thread.lock")
    assert stored.metadata["holdgate"]["decision"] == flow.metadata["holdgate"]["decision"]


def test_snapshot_is_get_state_without_secrets() -> None:
    connections = ConnectionStates()
    for flow in (canary_flow(), tflow.twebsocketflow(), tflow.tflow(err=True)):
        state = snapshot(flow)
        state["client_conn"] = pickle.loads(connections.get(flow.client_conn))
        state["server_conn"] = pickle.loads(connections.get(flow.server_conn))
        expected = flow.get_state()
        expected["backup"] = None
        expected["metadata"] = {"holdgate": expected["metadata"].get("holdgate", {})}
        assert state == expected
        assert connections.get(flow.client_conn) is connections.get(flow.client_conn)


def test_dumps_is_mitmproxys_format_byte_for_byte() -> None:
    flows = [canary_flow(), tflow.twebsocketflow(), tflow.tflow(err=True), tflow.tflow()]
    flows[0].metadata["holdgate"]["odd"] = [1, 2.5, None, True, b"x", (b"a", "b"), {"k": []}]
    for flow in flows:
        state = flow.get_state()
        assert dumps(state) == tnetstring.dumps(state)
        assert mitmio.FlowReader(io.BytesIO(dumps(state))).stream()  # type: ignore[arg-type]


def test_json_lines_of_the_index_are_valid(tmp_path: Path) -> None:
    # A quick check that index lines stay one JSON object per line whatever the URL holds.
    from holdgate.archive.records import RecordOptions, Submission, encode

    flow = canary_flow()
    flow.request.path = '/api/v1/namespaces/x/pods?labelSelector=a%3D"b"\n'
    record = encode(Submission(flow.get_state()), RecordOptions(gateway="gw"))
    (line,) = record.index.splitlines()
    assert json.loads(line)["id"] == flow.id
