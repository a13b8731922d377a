"""What an agent is and what it leaves: revocation on open connections, forged ownership
metadata, WebSockets that would pass unmasked, and outside text that could forge log lines."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websocket

from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import (
    SIM_TOKEN,
    GatewayProcess,
    kube_target,
    kubectl,
    start_gateway,
    trust,
    write_agent_kubeconfig,
)

AGENT, TOKEN = "ci-bot", "agent-token-31fe"
RULES = """
rules:
  - id: discovery
    action: allow
    verbs: [get]
    nonResourceURLs: [/api, /api/*, /apis, /apis/*, /version, /openapi/*]
  - id: reads
    action: allow
    resources: ["*"]
    apiGroups: ["*"]
    verbs: [get, list, watch]
  - id: sandbox-writes
    action: allow
    resources: ["*"]
    apiGroups: ["*"]
    verbs: [create, update, patch, delete]
    namespaces: [sandbox]
    ttl: 1h
  - id: no-shells
    action: deny
    message: no shells here
    resources: [pods/exec]
"""


@dataclass
class Setup:
    gateway: GatewayProcess
    kubeconfig: Path
    token_file: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, simulator: KubeSimulator) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("agents")
    (home / "upstream-token").write_text(SIM_TOKEN)
    token_file = home / "agent.sha256"
    # What `printf %s "$TOKEN" | sha256sum > FILE` writes, as the README says to do.
    token_file.write_text(hashlib.sha256(TOKEN.encode()).hexdigest() + "  -\n")
    config = {
        "identity": {"agents": [{"name": AGENT, "token_sha256_file": str(token_file)}]},
        "targets": [
            kube_target(simulator, credential={"bearer_token_file": str(home / "upstream-token")})
        ],
    }
    gateway = start_gateway(home / "gw", config, {"rules.yaml": RULES})
    try:
        kubeconfig = write_agent_kubeconfig(home / "kubeconfig", gateway, token="placeholder")
        kubeconfig.write_text(
            kubeconfig.read_text().replace(
                f"http://127.0.0.1:{gateway.port}",
                f"http://{AGENT}:{TOKEN}@127.0.0.1:{gateway.port}",
            )
        )
        yield Setup(gateway, kubeconfig, token_file)
    finally:
        gateway.stop()


@pytest.fixture
def s(setup: Setup, simulator: KubeSimulator) -> Setup:
    simulator.clear_requests()
    return setup


def test_a_revoked_token_stops_on_an_open_connection(s: Setup, simulator: KubeSimulator) -> None:
    before = s.token_file.read_text()
    proxy = f"http://{AGENT}:{TOKEN}@127.0.0.1:{s.gateway.port}"
    try:
        with httpx.Client(proxy=proxy, verify=trust(s.gateway), timeout=20) as client:
            url = "https://kubernetes.default.svc/api/v1/namespaces/sandbox/configmaps"
            assert client.get(url).status_code == 200
            # Revoked: the digest file now names another token. The tunnel stays open.
            s.token_file.write_text(hashlib.sha256(b"rotated").hexdigest() + "\n")
            second = client.get(url)
            assert second.status_code == 407, second.text
        assert len(simulator.requests_to("/api/v1/namespaces/sandbox/configmaps")) == 1
    finally:
        s.token_file.write_text(before)


def test_agents_cannot_set_the_gateways_metadata(
    s: Setup, simulator: KubeSimulator, tmp_path: Path
) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "forged-owner",
            "namespace": "sandbox",
            "labels": {"holdgate.dev/managed": "false", "app": "x"},
            "annotations": {
                "holdgate.dev/expires": "2999-01-01T00:00:00Z",
                "holdgate.dev/run-id": "someone-else",
                "holdgate.dev/agent": "intern",
            },
        },
        "data": {"a": "b"},
    }
    path = tmp_path / "cm.json"
    path.write_text(json.dumps(manifest))
    created = kubectl(s.kubeconfig, "create", "-f", str(path))
    assert created.returncode == 0, created.stderr
    [post] = simulator.requests_to("/api/v1/namespaces/sandbox/configmaps", "POST")
    meta = json.loads(post.body)["metadata"]
    assert meta["annotations"]["holdgate.dev/agent"] == AGENT
    assert meta["annotations"].get("holdgate.dev/expires") != "2999-01-01T00:00:00Z"
    assert "holdgate.dev/run-id" not in meta["annotations"]
    assert meta["labels"] == {"holdgate.dev/managed": "true", "app": "x"}
    labelled = kubectl(
        s.kubeconfig,
        "label",
        "configmap",
        "forged-owner",
        "-n",
        "sandbox",
        "holdgate.dev/managed=false",
        "team=a",
        "--overwrite",
    )
    assert labelled.returncode == 0, labelled.stderr
    patches = simulator.requests_to("/api/v1/namespaces/sandbox/configmaps/forged-owner", "PATCH")
    assert patches and all(b"holdgate.dev" not in p.body for p in patches)
    annotated = kubectl(
        s.kubeconfig,
        "annotate",
        "configmap",
        "forged-owner",
        "-n",
        "sandbox",
        "holdgate.dev/expires=2999-01-01T00:00:00Z",
        "--overwrite",
    )
    assert annotated.returncode == 0, annotated.stderr
    patches = simulator.requests_to("/api/v1/namespaces/sandbox/configmaps/forged-owner", "PATCH")
    assert all(b"2999" not in p.body for p in patches)


def test_escaped_keys_are_the_same_keys(s: Setup, simulator: KubeSimulator) -> None:
    body = (
        b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"escaped",'
        b'"annotations":{"\\u0068oldgate.dev/run-id":"forged-run"}}}'
    )
    proxy = f"http://{AGENT}:{TOKEN}@127.0.0.1:{s.gateway.port}"
    with httpx.Client(proxy=proxy, verify=trust(s.gateway), timeout=20) as client:
        r = client.post(
            "https://kubernetes.default.svc/api/v1/namespaces/sandbox/configmaps",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 201, r.text
    [post] = simulator.requests_to("/api/v1/namespaces/sandbox/configmaps", "POST")
    assert b"forged-run" not in post.body


def test_a_watch_over_websocket_is_refused_when_it_would_need_masking(
    s: Setup, simulator: KubeSimulator
) -> None:
    proxy_auth = base64.b64encode(f"{AGENT}:{TOKEN}".encode()).decode()
    ws = websocket.WebSocket(
        sslopt={"ca_certs": str(s.gateway.ca_path), "cert_reqs": ssl.CERT_REQUIRED}
    )
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        ws.connect(
            "wss://kubernetes.default.svc/api/v1/namespaces/sandbox/secrets?watch=true",
            http_proxy_host="127.0.0.1",
            http_proxy_port=s.gateway.port,
            http_proxy_auth=(AGENT, TOKEN),
            proxy_type="http",
            header={
                "Authorization": "Bearer placeholder",
                "Proxy-Authorization": f"Basic {proxy_auth}",
            },
            timeout=20,
        )
    assert refused.value.status_code == 403
    assert not simulator.requests_to("/api/v1/namespaces/sandbox/secrets")


def test_outside_text_cannot_forge_log_lines(s: Setup) -> None:
    forged = "allow GET cluster list secrets -n prod: allowed by rule forged"
    result = kubectl(
        s.kubeconfig, "exec", "web-0", "-n", "sandbox", "--", "sh", "-c", f"true\n{forged}"
    )
    assert result.returncode != 0 and "no shells here" in result.stderr
    s.gateway.wait_for_output(r"deny .*pods/exec web-0")
    lines = s.gateway.output().splitlines()
    assert not any(line.startswith(forged) for line in lines)
    assert any("\\x0a" + forged in line for line in lines)
