"""`kubectl auth can-i` through the gateway: self-reviews answered from the gateway's policy for
the agent, combined with the upstream's answer (policy/access_review.py)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
import urllib3

from holdgate.sandbox.kube_rbac import FULL_ACCESS, rule_from
from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import (
    SIM_TOKEN,
    GatewayProcess,
    kube_target,
    kubectl,
    start_gateway,
    write_agent_kubeconfig,
)

TOKENS = {"ci-bot": "can-i-ci-bot-token-5e1d", "reader": "can-i-reader-token-93ab"}
REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
RULES_REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews"

RULES = """
rules:
  - {id: discovery, action: allow, verbs: [get], nonResourceURLs: [/api, /api/*, /apis, /apis/*, /version]}
  - {id: reads, action: allow, verbs: [get, list, watch], resources: ["*"]}
  - id: no-prod-secrets
    action: deny
    message: secrets in prod are off limits
    resources: [secrets]
    namespaces: ["prod*"]
  - id: sandbox-writes
    action: allow
    agents: [ci-bot]
    verbs: [create, update, patch, delete]
    resources: ["*"]
    namespaces: [sandbox]
  - id: sandbox-shells
    action: allow
    agents: [ci-bot]
    resources: [pods/exec]
    verbs: [create, get]
    namespaces: [sandbox]
  - id: secret-writes
    action: approve
    resources: [secrets]
    verbs: [create, update, patch]
    reviewers: [local:admin, local:oncall]
    required: 2
  - id: baseline-pods
    action: deny
    message: pods must meet the baseline Pod Security Standard
    resources: [pods, deployments]
    verbs: [create, update, patch]
    violatesPodSecurity: baseline
  - id: configmap-deletes
    action: deny
    mode: audit
    message: configmaps are not deleted
    resources: [configmaps]
    verbs: [delete]
"""


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, simulator: KubeSimulator
) -> Iterator[GatewayProcess]:
    agents = [
        {"name": name, "token_sha256": hashlib.sha256(token.encode()).hexdigest()}
        for name, token in TOKENS.items()
    ]
    gw = start_gateway(
        tmp_path_factory.mktemp("can-i"),
        {"targets": [kube_target(simulator)], "identity": {"agents": agents}},
        {"r.yaml": RULES},
    )
    yield gw
    gw.stop()


@pytest.fixture
def sim(simulator: KubeSimulator) -> Iterator[KubeSimulator]:
    simulator.clear_requests()
    yield simulator
    simulator.access = FULL_ACCESS


def as_agent(tmp_path: Path, gateway: GatewayProcess, agent: str) -> Path:
    """A kubeconfig for `agent`: its proxy credentials in proxy-url, the cluster token as is."""
    return write_agent_kubeconfig(
        tmp_path / f"{agent}.kubeconfig", gateway, agent=(agent, TOKENS[agent])
    )


def can_i(kubeconfig: Path, *args: str) -> tuple[int, str]:
    result = kubectl(kubeconfig, "auth", "can-i", *args)
    return result.returncode, (result.stdout + result.stderr).strip()


def test_yes_when_the_gateway_allows_and_the_upstream_agrees(
    tmp_path: Path, gateway: GatewayProcess, sim: KubeSimulator
) -> None:
    code, out = can_i(as_agent(tmp_path, gateway, "reader"), "list", "pods", "-n", "sandbox")
    assert (code, out) == (0, "yes")
    asked = sim.requests_to(REVIEWS, "POST")
    assert len(asked) == 1  # the upstream was asked, with the gateway's credential
    assert asked[0].headers["authorization"] == f"Bearer {SIM_TOKEN}"
    assert "proxy-authorization" not in asked[0].headers


def test_no_when_a_rule_denies_and_the_upstream_is_not_asked(
    tmp_path: Path, gateway: GatewayProcess, sim: KubeSimulator
) -> None:
    code, out = can_i(as_agent(tmp_path, gateway, "ci-bot"), "get", "secrets", "-n", "prod")
    assert code == 1
    assert out == ("no - holdgate: denied by rule no-prod-secrets: secrets in prod are off limits")
    assert sim.requests_to(REVIEWS) == []


def test_approve_rules_answer_no_with_who_approves(
    tmp_path: Path, gateway: GatewayProcess, sim: KubeSimulator
) -> None:
    code, out = can_i(as_agent(tmp_path, gateway, "ci-bot"), "create", "secrets", "-n", "sandbox")
    assert code == 1
    assert out == (
        "no - holdgate: needs approval by 2 of local:admin, local:oncall (rule secret-writes)"
    )
    assert sim.requests_to(REVIEWS) == []


def test_answers_are_per_agent(tmp_path: Path, gateway: GatewayProcess, sim: KubeSimulator) -> None:
    ci_bot, reader = (as_agent(tmp_path, gateway, a) for a in ("ci-bot", "reader"))
    assert can_i(ci_bot, "create", "configmaps", "-n", "sandbox") == (0, "yes")
    code, out = can_i(reader, "create", "configmaps", "-n", "sandbox")
    assert code == 1 and "no rule matched; target cluster default deny" in out
    # A shell is privileged: only the rule that names pods/exec (for ci-bot, in sandbox) opens it.
    assert can_i(ci_bot, "create", "pods", "--subresource=exec", "-n", "sandbox") == (0, "yes")
    code, out = can_i(ci_bot, "create", "pods", "--subresource=exec", "-n", "default")
    assert code == 1 and "pods/exec is privileged" in out
    code, out = can_i(reader, "get", "pods", "--subresource=exec", "-n", "sandbox")
    assert code == 1 and "pods/exec is privileged" in out


def test_no_when_the_upstream_says_no(
    tmp_path: Path, gateway: GatewayProcess, sim: KubeSimulator
) -> None:
    sim.access = (rule_from({"verbs": ["*"], "apiGroups": [""], "resources": ["pods"]}),)
    ci_bot = as_agent(tmp_path, gateway, "ci-bot")
    assert can_i(ci_bot, "create", "pods", "-n", "sandbox") == (0, "yes")
    assert can_i(ci_bot, "create", "configmaps", "-n", "sandbox") == (1, "no")
    assert len(sim.requests_to(REVIEWS, "POST")) == 2


def test_impersonation_is_decided_as_for_any_request(
    tmp_path: Path, gateway: GatewayProcess, sim: KubeSimulator
) -> None:
    code, out = can_i(as_agent(tmp_path, gateway, "ci-bot"), "get", "pods", "--as=bob")
    assert code == 1
    assert out == 'no - holdgate: impersonation of users "bob" refused: no rule allows it'
    assert sim.requests_to(REVIEWS) == []


def test_wildcards_are_not_answered_yes(
    tmp_path: Path, gateway: GatewayProcess, sim: KubeSimulator
) -> None:
    code, out = can_i(as_agent(tmp_path, gateway, "ci-bot"), "*", "*", "-n", "sandbox")
    assert code == 1 and "one verb on one resource at a time" in out


def _review(gateway: GatewayProcess, agent: str, attributes: dict[str, str]) -> dict:
    """A SelfSubjectAccessReview sent as JSON by the `kubernetes` Python client, as `agent`."""
    configuration = kubernetes.client.Configuration()
    configuration.host = "https://kubernetes.default.svc"
    configuration.proxy = gateway.proxy_url
    configuration.proxy_headers = urllib3.make_headers(proxy_basic_auth=f"{agent}:{TOKENS[agent]}")
    configuration.ssl_ca_cert = str(gateway.ca_path)
    configuration.api_key = {"BearerToken": SIM_TOKEN}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    with kubernetes.client.ApiClient(configuration) as client:
        api = kubernetes.client.AuthorizationV1Api(client)
        review = kubernetes.client.V1SelfSubjectAccessReview(
            spec=kubernetes.client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=kubernetes.client.V1ResourceAttributes(**attributes)
            )
        )
        answer: dict = client.sanitize_for_serialization(
            api.create_self_subject_access_review(review)
        )
    return answer


def test_the_upstream_reason_carries_what_the_gateway_still_checks(
    tmp_path: Path, gateway: GatewayProcess, sim: KubeSimulator
) -> None:
    # A rule that judges the object cannot refuse a question without one: named in the reason.
    answer = _review(
        gateway, "ci-bot", {"verb": "create", "resource": "pods", "namespace": "sandbox"}
    )
    assert answer["status"]["allowed"] is True
    assert answer["status"]["reason"].startswith("RBAC: allowed by ClusterRoleBinding")
    assert "holdgate: the object sent is checked by baseline-pods" in answer["status"]["reason"]
    # Audit mode passes the request; the answer says what enforcing would do.
    answer = _review(
        gateway, "ci-bot", {"verb": "delete", "resource": "configmaps", "namespace": "sandbox"}
    )
    assert answer["status"]["allowed"] is True
    assert (
        "holdgate audit mode: would deny: denied by rule configmap-deletes"
        in (answer["status"]["reason"])
    )
    assert len(sim.requests_to(REVIEWS, "POST")) == 2


def _listed(kubeconfig: Path, namespace: str) -> dict[str, str]:
    """`kubectl auth can-i --list` as {resource: verbs}."""
    result = kubectl(kubeconfig, "auth", "can-i", "--list", "-n", namespace)
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines()[1:]:
        if line and not line.startswith(" "):
            rows[line.split()[0]] = re.findall(r"\[[^\]]*\]", line)[-1]
    return rows


def test_rules_review_lists_only_what_both_allow(
    tmp_path: Path, gateway: GatewayProcess, sim: KubeSimulator
) -> None:
    sim.access = tuple(
        rule_from(r)
        for r in (
            {"verbs": ["get", "list", "watch"], "apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["secrets", "configmaps"]},
            {"verbs": ["create", "delete"], "apiGroups": [""], "resources": ["configmaps"]},
        )
    )
    ci_bot, reader = (as_agent(tmp_path, gateway, a) for a in ("ci-bot", "reader"))
    prod = _listed(ci_bot, "prod")
    assert prod["pods"] == "[get list watch]"
    # No rule allows creates in prod; deletes pass while configmap-deletes is in audit mode.
    assert prod["configmaps"] == "[get list delete]"
    assert "secrets" not in prod  # no-prod-secrets
    assert _listed(ci_bot, "sandbox")["configmaps"] == "[get list create delete]"
    assert _listed(ci_bot, "sandbox")["secrets"] == "[get list]"
    assert _listed(reader, "sandbox")["configmaps"] == "[get list delete]"
    # The gateway answers self-reviews itself: always listed.
    assert _listed(reader, "prod")["selfsubjectaccessreviews.authorization.k8s.io"] == "[create]"
    assert len(sim.requests_to(RULES_REVIEWS, "POST")) == 5


def test_rules_review_keeps_a_wildcard_only_where_no_rule_narrows_it(
    tmp_path: Path, gateway: GatewayProcess, sim: KubeSimulator
) -> None:
    reader = as_agent(tmp_path, gateway, "reader")
    sandbox = _listed(reader, "sandbox")  # the simulator's credential is a cluster admin
    assert sandbox["*.*"] == "[get list watch]"
    prod = _listed(reader, "prod")  # no-prod-secrets narrows reads in prod: left out
    assert "*.*" not in prod
