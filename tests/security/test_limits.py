"""Everything is bounded: request heads, request bodies, and requests held for approval."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import GatewayProcess, Page, kube_target, page_address, start_gateway, trust
from tests.security.peers import static_agents

AGENT, TOKEN = "ci-bot", "agent-token-0b9c"
RULES = """
rules:
  - id: writes
    action: allow
    resources: [configmaps]
    verbs: [create]
    namespaces: [sandbox]
  - id: hold-secrets
    action: approve
    resources: [secrets]
    verbs: [create]
    namespaces: [sandbox]
    reviewers: [local:admin]
    timeout: 60s
"""
JUNK = "X-Junk-Canary-6e1f: " + "j" * 100


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, simulator: KubeSimulator
) -> Iterator[GatewayProcess]:
    config = {
        "identity": static_agents(**{AGENT: TOKEN, "other": "other-token"}),
        "approvals": {
            "page": {"listen_host": "127.0.0.1", "listen_port": 0},
            "max_pending_per_agent": 2,
        },
        "targets": [kube_target(simulator)],
    }
    gw = start_gateway(tmp_path_factory.mktemp("limits"), config, {"r.yaml": RULES})
    yield gw
    gw.stop()


def client(gateway: GatewayProcess, agent: str = AGENT, token: str = TOKEN) -> httpx.Client:
    return httpx.Client(
        proxy=f"http://{agent}:{token}@127.0.0.1:{gateway.port}",
        verify=trust(gateway),
        timeout=60,
    )


def test_an_endless_request_head_is_cut_off_and_not_logged(gateway: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as sock:
        sock.sendall(b"CONNECT kubernetes.default.svc:443 HTTP/1.1\r\n")
        answer = b""
        try:
            for _ in range(200):  # 2 MB of header lines, never terminated
                sock.sendall((JUNK + "\r\n").encode() * 100)
        except OSError:
            pass  # the gateway closed the connection: what it should do
        sock.settimeout(10)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    output = gateway.output()
    assert output.count("j" * 100) <= 5, "the unfinished head was written to the log"


def test_a_body_over_the_apiservers_limit_never_goes_upstream(
    gateway: GatewayProcess, simulator: KubeSimulator
) -> None:
    simulator.clear_requests()
    big = b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"big"},"data":{"a":"'
    big += b"x" * (4 << 20) + b'"}}'
    with client(gateway) as c:
        r = c.post(
            "https://kubernetes.default.svc/api/v1/namespaces/sandbox/configmaps",
            content=big,
            headers={"Content-Type": "application/json"},
        )
    assert r.status_code == 413, r.text[:300]
    assert r.json()["reason"] == "RequestEntityTooLarge"
    assert not simulator.requests_to("/api/v1/namespaces/sandbox/configmaps")


def test_one_agent_cannot_flood_reviewers_with_holds(
    gateway: GatewayProcess, simulator: KubeSimulator
) -> None:
    url, token = page_address(gateway)
    simulator.clear_requests()
    results: dict[int, httpx.Response] = {}
    errors: dict[int, BaseException] = {}

    def create(i: int, who: tuple[str, str] = (AGENT, TOKEN)) -> None:
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"flood-{i}"}}
        try:
            with client(gateway, *who) as c:
                results[i] = c.post(
                    "https://kubernetes.default.svc/api/v1/namespaces/sandbox/secrets", json=body
                )
        except httpx.HTTPError as e:
            errors[i] = e

    threads = [threading.Thread(target=create, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    with Page(url, token) as page:
        held = page.wait_pending("hold-secrets", count=2)
        create(2)  # a third while two are pending: refused at once, nobody notified
        assert results[2].status_code == 429, results[2].text
        assert results[2].headers["Retry-After"]
        assert "waiting for approval" in results[2].json()["message"]
        assert len(page.pending()) == 2
        # Another agent is not affected by this one's limit.
        other = threading.Thread(target=create, args=(3, ("other", "other-token")))
        other.start()
        page.wait_pending("hold-secrets", count=3)
        for hold in page.pending():
            page.decide(hold["id"], approve=False, reason="flood test")
        other.join(timeout=30)
    for t in threads:
        t.join(timeout=30)
    assert len(held) == 2
    assert not errors, f"{errors}\n{gateway.output()[-4000:]}"
    assert all(results[i].status_code == 403 for i in (0, 1, 3))
    assert not [
        r
        for r in simulator.requests_to("/api/v1/namespaces/sandbox/secrets", "POST")
        if b"flood-" in r.body
    ]
