"""Held requests end to end: kubectl waits at the real gateway until the approvals API decides."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from holdgate.approvals.page import token_digest
from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import (
    BIN,
    KUBECTL,
    GatewayProcess,
    Page,
    kube_target,
    kubectl,
    page_address,
    start_gateway,
    trust,
    write_agent_kubeconfig,
)

ALICE, BOB, CAROL = "alice-token-1", "bob-token-2", "carol-token-3"

RULES = """
rules:
  - id: reads
    action: allow
    verbs: [get, list, watch]
    resources: ["*"]
    apiGroups: ["*"]
  - id: discovery
    action: allow
    verbs: [get]
    nonResourceURLs: [/api, /api/*, /apis, /apis/*, /version, /openapi/*]
  - id: hold-secrets
    description: Secrets need a human
    action: approve
    resources: [secrets]
    verbs: [create]
    reviewers: [local:admin, local:alice]
    timeout: 2m
  - id: hold-configmaps-two-of-three
    description: Two people must agree
    action: approve
    resources: [configmaps]
    verbs: [create]
    reviewers: [local:alice, local:bob, local:carol]
    required: 2
  - id: hold-expiring
    action: approve
    resources: [configmaps]
    verbs: [delete]
    reviewers: [local:admin]
    timeout: 2s
  - id: hold-with-window
    action: approve
    resources: [pods]
    verbs: [delete]
    reviewers: [local:admin]
    window: 10m
  - id: hold-needs-a-reason
    action: approve
    resources: [services]
    verbs: [create]
    reviewers: [local:admin]
    require_reason: true
"""


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, simulator: KubeSimulator
) -> Iterator[GatewayProcess]:
    home = tmp_path_factory.mktemp("approvals")
    approvals = {
        "page": {"listen_host": "127.0.0.1", "listen_port": 0},
        "local_reviewers": {
            "alice": {"token_sha256": token_digest(ALICE)},
            "bob": {"token_sha256": token_digest(BOB)},
            "carol": {"token_sha256": token_digest(CAROL)},
        },
    }
    gw = start_gateway(
        home, {"targets": [kube_target(simulator)], "approvals": approvals}, {"r.yaml": RULES}
    )
    yield gw
    gw.stop()


@pytest.fixture
def page(gateway: GatewayProcess) -> Iterator[Page]:
    with Page(*page_address(gateway)) as p:
        yield p


def start_kubectl(kubeconfig: Path, *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    process = subprocess.Popen(
        [KUBECTL, "--kubeconfig", str(kubeconfig), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, []


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


@pytest.fixture
def kubeconfig(tmp_path: Path, gateway: GatewayProcess) -> Path:
    return write_agent_kubeconfig(tmp_path / "agent.kubeconfig", gateway)


def posts(sim: KubeSimulator, path: str) -> int:
    return sum(1 for r in sim.requests if r.method == "POST" and r.path == path)


def test_held_create_secret_approved_reaches_upstream_once(
    kubeconfig: Path, page: Page, simulator: KubeSimulator
) -> None:
    simulator.clear_requests()
    process, _ = start_kubectl(
        kubeconfig, "create", "secret", "generic", "held-1", "-n", "sandbox", "--from-literal=k=v"
    )
    hold = page.wait_pending("hold-secrets")[0]
    assert hold["request"]["kubernetes"]["resource"] == "secrets"
    assert hold["request"]["kubernetes"]["name"] == "held-1"
    # Reviewers see the object, decoded from kubectl's protobuf, with the secret's value masked.
    excerpt = json.loads(hold["request"]["body_excerpt"])
    assert excerpt["metadata"] == {"name": "held-1", "namespace": "sandbox"}
    assert excerpt["data"] == {"k": "Kioq"}  # base64 of "***"
    assert "dg==" not in json.dumps(hold)  # base64 of the value "v"
    assert posts(simulator, "/api/v1/namespaces/sandbox/secrets") == 0
    r = page.decide(hold["id"], True)
    assert r.status_code == 200 and r.json()["outcome"] == "decided"
    code, out, err = finish(process)
    assert code == 0, err
    assert "secret/held-1 created" in out
    assert posts(simulator, "/api/v1/namespaces/sandbox/secrets") == 1
    # A second click is too late and changes nothing.
    again = page.decide(hold["id"], True)
    assert again.status_code == 409
    kubectl(kubeconfig, "delete", "secret", "held-1", "-n", "sandbox")


def test_denied_with_a_reason_never_reaches_upstream(
    kubeconfig: Path, page: Page, simulator: KubeSimulator
) -> None:
    simulator.clear_requests()
    process, _ = start_kubectl(
        kubeconfig, "create", "secret", "generic", "held-2", "-n", "sandbox", "--from-literal=k=v"
    )
    hold = page.wait_pending("hold-secrets")[0]
    assert page.decide(hold["id"], False, token=ALICE).status_code == 400  # a denial needs a reason
    r = page.decide(hold["id"], False, token=ALICE, reason="not during the freeze")
    assert r.status_code == 200
    code, _, err = finish(process)
    assert code != 0
    # kubectl prints create errors as "error: failed to create secret MESSAGE".
    assert "denied by alice (local:alice): not during the freeze" in err
    assert posts(simulator, "/api/v1/namespaces/sandbox/secrets") == 0


def test_two_of_three_and_who_may_approve(
    kubeconfig: Path, page: Page, simulator: KubeSimulator
) -> None:
    simulator.clear_requests()
    process, _ = start_kubectl(
        kubeconfig, "create", "configmap", "two-of-three", "-n", "sandbox", "--from-literal=a=b"
    )
    hold = page.wait_pending("hold-configmaps-two-of-three")[0]
    # The admin is not among this rule's reviewers.
    assert page.decide(hold["id"], True).status_code == 403
    assert page.decide(hold["id"], True, token=ALICE).json()["outcome"] == "recorded"
    assert page.decide(hold["id"], True, token=ALICE).json()["outcome"] == "duplicate"
    assert page.pending()[0]["approvals"] == 1
    assert posts(simulator, "/api/v1/namespaces/sandbox/configmaps") == 0
    assert page.decide(hold["id"], True, token=CAROL).json()["outcome"] == "decided"
    code, out, err = finish(process)
    assert code == 0, err
    assert posts(simulator, "/api/v1/namespaces/sandbox/configmaps") == 1
    kubectl(kubeconfig, "delete", "configmap", "two-of-three", "-n", "sandbox")


def test_expiry_answers_the_agent(kubeconfig: Path, page: Page) -> None:
    kubectl(
        kubeconfig, "delete", "configmap", "nothing-here", "-n", "sandbox"
    )  # warm discovery cache
    code, _, err = finish(
        start_kubectl(kubeconfig, "delete", "configmap", "kube-root-ca.crt", "-n", "sandbox")[0]
    )
    assert code != 0
    assert re.search(r"approval expired after \ds without a decision", err), err


def test_client_giving_up_cancels_the_hold(
    kubeconfig: Path, page: Page, gateway: GatewayProcess
) -> None:
    process, _ = start_kubectl(
        kubeconfig,
        "create",
        "secret",
        "generic",
        "abandoned",
        "-n",
        "sandbox",
        "--from-literal=k=v",
    )
    hold = page.wait_pending("hold-secrets")[0]
    process.kill()
    process.wait(timeout=10)
    gateway.wait_for_output(
        rf"hold {hold['id']} cancelled: .*cancelled: the client disconnected while waiting"
    )
    assert all(h["id"] != hold["id"] for h in page.pending())


def test_approval_window_covers_identical_requests(
    tmp_path: Path, page: Page, gateway: GatewayProcess
) -> None:
    base = "https://kubernetes.default.svc/api/v1/namespaces/sandbox/pods/not-there"
    with httpx.Client(proxy=gateway.proxy_url, verify=trust(gateway), timeout=60) as agent:
        result: dict[str, httpx.Response] = {}
        thread = threading.Thread(
            target=lambda: result.update(
                first=agent.delete(base, headers={"Authorization": "Bearer sim-token-7f3a"})
            )
        )
        thread.start()
        hold = page.wait_pending("hold-with-window")[0]
        assert hold["window_seconds"] == 600
        page.decide(hold["id"], True)
        thread.join(timeout=30)
        assert result["first"].status_code == 404  # upstream answered: the pod does not exist
        second = agent.delete(base, headers={"Authorization": "Bearer sim-token-7f3a"})
        assert second.status_code == 404  # covered by the window: no new hold
    gateway.wait_for_output(rf"covered by the approval window of hold {hold['id']}")


def test_cli_lists_and_approves(kubeconfig: Path, page: Page, gateway: GatewayProcess) -> None:
    process, _ = start_kubectl(
        kubeconfig, "create", "secret", "generic", "via-cli", "-n", "sandbox", "--from-literal=k=v"
    )
    hold = page.wait_pending("hold-secrets")[0]
    cli = [str(BIN / "holdgate"), "approvals", "--config", str(gateway.home / "holdgate.yaml")]
    listed = subprocess.run([*cli, "list"], capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert hold["id"] in listed.stdout and "hold-secrets" in listed.stdout
    # What the hold is about, at a glance: verb, resource, name, namespace.
    assert "create secrets via-cli -n sandbox" in listed.stdout
    denied = subprocess.run(
        [*cli, "--token", BOB, "approve", hold["id"]], capture_output=True, text=True, timeout=30
    )
    assert denied.returncode == 1 and "not one of this request's reviewers" in denied.stdout
    approved = subprocess.run(
        [*cli, "approve", hold["id"]], capture_output=True, text=True, timeout=30
    )
    assert approved.returncode == 0 and "approved by admin (local:admin)" in approved.stdout
    code, _, err = finish(process)
    assert code == 0, err
    kubectl(kubeconfig, "delete", "secret", "via-cli", "-n", "sandbox")


def test_page_requires_a_token_and_csrf(page: Page) -> None:
    assert page.client.get(f"{page.url}/api/holds").status_code == 401
    assert (
        page.client.get(
            f"{page.url}/api/holds", headers={"Authorization": "Bearer wrong"}
        ).status_code
        == 401
    )
    # A cookie alone cannot change state: cross-site forms cannot add the CSRF header.
    with httpx.Client(cookies={"holdgate_token": page.admin}, trust_env=False) as browser:
        assert browser.post(f"{page.url}/api/holds/x/approve").status_code == 403
        assert browser.get(f"{page.url}/api/holds").status_code == 200


def test_metrics(kubeconfig: Path, page: Page) -> None:
    # Its own approved hold: the test does not depend on which tests ran before it.
    process, _ = start_kubectl(
        kubeconfig, "create", "secret", "generic", "metered", "-n", "sandbox", "--from-literal=k=v"
    )
    hold = page.wait_pending("hold-secrets")[0]
    assert page.decide(hold["id"], True).status_code == 200
    code, _, err = finish(process)
    assert code == 0, err
    text = page.client.get(f"{page.url}/metrics").text
    assert "holdgate_holds_pending" in text
    assert 'holdgate_hold_decisions_total{outcome="approved",rule="hold-secrets"}' in text
    assert "holdgate_hold_wait_seconds_bucket" in text
    assert 'holdgate_requests_total{action="approve"' in text


def test_a_rule_that_requires_a_reason_refuses_at_once_without_one(
    gateway: GatewayProcess, page: Page, simulator: KubeSimulator
) -> None:
    url = "https://kubernetes.default.svc/api/v1/namespaces/sandbox/services"
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "why-svc"}}
    headers = {"Authorization": "Bearer sim-token-7f3a"}
    with httpx.Client(proxy=gateway.proxy_url, verify=trust(gateway), timeout=60) as agent:
        refused = agent.post(url, json=body, headers=headers)
        assert refused.status_code == 403
        assert "X-Holdgate-Reason" in refused.json()["message"]
        assert not [h for h in page.pending() if h["rule"] == "hold-needs-a-reason"]
        result: dict[str, httpx.Response] = {}
        thread = threading.Thread(
            target=lambda: result.update(
                r=agent.post(url, json=body, headers={**headers, "X-Holdgate-Reason": "OPS-42"})
            )
        )
        thread.start()
        hold = page.wait_pending("hold-needs-a-reason")[0]
        assert hold["request"]["reason"] == "OPS-42"
        assert page.decide(hold["id"], True).status_code == 200
        thread.join(timeout=30)
    assert result["r"].status_code == 404  # the simulator serves no Services: it went upstream
    assert posts(simulator, "/api/v1/namespaces/sandbox/services") == 1  # the reasoned one only
