"""Masking through the real gateway: canaries planted upstream never reach kubectl or the logs."""

from __future__ import annotations

import base64
import json
import queue
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from holdgate.sandbox.kube_resources import CONFIGMAPS, NAMESPACES, SECRETS
from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import (
    KUBECTL,
    SIM_TOKEN,
    GatewayProcess,
    kube_target,
    kubectl,
    start_gateway,
    write_agent_kubeconfig,
)

CANARY = "canary-9f8e7d6c5b4a"
CANARY_B64 = base64.b64encode(CANARY.encode()).decode()

RULES = """
rules:
  - id: everything
    action: allow
    apiGroups: ["*"]
    resources: ["*"]
    verbs: ["*"]
  - id: discovery
    action: allow
    verbs: [get]
    nonResourceURLs: ["/*"]
masks:
  - id: api-keys
    description: API keys in config maps, as keyed hashes so equal keys can be compared
    resources: [configmaps]
    mask: ["$.data.apiKey", "$.data.backupKey"]
    style: hmac
  - id: logs-are-opaque
    resources: [pods/log]
    namespaces: [prod]
    mask: ["$.anything"]
  - id: lab-secrets-in-clear
    description: the lab namespace holds fake secrets only
    namespaces: [lab]
    secrets: false
"""


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, simulator: KubeSimulator
) -> Iterator[GatewayProcess]:
    home = tmp_path_factory.mktemp("masking")
    gw = start_gateway(home, {"targets": [kube_target(simulator)]}, {"r.yaml": RULES})
    yield gw
    gw.stop()


@pytest.fixture
def kubeconfig(tmp_path: Path, gateway: GatewayProcess) -> Path:
    return write_agent_kubeconfig(tmp_path / "kc", gateway)


@pytest.fixture(scope="module")
def planted(simulator: KubeSimulator) -> Iterator[None]:
    """Canary secrets planted straight into the upstream (not through the gateway)."""
    for ns in ("masked", "lab"):
        simulator.store.create(
            NAMESPACES, "", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        )
        simulator.store.create(
            SECRETS,
            ns,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "app", "namespace": ns},
                "type": "Opaque",
                "data": {"password": CANARY_B64, "user": base64.b64encode(b"app").decode()},
            },
        )
    simulator.store.create(
        CONFIGMAPS,
        "masked",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "keys", "namespace": "masked"},
            "data": {"apiKey": CANARY, "backupKey": CANARY, "region": "eu-west-1"},
        },
    )
    yield


def assert_no_canary(*texts: str) -> None:
    for text in texts:
        assert CANARY not in text and CANARY_B64 not in text


def test_get_secret_yaml_json_and_describe(
    kubeconfig: Path, planted: None, gateway: GatewayProcess
) -> None:
    yaml_out = kubectl(kubeconfig, "get", "secret", "app", "-n", "masked", "-o", "yaml")
    assert yaml_out.returncode == 0, yaml_out.stderr
    json_out = kubectl(kubeconfig, "get", "secret", "app", "-n", "masked", "-o", "json")
    data = json.loads(json_out.stdout)["data"]
    assert data == {"password": "Kioq", "user": "Kioq"}  # base64 of "***": still valid base64
    listed = kubectl(kubeconfig, "get", "secrets", "-n", "masked", "-o", "json")
    table = kubectl(kubeconfig, "get", "secrets", "-n", "masked")
    described = kubectl(kubeconfig, "describe", "secret", "app", "-n", "masked")
    assert described.returncode == 0 and "password:  3 bytes" in described.stdout
    everywhere = kubectl(kubeconfig, "get", "secrets", "-A", "-o", "yaml")
    assert_no_canary(
        yaml_out.stdout,
        json_out.stdout,
        listed.stdout,
        table.stdout,
        described.stdout,
        everywhere.stdout,
    )
    assert "s3cr3t-prod-password" not in everywhere.stdout  # the simulator's own seeded secret
    assert_no_canary(gateway.output())


