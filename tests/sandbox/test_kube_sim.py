"""The Kubernetes API simulator, driven by the real kubectl and the `kubernetes` Python client.

One simulator serves the module (each test uses its own names); every kubectl runs with its own
HOME (discovery cache) and a bounded timeout; every process and server started is stopped.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pathlib
import queue
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import aiohttp
import httpx
import pytest
from cryptography import x509

from holdgate.kube import protobuf as kube_protobuf
from holdgate.sandbox import kube_patch
from holdgate.sandbox.kube_openapi import SchemaNav
from holdgate.sandbox.kube_resources import DEPLOYMENTS, SECRETS
from holdgate.sandbox.kube_sim import KubeSimulator, RecordedRequest, running_simulator
from holdgate.sandbox.kube_tls import ensure_tls

TOKEN = "sim-test-token"
KUBECTL = pathlib.Path(sys.executable).with_name("kubectl")
AGGREGATED = (
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
)
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"

needs_kubectl = pytest.mark.skipif(
    not KUBECTL.exists(), reason="kubectl not installed next to python"
)


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeSimulator]:
    with running_simulator(TOKEN, tmp_path_factory.mktemp("kube-sim") / "certs") as simulator:
        yield simulator


@pytest.fixture
def http(sim: KubeSimulator) -> Iterator[httpx.Client]:
    context = ssl.create_default_context(cafile=str(sim.ca_path))
    with httpx.Client(
        base_url=sim.url, verify=context, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    ) as client:
        yield client


class Kubectl:
    """The real kubectl, pointed straight at the simulator."""

    def __init__(self, kubeconfig: pathlib.Path, home: pathlib.Path) -> None:
        self.kubeconfig = kubeconfig
        self.env = {**os.environ, "HOME": str(home), "KUBECACHEDIR": str(home / "cache")}
        self.env.pop("KUBECONFIG", None)

    def argv(self, *args: str) -> list[str]:
        return [str(KUBECTL), "--kubeconfig", str(self.kubeconfig), *args]

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.argv("--request-timeout=20s", *args),
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=30,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} -> {result.returncode}\n{result.stderr}"
            )
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )


@pytest.fixture
def kubectl(sim: KubeSimulator, tmp_path: pathlib.Path) -> Kubectl:
    if not KUBECTL.exists():
        pytest.skip("kubectl not installed next to python")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(sim.kubeconfig())
    sim.clear_requests()
    return Kubectl(kubeconfig, tmp_path)


class Lines:
    """Lines of a stream, read on a thread; waits are bounded."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no matching line; saw {self.seen!r}")


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def recorded(sim: KubeSimulator, method: str, path: str) -> list[RecordedRequest]:
    return [r for r in sim.requests if r.method == method and r.path == path]


def columns(output: str) -> list[str]:
    return output.splitlines()[0].split()


# ---------------------------------------------------------------- TLS, auth, health


def test_tls_material_is_created_private_and_reused(tmp_path: pathlib.Path) -> None:
    files = ensure_tls(tmp_path / "certs")
    assert files.key.stat().st_mode & 0o777 == 0o600
    assert files.ca_key.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"} <= set(
        sans.get_values_for_type(x509.DNSName)
    )
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    before = files.cert.read_bytes(), files.ca_cert.read_bytes()
    assert ensure_tls(tmp_path / "certs").cert.read_bytes() == before[0]
    assert files.ca_cert.read_bytes() == before[1]


def test_health_is_public_everything_else_needs_the_token(sim: KubeSimulator) -> None:
    sim.clear_requests()
    context = ssl.create_default_context(cafile=str(sim.ca_path))
    with httpx.Client(base_url=sim.url, verify=context, timeout=10) as anonymous:
        for path in ("/healthz", "/livez", "/readyz"):
            assert anonymous.get(path).text == "ok"
        denied = anonymous.get("/api/v1/namespaces", headers={"Authorization": "Bearer nope"})
    assert denied.status_code == 401
    assert denied.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }
    assert [r.path for r in sim.requests] == ["/healthz", "/livez", "/readyz", "/api/v1/namespaces"]
    assert sim.requests[-1].headers["authorization"] == "Bearer nope"


# ---------------------------------------------------------------- discovery and openapi


