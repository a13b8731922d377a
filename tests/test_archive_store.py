"""The archive store with real files: spool, rotation, recovery, the directory backend, verify."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy import io as mitmio
from mitmproxy.test import tflow

from addons.archive_backends import DirectoryBackend
from addons.archive_layout import Kind, parse_key
from addons.archive_reading import verify
from addons.archive_records import RecordOptions, Submission, encode, mask_header_value
from addons.archive_settings import ArchiveSettings, ArchiveSettingsError, RequireFor, is_privileged
from addons.archive_spool import Spool, SpoolWriter
from addons.archive_store import ArchiveStore
from addons.archive_uploads import Uploader

# Canary credentials: none of these (nor their base64 forms) may reach an archived byte.
CANARY_BEARER = "CANARY-bearer-3f9a1c"
CANARY_PROXY_PW = "CANARY-proxy-pw-77c1e0"
CANARY_COOKIE = "CANARY-cookie-0b2e4d"
CANARY_SET_COOKIE = "CANARY-setcookie-55d0aa"
CANARY_AMZ = "CANARY-amz-token-91e4f2"
CANARY_SIGNATURE = "CANARY-amz-signature-6a2b"
CANARIES = [
    CANARY_BEARER,
    CANARY_PROXY_PW,
    CANARY_COOKIE,
    CANARY_SET_COOKIE,
    CANARY_AMZ,
    CANARY_SIGNATURE,
]
PROXY_AUTH = "Basic " + base64.b64encode(f"ci-bot:{CANARY_PROXY_PW}".encode()).decode()


def canary_needles() -> list[bytes]:
    """Every form a canary could take in archived bytes."""
    needles = []
    for canary in [*CANARIES, f"ci-bot:{CANARY_PROXY_PW}"]:
        needles.append(canary.encode())
        needles.append(base64.b64encode(canary.encode()))
    needles.append(PROXY_AUTH.split(" ")[1].encode())
    return needles


def assert_no_canary(blob: bytes, where: str) -> None:
    """Fail when any canary form is in `blob`."""
    for needle in canary_needles():
        assert needle not in blob, f"canary {needle!r} found in {where}"


KUBE_GET = {
    "resource_request": True,
    "verb": "get",
    "api_group": "",
    "api_version": "v1",
    "namespace": "sandbox",
    "resource": "pods",
    "subresource": "",
    "name": "web",
    "path": "/api/v1/namespaces/sandbox/pods/web",
}


def holdgate_meta(
    action: str = "allow",
    rule: str | None = "allow-reads",
    kube: dict[str, Any] | None = None,
    agent: str = "ci-bot",
    target: str = "sandbox",
    hold: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """flow.metadata["holdgate"] as the gateway writes it."""
    request: dict[str, Any] = {
        "target": target,
        "method": "GET",
        "host": "kubernetes.default.svc",
        "port": 443,
        "path": "/api/v1/namespaces/sandbox/pods/web",
        "identity": {"agent": agent, "owner": "alice", "groups": ["ci"], "run_id": "run-1"},
    }
    if kube is not None:
        request["kubernetes"] = kube
    meta: dict[str, Any] = {
        "request": request,
        "decision": {"action": action, "rule": rule, "reason": f"{action} by {rule}"},
    }
    if hold is not None:
        meta["hold"] = hold
    return meta


def canary_flow(
    n: int = 0, *, kube: dict[str, Any] | None = KUBE_GET, **meta: Any
) -> http.HTTPFlow:
    """A finished flow carrying every canary credential, an unmasked backup and proxyauth."""
    flow = tflow.tflow(resp=True)
    flow.request.path = (
        f"/api/v1/namespaces/sandbox/pods/web-{n}?X-Amz-Signature={CANARY_SIGNATURE}&a=1"
    )
    flow.request.headers["Authorization"] = f"Bearer {CANARY_BEARER}"
    flow.request.headers["Proxy-Authorization"] = PROXY_AUTH
    flow.request.headers["Cookie"] = f"session={CANARY_COOKIE}; theme=dark"
    flow.request.headers["X-Amz-Security-Token"] = CANARY_AMZ
    response = flow.response
    assert response is not None
    response.headers["Set-Cookie"] = f"sid={CANARY_SET_COOKIE}; Path=/; HttpOnly"
    response.headers["Content-Type"] = "application/json"
    response.content = json.dumps({"kind": "Pod", "metadata": {"name": f"web-{n}"}}).encode()
    flow.metadata["proxyauth"] = ("ci-bot", CANARY_PROXY_PW)
    flow.metadata["holdgate"] = holdgate_meta(kube=kube, **meta)
    flow.comment = f"allow: get pods web-{n} -n sandbox (allow-reads)"
    flow.backup()  # the unmasked original, as an edit in mitmweb would keep it
    flow.request.headers["X-Edited"] = "1"
    return flow


def settings_for(tmp_path: Path, **archive: Any) -> ArchiveSettings:
    """Archive settings under tmp_path, with fast retries."""
    data: dict[str, Any] = {"upload_retry": {"initial_seconds": 0.05, "max_seconds": 0.2}}
    data.update(archive)
    return ArchiveSettings.from_dict(data, tmp_path, tmp_path / "state")


@pytest.fixture
def store_factory() -> Iterator[Callable[..., ArchiveStore]]:
    """Start stores; every one is stopped at the end."""
    stores: list[ArchiveStore] = []

    def start(settings: ArchiveSettings, gateway: str = "gw-test", **kwargs: Any) -> ArchiveStore:
        store = ArchiveStore(settings, gateway, **kwargs)
        store.start()
        stores.append(store)
        return store

    yield start
    for store in stores:
        store.stop(timeout=5)


def archived_files(root: Path) -> dict[str, bytes]:
    """Every file under an archive directory, by key."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_flows(blob: bytes) -> list[http.HTTPFlow]:
    """Flows from mitmproxy's native format."""
    flows = list(mitmio.FlowReader(io.BytesIO(blob)).stream())  # type: ignore[arg-type]
    assert all(isinstance(f, http.HTTPFlow) for f in flows)
    return flows  # type: ignore[return-value]


