"""Privileged pods by any route: every workload kind, ephemeral containers, host namespaces."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
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

RULES = """
rules:
  - id: discovery
    action: allow
    verbs: [get]
    nonResourceURLs: [/api, /api/*, /apis, /apis/*, /version, /openapi/*]
  - id: sandbox
    action: allow
    apiGroups: ["*"]
    resources: ["*", pods/ephemeralcontainers]
    verbs: [get, list, watch, create, update, patch]
    namespaces: [sandbox]
  - id: unsafe-pods
    action: deny
    message: pods must meet the baseline Pod Security Standard
    apiGroups: ["", apps, batch]
    resources: [pods, pods/ephemeralcontainers, deployments, daemonsets, statefulsets, jobs, cronjobs]
    verbs: [create, update, patch]
    violatesPodSecurity: baseline
"""


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, simulator: KubeSimulator
) -> Iterator[GatewayProcess]:
    gw = start_gateway(
        tmp_path_factory.mktemp("pss"), {"targets": [kube_target(simulator)]}, {"r.yaml": RULES}
    )
    yield gw
    gw.stop()


@pytest.fixture
def kubeconfig(tmp_path: Path, gateway: GatewayProcess, simulator: KubeSimulator) -> Path:
    simulator.clear_requests()
    return write_agent_kubeconfig(tmp_path / "kubeconfig", gateway)


def _template(spec: dict) -> dict:
    return {"metadata": {"labels": {"app": "x"}}, "spec": spec}


NODE_SHELL = {
    "hostPID": True,
    "hostNetwork": True,
    "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
    "containers": [
        {
            "name": "c",
            "image": "busybox",
            "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}},
        }
    ],
}


@pytest.mark.parametrize(
    ("kind", "api", "resource", "spec"),
    [
        ("DaemonSet", "apis/apps/v1", "daemonsets",
         {"selector": {"matchLabels": {"app": "x"}}, "template": _template(NODE_SHELL)}),
        ("Job", "apis/batch/v1", "jobs", {"template": _template({**NODE_SHELL, "restartPolicy": "Never"})}),
        ("CronJob", "apis/batch/v1", "cronjobs",
         {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": _template(NODE_SHELL)}}}),
        ("Pod", "api/v1", "pods", NODE_SHELL),
    ],
)  # fmt: skip
def test_workloads_with_unsafe_pods_are_refused(
    gateway: GatewayProcess,
    kubeconfig: Path,
    simulator: KubeSimulator,
    tmp_path: Path,
    kind: str,
    api: str,
    resource: str,
    spec: dict,
) -> None:
    version = api.removeprefix("apis/").removeprefix("api/")
    manifest = {
        "apiVersion": version,
        "kind": kind,
        "metadata": {"name": "node-shell"},
        "spec": spec,
    }
    if kind == "Pod":  # kubectl knows Pods from the simulator's discovery
        path = tmp_path / "m.json"
        path.write_text(json.dumps(manifest))
        result = kubectl(kubeconfig, "create", "-n", "sandbox", "-f", str(path))
        assert result.returncode != 0
        message = result.stderr
    else:  # the simulator serves no discovery for these kinds: the client posts JSON itself
        with httpx.Client(proxy=gateway.proxy_url, verify=trust(gateway), timeout=20) as client:
            r = client.post(
                f"https://kubernetes.default.svc/{api}/namespaces/sandbox/{resource}",
                json=manifest,
                headers={"Authorization": f"Bearer {SIM_TOKEN}"},
            )
        assert r.status_code == 403
        message = r.json()["message"]
    assert "Pod Security baseline" in message and "hostPID" in message, message
    assert "hostPath /" in message and "SYS_ADMIN" in message, message
    assert not simulator.requests_to(f"/{api}/namespaces/sandbox/{resource}", "POST")


def test_a_sysadmin_debug_container_is_refused(kubeconfig: Path, simulator: KubeSimulator) -> None:
    result = kubectl(
        kubeconfig, "debug", "-n", "sandbox", "web-0", "--image=busybox", "--profile=sysadmin",
        "--", "true",
    )  # fmt: skip
    assert result.returncode != 0
    assert "privileged" in result.stderr, result.stderr
    assert not simulator.requests_to("/api/v1/namespaces/sandbox/pods/web-0/ephemeralcontainers")


def test_ordinary_workloads_pass(
    kubeconfig: Path, simulator: KubeSimulator, tmp_path: Path
) -> None:
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "ordinary"},
        "spec": {
            "selector": {"matchLabels": {"app": "x"}},
            "template": _template({"containers": [{"name": "c", "image": "nginx"}]}),
        },
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps(manifest))
    result = kubectl(kubeconfig, "create", "-n", "sandbox", "-f", str(path))
    assert result.returncode == 0, result.stderr
    assert simulator.requests_to("/apis/apps/v1/namespaces/sandbox/deployments", "POST")