def test_aggregated_discovery_answers_in_kind(http: httpx.Client) -> None:
    response = http.get("/apis", headers={"Accept": AGGREGATED})
    assert response.headers["content-type"] == (
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    )
    body = response.json()
    assert (body["kind"], body["apiVersion"]) == ("APIGroupDiscoveryList", "apidiscovery.k8s.io/v2")
    apps = next(i for i in body["items"] if i["metadata"].get("name") == "apps")
    deployments = apps["versions"][0]["resources"][0]
    assert deployments["resource"] == "deployments"
    assert deployments["scope"] == "Namespaced"
    assert deployments["shortNames"] == ["deploy"]
    assert {s["subresource"] for s in deployments["subresources"]} == {"scale", "status"}
    core = http.get("/api", headers={"Accept": AGGREGATED}).json()["items"][0]
    by_name = {r["resource"]: r for r in core["versions"][0]["resources"]}
    assert by_name["namespaces"]["scope"] == "Cluster"
    assert by_name["pods"]["shortNames"] == ["po"]
    legacy = http.get("/api", headers={"Accept": "application/json"})
    assert legacy.headers["content-type"] == "application/json"
    assert legacy.json()["kind"] == "APIVersions"


def test_legacy_resource_lists(http: httpx.Client) -> None:
    core = http.get("/api/v1").json()
    assert core["kind"] == "APIResourceList" and core["groupVersion"] == "v1"
    names = {r["name"]: r for r in core["resources"]}
    assert names["configmaps"]["shortNames"] == ["cm"]
    assert names["namespaces"]["namespaced"] is False
    assert names["pods/exec"]["verbs"] == ["create", "get"]
    apps = http.get("/apis/apps/v1").json()
    assert apps["groupVersion"] == "apps/v1"
    assert {r["name"] for r in apps["resources"]} >= {"deployments", "deployments/scale"}
    assert http.get("/apis").json()["groups"][0]["preferredVersion"]["groupVersion"] == "apps/v1"


def test_openapi_v3_lets_kubectl_leave_validation_to_the_server(http: httpx.Client) -> None:
    root = http.get("/openapi/v3").json()["paths"]
    url = root["api/v1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/api/v1?hash=")
    document = http.get(url).json()
    patch = document["paths"]["/api/v1/namespaces/{namespace}/secrets/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {
        "group": "",
        "kind": "Secret",
        "version": "v1",
    }
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    assert "application/strategic-merge-patch+json" in patch["requestBody"]["content"]
    secret = document["components"]["schemas"]["io.k8s.api.core.v1.Secret"]
    assert secret["x-kubernetes-group-version-kind"] == [
        {"group": "", "kind": "Secret", "version": "v1"}
    ]
    apps = http.get(root["apis/apps/v1"]["serverRelativeURL"]).json()["components"]["schemas"]
    containers = apps["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    assert http.get("/openapi/v2").status_code == 404


# ---------------------------------------------------------------- Status errors, tables, selectors


def test_not_found_and_already_exists_are_apiserver_statuses(http: httpx.Client) -> None:
    missing = http.get("/api/v1/namespaces/prod/secrets/x")
    assert missing.status_code == 404
    assert missing.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'secrets "x" not found',
        "reason": "NotFound",
        "details": {"name": "x", "kind": "secrets"},
        "code": 404,
    }
    duplicate = http.post("/api/v1/namespaces", json={"metadata": {"name": "prod"}})
    assert duplicate.status_code == 409
    assert duplicate.json()["message"] == 'namespaces "prod" already exists'
    assert duplicate.json()["reason"] == "AlreadyExists"
    nowhere = http.post("/api/v1/namespaces/nope/configmaps", json={"metadata": {"name": "c"}})
    assert nowhere.status_code == 404
    assert nowhere.json()["details"] == {"name": "nope", "kind": "namespaces"}
    deploy = http.get("/apis/apps/v1/namespaces/prod/deployments/nope").json()
    assert deploy["message"] == 'deployments.apps "nope" not found'
    assert deploy["details"] == {"name": "nope", "group": "apps", "kind": "deployments"}


