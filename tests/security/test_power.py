"""Power is named: under the shipped example rules, a read rule opens no shell and no proxy."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from holdgate.sandbox.kube_resources import PODS
from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import (
    KUBECTL,
    LOCAL_PAGE,
    ROOT,
    SIM_TOKEN,
    GatewayProcess,
    Page,
    kube_target,
    kubectl,
    page_address,
    start_gateway,
    trust,
    write_agent_kubeconfig,
)


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, simulator: KubeSimulator
) -> Iterator[GatewayProcess]:
    rules = (ROOT / "rules" / "kubernetes.yaml").read_text()
    gw = start_gateway(
        tmp_path_factory.mktemp("power"), {"targets": [kube_target(simulator)]}, {"k.yaml": rules}
    )
    yield gw
    gw.stop()


@pytest.fixture
def kubeconfig(tmp_path: Path, gateway: GatewayProcess, simulator: KubeSimulator) -> Path:
    # A pod in `default`, a namespace the example rules let agents read, not write.
    if simulator.store.find(PODS, "default", "web-0") is None:
        pod = {
            "metadata": {"name": "web-0"},
            "spec": {"containers": [{"name": "web", "image": "nginx"}]},
        }
        simulator.store.create(PODS, "default", pod, manager="test")
    simulator.clear_requests()
    return write_agent_kubeconfig(tmp_path / "kubeconfig", gateway)


def test_a_read_rule_opens_no_shell(kubeconfig: Path, simulator: KubeSimulator) -> None:
    result = kubectl(kubeconfig, "exec", "-n", "default", "web-0", "--", "echo", "hi")
    assert result.returncode != 0
    assert "privileged" in result.stderr, result.stderr
    assert not simulator.requests_to("/api/v1/namespaces/default/pods/web-0/exec")


def test_a_named_shell_rule_still_works(kubeconfig: Path, simulator: KubeSimulator) -> None:
    result = kubectl(kubeconfig, "exec", "-n", "sandbox", "web-0", "--", "echo", "hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hi"


def test_proxy_subresources_are_not_reads(
    gateway: GatewayProcess, kubeconfig: Path, simulator: KubeSimulator
) -> None:
    with httpx.Client(proxy=gateway.proxy_url, verify=trust(gateway), timeout=20) as client:
        auth = {"Authorization": f"Bearer {SIM_TOKEN}"}
        base = "https://kubernetes.default.svc/api/v1"
        for path, rule in (
            ("/namespaces/default/pods/web-0/proxy/metrics", None),
            ("/namespaces/default/services/web/proxy/", None),
            ("/nodes/node-1/proxy/run/prod/web-0/web?cmd=id", "deny-node-proxy"),
        ):
            r = client.get(base + path, headers=auth)
            assert r.status_code == 403, (path, r.text)
            assert r.headers.get("X-Holdgate-Rule") == rule, path
    assert not [r for r in simulator.requests if "/proxy" in r.path]


def test_a_denied_exec_is_asked_once(
    tmp_path_factory: pytest.TempPathFactory, simulator: KubeSimulator
) -> None:
    rules = (
        "rules:\n  - id: reads\n    action: allow\n    resources: ['*']\n    verbs: [get]\n"
        "  - id: approve-exec\n    action: approve\n    resources: [pods/exec]\n"
        "    reviewers: [local:admin]\n    timeout: 60s\n"
    )
    home = tmp_path_factory.mktemp("exec-once")
    config = {
        "targets": [kube_target(simulator)],
        "approvals": LOCAL_PAGE,
    }
    gw = start_gateway(home, config, {"r.yaml": rules})
    try:
        kubeconfig = write_agent_kubeconfig(home / "kubeconfig", gw)
        with Page(*page_address(gw)) as page:
            shell = subprocess.Popen(
                [KUBECTL, "--kubeconfig", str(kubeconfig), "exec", "-n", "prod", "web-0"]
                + ["--", "cat", "/etc/shadow"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")},
            )
            try:
                [hold] = page.wait_pending("approve-exec")
                assert page.decide(hold["id"], approve=False, reason="no").status_code == 200
                _, stderr = shell.communicate(timeout=60)
            finally:
                shell.kill()
            assert shell.returncode != 0 and "no" in stderr
            assert page.pending() == []
        # kubectl's SPDY retry (a POST) was answered by the same decision: asked once.
        assert "also answers kubectl's retry over the other transport (POST)" in gw.output()
        assert not simulator.requests_to("/api/v1/namespaces/prod/pods/web-0/exec")
    finally:
        gw.stop()
