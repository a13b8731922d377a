"""`mode: audit` on a rule, a target or the whole gateway: decided and recorded as what would
happen, passed as if allowed (masks still apply); unreadable requests stay refused."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import httpx

from holdgate.archive.backends import DirectoryBackend
from holdgate.archive.cli import ReplayQuery, collect
from holdgate.sandbox.kube_sim import KubeSimulator
from tests.archive.canaries import read_flows
from tests.conftest import (
    BIN,
    LOCAL_PAGE,
    SIM_TOKEN,
    kube_target,
    start_gateway,
    trust,
    write_home_config,
)

RULES = """
rules:
  - {id: discovery, action: allow, verbs: [get], nonResourceURLs: ["/*"]}
  - id: no-prod-secrets
    action: deny
    mode: audit
    message: not in prod
    resources: [secrets]
    namespaces: [prod]
  - id: hold-configmaps
    action: approve
    mode: audit
    resources: [configmaps]
    verbs: [create]
    reviewers: [local:admin]
"""
SECRET = "https://kubernetes.default.svc/api/v1/namespaces/prod/secrets/db-credentials"


def metric(gateway_home: Path, pattern: str) -> float:
    url = (gateway_home / "var" / "operations-url").read_text().strip()
    text = httpx.get(f"{url}metrics", timeout=10).text
    found = re.search(pattern + r" (\S+)", text)
    return float(found.group(1)) if found else 0.0


def test_audit_rules_pass_and_record_what_would_have_happened(
    tmp_path: Path, simulator: KubeSimulator
) -> None:
    config = {
        "targets": [kube_target(simulator)],
        "approvals": LOCAL_PAGE,
    }
    gateway = start_gateway(tmp_path, config, {"r.yaml": RULES})
    headers = {"Authorization": f"Bearer {SIM_TOKEN}"}
    try:
        gateway.wait_for_output(r"holdgate operations listening")
        with httpx.Client(proxy=gateway.proxy_url, verify=trust(gateway), timeout=20) as agent:
            read = agent.get(SECRET, headers=headers)
            assert read.status_code == 200  # would deny: passes
            assert read.json()["data"]["password"] == "Kioq"  # the Secret masks still apply
            created = agent.post(
                "https://kubernetes.default.svc/api/v1/namespaces/sandbox/configmaps",
                json={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "audited"}},
                headers=headers,
            )
            assert created.status_code == 201  # would hold: passes at once
            gateway.wait_for_output(r"audit: would deny GET cluster get secrets db-credentials")
            gateway.wait_for_output(r"audit: would approve POST cluster create configmaps")
            would_deny = (
                r'holdgate_requests_total\{action="deny",mode="audit",rule="no-prod-secrets"\}'
            )
            assert metric(tmp_path, would_deny) == 1.0
            # One word turns the rule on (hot reload): now it refuses.
            rules = tmp_path / "rules" / "r.yaml"
            rules.write_text(
                RULES.replace("    mode: audit\n    message", "    mode: enforce\n    message")
            )
            for _ in range(100):
                refused = agent.get(SECRET, headers=headers)
                if refused.status_code == 403:
                    break
                time.sleep(0.1)
            assert refused.status_code == 403 and "not in prod" in refused.json()["message"]
    finally:
        gateway.stop()
    result = collect(DirectoryBackend(tmp_path / "var" / "archive"), ReplayQuery(), quiet=True)
    flows = [f for raw in result.records for f in read_flows(raw)]
    audited = next(  # the first read; more passed while the reload was on its way
        f
        for f in flows
        if f.request.path.endswith("/secrets/db-credentials") and f.response.status_code == 200
    )
    decision = audited.metadata["holdgate"]["decision"]
    assert (decision["action"], decision["mode"]) == ("allow", "audit")
    assert decision["would"]["action"] == "deny" and decision["would"]["rule"] == "no-prod-secrets"
    assert audited.comment.startswith("would deny · no-prod-secrets · anonymous: ")


def test_an_audit_target_passes_its_defaults_but_never_an_unreadable_request(
    tmp_path: Path, simulator: KubeSimulator
) -> None:
    target = kube_target(simulator) | {"mode": "audit"}
    gateway = start_gateway(tmp_path, {"targets": [target]}, {"r.yaml": "rules: []\n"})
    headers = {"Authorization": f"Bearer {SIM_TOKEN}"}
    try:
        with httpx.Client(proxy=gateway.proxy_url, verify=trust(gateway), timeout=20) as agent:
            listed = agent.get(
                "https://kubernetes.default.svc/api/v1/namespaces/sandbox/configmaps",
                headers=headers,
            )
            assert listed.status_code == 200  # no rule matched, target default deny: audited
            unsafe = agent.get(
                "https://kubernetes.default.svc/api/v1/namespaces/sandbox/configmaps/..%2f..%2fx",
                headers=headers,
            )
            assert unsafe.status_code == 403  # cannot be classified safely: always refused
        gateway.wait_for_output(r"audit: would deny GET cluster list configmaps -n sandbox")
    finally:
        gateway.stop()


def test_check_and_explain_show_the_mode(tmp_path: Path) -> None:
    config = write_home_config(
        tmp_path,
        RULES,
        approvals={},
        targets=[{"name": "cluster", "kind": "kubernetes", "hosts": ["kubernetes.default.svc"]}],
    )
    holdgate = str(BIN / "holdgate")
    checked = subprocess.run(
        [holdgate, "check", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr
    assert "mode: audit: rule no-prod-secrets" in checked.stdout
    explained = subprocess.run(
        [holdgate, "explain", "--config", str(config), "GET", SECRET],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert explained.returncode == 0  # passes: allowed in audit mode
    out = json.loads(explained.stdout)
    assert (out["action"], out["mode"], out["would"]) == ("allow", "audit", "deny")