def test_switched_off_per_rule(kubeconfig: Path, planted: None) -> None:
    out = kubectl(kubeconfig, "get", "secret", "app", "-n", "lab", "-o", "json")
    assert json.loads(out.stdout)["data"]["password"] == CANARY_B64


def test_watch_masks_each_event_live(
    kubeconfig: Path, planted: None, simulator: KubeSimulator
) -> None:
    watch = subprocess.Popen(
        [
            KUBECTL,
            "--kubeconfig",
            str(kubeconfig),
            "get",
            "secrets",
            "-n",
            "masked",
            "-w",
            "-o",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in watch.stdout], daemon=True).start()  # type: ignore[union-attr]
    seen: list[str] = []
    try:
        while '"name": "app"' not in "".join(seen):
            seen.append(lines.get(timeout=20))
        # A new secret appears upstream while the watch is open: its event arrives, masked.
        simulator.store.create(
            SECRETS,
            "masked",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "late", "namespace": "masked"},
                "data": {"token": CANARY_B64},
            },
        )
        while '"name": "late"' not in "".join(seen):
            seen.append(lines.get(timeout=20))
        assert watch.poll() is None
    finally:
        watch.terminate()
        watch.wait(timeout=10)
    text = "".join(seen)
    assert '"token": "Kioq"' in text
    assert_no_canary(text)


def test_apply_then_get_masks_last_applied(kubeconfig: Path, planted: None, tmp_path: Path) -> None:
    manifest = tmp_path / "s.yaml"
    manifest.write_text(
        f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: applied\n  namespace: masked\nstringData:\n  token: {CANARY}\n"
    )
    applied = kubectl(kubeconfig, "apply", "-f", str(manifest))
    assert applied.returncode == 0, applied.stderr
    got = kubectl(kubeconfig, "get", "secret", "applied", "-n", "masked", "-o", "json")
    obj = json.loads(got.stdout)
    last = json.loads(
        obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
    )
    assert last["stringData"] == {"token": "***"}
    assert_no_canary(got.stdout, applied.stdout, applied.stderr)
    # Applying again still works: kubectl computes its patch from the masked annotation.
    again = kubectl(kubeconfig, "apply", "-f", str(manifest))
    assert again.returncode == 0, again.stderr


def test_python_client_and_keyed_hashes(gateway: GatewayProcess, planted: None) -> None:
    configuration = kubernetes.client.Configuration()
    configuration.host = "https://kubernetes.default.svc"
    configuration.proxy = gateway.proxy_url
    configuration.ssl_ca_cert = str(gateway.ca_path)
    configuration.api_key = {"BearerToken": SIM_TOKEN}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    api = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))
    secret = api.read_namespaced_secret("app", "masked")
    assert secret.data["password"] == "Kioq"
    keys = api.read_namespaced_config_map("keys", "masked").data
    assert keys["region"] == "eu-west-1"
    assert keys["apiKey"].startswith("hmac:") and keys["apiKey"] == keys["backupKey"]
    assert CANARY not in json.dumps(keys)


def test_unmaskable_response_is_withheld_whole(kubeconfig: Path, gateway: GatewayProcess) -> None:
    out = kubectl(kubeconfig, "logs", "web-0", "-n", "prod")
    assert "body withheld" in out.stdout + out.stderr
    assert "Ready to serve requests" not in out.stdout
    sandbox = kubectl(kubeconfig, "logs", "web-0", "-n", "sandbox")
    assert "Ready to serve requests" in sandbox.stdout  # no mask rule there


def test_kubectl_asked_for_json(simulator: KubeSimulator, kubeconfig: Path, planted: None) -> None:
    simulator.clear_requests()
    kubectl(kubeconfig, "get", "secret", "app", "-n", "masked")
    gets = [r for r in simulator.requests if r.path == "/api/v1/namespaces/masked/secrets/app"]
    assert gets and all("protobuf" not in r.headers.get("accept", "") for r in gets)
    assert all("accept-encoding" not in r.headers for r in gets)
