"""Decisions, table-driven: the policy core exactly as the gateway and `explain` use it."""

from __future__ import annotations

import json

import pytest

from addons.config import load_config
from addons.flow_filter import compile_filter
from addons.identity import Identity
from addons.kube_protobuf import encode_object
from addons.policy import Action, Policy, load_policy, parse_duration
from addons.rule_tests import decide_url

K = "https://kubernetes.default.svc"

RULES = """
rules:
  - id: allow-reads
    action: allow
    verbs: [get, list, watch]
    resources: ["*"]
    apiGroups: ["*"]
  - id: allow-discovery
    action: allow
    verbs: [get]
    nonResourceURLs: [/api, /api/*, /apis, /apis/*, /version]
  - id: deny-prod-secrets
    action: deny
    message: no prod secrets
    resources: [secrets]
    verbs: [get, list, watch]
    namespaces: ["prod*"]
  - id: deny-db-password
    action: deny
    message: never the db password
    resources: [secrets]
    resourceNames: [db-password]
  - id: allow-named-config
    action: allow
    resources: [configmaps]
    verbs: [create, delete]
    resourceNames: [feature-flags]
  - id: approve-exec
    action: approve
    resources: [pods/exec]
    verbs: [create]
    reviewers: [local:admin]
  - id: allow-scale
    action: allow
    resources: ["*/scale"]
    verbs: [update, patch]
  - id: allow-pod-subresources-in-dev
    action: allow
    resources: ["pods/*"]
    verbs: ["*"]
    namespaces: [dev]
  - id: deny-privileged
    action: deny
    message: privileged
    resources: [pods]
    verbs: [create]
    body:
      - path: "$.spec.containers[*].securityContext.privileged"
        equals: true
  - id: allow-pod-create-with-label
    action: allow
    resources: [pods]
    verbs: [create]
    body:
      - path: "$.metadata.labels.team"
        matches: "^(web|data)$"
  - id: allow-ci-writes
    action: allow
    resources: [deployments]
    apiGroups: [apps]
    verbs: [patch]
    agents: ["ci-*"]
  - id: deny-interns
    action: deny
    message: interns read only
    resources: [deployments]
    apiGroups: [apps]
    groups: [interns]
  - id: api-reads
    action: allow
    targets: [api]
    methods: [GET]
    paths: ["/v1/*"]
  - id: api-admin
    action: deny
    message: admin is off limits
    targets: [api]
    paths: ["/v1/admin*"]
  - id: api-debug-header
    action: deny
    message: no debug
    targets: [api]
    filter: "~hq X-Debug"
"""