def make_writable(root: Path) -> None:
    """Archived files are read-only; a test that tampers needs them writable."""
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


# --- settings ----------------------------------------------------------------------------------


def test_settings_defaults(tmp_path: Path) -> None:
    settings = ArchiveSettings.from_dict({}, tmp_path, tmp_path / "var")
    assert settings.directory == tmp_path / "var" / "archive"
    assert settings.spool == tmp_path / "var" / "spool"
    assert settings.s3 is None and settings.audit_webhook is None
    assert settings.require_for is RequireFor.PRIVILEGED
    assert settings.rotate_bytes == 4 * 1024 * 1024 and settings.rotate_seconds == 30
    assert ArchiveSettings.from_dict(None, tmp_path, tmp_path) == ArchiveSettings.from_dict(
        {}, tmp_path, tmp_path
    )


def test_settings_full(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    settings = ArchiveSettings.from_dict(
        {
            "directory": "arch",
            "s3": {
                "bucket": "audit",
                "prefix": "/holdgate/",
                "endpoint_url": "http://127.0.0.1:9000",
                "region": "eu-west-1",
                "addressing_style": "path",
                "sse": "aws:kms",
                "kms_key_id": "alias/audit",
                "object_lock": {"mode": "COMPLIANCE", "days": 30},
            },
            "rotate_bytes": 1000,
            "rotate_seconds": 2.5,
            "require_for": "all",
            "audit_webhook": {"url": "https://falco.example/k8s-audit", "ca": "ca.pem"},
        },
        tmp_path,
        tmp_path / "var",
    )
    assert settings.directory == tmp_path / "arch"
    assert settings.s3 is not None and settings.s3.prefix == "holdgate"
    assert settings.s3.object_lock is not None and settings.s3.object_lock.days == 30
    assert settings.audit_webhook is not None and settings.audit_webhook.ca == ca
    assert settings.require_for is RequireFor.ALL
    assert settings.destination == "s3://audit/holdgate"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bogus": 1}, "archive.bogus: unknown field"),
        ({"s3": {"prefix": "x"}}, "archive.s3.bucket: required"),
        ({"s3": {"bucket": "b", "sse": "DES"}}, "archive.s3.sse: 'DES' is not AES256 or aws:kms"),
        ({"s3": {"bucket": "b", "kms_key_id": "k"}}, "archive.s3.kms_key_id: needs sse: aws:kms"),
        ({"s3": {"bucket": "b", "endpoint_url": "ftp://x"}}, "archive.s3.endpoint_url"),
        (
            {"s3": {"bucket": "b", "object_lock": {"mode": "LEGAL", "days": 1}}},
            "archive.s3.object_lock.mode: 'LEGAL' is not GOVERNANCE or COMPLIANCE",
        ),
        (
            {"s3": {"bucket": "b", "object_lock": {"mode": "GOVERNANCE", "days": 0}}},
            "archive.s3.object_lock.days: must be an integer >= 1",
        ),
        ({"s3": {"bucket": "b", "addressing_style": "dns"}}, "archive.s3.addressing_style"),
        ({"rotate_bytes": "big"}, "archive.rotate_bytes: must be an integer >= 1"),
        ({"rotate_seconds": 0}, "archive.rotate_seconds: must be a number"),
        ({"require_for": "writes"}, "archive.require_for: 'writes' is not one of"),
        (
            {"audit_webhook": "falco:9765"},
            "archive.audit_webhook: 'falco:9765' is not an http(s) URL",
        ),
        ({"audit_webhook": {"url": "http://x", "ca": "nope.pem"}}, "archive.audit_webhook.ca"),
        ({"fsync_before_response": "yes"}, "archive.fsync_before_response: must be true or false"),
        ({"upload_retry": {"max_seconds": -1}}, "archive.upload_retry.max_seconds"),
    ],
)
def test_settings_errors(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ArchiveSettingsError) as e:
        ArchiveSettings.from_dict(data, tmp_path, tmp_path)
    assert message in str(e.value)
    assert e.value.location == tuple(str(e.value).split(":")[0].split(".")[1:])


