"""Self-reviews answered from the policy, table-driven (the gateway side: tests/test_can_i.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from holdgate.config.gateway_config import Config
from holdgate.identity.agents import Identity
from holdgate.policy.access_review import (
    ACCESS_REVIEWS,
    RULES_REVIEWS,
    answer_access,
    decide_review,
    filter_rules,
    self_review,
    with_note,
)
from holdgate.policy.rule_tests import decide_url
from holdgate.policy.rules import Action, LoadedPolicy
from holdgate.request.facts import RequestFacts, build_facts
from tests.conftest import load_policy_home

K = "https://kubernetes.default.svc/apis/authorization.k8s.io/v1"
RULES = """
rules:
  - {id: reads, action: allow, verbs: [get, list, watch], resources: ["*"], apiGroups: ["*"]}
  - {id: discovery, action: allow, verbs: [get], nonResourceURLs: [/api, /api/*]}
  - {id: prod-secrets, action: deny, message: not here, resources: [secrets], namespaces: [prod]}
  - id: ci-writes
    action: allow
    agents: [ci-*]
    verbs: [create, delete]
    resources: [configmaps]
  - id: named-flags
    action: allow
    verbs: [update]
    resources: [configmaps]
    resourceNames: [flags]
  - {id: exec, action: approve, verbs: [create], resources: [pods/exec], reviewers: [local:a, local:b], required: 2}
  - {id: privileged, action: deny, message: not baseline, resources: [pods], violatesPodSecurity: baseline}
  - id: labelled-pods
    action: allow
    verbs: [create]
    resources: [pods]
    body: [{path: $.metadata.labels.team, equals: web}]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, LoadedPolicy]:
    config = (
        "rules: [rules]\n"
        "targets: [{name: cluster, kind: kubernetes, hosts: [kubernetes.default.svc]}]\n"
    )
    return load_policy_home(tmp_path_factory.mktemp("reviews"), config, RULES)


def review_facts(
    setup: tuple[Config, LoadedPolicy], resource: str, spec: dict[str, Any], agent: str = "ci-1"
) -> RequestFacts:
    config, loaded = setup
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "x", "spec": spec}
    _, facts = decide_url(
        config,
        loaded,
        "POST",
        f"{K}/{resource}",
        body=json.dumps(body).encode(),
        content_type="application/json",
        identity=Identity(agent),
    )
    assert isinstance(facts, RequestFacts)
    return facts


ACCESS = [
    # (attributes, agent, status or None when the upstream answers, note)
    ({"verb": "list", "resource": "pods", "namespace": "dev"}, "ci-1", None, ""),
    (
        {"verb": "get", "resource": "secrets", "namespace": "prod", "name": "x"},
        "ci-1",
        {
            "allowed": False,
            "denied": True,
            "reason": "holdgate: denied by rule prod-secrets: not here",
        },
        "",
    ),
    ({"verb": "create", "resource": "configmaps", "namespace": "dev"}, "ci-1", None, ""),
    (
        {"verb": "create", "resource": "configmaps", "namespace": "dev"},
        "bot",
        {
            "allowed": False,
            "denied": True,
            "reason": "holdgate: no rule matched; target cluster default deny",
        },
        "",
    ),
    # resourceNames: allowed for the named object only.
    (
        {"verb": "update", "resource": "configmaps", "namespace": "d", "name": "flags"},
        "x",
        None,
        "",
    ),
    (
        {"verb": "update", "resource": "configmaps", "namespace": "d", "name": "other"},
        "x",
        {
            "allowed": False,
            "denied": True,
            "reason": "holdgate: no rule matched; target cluster default deny",
        },
        "",
    ),
    (
        {
            "verb": "create",
            "resource": "pods",
            "subresource": "exec",
            "namespace": "d",
            "name": "p",
        },
        "x",
        {
            "allowed": False,
            "reason": "holdgate: needs approval by 2 of local:a, local:b (rule exec)",
        },
        "",
    ),
    # Rules that judge the object cannot refuse a question, and body-conditioned allows grant nothing.
    (
        {"verb": "create", "resource": "pods", "namespace": "d"},
        "x",
        {
            "allowed": False,
            "denied": True,
            "reason": "holdgate: no rule matched; target cluster default deny",
        },
        "",
    ),
    (
        {"verb": "patch", "resource": "pods", "namespace": "d", "name": "p"},
        "x",
        {
            "allowed": False,
            "denied": True,
            "reason": "holdgate: no rule matched; target cluster default deny",
        },
        "",
    ),
    (
        {"verb": "*", "resource": "pods", "namespace": "d"},
        "x",
        {
            "allowed": False,
            "reason": "holdgate: the gateway answers for one verb on one resource at a time "
            "('*' spans requests its rules treat differently)",
        },
        "",
    ),
    # A list across namespaces spans prod: the deny rule refuses it.
    (
        {"verb": "list", "resource": "secrets"},
        "x",
        {
            "allowed": False,
            "denied": True,
            "reason": "holdgate: denied by rule prod-secrets: not here",
        },
        "",
    ),
]


@pytest.mark.parametrize(("attributes", "agent", "status", "note"), ACCESS)
def test_access_reviews(
    setup: tuple[Config, LoadedPolicy],
    attributes: dict[str, str],
    agent: str,
    status: dict[str, Any] | None,
    note: str,
) -> None:
    config, loaded = setup
    spec = {"resourceAttributes": attributes}
    facts = review_facts(setup, ACCESS_REVIEWS, spec, agent)
    assert self_review(facts) == ACCESS_REVIEWS
    answer = answer_access(loaded.policy, config, facts, spec)
    assert (answer.status, answer.note) == (status, note)


def test_rules_that_judge_the_object_are_named_in_the_upstream_reason(
    setup: tuple[Config, LoadedPolicy],
) -> None:
    config, loaded = setup
    spec = {"resourceAttributes": {"verb": "create", "resource": "pods", "namespace": "d"}}
    facts = review_facts(setup, ACCESS_REVIEWS, spec)
    answer = answer_access(loaded.policy, config, facts, spec)
    # ci-writes does not cover pods: the default refuses, the PSS rule is not why.
    assert answer.status is not None and "privileged" not in answer.status["reason"]
    spec = {"resourceAttributes": {"verb": "list", "resource": "pods", "namespace": "d"}}
    assert with_note({"allowed": True, "reason": "RBAC: ok"}, "holdgate: x") == {
        "allowed": True,
        "reason": "RBAC: ok; holdgate: x",
    }


def test_non_resource_reviews(setup: tuple[Config, LoadedPolicy]) -> None:
    config, loaded = setup
    for path, allowed in (("/api/v1", True), ("/metrics", False)):
        spec = {"nonResourceAttributes": {"path": path, "verb": "get"}}
        answer = answer_access(
            loaded.policy, config, review_facts(setup, ACCESS_REVIEWS, spec), spec
        )
        assert (answer.status is None) is allowed


def test_only_creates_of_the_two_self_reviews_are_answered(
    setup: tuple[Config, LoadedPolicy],
) -> None:
    config, loaded = setup
    assert self_review(review_facts(setup, RULES_REVIEWS, {})) == RULES_REVIEWS
    assert self_review(review_facts(setup, "subjectaccessreviews", {})) == ""
    _, facts = decide_url(config, loaded, "GET", f"{K}/selfsubjectaccessreviews")
    assert isinstance(facts, RequestFacts) and self_review(facts) == ""


def test_rules_review_keeps_what_both_allow(setup: tuple[Config, LoadedPolicy]) -> None:
    config, loaded = setup
    upstream = {
        "resourceRules": [
            {"verbs": ["*"], "apiGroups": [""], "resources": ["configmaps", "secrets"]},
            {
                "verbs": ["update"],
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": ["flags"],
            },
            {"verbs": ["get", "list"], "apiGroups": ["*"], "resources": ["*"]},
            {
                "verbs": ["create"],
                "apiGroups": ["authorization.k8s.io"],
                "resources": [ACCESS_REVIEWS],
            },
        ],
        "nonResourceRules": [{"verbs": ["get"], "nonResourceURLs": ["/api/*", "/metrics", "*"]}],
        "incomplete": False,
    }
    facts = review_facts(setup, RULES_REVIEWS, {"namespace": "dev"})
    dev = filter_rules(loaded.policy, config, facts, "dev", upstream)
    assert dev["resourceRules"] == [
        {
            "verbs": ["get", "list", "watch", "create", "delete"],
            "apiGroups": [""],
            "resources": ["configmaps"],
        },
        {"verbs": ["get", "list", "watch"], "apiGroups": [""], "resources": ["secrets"]},
        {
            "verbs": ["update"],
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["flags"],
        },
        # get also opens a shell (WebSocket exec), which the exec rule holds: left out.
        {"verbs": ["list"], "apiGroups": ["*"], "resources": ["*"]},
        {"verbs": ["create"], "apiGroups": ["authorization.k8s.io"], "resources": [ACCESS_REVIEWS]},
    ]
    assert dev["nonResourceRules"] == [{"verbs": ["get"], "nonResourceURLs": ["/api/*"]}]
    assert dev["incomplete"] is True and "/metrics" in dev["evaluationError"]
    # In prod a deny rule narrows reads of secrets: the wildcard read is left out there.
    prod = filter_rules(loaded.policy, config, facts, "prod", upstream)
    assert all(r["resources"] != ["*"] for r in prod["resourceRules"])
    assert all("secrets" not in r["resources"] for r in prod["resourceRules"])


def test_a_rules_review_as_someone_else_needs_an_impersonation_rule(
    setup: tuple[Config, LoadedPolicy],
) -> None:
    """A rules review goes upstream with the gateway's credential: its Impersonate-* headers
    are decided first (this rule set allows neither them nor `/version`)."""
    config, loaded = setup
    facts = build_facts(
        config,
        method="POST",
        host="kubernetes.default.svc",
        port=443,
        path_and_query="/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        content_type="application/json",
        body=json.dumps({"spec": {"namespace": "dev"}}).encode(),
        identity=Identity("ci-1"),
        headers=[("Impersonate-User", "admin")],
    )
    decision, _ = decide_review(loaded.policy, config, facts, RULES_REVIEWS)
    assert decision.action is Action.DENY
    assert decision.reason == 'impersonation of users "admin" refused: no rule allows it'
    plain = review_facts(setup, RULES_REVIEWS, {"namespace": "dev"})
    assert decide_review(loaded.policy, config, plain, RULES_REVIEWS)[0].action is Action.ALLOW
