"""The container image's Dockerfile and the Kubernetes manifests under deploy/: linted, rendered
with `kubectl kustomize`, validated against the Kubernetes schemas, and the configuration they
carry accepted by holdgate itself."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import certifi
import kubernetes_validate
import pytest
import yaml

from holdgate.config.gateway_config import load_config
from tests.conftest import BIN, KUBECTL, ROOT

DEPLOY = ROOT / "deploy"
OVERLAYS = ("sandbox", "production")


def render(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_the_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_builds_where_a_container_engine_answers(tmp_path: Path) -> None:
    engine = next((e for e in ("docker", "podman") if shutil.which(e)), None)
    answers = engine is not None and (
        subprocess.run([engine, "info"], capture_output=True, timeout=30).returncode == 0
    )
    if not answers:
        pytest.skip("no container engine answers here (docker/podman): the image is not built")
    assert engine is not None
    build = subprocess.run(
        [engine, "build", "-t", "holdgate:test", str(ROOT)], capture_output=True, text=True
    )
    assert build.returncode == 0, build.stderr
    version = subprocess.run(
        [
            engine,
            "run",
            "--rm",
            "--read-only",
            "--entrypoint",
            "holdgate",
            "holdgate:test",
            "--version",
        ],
        capture_output=True,
        text=True,
    )
    assert version.stdout.startswith("holdgate "), version.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    objects = render(DEPLOY / "overlays" / overlay)
    kinds = {o["kind"] for o in objects}
    assert {"Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD's kind: not in the Kubernetes schemas
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    # The sandbox: one Deployment (holds in the process); production: replicas sharing holds.
    workload_kind = "StatefulSet" if overlay == "production" else "Deployment"
    [workload] = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    assert workload["kind"] == workload_kind
    pod = workload["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Shared dependencies are left out of the probe (their outage is every replica's).
    readiness = container["readinessProbe"]["httpGet"]["path"]
    assert readiness == "/readyz?exclude=approvals&exclude=state_store"
    assert container["resources"]["requests"]
    if overlay == "production":
        assert "ServiceMonitor" in kinds
        assert workload["spec"]["replicas"] == 3
        [claim] = workload["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "state"  # each replica's own spool
        assert all(v["name"] != "state" for v in pod["volumes"])
        secrets = [e["secretRef"]["name"] for e in container["envFrom"]]
        assert "holdgate-slack" in secrets
        [password] = [e for e in container["env"] if e["name"] == "HOLDGATE_STATE_STORE_PASSWORD"]
        assert password["valueFrom"]["secretKeyRef"]["name"] == "holdgate-postgres"
        [budget] = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
        assert budget["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_shipped_configuration_is_one_holdgate_accepts(overlay: str, tmp_path: Path) -> None:
    objects = render(DEPLOY / "overlays" / overlay)
    maps = {o["metadata"]["name"].rsplit("-", 1)[0]: o for o in objects if o["kind"] == "ConfigMap"}
    raw = yaml.safe_load(maps["holdgate-config"]["data"]["holdgate.yaml"])
    # As mounted in the pod: the rules ConfigMap at /etc/holdgate/rules.
    rules = tmp_path / "rules"
    rules.mkdir()
    for name, text in maps["holdgate-rules"]["data"].items():
        (rules / name).write_text(text)
    raw["rules"] = [str(rules)]
    raw["gateway"] |= {"state": str(tmp_path / "var"), "certs": str(tmp_path / "certs")}
    for target in raw["targets"]:  # the pod's service-account CA: any CA bundle here
        if str(target.get("ca", "")).startswith("/var/run/secrets/"):
            target["ca"] = certifi.where()
    path = tmp_path / "holdgate.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    assert config.raw["operations"]["listen_port"] == 9090
    check = subprocess.run(
        [str(BIN / "holdgate"), "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"SLACK_BOT_TOKEN": "xoxb-test", "SLACK_APP_TOKEN": "xapp-test", "PATH": "/usr/bin"},
    )
    assert check.returncode == 0, check.stdout + check.stderr
    if overlay == "production":
        assert config.approvals is not None and config.approvals.page_host is None  # Slack only
        assert "name" not in raw["gateway"]  # each replica named after its pod
        assert raw["state_store"]["url"].startswith("postgresql://holdgate@")


def test_the_agents_egress_policy_renders() -> None:
    [policy] = render(DEPLOY / "agents")
    kubernetes_validate.validate(policy, kubernetes_validate.latest_version(), strict=True)
    assert policy["metadata"]["namespace"] == "agents"
    [through_gateway, dns] = policy["spec"]["egress"]
    assert through_gateway["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert {p["port"] for p in dns["ports"]} == {53}