CASES = [
    # (method, url, body, content_type, identity, expected action, expected rule)
    ("GET", f"{K}/api/v1/namespaces", None, "", None, Action.ALLOW, "allow-reads"),
    ("GET", f"{K}/apis", None, "", None, Action.ALLOW, "allow-discovery"),
    (
        "GET",
        f"{K}/api/v1/namespaces/prod/secrets",
        None,
        "",
        None,
        Action.DENY,
        "deny-prod-secrets",
    ),
    (
        "GET",
        f"{K}/api/v1/namespaces/prod-eu/secrets/x",
        None,
        "",
        None,
        Action.DENY,
        "deny-prod-secrets",
    ),
    ("GET", f"{K}/api/v1/namespaces/dev/secrets/x", None, "", None, Action.ALLOW, "allow-reads"),
    # A cluster-wide list spans production too.
    ("GET", f"{K}/api/v1/secrets", None, "", None, Action.DENY, "deny-prod-secrets"),
    ("GET", f"{K}/api/v1/secrets?watch=true", None, "", None, Action.DENY, "deny-prod-secrets"),
    # A list in dev may contain db-password: the name is unknown, so the deny applies.
    ("GET", f"{K}/api/v1/namespaces/dev/secrets", None, "", None, Action.DENY, "deny-db-password"),
    (
        "GET",
        f"{K}/api/v1/namespaces/dev/secrets?fieldSelector=metadata.name%3Dother",
        None,
        "",
        None,
        Action.ALLOW,
        "allow-reads",
    ),
    (
        "GET",
        f"{K}/api/v1/namespaces/dev/secrets/db-password",
        None,
        "",
        None,
        Action.DENY,
        "deny-db-password",
    ),
    # resourceNames on allow: a nameless create does not match, a named one does.
    ("POST", f"{K}/api/v1/namespaces/dev/configmaps", b"", "", None, Action.DENY, None),
    (
        "POST",
        f"{K}/api/v1/namespaces/dev/configmaps",
        {"metadata": {"name": "feature-flags"}},
        "application/json",
        None,
        Action.ALLOW,
        "allow-named-config",
    ),
    (
        "POST",
        f"{K}/api/v1/namespaces/dev/configmaps",
        encode_object(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "feature-flags"}}
        ),
        "application/vnd.kubernetes.protobuf",
        None,
        Action.ALLOW,
        "allow-named-config",
    ),
    ("DELETE", f"{K}/api/v1/namespaces/dev/configmaps", None, "", None, Action.DENY, None),
    # exec: WebSocket GET and SPDY POST both count as create.
    (
        "GET",
        f"{K}/api/v1/namespaces/x/pods/p/exec?command=sh",
        None,
        "",
        None,
        Action.APPROVE,
        "approve-exec",
    ),
    (
        "POST",
        f"{K}/api/v1/namespaces/x/pods/p/exec?command=sh",
        None,
        "",
        None,
        Action.APPROVE,
        "approve-exec",
    ),
    (
        "GET",
        f"{K}/api/v1/namespaces/dev/pods/p/exec?command=sh",
        None,
        "",
        None,
        Action.APPROVE,
        "approve-exec",
    ),
    ("GET", f"{K}/api/v1/namespaces/dev/pods/p/log", None, "", None, Action.ALLOW, "allow-reads"),
    (
        "POST",
        f"{K}/api/v1/namespaces/dev/pods/p/eviction",
        None,
        "",
        None,
        Action.ALLOW,
        "allow-pod-subresources-in-dev",
    ),
    (
        "PUT",
        f"{K}/apis/apps/v1/namespaces/x/deployments/d/scale",
        None,
        "",
        None,
        Action.ALLOW,
        "allow-scale",
    ),
    # Unknown agent: deny-interns (groups: [interns]) cannot rule the caller out, so it applies.
    (
        "PUT",
        f"{K}/apis/apps/v1/namespaces/x/deployments/d",
        None,
        "",
        None,
        Action.DENY,
        "deny-interns",
    ),
    (
        "PUT",
        f"{K}/apis/apps/v1/namespaces/x/deployments/d",
        None,
        "",
        Identity("bob"),
        Action.DENY,
        None,
    ),
    # Body conditions.
    (
        "POST",
        f"{K}/api/v1/namespaces/x/pods",
        {
            "metadata": {"name": "p", "labels": {"team": "web"}},
            "spec": {"containers": [{"name": "c"}]},
        },
        "application/json",
        None,
        Action.ALLOW,
        "allow-pod-create-with-label",
    ),
    (
        "POST",
        f"{K}/api/v1/namespaces/x/pods",
        {
            "metadata": {"name": "p", "labels": {"team": "web"}},
            "spec": {
                "containers": [
                    {"name": "a"},
                    {"name": "b", "securityContext": {"privileged": True}},
                ]
            },
        },
        "application/json",
        None,
        Action.DENY,
        "deny-privileged",
    ),
    (
        "POST",
        f"{K}/api/v1/namespaces/x/pods",
        {"metadata": {"name": "p", "labels": {"team": "ops"}}},
        "application/json",
        None,
        Action.DENY,
        None,
    ),
    # YAML true is not JSON 1.
    (
        "POST",
        f"{K}/api/v1/namespaces/x/pods",
        {
            "metadata": {"labels": {"team": "web"}},
            "spec": {"containers": [{"securityContext": {"privileged": 1}}]},
        },
        "application/json",
        None,
        Action.ALLOW,
        "allow-pod-create-with-label",
    ),
    # Unreadable bodies count against the request: the deny matches, the allow does not.
    (
        "POST",
        f"{K}/api/v1/namespaces/x/pods",
        b'{"metadata": {"labels": {"team": "web"}',
        "application/json",
        None,
        Action.DENY,
        "deny-privileged",
    ),
    (
        "POST",
        f"{K}/api/v1/namespaces/x/pods",
        b"k8s\x00\x0a\x0b\x0a\x02v1\x12\x03Pod\x12\x00",
        "application/vnd.kubernetes.protobuf",
        None,
        Action.DENY,
        "deny-privileged",
    ),
    (
        "POST",
        f"{K}/api/v1/namespaces/x/pods",
        b"\x1f\x8b\x08\x00",
        "application/json",
        None,
        Action.DENY,
        "deny-privileged",
    ),
    # Identity: unknown agents never match allow rules, and do match deny rules.
    (
        "PATCH",
        f"{K}/apis/apps/v1/namespaces/x/deployments/d",
        None,
        "",
        Identity("ci-42"),
        Action.ALLOW,
        "allow-ci-writes",
    ),
    (
        "PATCH",
        f"{K}/apis/apps/v1/namespaces/x/deployments/d",
        None,
        "",
        Identity("ci-42", groups=("interns",)),
        Action.DENY,
        "deny-interns",
    ),
    (
        "PATCH",
        f"{K}/apis/apps/v1/namespaces/x/deployments/d",
        None,
        "",
        Identity("bob"),
        Action.DENY,
        None,
    ),
    (
        "PATCH",
        f"{K}/apis/apps/v1/namespaces/x/deployments/d",
        None,
        "",
        None,
        Action.DENY,
        "deny-interns",
    ),
    # Plain HTTP targets.
    ("GET", "https://api.internal/v1/users", None, "", None, Action.ALLOW, "api-reads"),
    ("GET", "https://api.internal/v1/admin/users", None, "", None, Action.DENY, "api-admin"),
    ("POST", "https://api.internal/v1/users", None, "", None, Action.DENY, None),
    ("GET", "https://api.internal/", None, "", None, Action.DENY, None),
    # Kubernetes rules never match plain HTTP targets.
    ("GET", "https://api.internal/api/v1/namespaces", None, "", None, Action.DENY, None),
    # Hosts no target declares follow the config default; unsafe paths are refused.
    ("GET", "https://elsewhere.example/", None, "", None, Action.DENY, None),
    ("GET", f"{K}/api/v1/namespaces/dev/pods/../secrets", None, "", None, Action.DENY, None),
    ("GET", f"{K}/api/v1/namespaces/dev%2Fsecrets", None, "", None, Action.DENY, None),
    ("GET", f"{K}/api/v1//namespaces", None, "", None, Action.DENY, None),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("policy")
    (home / "rules").mkdir()
    (home / "rules" / "rules.yaml").write_text(RULES)
    (home / "holdgate.yaml").write_text(
        "rules: [rules]\n"
        "targets:\n"
        "  - {name: cluster, kind: kubernetes, hosts: [kubernetes.default.svc]}\n"
        "  - {name: api, kind: http, hosts: [api.internal]}\n"
    )
    config = load_config(home / "holdgate.yaml")
    return config, load_policy(config.rule_files(), config, compile_filter)