def test_crud_dry_run_selectors_and_tables(http: httpx.Client) -> None:
    base = "/api/v1/namespaces/sandbox/configmaps"
    dry = http.post(f"{base}?dryRun=All&fieldManager=t", json={"metadata": {"name": "dry"}})
    assert dry.status_code == 201 and "resourceVersion" not in dry.json()["metadata"]
    assert http.get(f"{base}/dry").status_code == 404
    created = http.post(
        base, json={"metadata": {"name": "tbl", "labels": {"tier": "a"}}, "data": {"k": "v"}}
    ).json()
    assert int(created["metadata"]["resourceVersion"]) > 0 and created["metadata"]["uid"]
    listed = http.get(
        base, params={"labelSelector": "tier in (a,b)", "fieldSelector": "metadata.name=tbl"}
    ).json()
    assert listed["kind"] == "ConfigMapList" and [
        i["metadata"]["name"] for i in listed["items"]
    ] == ["tbl"]
    assert "kind" not in listed["items"][0]
    table = http.get(base, params={"labelSelector": "tier=a"}, headers={"Accept": TABLE}).json()
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Data", "Age"]
    assert table["rows"][0]["cells"][:2] == ["tbl", 1]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    full = http.get(
        f"{base}/tbl", params={"includeObject": "Object"}, headers={"Accept": TABLE}
    ).json()
    assert full["rows"][0]["object"]["data"] == {"k": "v"}
    updated = http.put(f"{base}/tbl", json={**created, "data": {"k": "w"}}).json()
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    stale = http.put(f"{base}/tbl", json={**created, "data": {"k": "x"}})
    assert stale.status_code == 409 and stale.json()["reason"] == "Conflict"
    patched = http.patch(
        f"{base}/tbl",
        content=json.dumps([{"op": "replace", "path": "/data/k", "value": "j"}]),
        headers={"Content-Type": "application/json-patch+json"},
    ).json()
    assert patched["data"] == {"k": "j"}
    gone = http.delete(f"{base}/tbl").json()
    assert (gone["kind"], gone["status"], gone["details"]["name"]) == ("Status", "Success", "tbl")


def test_strict_field_validation(http: httpx.Client) -> None:
    body = {"metadata": {"name": "strict"}, "bogus": 1}
    strict = http.post("/api/v1/namespaces/sandbox/secrets?fieldValidation=Strict", json=body)
    assert strict.status_code == 400
    assert 'strict decoding error: unknown field "bogus"' in strict.json()["message"]
    warned = http.post("/api/v1/namespaces/sandbox/secrets?fieldValidation=Warn", json=body)
    assert warned.status_code == 201 and "unknown field" in warned.headers["warning"]


# ---------------------------------------------------------------- patches


def test_patch_formats() -> None:
    assert kube_patch.merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}) == {
        "a": {"c": 2, "d": 3}
    }
    doc = kube_patch.json_patch(
        {"l": [1, 2]}, [{"op": "add", "path": "/l/-", "value": 3}, {"op": "remove", "path": "/l/0"}]
    )
    assert doc == {"l": [2, 3]}
    with pytest.raises(kube_patch.PatchError):
        kube_patch.json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 2}])
    current = {
        "spec": {
            "replicas": 1,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
            "template": {
                "spec": {
                    "containers": [
                        {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
                        {"name": "b", "image": "b:1"},
                    ]
                }
            },
        }
    }
    patch = {
        "spec": {
            "strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": None},
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
                    "containers": [
                        {"name": "a", "env": [{"name": "Y", "value": "2"}]},
                        {"name": "b", "$patch": "delete"},
                    ],
                }
            },
        }
    }
    merged = kube_patch.strategic_merge(current, patch, SchemaNav.for_resource(DEPLOYMENTS))
    assert merged["spec"]["strategy"] == {"type": "Recreate"}
    containers = merged["spec"]["template"]["spec"]["containers"]
    assert containers == [
        {
            "name": "a",
            "image": "a:1",
            "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
        }
    ]
    assert merged["spec"]["replicas"] == 1


# ---------------------------------------------------------------- kubectl


