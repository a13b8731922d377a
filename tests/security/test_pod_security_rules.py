"""Privileged pods by any route: every workload kind, ephemeral containers, host namespaces."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from holdgate.kube.protobuf import MAGIC, _field, encode_message
from holdgate.kube.request_info import read_body
from holdgate.sandbox.kube_resources import PODS
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


# kubectl's generators and `kubectl debug --copy-to` send protobuf: the rules must read it in full.


@pytest.mark.parametrize(
    ("profile", "found"),
    [("sysadmin", "privileged"), ("general", "SYS_PTRACE"), ("netadmin", "NET_ADMIN")],
)
def test_debug_copies_are_checked_from_their_protobuf_bodies(
    kubeconfig: Path, simulator: KubeSimulator, profile: str, found: str
) -> None:
    result = kubectl(
        kubeconfig, "debug", "-n", "sandbox", "web-0", f"--copy-to=copy-{profile}",
        "--image=busybox", f"--profile={profile}", "--", "true",
    )  # fmt: skip
    assert result.returncode != 0
    assert "violates Pod Security baseline" in result.stderr, result.stderr
    assert found in result.stderr and "could not be read" not in result.stderr, result.stderr
    assert not simulator.requests_to("/api/v1/namespaces/sandbox/pods", "POST")


def test_kubectl_create_deployment_passes_as_protobuf(
    kubeconfig: Path, simulator: KubeSimulator
) -> None:
    result = kubectl(
        kubeconfig, "create", "deployment", "pb-web", "--image=nginx", "--replicas=2",
        "--port=8080", "-n", "sandbox",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [sent] = simulator.requests_to("/apis/apps/v1/namespaces/sandbox/deployments", "POST")
    assert sent.content_type == "application/vnd.kubernetes.protobuf"
    stored = json.loads(
        kubectl(kubeconfig, "get", "deploy", "pb-web", "-n", "sandbox", "-o", "json").stdout
    )
    container = stored["spec"]["template"]["spec"]["containers"][0]
    assert (container["image"], container["ports"][0]["containerPort"]) == ("nginx", 8080)
    assert stored["spec"]["replicas"] == 2


def _meaningful(value: Any) -> Any:
    """A document without the values Go's JSON leaves out (omitempty) and protobuf still sends."""
    if isinstance(value, dict):
        kept = {k: _meaningful(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, "", {}, [], False, 0)}
    if isinstance(value, list):
        return [_meaningful(v) for v in value]
    return value


GENERATORS = [
    ("deployment", ["create", "deployment", "g-deploy", "--image=nginx:1.27", "--replicas=3",
                    "--port=80", "--", "nginx", "-g", "daemon off;"]),
    ("job", ["create", "job", "g-job", "--image=busybox", "--", "sh", "-c", "echo hi"]),
    ("cronjob", ["create", "cronjob", "g-cron", "--image=busybox", "--schedule=*/5 * * * *",
                 "--restart=OnFailure", "--", "date"]),
    ("service", ["create", "service", "nodeport", "g-svc", "--tcp=5678:8080", "--node-port=30080"]),
    ("configmap", ["create", "configmap", "g-cm", "--from-literal=a=1", "--from-literal=empty="]),
    ("secret", ["create", "secret", "generic", "g-secret", "--from-literal=k=v",
                "--type=example.com/x"]),
    ("serviceaccount", ["create", "serviceaccount", "g-sa"]),
]  # fmt: skip


@pytest.mark.parametrize(("what", "args"), GENERATORS, ids=[g[0] for g in GENERATORS])
def test_protobuf_bodies_read_as_kubectl_meant_them(
    kubeconfig: Path, simulator: KubeSimulator, what: str, args: list[str]
) -> None:
    """What the gateway decodes from kubectl's protobuf equals the object kubectl prints as JSON."""
    split = args.index("--") if "--" in args else len(args)
    flags, command = [*args[:split], "-n", "sandbox"], args[split:]
    dry = kubectl(kubeconfig, *flags, "--dry-run=client", "-o", "json", *command)
    assert dry.returncode == 0, dry.stderr
    expected = json.loads(dry.stdout)
    kubectl(kubeconfig, *flags, *command)  # the simulator may not serve the kind: 404 is fine
    sent = [
        r
        for r in simulator.requests
        if r.method == "POST" and r.content_type == "application/vnd.kubernetes.protobuf"
    ]
    assert sent, f"kubectl sent no protobuf body for {what}"
    body = read_body(sent[-1].content_type, "", sent[-1].body)
    assert body is not None and body.document is not None, body
    assert _meaningful(body.document) == _meaningful(expected)


def test_a_protobuf_body_that_cannot_be_read_is_refused_saying_so(
    gateway: GatewayProcess, simulator: KubeSimulator
) -> None:
    deployment = {
        "metadata": {"name": "odd"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
    }
    raw = encode_message("k8s.io.api.apps.v1.Deployment", deployment) + _field(9, b"?")
    type_meta = _field(1, b"apps/v1") + _field(2, b"Deployment")
    body = MAGIC + _field(1, type_meta) + _field(2, raw)
    with httpx.Client(proxy=gateway.proxy_url, verify=trust(gateway), timeout=20) as client:
        r = client.post(
            "https://kubernetes.default.svc/apis/apps/v1/namespaces/sandbox/deployments",
            content=body,
            headers={
                "Authorization": f"Bearer {SIM_TOKEN}",
                "Content-Type": "application/vnd.kubernetes.protobuf",
            },
        )
    assert r.status_code == 403
    message = r.json()["message"]
    assert "could not be read (bad protobuf: field 9 of Deployment is not known" in message
    assert "its pods cannot be checked" in message and "privileged" not in message
    assert not simulator.requests_to("/apis/apps/v1/namespaces/sandbox/deployments", "POST")


def test_volumes_in_a_protobuf_pod_are_read_where_the_apiserver_reads_them(
    kubeconfig: Path, simulator: KubeSimulator
) -> None:
    """Volume sources are inlined in JSON but a field of their own in protobuf: hostPath is found."""
    if simulator.store.find(PODS, "sandbox", "with-volumes") is None:
        pod = {
            "metadata": {"name": "with-volumes"},
            "spec": {
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "settings"}},
                    {"name": "root", "hostPath": {"path": "/"}},
                ],
                "containers": [{"name": "app", "image": "nginx"}],
            },
        }
        simulator.store.create(PODS, "sandbox", pod, manager="test")
    result = kubectl(
        kubeconfig, "debug", "-n", "sandbox", "with-volumes", "--copy-to=vol-copy",
        "--image=busybox", "--profile=legacy", "--", "true",
    )  # fmt: skip
    assert result.returncode != 0
    assert "hostPath /" in result.stderr, result.stderr
    assert not simulator.requests_to("/api/v1/namespaces/sandbox/pods", "POST")
