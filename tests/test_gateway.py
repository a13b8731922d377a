"""The real gateway, real TLS, real kubectl and Python clients, the simulator as upstream."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import kubernetes
import pytest
import yaml

from holdgate.kube.protobuf import CONTENT_TYPE as PROTOBUF
from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import (
    BIN,
    KUBECTL,
    SIM_TOKEN,
    GatewayProcess,
    kube_target,
    kubectl,
    start_gateway,
    trust,
    write_agent_kubeconfig,
)

RULES = """
rules:
  - id: allow-discovery
    action: allow
    verbs: [get]
    nonResourceURLs: [/api, /api/*, /apis, /apis/*, /version, /openapi/*]
  - id: allow-reads
    action: allow
    resources: ["*"]
    apiGroups: ["*"]
    verbs: [get, list, watch]
  - id: deny-prod-secrets
    action: deny
    message: secrets in prod are off limits
    resources: [secrets]
    namespaces: [prod]
  - id: allow-sandbox-writes
    action: allow
    resources: ["*"]
    apiGroups: ["*"]
    verbs: [create, update, patch, delete]
    namespaces: [sandbox]
  - id: hold-secret-in-team
    action: approve
    resources: [secrets]
    verbs: [create]
    namespaces: [sandbox]
    resourceNames: [needs-approval]
    reviewers: [local:admin]
  - id: deny-exec-prod
    action: deny
    message: no shells in prod
    resources: [pods/exec]
    namespaces: [prod]
  - id: allow-exec-sandbox
    action: allow
    resources: [pods/exec]
    namespaces: [sandbox]
  - id: api-read
    action: allow
    targets: [api]
    methods: [GET]
    paths: [/version]
"""


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, simulator: KubeSimulator
) -> Iterator[GatewayProcess]:
    home = tmp_path_factory.mktemp("gw")
    api = {
        "name": "api",
        "kind": "http",
        "hosts": ["api.test"],
        "upstream": simulator.url,
        "ca": str(simulator.ca_path),
    }
    gw = start_gateway(
        home, {"targets": [kube_target(simulator), api], "default": "deny"}, {"rules.yaml": RULES}
    )
    yield gw
    gw.stop()


@pytest.fixture
def kubeconfig(tmp_path: Path, gateway: GatewayProcess) -> Path:
    return write_agent_kubeconfig(tmp_path / "agent.kubeconfig", gateway)


@pytest.fixture
def sim(simulator: KubeSimulator) -> KubeSimulator:
    simulator.clear_requests()
    return simulator


def received(sim: KubeSimulator, method: str, path_prefix: str) -> list:
    return [r for r in sim.requests if r.method == method and r.path.startswith(path_prefix)]


def test_kubectl_get_namespaces_is_allowed(kubeconfig: Path, sim: KubeSimulator) -> None:
    result = kubectl(kubeconfig, "get", "ns")
    assert result.returncode == 0, result.stderr
    assert "sandbox" in result.stdout and "prod" in result.stdout
    assert received(sim, "GET", "/api/v1/namespaces")
    # The agent's own token reached the simulator (no injection configured).
    assert (
        received(sim, "GET", "/api/v1/namespaces")[0].headers["authorization"]
        == f"Bearer {SIM_TOKEN}"
    )


def test_denied_read_never_reaches_upstream(kubeconfig: Path, sim: KubeSimulator) -> None:
    result = kubectl(kubeconfig, "get", "secrets", "-n", "prod")
    assert result.returncode != 0
    assert "Error from server (Forbidden)" in result.stderr
    assert "denied by rule deny-prod-secrets: secrets in prod are off limits" in result.stderr
    assert not received(sim, "GET", "/api/v1/namespaces/prod/secrets")


def test_create_secret_sends_protobuf_and_is_classified(
    kubeconfig: Path, sim: KubeSimulator
) -> None:
    result = kubectl(
        kubeconfig, "create", "secret", "generic", "gw-made", "-n", "sandbox", "--from-literal=k=v"
    )
    assert result.returncode == 0, result.stderr
    posts = received(sim, "POST", "/api/v1/namespaces/sandbox/secrets")
    assert posts and posts[0].content_type.startswith(PROTOBUF)
    # The approve rule names a secret: the gateway read the name from the protobuf body.
    held = kubectl(
        kubeconfig,
        "create",
        "secret",
        "generic",
        "needs-approval",
        "-n",
        "sandbox",
        "--from-literal=k=v",
    )
    assert held.returncode != 0
    assert (
        "approval required; no approval channel configured (rule hold-secret-in-team)"
        in held.stderr
    )
    assert len(received(sim, "POST", "/api/v1/namespaces/sandbox/secrets")) == 1
    kubectl(kubeconfig, "delete", "secret", "gw-made", "-n", "sandbox")


def test_apply_get_delete(kubeconfig: Path, sim: KubeSimulator, tmp_path: Path) -> None:
    manifest = tmp_path / "cm.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n  namespace: sandbox\ndata:\n  a: '1'\n"
    )
    result = kubectl(kubeconfig, "apply", "-f", str(manifest))
    assert result.returncode == 0, result.stderr
    manifest.write_text(manifest.read_text().replace("'1'", "'2'"))
    result = kubectl(kubeconfig, "apply", "-f", str(manifest))
    assert result.returncode == 0, result.stderr
    got = kubectl(kubeconfig, "get", "configmap", "applied", "-n", "sandbox", "-o", "json")
    assert json.loads(got.stdout)["data"] == {"a": "2"}
    assert kubectl(kubeconfig, "delete", "configmap", "applied", "-n", "sandbox").returncode == 0
    # Writes outside the sandbox: no rule allows them, the target default refuses.
    manifest.write_text(manifest.read_text().replace("sandbox", "prod"))
    result = kubectl(kubeconfig, "apply", "-f", str(manifest))
    assert result.returncode != 0 and "no rule matched" in result.stderr
    assert not received(sim, "POST", "/api/v1/namespaces/prod/configmaps")


def _lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_watch_streams_live(kubeconfig: Path, sim: KubeSimulator) -> None:
    watch = subprocess.Popen(
        [
            KUBECTL,
            "--kubeconfig",
            str(kubeconfig),
            "get",
            "configmaps",
            "-n",
            "sandbox",
            "-w",
            "-o",
            "name",
            "--request-timeout=60s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _lines(watch)
        # The watch request reached upstream through the gateway...
        created = None
        for _ in range(40):
            if received(sim, "GET", "/api/v1/namespaces/sandbox/configmaps") and any(
                "watch" in r.query for r in sim.requests
            ):
                created = kubectl(kubeconfig, "create", "configmap", "live-event", "-n", "sandbox")
                break
            with contextlib.suppress(queue.Empty):
                lines.get(timeout=0.25)
        assert created is not None and created.returncode == 0, created and created.stderr
        # ...and the event arrives while the stream is still open.
        seen = []
        while True:
            line = lines.get(timeout=15)
            seen.append(line)
            if "live-event" in line:
                break
        assert watch.poll() is None
    finally:
        watch.terminate()
        watch.wait(timeout=10)
        kubectl(kubeconfig, "delete", "configmap", "live-event", "-n", "sandbox")


def test_exec_over_websocket(kubeconfig: Path, sim: KubeSimulator) -> None:
    result = kubectl(
        kubeconfig, "exec", "web-0", "-n", "sandbox", "--", "echo", "through", "the", "gateway"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "through the gateway"
    denied = kubectl(kubeconfig, "exec", "web-0", "-n", "prod", "--", "echo", "hi")
    assert denied.returncode != 0
    assert "no shells in prod" in denied.stderr
    assert not received(sim, "GET", "/api/v1/namespaces/prod/pods/web-0/exec")
    assert not received(sim, "POST", "/api/v1/namespaces/prod/pods/web-0/exec")


def _python_client(gateway: GatewayProcess) -> kubernetes.client.CoreV1Api:
    configuration = kubernetes.client.Configuration()
    configuration.host = "https://kubernetes.default.svc"
    configuration.proxy = gateway.proxy_url
    configuration.ssl_ca_cert = str(gateway.ca_path)
    configuration.api_key = {"BearerToken": SIM_TOKEN}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    return kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))


def test_python_client(gateway: GatewayProcess, sim: KubeSimulator) -> None:
    api = _python_client(gateway)
    names = [ns.metadata.name for ns in api.list_namespace().items]
    assert "sandbox" in names
    with pytest.raises(kubernetes.client.ApiException) as denied:
        api.read_namespaced_secret("anything", "prod")
    assert denied.value.status == 403
    status = json.loads(denied.value.body)
    assert status["kind"] == "Status" and status["reason"] == "Forbidden"
    assert "deny-prod-secrets" in status["message"]
    assert not received(sim, "GET", "/api/v1/namespaces/prod/secrets")


def test_http_target_json_refusal(gateway: GatewayProcess, sim: KubeSimulator) -> None:
    with httpx.Client(proxy=gateway.proxy_url, verify=trust(gateway), timeout=20) as client:
        auth = {"Authorization": f"Bearer {SIM_TOKEN}"}
        ok = client.get("https://api.test/version", headers=auth)
        assert ok.status_code == 200
        denied = client.post("https://api.test/version", json={"x": 1}, headers=auth)
        assert denied.status_code == 403
        assert denied.headers["content-type"] == "application/json"
        assert denied.json()["message"] == "no rule matched; target api default deny"
    assert received(sim, "GET", "/version") and not received(sim, "POST", "/version")


def test_undeclared_host_refused_at_connect(gateway: GatewayProcess) -> None:
    with (
        httpx.Client(proxy=gateway.proxy_url, verify=trust(gateway), timeout=20) as client,
        pytest.raises(httpx.ProxyError) as refused,
    ):
        client.get("https://elsewhere.test/")
    assert "403" in str(refused.value)


def test_bad_input_keeps_the_gateway_serving(gateway: GatewayProcess, sim: KubeSimulator) -> None:
    with httpx.Client(proxy=gateway.proxy_url, verify=trust(gateway), timeout=20) as client:
        base = "https://kubernetes.default.svc"
        auth = {"Authorization": f"Bearer {SIM_TOKEN}"}
        # Unsafe paths are refused, never guessed at.
        # (httpx resolves literal dot segments itself, so they are sent percent-encoded.)
        for path in (
            "/api/v1/namespaces/sandbox/pods/%2e%2e/secrets",
            "/api/v1/namespaces/prod%2Fsecrets",
        ):
            r = client.get(base + path, headers=auth)
            assert r.status_code == 403 and "cannot be classified safely" in r.json()["message"]
        # Garbage protobuf and malformed JSON bodies are refused by policy, not by a crash.
        r = client.post(
            base + "/api/v1/namespaces/prod/configmaps",
            content=b"k8s\x00\xff\xff\xff",
            headers={**auth, "Content-Type": PROTOBUF},
        )
        assert r.status_code == 403
        r = client.post(
            base + "/api/v1/namespaces/prod/configmaps",
            content=b"{" * 10000,
            headers={**auth, "Content-Type": "application/json"},
        )
        assert r.status_code == 403
        # A large body and a large header are carried through when allowed.
        big = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "big"},
            "data": {"blob": "x" * 900_000},
        }
        r = client.post(
            base + "/api/v1/namespaces/sandbox/configmaps",
            json=big,
            headers={**auth, "X-Padding": "p" * 30000},
        )
        assert r.status_code == 201, r.text
        client.delete(base + "/api/v1/namespaces/sandbox/configmaps/big", headers=auth)
        assert client.get(base + "/version", headers=auth).status_code == 200
    assert not received(sim, "GET", "/api/v1/namespaces/sandbox/secrets")
    assert not received(sim, "POST", "/api/v1/namespaces/prod/configmaps")


def test_decisions_are_logged_and_on_the_flow(gateway: GatewayProcess, kubeconfig: Path) -> None:
    kubectl(kubeconfig, "get", "secrets", "-n", "prod")
    gateway.wait_for_output(
        r"deny GET cluster list secrets -n prod: denied by rule deny-prod-secrets"
    )


REWRITE_SCRIPT = """
def request(flow):
    # An operator's script that redirects sandbox Secret reads to prod.
    flow.request.path = flow.request.path.replace("/namespaces/sandbox/secrets", "/namespaces/prod/secrets")
"""


def test_scripts_run_before_the_gateway_decides(tmp_path: Path, simulator: KubeSimulator) -> None:
    script = tmp_path / "rewrite.py"
    script.write_text(REWRITE_SCRIPT)
    gw = start_gateway(
        tmp_path / "gw",
        {"targets": [kube_target(simulator)]},
        {"rules.yaml": RULES.split("  - id: api-read")[0]},
        mitmproxy_args=["-s", str(script)],
    )
    try:
        simulator.clear_requests()
        kubeconfig = write_agent_kubeconfig(tmp_path / "kc", gw)
        result = kubectl(kubeconfig, "get", "secrets", "-n", "sandbox")
        # The gateway decided on what the script made of the request: a prod Secret read.
        assert result.returncode != 0 and "deny-prod-secrets" in result.stderr
        assert not received(simulator, "GET", "/api/v1/namespaces/prod/secrets")
        assert not received(simulator, "GET", "/api/v1/namespaces/sandbox/secrets")
    finally:
        gw.stop()


def test_options_of_request_rewriting_addons_are_refused(gateway: GatewayProcess) -> None:
    # map_remote would rewrite requests after the gateway decided: holdgate run lacks it.
    result = subprocess.run(
        [str(BIN / "holdgate"), "run", "--config", str(gateway.home / "holdgate.yaml")]
        + ["--listen-port", "0", "--", "--set", "map_remote=|example.com|evil.test"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "unknown mitmproxy option(s): map_remote" in result.stderr + result.stdout


def test_hot_reload_and_last_good_policy(tmp_path: Path, simulator: KubeSimulator) -> None:
    rule = (
        "rules:\n  - id: reads\n    action: allow\n    resources: ['*']\n    verbs: [get, list]\n"
    )
    gw = start_gateway(tmp_path, {"targets": [kube_target(simulator)]}, {"r.yaml": rule})
    try:
        kubeconfig = write_agent_kubeconfig(tmp_path / "kc", gw)
        assert kubectl(kubeconfig, "get", "configmaps", "-n", "sandbox").returncode == 0
        rule_file = tmp_path / "rules" / "r.yaml"
        rule_file.write_text(rule.replace("action: allow", "action: deny\n    message: reloaded"))
        gw.wait_for_output("rules reloaded")
        result = kubectl(kubeconfig, "get", "configmaps", "-n", "sandbox")
        assert result.returncode != 0 and "reloaded" in result.stderr
        rule_file.write_text(
            "rules:\n  - id: reads\n    action: allow\n    verbs: [get, destroy]\n"
        )
        gw.wait_for_output(r"r\.yaml:4: .*'destroy' is not one of")
        gw.wait_for_output("last good policy stays in force")
        result = kubectl(kubeconfig, "get", "configmaps", "-n", "sandbox")
        assert result.returncode != 0 and "reloaded" in result.stderr
    finally:
        gw.stop()


def test_hot_reload_refuses_a_change_whose_own_tests_fail(
    tmp_path: Path, simulator: KubeSimulator
) -> None:
    rule = (
        "rules:\n  - id: reads\n    action: allow\n    resources: ['*']\n    verbs: [get, list]\n"
        "tests:\n  - request: GET https://kubernetes.default.svc/api/v1/namespaces/sandbox/configmaps\n"
        "    expect: allow\n"
    )
    gw = start_gateway(tmp_path, {"targets": [kube_target(simulator)]}, {"r.yaml": rule})
    try:
        kubeconfig = write_agent_kubeconfig(tmp_path / "kc", gw)
        assert kubectl(kubeconfig, "get", "configmaps", "-n", "sandbox").returncode == 0
        # Valid YAML, but its own test now fails: refused like a syntax error.
        (tmp_path / "rules" / "r.yaml").write_text(rule.replace("action: allow", "action: deny"))
        gw.wait_for_output("last good policy stays in force")
        gw.wait_for_output("expected allow, got deny")
        assert kubectl(kubeconfig, "get", "configmaps", "-n", "sandbox").returncode == 0
    finally:
        gw.stop()


def test_holdgate_kubeconfig_command(
    tmp_path: Path, gateway: GatewayProcess, sim: KubeSimulator
) -> None:
    source = write_agent_kubeconfig(tmp_path / "src", gateway)
    data = yaml.safe_load(source.read_text())
    del data["clusters"][0]["cluster"]["proxy-url"]
    data["clusters"][0]["cluster"]["certificate-authority-data"] = ""
    source.write_text(yaml.safe_dump(data))
    config = yaml.safe_load((gateway.home / "holdgate.yaml").read_text())
    out = tmp_path / "agent"
    result = subprocess.run(
        [
            str(BIN / "holdgate"),
            "kubeconfig",
            "--config",
            str(gateway.home / "holdgate.yaml"),
            "--kubeconfig",
            str(source),
            "--out",
            str(out),
            "--proxy-url",
            gateway.proxy_url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert config["gateway"]["certs"]
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert kubectl(out, "get", "ns").returncode == 0