@needs_kubectl
def test_kubectl_get_namespaces(kubectl: Kubectl, sim: KubeSimulator) -> None:
    out = kubectl("get", "ns").stdout
    assert columns(out) == ["NAME", "STATUS", "AGE"]
    assert {line.split()[0] for line in out.splitlines()[1:]} >= {
        "default",
        "kube-system",
        "kube-public",
        "prod",
        "sandbox",
    }
    discovery = recorded(sim, "GET", "/api")[0]
    assert "g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList" in discovery.headers["accept"]
    listing = recorded(sim, "GET", "/api/v1/namespaces")[0]
    assert "as=Table" in listing.headers["accept"]
    assert listing.headers["authorization"] == f"Bearer {TOKEN}"
    pods = kubectl("get", "pods", "-n", "sandbox").stdout
    assert columns(pods) == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert pods.splitlines()[1].split()[:4] == ["web-0", "1/1", "Running", "0"]


@needs_kubectl
def test_kubectl_create_sends_protobuf(kubectl: Kubectl, sim: KubeSimulator) -> None:
    assert kubectl("create", "ns", "proto").stdout.strip() == "namespace/proto created"
    kubectl("create", "secret", "generic", "s", "--from-literal=k=v", "-n", "proto")
    kubectl("create", "configmap", "c", "--from-literal=a=b", "-n", "proto")
    for path in (
        "/api/v1/namespaces",
        "/api/v1/namespaces/proto/secrets",
        "/api/v1/namespaces/proto/configmaps",
    ):
        (post,) = recorded(sim, "POST", path)
        assert post.content_type == kube_protobuf.CONTENT_TYPE
        assert post.body.startswith(kube_protobuf.MAGIC)
        assert post.params["fieldManager"] == ["kubectl-create"]
    secret_body = recorded(sim, "POST", "/api/v1/namespaces/proto/secrets")[0].body
    decoded = kube_protobuf.decode_object(kube_protobuf.decode_envelope(secret_body))
    assert decoded["data"] == {"k": "dg=="}
    out = kubectl("get", "secret", "s", "-n", "proto", "-o", "yaml").stdout
    assert "k: dg==" in out and "type: Opaque" in out
    table = kubectl("get", "secrets", "-n", "proto").stdout
    assert columns(table) == ["NAME", "TYPE", "DATA", "AGE"]
    assert table.splitlines()[1].split()[:3] == ["s", "Opaque", "1"]
    assert columns(kubectl("get", "cm", "-n", "proto").stdout) == ["NAME", "DATA", "AGE"]
    missing = kubectl(
        "create", "secret", "generic", "t", "--from-literal=a=b", "-n", "nope", check=False
    )
    assert missing.returncode == 1 and 'namespaces "nope" not found' in missing.stderr


