"""`holdgate check` and `holdgate explain`, run as the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_home_config

HOLDGATE = str(Path(sys.executable).parent / "holdgate")

GOOD_RULE = """\
rules:
  - id: allow-reads
    action: allow
    verbs: [get, list]
    resources: ["*"]
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HOLDGATE, *args], capture_output=True, text=True, timeout=60)


def write_config(tmp_path: Path, rules: dict[str, str]) -> Path:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for name, text in rules.items():
        (rules_dir / name).write_text(text)
    config = {
        "gateway": {"certs": str(tmp_path / "certs"), "state": str(tmp_path / "var")},
        "rules": ["rules"],
        "targets": [
            {"name": "cluster", "kind": "kubernetes", "hosts": ["kubernetes.default.svc"]},
            {"name": "api", "kind": "http", "hosts": ["api.internal"]},
        ],
    }
    path = tmp_path / "holdgate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_shipped_rules_and_their_tests_pass() -> None:
    result = run("check")
    assert result.returncode == 0, result.stderr
    assert "rule tests passed" in result.stdout


def test_shipped_production_example_is_valid() -> None:
    result = run("check", "--config", "rules/config/production.yaml")
    assert result.returncode == 0, result.stderr


BROKEN = [
    pytest.param(
        "rules:\n  - id: a\n    action: allow\n    verbs: [get\n",
        5,
        "started at line 4",
        id="yaml-syntax",
    ),
    pytest.param(
        GOOD_RULE + "    colour: red\n", 6, "rules.0.colour: unknown field", id="unknown-field"
    ),
    pytest.param(
        "rules:\n  - id: a\n    action: allow\n    verbs: [get, destroy]\n",
        4,
        "'destroy' is not one of",
        id="unknown-verb",
    ),
    pytest.param(
        "rules:\n  - id: a\n    action: deny\n    body:\n      - path: '$.spec[?('\n        equals: 1\n",
        5,
        "invalid JSONPath",
        id="bad-jsonpath",
    ),
    pytest.param(
        "rules:\n  - id: a\n    action: deny\n    body:\n      - path: $.a\n        matches: '(unclosed'\n",
        6,
        "invalid regex",
        id="bad-regex",
    ),
    pytest.param(
        "rules:\n  - id: a\n    action: deny\n    filter: '~q ~~ ('\n",
        4,
        "invalid filter",
        id="bad-filter",
    ),
    pytest.param(
        "rules:\n  - id: a\n    action: allow\n    action: deny\n",
        4,
        "duplicate key 'action'",
        id="duplicate-key",
    ),
    pytest.param(
        GOOD_RULE + "  - id: allow-reads\n    action: deny\n",
        6,
        "duplicate rule id",
        id="duplicate-id",
    ),
    pytest.param(
        "rules:\n  - id: a\n    action: allow\n    targets: [nope]\n",
        4,
        "unknown target 'nope'",
        id="unknown-target",
    ),
    pytest.param(
        "rules:\n  - id: a\n    action: allow\n    timeout: 5m\n",
        4,
        "only applies to approve",
        id="timeout-on-allow",
    ),
    pytest.param(
        "rules:\n  - id: a\n    action: approve\n    reviewers: [local:admin]\n    timeout: soon\n",
        5,
        "timeout",
        id="bad-duration",
    ),
    pytest.param(
        GOOD_RULE
        + "tests:\n  - request: GET https://kubernetes.default.svc/api/v1/namespaces\n    expect: deny\n",
        7,
        "expected deny, got allow",
        id="failing-rule-test",
    ),
    pytest.param(
        "rules:\n  - id: a\n    action: deny\n    resources: [pods, secret]\n",
        4,
        "write 'secrets'",
        id="singular-resource",
    ),
    pytest.param(
        "rules:\n  - id: a\n    action: allow\n    resources: [deploy/scale]\n",
        4,
        "write 'deployments/scale'",
        id="short-name",
    ),
    pytest.param(
        "rules:\n  - id: a\n    action: approve\n    reviewers: ['slack:@alice']\n",
        4,
        "user IDs",
        id="slack-at-name",
    ),
]


