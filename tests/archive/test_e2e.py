"""The archive through the real gateway: kubectl's flows, masked, replayable and verifiable."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from mitmproxy import io as mitmio

from holdgate.archive.backends import DirectoryBackend
from holdgate.archive.cli import ReplayQuery, collect
from holdgate.sandbox.kube_resources import SECRETS
from holdgate.sandbox.kube_sim import KubeSimulator
from tests.archive.canaries import read_flows
from tests.conftest import (
    BIN,
    LOCAL_PAGE,
    SIM_TOKEN,
    Page,
    kube_target,
    kubectl,
    page_address,
    start_gateway,
    trust,
    write_agent_kubeconfig,
)

CANARY = "archive-canary-31415926"
AGENT_TOKEN = "agent-token-canary-27182818"
WRONG_PASSWORD = "wrong-password-canary-16180339"

RULES = """
rules:
  - id: reads
    action: allow
    verbs: [get, list, watch]
    resources: ["*"]
  - id: discovery
    action: allow
    verbs: [get]
    nonResourceURLs: ["/*"]
  - id: no-prod-secrets
    action: deny
    message: not in prod
    resources: [secrets]
    namespaces: [prod]
  - id: hold-configmaps
    action: approve
    resources: [configmaps]
    verbs: [create]
    reviewers: [local:admin]