@needs_kubectl
def test_kubectl_apply_twice_then_delete(
    kubectl: Kubectl, sim: KubeSimulator, tmp_path: pathlib.Path
) -> None:
    manifest = tmp_path / "secret.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: applied\n  namespace: sandbox\n"
        "  labels: {v: one}\nstringData:\n  user: admin\n  pass: one\n"
    )
    assert kubectl("apply", "-f", str(manifest)).stdout.strip() == "secret/applied created"
    manifest.write_text(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: applied\n  namespace: sandbox\n"
        "  labels: {w: two}\nstringData:\n  pass: two\n"
    )
    second = kubectl("apply", "-f", str(manifest))
    assert second.stdout.strip() == "secret/applied configured"
    assert second.stderr == ""
    (create,) = recorded(sim, "POST", "/api/v1/namespaces/sandbox/secrets")
    assert create.params["fieldManager"] == ["kubectl-client-side-apply"]
    assert create.params["fieldValidation"] == ["Strict"]
    (patch,) = recorded(sim, "PATCH", "/api/v1/namespaces/sandbox/secrets/applied")
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert patch.params["fieldValidation"] == ["Strict"]
    assert any(r.path == "/openapi/v3/api/v1" for r in sim.requests)
    assert not any(r.path.startswith("/openapi/v2") for r in sim.requests)
    stored = sim.store.get(SECRETS, "sandbox", "applied")
    assert json.loads(patch.body)["stringData"] == {"pass": "two", "user": None}
    # As on a real apiserver: stringData is folded into data on write, so dropping a stringData
    # key from the manifest does not remove the data key.
    assert stored["data"] == {"pass": base64.b64encode(b"two").decode(), "user": "YWRtaW4="}
    assert stored["metadata"]["labels"] == {"w": "two"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in stored["metadata"]["annotations"]
    manifest.write_text(manifest.read_text() + "bogus: 1\n")
    rejected = kubectl("apply", "-f", str(manifest), check=False)
    assert rejected.returncode == 1 and 'unknown field "bogus"' in rejected.stderr
    assert "deleted" in kubectl("delete", "secret", "applied", "-n", "sandbox").stdout
    assert recorded(sim, "DELETE", "/api/v1/namespaces/sandbox/secrets/applied")
    assert sim.store.find(SECRETS, "sandbox", "applied") is None


@needs_kubectl
def test_kubectl_apply_deployment_and_scale(
    kubectl: Kubectl, sim: KubeSimulator, tmp_path: pathlib.Path
) -> None:
    def manifest(image: str, env: str) -> str:
        return (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api, namespace: sandbox}\n"
            "spec:\n  replicas: 2\n  selector: {matchLabels: {app: api}}\n  template:\n"
            "    metadata: {labels: {app: api}}\n    spec:\n      containers:\n"
            f"      - name: api\n        image: {image}\n        env: [{{name: A, value: '{env}'}}]\n"
            "        livenessProbe: {httpGet: {path: /healthz, port: 8080}}\n"
            "      - {name: sidecar, image: 'side:1'}\n"
        )

    path = tmp_path / "deploy.yaml"
    path.write_text(manifest("api:1", "1"))
    kubectl("apply", "-f", str(path))
    path.write_text(manifest("api:2", "2"))
    assert kubectl("apply", "-f", str(path)).stderr == ""
    containers = sim.store.get(DEPLOYMENTS, "sandbox", "api")["spec"]["template"]["spec"][
        "containers"
    ]
    assert [(c["name"], c["image"]) for c in containers] == [
        ("api", "api:2"),
        ("sidecar", "side:1"),
    ]
    assert containers[0]["env"] == [{"name": "A", "value": "2"}]
    kubectl("scale", "deploy/api", "-n", "sandbox", "--replicas=4")
    assert sim.store.get(DEPLOYMENTS, "sandbox", "api")["spec"]["replicas"] == 4
    out = kubectl("get", "deploy", "-n", "sandbox").stdout
    assert columns(out) == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert out.splitlines()[1].split()[:4] == ["api", "4/4", "4", "4"]
    kubectl("delete", "deploy", "api", "-n", "sandbox")


@needs_kubectl
def test_kubectl_watch_streams_table_events(kubectl: Kubectl, sim: KubeSimulator) -> None:
    kubectl("create", "ns", "watched")
    process = kubectl.popen("get", "secrets", "-n", "watched", "-w")
    try:
        lines = Lines(process.stdout)  # type: ignore[arg-type]
        deadline = time.monotonic() + 15
        while not any(
            "watch=true" in r.query for r in sim.requests_to("/api/v1/namespaces/watched/secrets")
        ):
            assert time.monotonic() < deadline, "kubectl never started watching"
            time.sleep(0.05)
        sim.store.create(
            SECRETS, "watched", {"metadata": {"name": "live"}, "stringData": {"a": "b"}}
        )
        row = lines.wait_for(lambda line: line.startswith("live"))
        assert row.split()[:3] == ["live", "Opaque", "1"]
        assert lines.seen[0].split() == ["NAME", "TYPE", "DATA", "AGE"]
    finally:
        stop(process)
    watch = next(
        r for r in sim.requests_to("/api/v1/namespaces/watched/secrets") if "watch=true" in r.query
    )
    assert "as=Table" in watch.headers["accept"]
    assert watch.params["resourceVersion"][0].isdigit()