def test_schema_matches_the_parser(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from addons.archive_settings import ARCHIVE_SCHEMA

    good = {
        "directory": "var/archive",
        "s3": {"bucket": "b", "object_lock": {"mode": "GOVERNANCE", "days": 1}},
        "audit_webhook": "https://falco.example/k8s-audit",
        "require_for": "none",
    }
    jsonschema.Draft202012Validator(ARCHIVE_SCHEMA).validate(good)
    ArchiveSettings.from_dict(good, tmp_path, tmp_path)
    assert not jsonschema.Draft202012Validator(ARCHIVE_SCHEMA).is_valid({"bogus": 1})


@pytest.mark.parametrize(
    ("request_facts", "action", "privileged"),
    [
        ({"kubernetes": {"verb": "get", "resource": "pods"}}, "allow", False),
        ({"kubernetes": {"verb": "watch", "resource": "pods"}}, "allow", False),
        ({"kubernetes": {"verb": "delete", "resource": "pods"}}, "allow", True),
        ({"kubernetes": {"verb": "get", "resource": "pods", "subresource": "exec"}}, "allow", True),
        ({"kubernetes": {"verb": "get", "resource": "secrets"}}, "approve", True),
        ({"kubernetes": {"verb": "proxy", "resource": "services"}}, "allow", True),
        ({"method": "GET"}, "allow", False),
        ({"method": "POST"}, "allow", True),
    ],
)
def test_is_privileged(request_facts: dict[str, Any], action: str, privileged: bool) -> None:
    assert is_privileged(request_facts, action) is privileged


@pytest.mark.parametrize(
    ("name", "value", "masked"),
    [
        (b"Authorization", b"Bearer abc.def", b"Bearer <masked>"),
        (
            b"authorization",
            b"AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=ff",
            b"AWS4-HMAC-SHA256 <masked>",
        ),
        (b"Authorization", b"rawtoken", b"<masked>"),
        (b"Proxy-Authorization", b"Basic YTpi", b"Basic <masked>"),
        (b"Cookie", b"a=1; b=2", b"a=<masked>; b=<masked>"),
        (b"Set-Cookie", b"sid=s3cr3t; Path=/; HttpOnly", b"sid=<masked>; Path=/; HttpOnly"),
        (b"X-Amz-Security-Token", b"tok", b"<masked>"),
    ],
)
def test_mask_header_value(name: bytes, value: bytes, masked: bytes) -> None:
    assert mask_header_value(name, value) == masked


def test_keys_parse_back() -> None:
    info = parse_key("pre/fix", "pre/fix/2024/05/06/07/holdgate-prod-1-0000000042.audit.jsonl")
    assert info is not None
    assert (info.gateway, info.seq, info.kind, info.hour) == (
        "holdgate-prod-1",
        42,
        Kind.AUDIT,
        "2024/05/06/07",
    )
    assert parse_key("pre", "other/2024/05/06/07/gw-0000000001.mitm") is None
    assert parse_key("", "2024/05/06/07/gw-1.mitm") is None


# --- the directory archive ---------------------------------------------------------------------


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


def _three_segments(tmp_path: Path, store_factory: Callable[..., ArchiveStore]) -> ArchiveSettings:
    settings = settings_for(tmp_path)
    store = store_factory(settings)
    for segment in range(3):
        for i in range(4):
            store.submit(Submission(canary_flow(segment * 10 + i).get_state()))
        assert store.drain(timeout=10)
    return settings


def _keys(root: Path, suffix: str) -> list[Path]:
    return sorted(p for p in root.rglob(f"*{suffix}") if not p.name.endswith(".audit" + suffix))


def _alter_flows(root: Path) -> None:
    victim = _keys(root, ".mitm")[1]
    victim.write_bytes(victim.read_bytes().replace(b"web-11", b"web-99"))


def _delete_index(root: Path) -> None:
    _keys(root, ".jsonl")[0].unlink()


def _add_object(root: Path) -> None:
    (root / "2020/01/01/00").mkdir(parents=True)
    (root / "2020/01/01/00/gw-test-0000000009.mitm").write_bytes(b"x")


def _add_stray_file(root: Path) -> None:
    (root / "notes.txt").write_text("x")


def _delete_segment(seq: int) -> Callable[[Path], None]:
    def delete(root: Path) -> None:
        for path in root.rglob(f"gw-test-{seq:010d}.*"):
            path.unlink()

    return delete


def _replace_manifest(root: Path) -> None:
    victim = _keys(root, ".manifest.json")[1]
    victim.write_bytes(victim.read_bytes().replace(b'"flows":4', b'"flows":3'))


TAMPERING: dict[str, tuple[Callable[[Path], None], set[str]]] = {
    "alter a flow file": (_alter_flows, {"altered"}),
    "delete an index": (_delete_index, {"missing"}),
    "add an object": (_add_object, {"extra", "missing"}),
    "add a stray file": (_add_stray_file, {"extra"}),
    "delete a middle segment": (_delete_segment(2), {"missing"}),
    "replace a manifest": (_replace_manifest, {"chain"}),
    "delete the newest segment": (_delete_segment(3), {"missing"}),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_verify_reports_tampering(
    case: str, tmp_path: Path, store_factory: Callable[..., ArchiveStore]
) -> None:
    settings = _three_segments(tmp_path, store_factory)
    backend = DirectoryBackend(settings.directory)
    assert verify(backend, settings.spool).ok
    make_writable(settings.directory)
    tamper, kinds = TAMPERING[case]
    tamper(settings.directory)
    report = verify(backend, settings.spool)
    assert not report.ok
    assert {p.kind for p in report.problems} == kinds, [str(p) for p in report.problems]


def test_verify_without_the_spool_notes_what_it_cannot_see(
    tmp_path: Path, store_factory: Callable[..., ArchiveStore]
) -> None:
    settings = _three_segments(tmp_path, store_factory)
    report = verify(DirectoryBackend(settings.directory), None)
    assert report.ok and report.segments == 3 and report.flows == 12
    assert "cannot be detected" in report.notes[0]


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
    manifests = [json.loads(p.read_bytes()) for p in _keys(settings.directory, ".manifest.json")]
    assert [m["seq"] for m in manifests] == [1, 2]
    first_bytes = _keys(settings.directory, ".manifest.json")[0].read_bytes()
    assert manifests[1]["prev"] == {"seq": 1, "sha256": hashlib.sha256(first_bytes).hexdigest()}
    assert verify(DirectoryBackend(settings.directory), settings.spool).ok


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


def test_builtin_secret_mask_when_no_masker(
    tmp_path: Path, store_factory: Callable[..., ArchiveStore]
) -> None:
    settings = settings_for(tmp_path)
    store = store_factory(settings)
    secret_kube = {**KUBE_GET, "verb": "create", "resource": "secrets", "name": ""}
    flow = canary_flow(kube=secret_kube)
    flow.request.method = "POST"
    flow.request.headers["Content-Type"] = "application/json"
    flow.request.content = json.dumps(
        {"kind": "Secret", "metadata": {"name": "s"}, "stringData": {"password": "CANARY-sd-1"}}
    ).encode()
    assert flow.response is not None
    flow.response.content = json.dumps(
        {"kind": "Secret", "metadata": {"name": "s"}, "data": {"password": "Q0FOQVJZLXNkLTE="}}
    ).encode()
    protobuf = canary_flow(kube=secret_kube)
    protobuf.request.headers["Content-Type"] = "application/vnd.kubernetes.protobuf"
    protobuf.request.content = b"k8s\x00\n\x0c\n\x02v1\x12\x06Secret CANARY-pb-2"
    store.submit(Submission(flow.get_state()))
    store.submit(Submission(protobuf.get_state()))
    assert store.drain(timeout=10)
    for key, blob in archived_files(settings.directory).items():
        for needle in (b"CANARY-sd-1", b"Q0FOQVJZLXNkLTE=", b"CANARY-pb-2"):
            assert needle not in blob, key
    (mitm,) = settings.directory.rglob("*.mitm")
    first, second = read_flows(mitm.read_bytes())
    assert json.loads(first.request.content or b"")["stringData"] == {"password": "<masked>"}
    assert b"withheld" in (second.request.content or b"")