"""


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_flows_are_archived_masked_and_replayable(tmp_path: Path, simulator: KubeSimulator) -> None:
    simulator.store.create(
        SECRETS,
        "sandbox",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "archived", "namespace": "sandbox"},
            "data": {"password": base64.b64encode(CANARY.encode()).decode()},
        },
    )
    token_file = tmp_path / "upstream-token"
    token_file.write_text(SIM_TOKEN)
    config = {
        "targets": [kube_target(simulator, credential={"bearer_token_file": str(token_file)})],
        "identity": {
            "agents": [
                {
                    "name": "ci-bot",
                    "owner": "local:olga",
                    "token_sha256": hashlib.sha256(AGENT_TOKEN.encode()).hexdigest(),
                }
            ]
        },
        "approvals": LOCAL_PAGE,
        "archive": {"rotate_seconds": 1},
    }
    gw = start_gateway(tmp_path, config, {"r.yaml": RULES})
    try:
        kubeconfig = write_agent_kubeconfig(
            tmp_path / "kc", gw, token="placeholder", agent=("ci-bot+run-5", AGENT_TOKEN)
        )
        assert (
            kubectl(
                kubeconfig, "get", "secret", "archived", "-n", "sandbox", "-o", "yaml"
            ).returncode
            == 0
        )
        assert kubectl(kubeconfig, "get", "secrets", "-n", "prod").returncode != 0
        page_at = page_address(gw)
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "held"},
            "data": {"k": "v"},
        }
        result: dict[str, httpx.Response] = {}
        with (
            httpx.Client(
                proxy=f"http://ci-bot:{AGENT_TOKEN}@127.0.0.1:{gw.port}",
                verify=trust(gw),
                timeout=60,
                headers={"Authorization": f"Bearer {CANARY}", "Cookie": f"session={CANARY}"},
            ) as agent,
            Page(*page_at) as page,
        ):
            thread = threading.Thread(
                target=lambda: result.update(
                    r=agent.post(
                        "https://kubernetes.default.svc/api/v1/namespaces/sandbox/configmaps",
                        json=body,
                    )
                )
            )
            thread.start()
            hold = page.wait_pending("hold-configmaps")[0]
            page.decide(hold["id"], True)
            thread.join(timeout=30)
        assert result["r"].status_code == 201
        # Refusals before any rule: bad proxy credentials, a tunnel to an undeclared host.
        for password, url in (
            (WRONG_PASSWORD, "https://kubernetes.default.svc/api"),
            (AGENT_TOKEN, "https://undeclared.internal/"),
        ):
            proxy = f"http://ci-bot:{password}@127.0.0.1:{gw.port}"
            with (
                httpx.Client(proxy=proxy, verify=trust(gw)) as client,
                pytest.raises(httpx.ProxyError),
            ):
                client.get(url)
    finally:
        gw.stop()
    archive = tmp_path / "var" / "archive"
    everything = _all_bytes(tmp_path / "var" / "archive") + _all_bytes(tmp_path / "var" / "spool")
    assert everything, "nothing archived"
    secrets = (CANARY, base64.b64encode(CANARY.encode()).decode(), AGENT_TOKEN, SIM_TOKEN)
    for secret in (*secrets, WRONG_PASSWORD):
        assert secret.encode() not in everything, secret
    config_path = str(tmp_path / "holdgate.yaml")
    verify = subprocess.run(
        [str(BIN / "holdgate"), "archive", "verify", "--config", config_path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    out = tmp_path / "replay.mitm"
    replay = subprocess.run(
        [
            str(BIN / "holdgate"),
            "replay",
            "--config",
            config_path,
            "--agent",
            "ci-bot",
            "--out",
            str(out),
            "--no-web",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr
    with out.open("rb") as f:
        flows = list(mitmio.FlowReader(f).stream())
    by_decision = {}
    for flow in flows:
        meta = flow.metadata["holdgate"]
        assert meta["request"]["identity"]["agent"] == "ci-bot"
        by_decision.setdefault(meta["decision"]["action"], []).append(flow)
    assert {"allow", "deny", "approve"} <= set(by_decision)
    held = by_decision["approve"][0]
    assert held.marked and held.metadata["holdgate"]["hold"]["state"] == "approved"
    assert "approved" in held.comment
    secret_get = next(
        f
        for f in by_decision["allow"]
        if f.request.path.startswith("/api/v1/namespaces/sandbox/secrets/archived")
    )
    assert b"Kioq" in secret_get.response.content
    assert archive.exists()
    # The record shows what the agent asked for; where it went is in the metadata.
    assert (secret_get.request.host, secret_get.request.port) == ("kubernetes.default.svc", 443)
    assert secret_get.metadata["holdgate"]["upstream"].startswith("https://127.0.0.1:")
    # The comment leads with what auditors scan for: outcome · rule · agent.
    assert secret_get.comment.startswith("allow · reads · ci-bot: get secrets archived")
    assert held.comment.startswith(f"approved · hold-configmaps · ci-bot · hold {hold['id']}: ")
    everyone = collect(DirectoryBackend(archive), ReplayQuery(), quiet=True)
    refused = [f for raw in everyone.records for f in read_flows(raw)]
    [impostor_flow] = [
        f for f in refused if "proxy authentication failed" in str(f.metadata["holdgate"])
    ]
    impostor_meta = impostor_flow.metadata["holdgate"]
    assert impostor_meta["request"]["claimed_agent"] == "ci-bot"
    assert impostor_meta["decision"]["action"] == "deny"
    assert impostor_flow.comment.startswith("deny · proxy-auth · ci-bot: CONNECT")
    [tunnel] = [f for f in refused if f.request.host == "undeclared.internal"]
    assert tunnel.metadata["holdgate"]["request"]["identity"]["agent"] == "ci-bot"
    assert tunnel.metadata["holdgate"]["decision"]["action"] == "deny"
    assert tunnel.comment.startswith("deny · default · ci-bot: CONNECT undeclared.internal:443")


def test_a_hold_pending_at_stop_is_answered_and_archived(
    tmp_path: Path, simulator: KubeSimulator
) -> None:
    config = {
        "targets": [kube_target(simulator)],
        "approvals": LOCAL_PAGE,
    }
    gw = start_gateway(tmp_path, config, {"r.yaml": RULES})
    try:
        kubeconfig = write_agent_kubeconfig(tmp_path / "kubeconfig", gw)
        page_at = page_address(gw)
        creating = subprocess.Popen(
            [str(BIN / "kubectl"), "--kubeconfig", str(kubeconfig), "create", "configmap"]
            + ["held-at-stop", "-n", "sandbox", "--from-literal=a=b"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            with Page(*page_at) as page:
                page.wait_pending("hold-configmaps")
            gw.process.terminate()  # SIGTERM with the request held
            _, stderr = creating.communicate(timeout=60)
        finally:
            creating.kill()
        assert creating.returncode != 0
        assert "the gateway is stopping; not approved" in stderr, stderr
        assert gw.process.wait(timeout=60) is not None
    finally:
        gw.stop()
    archived = [
        flow
        for path in sorted((tmp_path / "var" / "archive").rglob("*.mitm"))
        if not path.name.endswith(".audit.mitm")
        for flow in read_flows(path.read_bytes())
    ]
    held = [
        f
        for f in archived
        if "held-at-stop" in f.request.path or b"held-at-stop" in (f.request.raw_content or b"")
    ]
    assert held, [f.request.path for f in archived]
    assert held[0].response is not None and held[0].response.status_code == 403
    assert held[0].metadata["holdgate"]["hold"]["state"] == "cancelled"
    assert not [
        r
        for r in simulator.requests_to("/api/v1/namespaces/sandbox/configmaps", "POST")
        if b"held-at-stop" in r.body
    ]


def test_archive_health_is_on_metrics_when_uploads_fail(
    tmp_path: Path, simulator: KubeSimulator
) -> None:
    import socket
    import time

    with socket.socket() as probe:  # a loopback port nothing listens on: S3 unreachable
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    config = {
        "targets": [kube_target(simulator)],
        "approvals": LOCAL_PAGE,
        "archive": {
            "s3": {
                "bucket": "audit",
                "endpoint_url": f"http://127.0.0.1:{dead}",
                "addressing_style": "path",
                "region": "us-east-1",
            },
            "rotate_seconds": 0.2,
            "upload_retry": {"initial_seconds": 0.05, "max_seconds": 0.2},
        },
    }
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    gw = start_gateway(tmp_path, config, {"r.yaml": RULES}, env=env)
    try:
        page = gw.wait_for_output(r"approvals page listening at (\S+) ")
        kubeconfig = write_agent_kubeconfig(tmp_path / "kubeconfig", gw)
        assert kubectl(kubeconfig, "get", "pods", "-n", "sandbox").returncode == 0
        gw.wait_for_output(r"archive: .* unavailable \(.*\); \d+ segments wait")
        # The writer reports its health once a second: scrape until it has (bounded).
        metrics: dict[str, float] = {}
        failures = 'holdgate_archive_upload_errors_total{kind="connection"}'
        for _ in range(100):
            text = httpx.get(page.group(1) + "metrics", timeout=10).text
            metrics = {
                line.split(" ")[0]: float(line.split(" ")[1])
                for line in text.splitlines()
                if line.startswith("holdgate_archive_")
            }
            if metrics.get(failures) and metrics.get("holdgate_archive_backlog_segments"):
                break
            time.sleep(0.2)
        assert metrics.get("holdgate_archive_backlog_segments", 0) >= 1, metrics
        assert metrics.get("holdgate_archive_backlog_bytes", 0) > 0, metrics
        assert metrics.get('holdgate_archive_upload_errors_total{kind="connection"}', 0) > 0, (
            metrics
        )
        assert metrics.get("holdgate_archive_last_upload_timestamp_seconds") == 0, metrics
        assert "holdgate_archive_refusals_total" in metrics
    finally:
        gw.stop()


def test_a_request_refused_for_no_audit_is_archived_as_denied(
    tmp_path: Path, simulator: KubeSimulator
) -> None:
    rules = "rules:\n  - {id: anything, action: allow, verbs: ['*'], resources: ['*']}\n"
    gw = start_gateway(
        tmp_path,
        {"targets": [kube_target(simulator)], "archive": {"rotate_seconds": 1}},
        {"r.yaml": rules},
    )
    spool = tmp_path / "var" / "spool"
    moved = tmp_path / "spool-moved"
    base = "https://kubernetes.default.svc/api/v1/namespaces/sandbox/configmaps"
    headers = {"Authorization": f"Bearer {SIM_TOKEN}"}
    try:
        gw.wait_for_output(r"holdgate operations listening at (\S+)")
        ready = (tmp_path / "var" / "operations-url").read_text().strip() + "readyz"
        spool.rename(moved)
        spool.write_text("a failed volume")
        with httpx.Client(proxy=gw.proxy_url, verify=trust(gw), timeout=20) as agent:
            assert agent.get(base, headers=headers).status_code == 200  # reads continue
            for _ in range(100):
                if httpx.get(ready, timeout=5).status_code == 503:
                    break
                time.sleep(0.1)
            created = agent.post(
                base,
                json={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "no-audit"}},
                headers=headers,
            )
            assert created.status_code == 403
            assert "cannot record this request" in created.json()["message"]
        spool.unlink()
        moved.rename(spool)
        for _ in range(100):
            if httpx.get(ready, timeout=5).status_code == 200:
                break
            time.sleep(0.1)
    finally:
        gw.stop()
    flows = [
        f
        for raw in collect(
            DirectoryBackend(tmp_path / "var" / "archive"), ReplayQuery(), quiet=True
        ).records
        for f in read_flows(raw)
    ]
    [refused] = [f for f in flows if f.request.method == "POST"]
    decision = refused.metadata["holdgate"]["decision"]
    assert decision["action"] == "deny" and "archive.require_for" in decision["reason"]
    assert decision["rules_decided"]["action"] == "allow"
    assert decision["rules_decided"]["rule"] == "anything"