@needs_kubectl
def test_kubectl_exec_over_websocket(kubectl: Kubectl, sim: KubeSimulator) -> None:
    result = kubectl("exec", "web-0", "-n", "sandbox", "--", "echo", "hello")
    assert result.stdout == "hello\n"
    exec_request = next(r for r in sim.requests if r.path.endswith("/pods/web-0/exec"))
    assert exec_request.method == "GET"
    assert exec_request.params["command"] == ["echo", "hello"]
    assert exec_request.headers["upgrade"].lower() == "websocket"
    assert exec_request.headers["sec-websocket-protocol"] == "v5.channel.k8s.io"
    assert exec_request.headers["kubectl-command"] == "kubectl exec"
    failed = kubectl("exec", "web-0", "-n", "sandbox", "--", "sh", "-c", "exit 3", check=False)
    assert failed.returncode == 3
    assert "command terminated with exit code 3" in failed.stderr
    unknown = kubectl("exec", "web-0", "-n", "prod", "--", "nosuchcmd", check=False)
    assert unknown.returncode == 127 and "command not found" in unknown.stderr
    echoed = kubectl("exec", "-i", "web-0", "-n", "sandbox", "--", "cat", stdin="from stdin\n")
    assert echoed.stdout == "from stdin\n"
    # The server records a session when its side closes, which may be just after kubectl exits.
    deadline = time.monotonic() + 10
    while len(sim.execs) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [(e.pod, e.command, e.exit_code) for e in sim.execs] == [
        ("web-0", ("echo", "hello"), 0),
        ("web-0", ("sh", "-c", "exit 3"), 3),
        ("web-0", ("nosuchcmd",), 127),
        ("web-0", ("cat",), 0),
    ]
    assert sim.execs[-1].stdin == b"from stdin\n"
    assert {e.protocol for e in sim.execs} == {"v5.channel.k8s.io"}


@needs_kubectl
def test_kubectl_logs_follow(kubectl: Kubectl, sim: KubeSimulator) -> None:
    assert "Ready to serve requests" in kubectl("logs", "web-0", "-n", "prod").stdout
    process = kubectl.popen("logs", "-f", "web-0", "-n", "prod")
    try:
        lines = Lines(process.stdout)  # type: ignore[arg-type]
        lines.wait_for(lambda line: "Ready to serve" in line)
        sim.append_log("prod", "web-0", "a live line")
        assert lines.wait_for(lambda line: "live" in line) == "a live line\n"
    finally:
        stop(process)


@needs_kubectl
def test_kubectl_wrong_token_is_unauthorized(kubectl: Kubectl, sim: KubeSimulator) -> None:
    result = kubectl("get", "ns", "--token", "wrong", check=False)
    assert result.returncode == 1
    assert "must be logged in" in result.stderr or "Unauthorized" in result.stderr
    assert sim.requests and all(r.headers["authorization"] == "Bearer wrong" for r in sim.requests)


# ---------------------------------------------------------------- the kubernetes Python client


@pytest.fixture
def core_v1(sim: KubeSimulator, tmp_path: pathlib.Path) -> Iterator[Any]:
    from kubernetes import client, config

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(sim.kubeconfig())
    with config.new_client_from_config(config_file=str(kubeconfig)) as api:
        yield client.CoreV1Api(api)


def test_python_client_crud(core_v1: Any, sim: KubeSimulator) -> None:
    from kubernetes import client

    sim.clear_requests()
    assert {"default", "prod", "sandbox"} <= {
        n.metadata.name for n in core_v1.list_namespace().items
    }
    body = client.V1Secret(metadata=client.V1ObjectMeta(name="py"), string_data={"k": "v"})
    created = core_v1.create_namespaced_secret("sandbox", body)
    assert created.data == {"k": "dg=="} and created.metadata.uid
    assert core_v1.read_namespaced_secret("py", "sandbox").data == {"k": "dg=="}
    assert [p.metadata.name for p in core_v1.list_namespaced_pod("sandbox").items] == ["web-0"]
    status = core_v1.delete_namespaced_secret("py", "sandbox")
    assert status.status == "Success" and status.details.name == "py"
    with pytest.raises(client.ApiException) as missing:
        core_v1.read_namespaced_secret("py", "sandbox")
    assert missing.value.status == 404
    post = recorded(sim, "POST", "/api/v1/namespaces/sandbox/secrets")[0]
    assert post.content_type == "application/json"
    assert json.loads(post.body)["stringData"] == {"k": "v"}
    assert all(r.headers["accept"] == "application/json" for r in sim.requests)


def test_python_client_exec_and_watch(core_v1: Any, sim: KubeSimulator) -> None:
    from kubernetes import watch
    from kubernetes.stream import stream

    output = stream(
        core_v1.connect_get_namespaced_pod_exec,
        "web-0",
        "sandbox",
        command=["hostname"],
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )
    assert output == "web-0\n"
    events = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(core_v1.list_namespaced_secret, "prod", timeout_seconds=1)
    ]
    assert ("ADDED", "db-credentials") in events