@pytest.mark.parametrize(
    ("method", "url", "body", "content_type", "identity", "action", "rule"), CASES
)
def test_decision(setup, method, url, body, content_type, identity, action, rule) -> None:
    config, loaded = setup
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    decision, _ = decide_url(
        config, loaded, method, url, body=body or b"", content_type=content_type, identity=identity
    )
    assert (decision.action, decision.rule.id if decision.rule else None) == (action, rule), (
        decision.reason
    )


def test_filter_escape_hatch(setup) -> None:
    config, loaded = setup
    from addons.flow_filter import make_flow
    from addons.request_facts import build_facts

    flow = make_flow("GET", "https://api.internal/v1/x", {"X-Debug": "1"}, b"")
    facts = build_facts(
        config, method="GET", host="api.internal", port=443, path_and_query="/v1/x", flow=flow
    )
    decision = loaded.policy.decide(facts, config)
    assert (
        decision.action is Action.DENY and decision.rule and decision.rule.id == "api-debug-header"
    )


def test_order_of_rules_never_matters(setup) -> None:
    """Deny-overrides: the same rules reversed decide every case the same way."""
    config, loaded = setup
    reversed_policy = Policy(
        type(r)(**{**{f: getattr(r, f) for f in r.__slots__}, "order": -r.order})  # type: ignore[attr-defined]
        for r in loaded.policy.rules
    )
    for method, url, body, content_type, identity, _, _ in CASES:
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        a, _ = decide_url(
            config,
            loaded,
            method,
            url,
            body=body or b"",
            content_type=content_type,
            identity=identity,
        )
        b, _ = decide_url(
            config,
            type(loaded)(reversed_policy, (), ()),
            method,
            url,
            body=body or b"",
            content_type=content_type,
            identity=identity,
        )
        assert a.action is b.action, url


def test_denial_reason_names_the_rule(setup) -> None:
    config, loaded = setup
    decision, _ = decide_url(config, loaded, "GET", f"{K}/api/v1/namespaces/prod/secrets")
    assert decision.reason == "denied by rule deny-prod-secrets: no prod secrets"


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


def test_index_narrows_candidates(setup) -> None:
    """A secrets request never looks at rules limited to other resources or targets."""
    config, loaded = setup
    _, facts = decide_url(config, loaded, "GET", f"{K}/api/v1/namespaces/dev/secrets/x")
    ids = [r.id for r in loaded.policy.candidates(facts)]
    assert "allow-named-config" not in ids and "api-reads" not in ids
    assert ids == sorted(ids, key=[r.id for r in loaded.policy.rules].index)
