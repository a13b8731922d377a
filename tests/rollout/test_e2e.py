"""`holdgate rules suggest` and `rules report` on an archive the real gateway wrote for kubectl."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import yaml

from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import (
    BIN,
    KUBECTL,
    LOCAL_PAGE,
    SIM_TOKEN,
    Page,
    kube_target,
    kubectl,
    page_address,
    start_gateway,
    write_agent_kubeconfig,
)

AGENT_TOKEN = "rollout-agent-token"
RULES = """
rules:
  - id: discovery
    action: allow
    verbs: [get]
    nonResourceURLs: ["/*"]
  - id: pod-reads
    action: allow
    resources: [pods]
    verbs: [get]
    namespaces: [sandbox]
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
  - id: hold-configmap-deletes
    action: approve
    resources: [configmaps]
    verbs: [delete]
    reviewers: [local:admin]
  - id: hold-secret-writes
    action: approve
    resources: [secrets]
    verbs: [create]
    reviewers: [local:admin]
    timeout: 2s
  - id: never-used
    action: allow
    resources: [cronjobs]
    verbs: [get]
    namespaces: [nowhere]
"""


def _holdgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "holdgate"), *args], capture_output=True, text=True, timeout=120
    )


def _held(kubeconfig: Path, page: Page, rule: str, approve: bool | None, *args: str) -> str:
    """Run kubectl with a request that is held; approve, deny or (None) leave it to expire."""
    process = subprocess.Popen(
        [KUBECTL, "--kubeconfig", str(kubeconfig), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        [hold] = page.wait_pending(rule)
        if approve is not None:
            reason = "" if approve else "not today"
            assert page.decide(hold["id"], approve, reason=reason).status_code == 200
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait(timeout=10)
    assert (process.returncode == 0) == bool(approve), stderr
    return str(hold["id"])


def test_suggest_and_report_read_what_kubectl_did(tmp_path: Path, simulator: KubeSimulator) -> None:
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
            tmp_path / "kc", gw, token="placeholder", agent=("ci-bot", AGENT_TOKEN)
        )
        # Left to the target's default (deny): reads, a write, a shell.
        assert kubectl(kubeconfig, "get", "pods", "-n", "sandbox").returncode != 0
        assert kubectl(kubeconfig, "get", "deployments", "-n", "sandbox").returncode != 0
        assert kubectl(kubeconfig, "delete", "pod", "web-0", "-n", "sandbox").returncode != 0
        shell = kubectl(kubeconfig, "exec", "web-0", "-n", "sandbox", "--", "ls", "/")
        assert shell.returncode != 0 and "privileged" in shell.stderr, shell.stderr
        # Refused by a deny rule.
        assert kubectl(kubeconfig, "get", "secrets", "-n", "prod").returncode != 0
        with Page(*page_address(gw)) as page:
            created = ("create", "configmap", "rollout-1", "-n", "sandbox", "--from-literal=a=b")
            _held(kubeconfig, page, "hold-configmaps", True, *created)
            deleting = ("delete", "configmap", "rollout-1", "-n", "sandbox")
            _held(kubeconfig, page, "hold-configmap-deletes", False, *deleting)
            secret = ("create", "secret", "generic", "rollout-s", "-n", "sandbox")
            expired = _held(
                kubeconfig, page, "hold-secret-writes", None, *secret, "--from-literal=a=b"
            )
    finally:
        gw.stop()
    config_path = str(tmp_path / "holdgate.yaml")

    out = tmp_path / "suggested.yaml"
    suggested = _holdgate("rules", "suggest", "--config", config_path, "--out", str(out))
    assert suggested.returncode == 0, suggested.stderr
    text = out.read_text()
    document = yaml.safe_load(text)
    rules = {r["id"]: r for r in document["rules"]}
    pods = rules["suggested-ci-bot-pods-list-sandbox"]
    assert pods["action"] == "allow" and pods["agents"] == ["ci-bot"]
    assert pods["targets"] == ["cluster"] and pods["apiGroups"] == [""]
    assert (pods["resources"], pods["verbs"], pods["namespaces"]) == (
        ["pods"],
        ["list"],
        ["sandbox"],
    )
    deployments = rules["suggested-ci-bot-deployments-list-sandbox"]
    assert deployments["apiGroups"] == ["apps"]
    delete = rules["suggested-ci-bot-pods-delete-sandbox"]
    assert delete["resourceNames"] == ["web-0"] and delete["verbs"] == ["delete"]
    shell_rule = rules["suggested-ci-bot-pods-exec-create-sandbox"]
    assert shell_rule["resources"] == ["pods/exec"] and shell_rule["commands"] == ["ls /"]
    # Nothing a deny or approve rule decided, and nothing an allow rule already allows.
    assert not [r for r in document["rules"] if "secrets" in r.get("resources", ())]
    assert not [r for r in document["rules"] if "configmaps" in r.get("resources", ())]
    assert "denied by deny rule no-prod-secrets" in text
    assert "held by approve rule hold-configmaps" in text
    assert "already allowed by rule pod-reads" in text
    tests = {t["rule"]: t for t in document["tests"]}
    assert tests[pods["id"]]["request"].startswith(
        "GET https://kubernetes.default.svc/api/v1/namespaces/sandbox/pods"
    )
    assert tests[pods["id"]]["agent"] == "ci-bot" and tests[pods["id"]]["expect"] == "allow"
    assert "/pods/web-0/exec?" in tests[shell_rule["id"]]["request"]
    assert set(tests) == set(rules)
    # Copied beside the existing rules, `holdgate check` passes and runs its tests.
    (tmp_path / "rules" / "suggested.yaml").write_text(text)
    check = _holdgate("check", "--config", config_path)
    assert check.returncode == 0, check.stderr
    assert f"{len(document['tests'])} rule tests passed" in check.stdout, check.stdout
    assert "suggested.yaml" not in check.stderr, check.stderr  # no warning about it either
    (tmp_path / "rules" / "suggested.yaml").unlink()

    reported = _holdgate("rules", "report", "--config", config_path, "--json", "--min-holds", "1")
    assert reported.returncode == 0, reported.stderr
    drift = json.loads(reported.stdout)
    never = {r["rule"] for r in drift["never_matched"]}  # (kubectl may skip discovery: cached)
    assert "never-used" in never and not never & {"pod-reads", "no-prod-secrets"}
    defaults = {d["request"]: d for d in drift["defaults"]}
    assert defaults["list pods -n sandbox"]["action"] == "deny"
    assert defaults["delete pods -n sandbox"]["agent"] == "ci-bot"
    holds = {a["rule"]: a for a in drift["approve_rules"]}
    assert holds["hold-configmaps"]["approved"] == 1
    assert holds["hold-configmaps"]["candidate"] == "allow"
    assert holds["hold-configmap-deletes"]["denied"] == 1
    assert holds["hold-configmap-deletes"]["candidate"] == "deny"
    assert holds["hold-secret-writes"]["expired"] == 1
    assert holds["hold-secret-writes"]["candidate"] is None
    [gone] = drift["expired_holds"]
    assert (gone["hold"], gone["rule"], gone["agent"]) == (expired, "hold-secret-writes", "ci-bot")
    assert gone["request"] == "create secrets rollout-s -n sandbox"
    [reviewer] = drift["latency"]["by_reviewer"]
    assert reviewer["count"] == 2 and reviewer["max"] >= reviewer["p50"] >= 0
    assert {r["rule"] for r in drift["latency"]["by_rule"]} == {
        "hold-configmaps",
        "hold-configmap-deletes",
    }
    as_text = _holdgate("rules", "report", "--config", config_path, "--min-holds", "1")
    assert as_text.returncode == 0, as_text.stderr
    assert "always approved (1): candidate to allow" in as_text.stdout
    assert "Holds that expired unanswered: 1" in as_text.stdout
