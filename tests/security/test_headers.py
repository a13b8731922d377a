"""Headers that change who acts or what is done are decided or dropped, never forwarded as sent.

Impersonation through the gateway's own credential, front-proxy identity headers and method
overrides: kubectl, the kubernetes Python client and httpx send them; the simulator and a
recording server say what arrived.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import kubernetes
import pytest

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
from tests.security.peers import RecordingServer, recording_server, static_agents

AGENT, AGENT_TOKEN = "ci-bot", "agent-token-77ab"
RULES = """
rules:
  - id: reads
    action: allow
    resources: ["*"]
    apiGroups: ["*"]
    verbs: [get, list, watch]
  - id: act-as-deployer
    action: allow
    verbs: [impersonate]
    resources: [users]
    resourceNames: [deployer]
  - id: act-as-ci-account
    action: allow
    verbs: [impersonate]
    resources: [serviceaccounts]
    namespaces: [ci]
  - id: deny-masters
    action: deny
    message: nobody acts as a cluster admin
    verbs: [impersonate]
    resources: [groups]
    resourceNames: [system:masters]
  - id: api-gets
    action: allow
    targets: [api]
    methods: [GET]
    paths: ["/items/*"]
"""


@dataclass
class Setup:
    gateway: GatewayProcess
    api: RecordingServer
    kubeconfig: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, simulator: KubeSimulator) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("headers")
    (home / "upstream-token").write_text(SIM_TOKEN)
    with recording_server("127.0.0.1", cert_dir=home / "api-tls") as api:
        assert api.tls is not None
        config = {
            "identity": static_agents(**{AGENT: AGENT_TOKEN}),
            "targets": [
                kube_target(
                    simulator, credential={"bearer_token_file": str(home / "upstream-token")}
                ),
                {
                    "name": "api",
                    "kind": "http",
                    "hosts": ["api.test"],
                    "upstream": api.url,
                    "ca": str(api.tls.ca_cert),
                },
            ],
        }
        gateway = start_gateway(home / "gw", config, {"rules.yaml": RULES})
        try:
            kubeconfig = write_agent_kubeconfig(home / "kubeconfig", gateway, token="placeholder")
            text = kubeconfig.read_text().replace(
                f"http://127.0.0.1:{gateway.port}",
                f"http://{AGENT}:{AGENT_TOKEN}@127.0.0.1:{gateway.port}",
            )
            kubeconfig.write_text(text)
            yield Setup(gateway, api, kubeconfig)
        finally:
            gateway.stop()


@pytest.fixture
def s(setup: Setup, simulator: KubeSimulator) -> Setup:
    simulator.clear_requests()
    setup.api.received.clear()
    return setup


def impersonated(sim: KubeSimulator) -> list[dict[str, str]]:
    return [
        {k: v for k, v in r.headers.items() if k.startswith("impersonate-")}
        for r in sim.requests
        if any(k.startswith("impersonate-") for k in r.headers)
    ]


def test_kubectl_as_cluster_admin_is_refused(s: Setup, simulator: KubeSimulator) -> None:
    result = kubectl(
        s.kubeconfig, "--as=system:admin", "--as-group=system:masters", "get", "pods", "-n", "ci"
    )
    assert result.returncode != 0
    assert "impersonation" in result.stderr, result.stderr
    assert not simulator.requests_to("/api/v1/namespaces/ci/pods")
    assert not impersonated(simulator)


def test_unnamed_user_refused_by_default(s: Setup, simulator: KubeSimulator) -> None:
    # No rule names this user: refused, although the read itself is allowed.
    result = kubectl(s.kubeconfig, "--as=alice", "get", "pods", "-n", "ci")
    assert result.returncode != 0 and 'users "alice"' in result.stderr, result.stderr
    assert not impersonated(simulator)


def test_named_impersonation_passes_with_its_headers(s: Setup, simulator: KubeSimulator) -> None:
    result = kubectl(s.kubeconfig, "--as=deployer", "get", "pods", "-n", "ci")
    assert result.returncode == 0, result.stderr
    assert impersonated(simulator) and all(
        h == {"impersonate-user": "deployer"} for h in impersonated(simulator)
    )


def test_service_account_impersonation_is_namespaced(s: Setup, simulator: KubeSimulator) -> None:
    ok = kubectl(s.kubeconfig, "--as=system:serviceaccount:ci:builder", "get", "pods", "-n", "ci")
    assert ok.returncode == 0, ok.stderr
    refused = kubectl(
        s.kubeconfig, "--as=system:serviceaccount:prod:admin", "get", "pods", "-n", "ci"
    )
    assert refused.returncode != 0
    users = [h.get("impersonate-user") for h in impersonated(simulator)]
    assert "system:serviceaccount:ci:builder" in users
    assert "system:serviceaccount:prod:admin" not in users


def test_extra_and_uid_impersonation_refused_by_default(s: Setup, simulator: KubeSimulator) -> None:
    client = _python_client(s)
    for header, value in (("Impersonate-Uid", "1234"), ("Impersonate-Extra-Scopes", "admin")):
        headers = {"Impersonate-User": "deployer", header: value}
        with pytest.raises(kubernetes.client.ApiException) as refused:
            client.list_namespaced_pod("ci", _headers=headers)
        assert refused.value.status == 403
    assert not impersonated(simulator)


def test_front_proxy_identity_headers_are_dropped(s: Setup, simulator: KubeSimulator) -> None:
    client = _python_client(s)
    client.list_namespaced_pod(
        "ci",
        _headers={
            "X-Remote-User": "system:admin",
            "X-Remote-Group": "system:masters",
            "X-Remote-Extra-Scopes": "all",
        },
    )
    received = simulator.requests_to("/api/v1/namespaces/ci/pods")
    assert received
    assert not any(k.startswith("x-remote-") for r in received for k in r.headers)


def test_method_overrides_are_dropped(s: Setup) -> None:
    with httpx.Client(
        proxy=f"http://{AGENT}:{AGENT_TOKEN}@127.0.0.1:{s.gateway.port}",
        verify=trust(s.gateway),
        timeout=20,
    ) as client:
        for name in ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"):
            r = client.get("https://api.test/items/1", headers={name: "DELETE"})
            assert r.status_code == 200
    assert len(s.api.received) == 3
    assert all(r.method == "GET" for r in s.api.received)
    seen = {k for r in s.api.received for k in r.headers}
    assert not seen & {"x-http-method-override", "x-http-method", "x-method-override"}


def test_impersonation_headers_never_reach_http_targets(s: Setup) -> None:
    with httpx.Client(
        proxy=f"http://{AGENT}:{AGENT_TOKEN}@127.0.0.1:{s.gateway.port}",
        verify=trust(s.gateway),
        timeout=20,
    ) as client:
        r = client.get("https://api.test/items/2", headers={"Impersonate-User": "admin"})
        assert r.status_code == 200
    assert s.api.received and "impersonate-user" not in s.api.received[0].headers


def _python_client(s: Setup) -> kubernetes.client.CoreV1Api:
    configuration = kubernetes.client.Configuration()
    configuration.host = "https://kubernetes.default.svc"
    configuration.ssl_ca_cert = str(s.gateway.ca_path)
    configuration.proxy = f"http://127.0.0.1:{s.gateway.port}"
    configuration.proxy_headers = {"Proxy-Authorization": _basic()}
    configuration.api_key = {"authorization": "Bearer placeholder"}
    return kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))


def _basic() -> str:
    return "Basic " + base64.b64encode(f"{AGENT}:{AGENT_TOKEN}".encode()).decode()