@pytest.mark.parametrize(("text", "line", "message"), BROKEN)
def test_check_reports_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    config = write_config(
        tmp_path, {"00-good.yaml": GOOD_RULE.replace("allow-reads", "other"), "bad.yaml": text}
    )
    result = run("check", "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    bad = str((tmp_path / "rules" / "bad.yaml").resolve())
    assert f"{bad}:{line}:" in result.stderr, result.stderr
    assert message in result.stderr


def test_check_reports_config_errors(tmp_path: Path) -> None:
    config = tmp_path / "holdgate.yaml"
    config.write_text(
        "targets:\n  - name: x\n    kind: kubernetes\n    hosts: [a]\n    upstreem: https://a\n"
    )
    result = run("check", "--config", str(config))
    assert result.returncode == 2
    assert f"{config.resolve()}:5: targets.0.upstreem: unknown field" in result.stderr


def test_run_refuses_to_start_on_invalid_rules(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"bad.yaml": "rules:\n  - id: a\n    action: maybe\n"})
    result = run("run", "--config", str(config), "--listen-port", "0")
    assert result.returncode == 2
    assert "bad.yaml:3:" in result.stderr


def test_explain_on_the_embedded_default() -> None:
    result = run("explain", "GET", "https://kubernetes.default.svc/api/v1/namespaces/prod/secrets")
    assert result.returncode == 1, result.stderr  # as `kubectl auth can-i`: denied
    out = json.loads(result.stdout)
    assert out["target"] == "sandbox"
    assert out["kubernetes"] == {
        "resource_request": True,
        "verb": "list",
        "api_group": "",
        "api_version": "v1",
        "namespace": "prod",
        "resource": "secrets",
        "subresource": "",
        "name": "",
        "path": "/api/v1/namespaces/prod/secrets",
    }
    assert out["rule"] == "deny-prod-secret-reads"
    assert out["action"] == "deny"


def test_explain_exits_as_kubectl_auth_can_i_and_says_bad_input_in_one_line() -> None:
    reads = run("explain", "GET", "https://kubernetes.default.svc/api/v1/namespaces")
    assert reads.returncode == 0
    held = run(
        "explain", "POST", "https://kubernetes.default.svc/api/v1/namespaces/sandbox/secrets"
    )
    assert held.returncode == 3 and json.loads(held.stdout)["action"] == "approve"
    for bad in (["GET", "notaurl"], ["GET", "https://x/", "--body", "/nonexistent"]):
        result = run("explain", *bad)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_explain_exec_shows_the_command() -> None:
    url = "https://kubernetes.default.svc/api/v1/namespaces/prod/pods/web-0/exec?command=sh&command=-c&command=cat%20/etc/passwd&stdout=true"
    out = json.loads(run("explain", "GET", url).stdout)
    assert out["exec"]["command"] == ["sh", "-c", "cat /etc/passwd"]
    assert out["kubernetes"]["subresource"] == "exec"
    assert (out["rule"], out["action"]) == ("approve-prod-exec", "approve")


def test_explain_with_body_and_agent(tmp_path: Path) -> None:
    body = tmp_path / "pod.json"
    body.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "c", "securityContext": {"privileged": True}}]},
            }
        )
    )
    out = json.loads(
        run(
            "explain",
            "--agent",
            "ci-bot",
            "--body",
            str(body),
            "POST",
            "https://kubernetes.default.svc/api/v1/namespaces/sandbox/pods",
        ).stdout
    )
    assert out["kubernetes"]["name"] == "p"
    assert out["identity"]["agent"] == "ci-bot"
    assert (out["rule"], out["action"]) == ("deny-unsafe-pods", "deny")


def test_explain_undeclared_host_follows_default() -> None:
    out = json.loads(run("explain", "GET", "https://example.com/").stdout)
    assert out["target"] is None and out["action"] == "deny" and out["rule"] is None


def test_ca_is_created_with_tight_modes(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"r.yaml": GOOD_RULE})
    result = run("ca", "--config", str(config))
    assert result.returncode == 0, result.stderr
    cert = Path(result.stdout.strip())
    assert cert == (tmp_path / "certs" / "mitmproxy-ca-cert.pem").resolve()
    assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert oct(cert.parent.stat().st_mode & 0o777) == "0o700"
    key = cert.parent / "mitmproxy-ca.pem"
    assert oct(key.stat().st_mode & 0o777) == "0o600" and "PRIVATE KEY" in key.read_text()
    # A second call keeps the same CA.
    assert run("ca", "--config", str(config)).stdout == result.stdout
    assert key.read_text() == (cert.parent / "mitmproxy-ca.pem").read_text()


def _with(tmp_path: Path, rules: str, **extra: object) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_config(tmp_path, {"r.yaml": rules})
    config = yaml.safe_load(path.read_text())
    config.update(extra)
    path.write_text(yaml.safe_dump(config))
    return path


APPROVE = "rules:\n  - id: hold\n    action: approve\n    reviewers: [{reviewers}]\n"