# ---------------------------------------------------------------- on an existing loop


async def test_runs_on_the_callers_loop_and_stop_ends_streams(tmp_path: pathlib.Path) -> None:
    simulator = KubeSimulator(token=TOKEN, cert_dir=tmp_path / "certs")
    await simulator.start()
    try:
        context = ssl.create_default_context(cafile=str(simulator.ca_path))
        headers = {"Authorization": f"Bearer {TOKEN}", "Accept": TABLE}
        async with aiohttp.ClientSession(headers=headers) as session:
            url = f"{simulator.url}/api/v1/namespaces/prod/configmaps"
            async with session.get(url, ssl=context) as listing:
                rv = (await listing.json())["metadata"]["resourceVersion"]
            async with session.get(
                url, params={"watch": "1", "resourceVersion": rv}, ssl=context
            ) as watching:
                assert watching.headers["Content-Type"] == "application/json"
                simulator.store.create(SECRETS, "prod", {"metadata": {"name": "other"}})
                async with session.post(
                    url, json={"metadata": {"name": "one"}}, ssl=context
                ) as created:
                    assert created.status == 201
                async with session.patch(
                    f"{url}/one",
                    json={"data": {"a": "b"}},
                    headers={"Content-Type": "application/merge-patch+json"},
                    ssl=context,
                ) as patched:
                    assert patched.status == 200
                first = json.loads(await asyncio.wait_for(watching.content.readline(), 10))
                second = json.loads(await asyncio.wait_for(watching.content.readline(), 10))
                assert first["type"] == "ADDED" and first["object"]["kind"] == "Table"
                assert first["object"]["rows"][0]["cells"][0] == "one"
                assert first["object"]["columnDefinitions"][0]["name"] == "Name"
                assert (
                    second["type"] == "MODIFIED" and second["object"]["columnDefinitions"] is None
                )
                await asyncio.wait_for(simulator.stop(), 10)
                assert await asyncio.wait_for(watching.content.read(), 10) == b""
    finally:
        await simulator.stop()


def test_watch_with_initial_events_ends_with_a_bookmark(http: httpx.Client) -> None:
    params = {
        "watch": "true",
        "sendInitialEvents": "true",
        "resourceVersionMatch": "NotOlderThan",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "1",
    }
    with http.stream("GET", "/api/v1/namespaces/prod/secrets", params=params) as response:
        events = [json.loads(line) for line in response.iter_lines() if line]
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[0]["object"]["metadata"]["name"] == "db-credentials"
    bookmark = events[1]["object"]["metadata"]
    assert bookmark["annotations"] == {"k8s.io/initial-events-end": "true"}


@needs_kubectl
def test_stop_ends_live_exec_and_log_streams(tmp_path: pathlib.Path) -> None:
    with running_simulator(TOKEN, tmp_path / "certs") as simulator:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(simulator.kubeconfig())
        client = Kubectl(kubeconfig, tmp_path)
        cat = subprocess.Popen(
            client.argv("exec", "-i", "web-0", "-n", "sandbox", "--", "cat"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=client.env,
        )
        follow = client.popen("logs", "-f", "web-0", "-n", "sandbox")
        try:
            assert cat.stdin is not None
            cat.stdin.write("still open\n")
            cat.stdin.flush()
            echoed = Lines(cat.stdout)  # type: ignore[arg-type]
            echoed.wait_for(lambda line: line == "still open\n")
            Lines(follow.stdout).wait_for(lambda line: "Ready" in line)  # type: ignore[arg-type]
        except BaseException:
            stop(cat)
            stop(follow)
            raise
    try:
        assert follow.wait(timeout=15) == 0
        assert cat.wait(timeout=15) != 0
    finally:
        stop(cat)
        stop(follow)


def test_body_and_header_limits_match_the_apiserver(http: httpx.Client) -> None:
    url = "/api/v1/namespaces/sandbox/configmaps"
    big_header = http.get(url, headers={"X-Padding": "p" * 30000})
    assert big_header.status_code == 200
    too_large = http.post(url, content=b"{" + b" " * (3 * 1024 * 1024) + b"}")
    assert too_large.status_code == 413
    assert too_large.json()["reason"] == "RequestEntityTooLarge"