def test_reviewers_who_can_never_approve(tmp_path: Path) -> None:
    approvals = {"local_reviewers": {"olga": {"token_sha256": "0" * 64}}}
    # Nobody in the rule can approve: an error naming the reason.
    path = _with(
        tmp_path / "a", APPROVE.format(reviewers="local:bob, slack:U123"), approvals=approvals
    )
    result = run("check", "--config", str(path))
    assert result.returncode == 2
    assert "no local reviewer 'bob'" in result.stderr and "no Slack channel" in result.stderr
    # One of them can: valid, with a warning for the other.
    path = _with(
        tmp_path / "b", APPROVE.format(reviewers="local:olga, local:bob"), approvals=approvals
    )
    result = run("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "'local:bob'" in result.stderr


def test_admission_verbs_are_warned_about(tmp_path: Path) -> None:
    path = _with(tmp_path, "rules:\n  - id: a\n    action: deny\n    verbs: [bind, create]\n")
    result = run("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "verb 'bind'" in result.stderr


def test_rule_tests_and_explain_use_the_agents_declared_groups(tmp_path: Path) -> None:
    rules = (
        "rules:\n  - id: deployers\n    action: allow\n    groups: [deployers]\n"
        "    verbs: [create]\n    resources: [configmaps]\n"
        "tests:\n  - request: POST https://kubernetes.default.svc/api/v1/namespaces/a/configmaps\n"
        "    agent: ci-bot\n    expect: allow\n    rule: deployers\n"
    )
    identity = {"agents": [{"name": "ci-bot", "groups": ["deployers"], "token_sha256": "0" * 64}]}
    path = _with(tmp_path, rules, identity=identity)
    result = run("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    explained = run(
        "explain", "--config", str(path), "--agent", "ci-bot",
        "POST", "https://kubernetes.default.svc/api/v1/namespaces/a/configmaps",
    )  # fmt: skip
    assert json.loads(explained.stdout)["rule"] == "deployers", explained.stdout


def test_explain_says_why_a_read_rule_opens_no_shell(tmp_path: Path) -> None:
    path = _with(tmp_path, GOOD_RULE)
    result = run(
        "explain", "--config", str(path),
        "GET", "https://kubernetes.default.svc/api/v1/namespaces/a/pods/p/exec?command=sh",
    )  # fmt: skip
    out = json.loads(result.stdout)
    assert out["action"] == "deny" and "pods/exec is privileged" in out["reason"]


def test_local_reviewers_cannot_approve_without_the_page(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {"held.yaml": "rules:\n  - id: held\n    action: approve\n    reviewers: [local:admin]\n"},
    )
    raw = yaml.safe_load(config.read_text())
    raw["approvals"] = {"slack": {"channel": "C123", "bot_token_env": "HOLDGATE_TEST_BOT"}}
    config.write_text(yaml.safe_dump(raw))
    result = run("check", "--config", str(config))
    assert result.returncode == 2
    assert "no reviewer of this rule can ever approve" in result.stderr
    assert "the approvals page is off" in result.stderr


def test_explain_shows_what_a_self_review_is_answered(tmp_path: Path) -> None:
    """`kubectl auth can-i` as explain sees it: the review passes, the answer is the gateway's."""
    review = tmp_path / "review.json"
    review.write_text(
        json.dumps(
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {
                    "resourceAttributes": {
                        "verb": "get",
                        "resource": "secrets",
                        "namespace": "prod",
                    }
                },
            }
        )
    )
    url = "https://kubernetes.default.svc/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    result = run("explain", "POST", url, "--body", str(review))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["action"] == "allow" and out["rule"] is None
    answer = out["access_review"]
    assert answer["answered_by"] == "gateway"
    assert answer["status"] == {
        "allowed": False,
        "denied": True,
        "reason": "holdgate: denied by rule deny-prod-secret-reads: secrets in production "
        "namespaces are off limits to agents",
    }
    assert answer["asked"]["resource"] == "secrets" and answer["decision"]["action"] == "deny"


def test_check_refuses_a_database_password_in_the_configuration(tmp_path: Path) -> None:
    config = write_home_config(
        tmp_path,
        "rules: []\n",
        targets=[{"name": "api", "kind": "http", "hosts": ["api.test"]}],
        state_store="postgresql://holdgate:hunter2-canary@db.example:5432/holdgate",
    )
    result = run("check", "--config", str(config))
    assert result.returncode == 2
    assert f"{config}:" in result.stderr and "never in the configuration" in result.stderr
    assert "hunter2-canary" not in result.stderr + result.stdout
