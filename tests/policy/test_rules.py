"""Decisions, table-driven: the policy core exactly as the gateway and `explain` use it; then
the rule index against a scan of every rule, on generated rules and requests."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from holdgate.config.gateway_config import Config, load_config
from holdgate.identity.agents import Identity
from holdgate.kube.protobuf import encode_object
from holdgate.policy.rule_tests import decide_url
from holdgate.policy.rules import (
    Action,
    Decision,
    Policy,
    Rule,
    decision_reason,
    load_policy,
    parse_duration,
)
from holdgate.request.facts import RequestFacts
from holdgate.request.flow_filter import compile_filter
from tests.conftest import load_policy_home

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
    config = (
        "rules: [rules]\n"
        "targets:\n"
        "  - {name: cluster, kind: kubernetes, hosts: [kubernetes.default.svc]}\n"
        "  - {name: api, kind: http, hosts: [api.internal]}\n"
    )
    return load_policy_home(tmp_path_factory.mktemp("policy"), config, RULES)


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
    from holdgate.request.facts import build_facts
    from holdgate.request.flow_filter import make_flow

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


# --- the index against a scan of every rule ---------------------------------------------------

# Kubernetes targets and plain HTTP ones, with each default a request no rule matches can get.
GENERATED_CONFIG = """
rules: [rules]
targets:
  - {name: cluster, kind: kubernetes, hosts: [kubernetes.default.svc]}
  - {name: edge, kind: kubernetes, hosts: [edge.internal], default: approve}
  - {name: api, kind: http, hosts: [api.internal]}
  - {name: web, kind: http, hosts: [web.internal], default: allow}
"""
HOSTS = {
    "cluster": "kubernetes.default.svc",
    "edge": "edge.internal",
    "api": "api.internal",
    "web": "web.internal",
}
KUBE_TARGETS = ("cluster", "edge")

# What rules say: exact values and globs (the index keys on both: globs by their literal prefix).
KUBE_TARGET_PATTERNS = (*KUBE_TARGETS, "*", "c*", "e?ge", "[ce]*")
TARGET_PATTERNS = (*HOSTS, "*", "?pi", "[aw]*")
NAMESPACE_PATTERNS = (
    *("dev", "prod", "prod-eu", "kube-system", "team-a"),
    *("prod*", "*", "team-?", "prod-??", "[dk]*"),
)
RESOURCE_PATTERNS = (
    *("pods", "pods/exec", "pods/attach", "pods/log", "pods/*", "*/scale", "*/status", "*"),
    *("secrets", "configmaps", "namespaces", "namespaces/status", "nodes", "nodes/proxy"),
    *("deployments", "deployments/scale", "jobs"),
)
API_GROUP_PATTERNS = ("", "apps", "batch", "*")
VERB_PATTERNS = (
    *("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"),
    *("proxy", "*"),
)
NAME_PATTERNS = ("x", "db-password", "dev", "prod")
NON_RESOURCE_PATTERNS = (
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/version",
    "/healthz*",
    "/openapi/*",
)
AGENT_PATTERNS = ("ci-1", "ci-42", "bob", "alice", "ci-*", "*", "?ob")
GROUP_PATTERNS = (
    "interns",
    "deployers",
    "team-a-deployers",
    "*-deployers",
    "team-*",
    "dep?oyers",
    "*",
)
METHOD_PATTERNS = ("GET", "POST", "DELETE", "*")
PATH_PATTERNS = (
    "/",
    "/v1/*",
    "/v1/admin*",
    "/admin/*",
    "/v1/users",
    "/api/*",
    "/v1/[au]*",
    "*/users",
)
_NAMED = {"path": "$.metadata.name", "exists": True}
_WEB_TEAM = {"path": "$.metadata.labels.team", "equals": "web"}
BODY_CONDITIONS = ([_NAMED], [_WEB_TEAM], [_NAMED, _WEB_TEAM])

# What requests carry: concrete values, some that no rule names.
NAMESPACES = ("dev", "prod", "prod-eu", "kube-system", "team-a", "other")
# resource[/subresource] and its API group.
RESOURCES = {
    **dict.fromkeys(("pods", "pods/exec", "pods/attach", "pods/portforward", "pods/log"), ""),
    **dict.fromkeys(("pods/eviction", "secrets", "configmaps", "namespaces"), ""),
    **dict.fromkeys(("namespaces/status", "nodes", "nodes/proxy"), ""),
    **dict.fromkeys(("deployments", "deployments/scale"), "apps"),
    "jobs": "batch",
}
API_GROUPS = ("", "apps", "batch")
NAMES = ("x", "db-password", "dev", "prod", "p")
NON_RESOURCE_PATHS = (
    "/api",
    "/api/v1",
    "/apis",
    "/apis/apps",
    "/version",
    "/healthz/ready",
    "/openapi/v2",
)
AGENTS = ("ci-1", "ci-42", "bob", "alice", "carol")
GROUPS = ("interns", "deployers", "team-a-deployers")
HTTP_PATHS = ("/", "/v1/users", "/v1/admin/users", "/admin/x", "/api/v1/namespaces/dev/pods")
# verb: ways to ask for it as (method, name in the path, special-verb prefix, query).
VERB_REQUESTS = {
    "get": [("GET", True, "", ""), ("HEAD", True, "", "")],
    "list": [("GET", False, "", ""), ("GET", False, "", "?fieldSelector=metadata.name%3D{name}")],
    "watch": [("GET", False, "", "?watch=true"), ("GET", True, "/watch", "")],
    "create": [("POST", False, "", "")],
    "update": [("PUT", True, "", "")],
    "patch": [("PATCH", True, "", "")],
    "delete": [("DELETE", True, "", "")],
    "deletecollection": [("DELETE", False, "", "")],
    "proxy": [("GET", True, "/proxy", "")],
}


def some(values: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    """One to three of `values`, as a rule lists them."""
    return st.lists(st.sampled_from(values), min_size=1, max_size=3, unique=True)


_who = {"agents": some(AGENT_PATTERNS), "groups": some(GROUP_PATTERNS)}
_resource_rules = st.fixed_dictionaries(
    {},
    optional={
        "targets": some(KUBE_TARGET_PATTERNS),
        "apiGroups": some(API_GROUP_PATTERNS),
        "resources": some(RESOURCE_PATTERNS),
        "verbs": some(VERB_PATTERNS),
        "resourceNames": some(NAME_PATTERNS),
        "namespaces": some(NAMESPACE_PATTERNS),
        "body": st.sampled_from(BODY_CONDITIONS),
        **_who,
    },
)
_non_resource_rules = st.fixed_dictionaries(
    {"nonResourceURLs": some(NON_RESOURCE_PATTERNS)},
    optional={"targets": some(KUBE_TARGET_PATTERNS), "verbs": some(VERB_PATTERNS), **_who},
)
_http_rules = st.fixed_dictionaries(
    {},
    optional={
        "targets": some(TARGET_PATTERNS),
        "methods": some(METHOD_PATTERNS),
        "paths": some(PATH_PATTERNS),
        "filter": st.sampled_from(["~m GET", "~hq X-Debug"]),
        **_who,
    },
)


def _rule_file(rules: list[tuple[str, Mapping[str, object]]]) -> list[dict[str, object]]:
    """Rules as a rule file has them: an id each, reviewers on approve rules."""
    out: list[dict[str, object]] = []
    for i, (action, fields) in enumerate(rules):
        rule = {"id": f"r{i}", "action": action, **fields}
        if action == "approve":
            rule["reviewers"] = ["local:admin"]
        out.append(rule)
    return out


rule_sets = st.lists(
    st.tuples(
        st.sampled_from(["deny", "approve", "allow"]),
        _resource_rules | _non_resource_rules | _http_rules,
    ),
    min_size=1,
    max_size=12,
).map(_rule_file)

# method, url, body, content_type, identity
GeneratedRequest = tuple[str, str, bytes, str, Identity | None]


@st.composite
def requests_near(draw: st.DrawFn, rule: dict[str, object]) -> GeneratedRequest:
    """A request mostly made of values `rule` names, so that rules do match: a Kubernetes
    resource in a namespace or cluster-wide, named or not, a non-resource path, or plain HTTP."""

    def pick(field: str, values: tuple[str, ...]) -> str:
        """Three times in four one of `values` the rule's `field` matches, if any does."""
        patterns = rule.get(field)
        if isinstance(patterns, list) and draw(st.integers(0, 3)):
            near = [v for v in values if any(fnmatch.fnmatchcase(v, p) for p in patterns)]
            values = tuple(near) or values
        return draw(st.sampled_from(values))

    identity = None
    if draw(st.integers(0, 4)):
        groups = (pick("groups", GROUPS),) if draw(st.integers(0, 3)) else ()
        identity = Identity(pick("agents", AGENTS), groups=groups)
    if "nonResourceURLs" in rule:
        kind = "non-resource"
    elif any(f in rule for f in ("methods", "paths", "filter")):
        kind = "http"
    else:
        kind = "resource"
    # Mostly the kind the rule is about; now and then one it must not match.
    kind = draw(st.sampled_from([kind, kind, kind, "resource", "non-resource", "http"]))
    name = pick("resourceNames", NAMES)
    if kind == "http":
        method = pick("methods", ("GET", "POST", "DELETE", "PUT"))
        url = f"https://{HOSTS[pick('targets', tuple(HOSTS))]}{pick('paths', HTTP_PATHS)}"
        return method, url, *draw(bodies(name)), identity
    host = HOSTS[pick("targets", KUBE_TARGETS)]
    verb = pick("verbs", tuple(VERB_REQUESTS))
    method, named, special, query = draw(st.sampled_from(VERB_REQUESTS[verb]))
    if kind == "non-resource":
        url = f"https://{host}{pick('nonResourceURLs', NON_RESOURCE_PATHS)}"
        return method, url, *draw(bodies(name)), identity
    combined = pick("resources", tuple(RESOURCES))
    resource, _, subresource = combined.partition("/")
    if resource == "pods" and subresource in ("exec", "attach", "portforward"):
        # WebSocket (GET) or SPDY (POST), whatever verb the rule names.
        method = draw(st.sampled_from(["GET", "POST"]))
    group = pick("apiGroups", API_GROUPS) if "apiGroups" in rule else RESOURCES[combined]
    namespace = pick("namespaces", NAMESPACES) if draw(st.integers(0, 3)) else ""
    if resource == "namespaces":
        name, namespace = pick("namespaces", NAMESPACES), ""  # a namespace is in itself
    path = ("/api/v1" if not group else f"/apis/{group}/v1") + special
    path += (f"/namespaces/{namespace}" if namespace else "") + f"/{resource}"
    path += f"/{name}" if named or subresource else ""
    path += f"/{subresource}" if subresource else ""
    url = f"https://{host}{path}{query.format(name=name)}"
    return method, url, *draw(bodies(name)), identity


def bodies(name: str) -> st.SearchStrategy[tuple[bytes, str]]:
    """No body, an object called `name` (what names a create), or one that cannot be read."""
    document = {"metadata": {"name": name, "labels": {"team": "web"}}}
    return st.sampled_from(
        [
            (b"", ""),
            (json.dumps(document).encode(), "application/json"),
            (b'{"metadata": {"name"', "application/json"),
        ]
    )


@st.composite
def policies_and_requests(
    draw: st.DrawFn,
) -> tuple[list[dict[str, object]], list[dict[str, object]], list[GeneratedRequest]]:
    """Rules in two files (load order runs across them), and requests near each rule."""
    rules = draw(rule_sets)
    split = draw(st.integers(0, len(rules)))
    requests = [
        r for rule in rules for r in draw(st.lists(requests_near(rule), min_size=1, max_size=5))
    ]
    return rules[:split], rules[split:], requests


def scan_every_rule(matching: list[Rule], facts: RequestFacts, config: Config) -> Decision:
    """Deny-overrides over the rules that match, in load order: what the index must agree with."""
    for action in (Action.DENY, Action.APPROVE, Action.ALLOW):
        first = next((r for r in matching if r.action is action), None)
        if first is not None:
            return Decision(action, first, decision_reason(first, facts))
    return Policy(()).decide(facts, config)  # no rules: the target's default


@pytest.fixture(scope="module")
def generated_home(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("generated")
    (home / "rules").mkdir()
    (home / "holdgate.yaml").write_text(GENERATED_CONFIG)
    return load_config(home / "holdgate.yaml"), home / "rules"


# Where the index reads a request differently from the plain fields: checked on every run.
INDEX_EDGES = (
    [
        {
            "id": "exec-on-create",
            "action": "allow",
            "resources": ["pods/exec"],
            "verbs": ["create"],
        },
        {"id": "in-team", "action": "deny", "namespaces": ["team-?"]},
    ],
    [
        {"id": "dev-itself", "action": "allow", "resources": ["namespaces"], "namespaces": ["dev"]},
        {
            "id": "ci-in-prod",
            "action": "approve",
            "agents": ["ci-1"],
            "namespaces": ["prod"],
            "reviewers": ["local:admin"],
        },
    ],
    [
        # A WebSocket exec is a `get` that `create` rules must catch.
        ("GET", f"{K}/api/v1/namespaces/dev/pods/p/exec?command=sh", b"", "", None),
        # A glob is not a key.
        ("GET", f"{K}/api/v1/namespaces/team-a/pods", b"", "", None),
        # A namespace named by a field selector or a body is in itself.
        ("GET", f"{K}/api/v1/namespaces?fieldSelector=metadata.name%3Ddev", b"", "", None),
        (
            "POST",
            f"{K}/api/v1/namespaces",
            b'{"metadata": {"name": "dev"}}',
            "application/json",
            None,
        ),
        # Cluster-wide and by an unknown caller: limited deny and approve rules still apply.
        ("GET", f"{K}/api/v1/pods", b"", "", None),
    ],
)


@settings(max_examples=200, deadline=None)
@given(case=policies_and_requests())
@example(case=INDEX_EDGES)
def test_index_decides_as_a_scan_of_every_rule(generated_home, case) -> None:
    """The index only rules out rules that would not match: decisions equal a full scan's."""
    config, rules_dir = generated_home
    first, second, requests = case
    for name, rules in (("00-first.yaml", first), ("10-second.yaml", second)):
        (rules_dir / name).write_text(yaml.safe_dump({"rules": rules}))
    loaded = load_policy(config.rule_files(), config, compile_filter)
    for method, url, body, content_type, identity in requests:
        indexed, facts = decide_url(
            config, loaded, method, url, body=body, content_type=content_type, identity=identity
        )
        assert not facts.problem and facts.target is not None, (url, facts.problem)
        matching = [r for r in loaded.policy.rules if r.matches(facts)]
        scanned = scan_every_rule(matching, facts, config)
        # No matching rule ruled out either: stricter than the decision, which a more
        # restrictive rule can leave unchanged. One assertion, so Hypothesis reports one failure.
        candidates = {r.id for r in loaded.policy.candidates(facts)}
        ruled_out = [r.id for r in matching if r.id not in candidates]
        assert (_outcome(indexed), ruled_out) == (_outcome(scanned), []), (
            f"{method} {url} as {identity}"
        )


def _outcome(decision: Decision) -> tuple[Action, str | None, str]:
    return decision.action, decision.rule.id if decision.rule else None, decision.reason


def test_globs_groups_and_paths_are_indexed(generated_home) -> None:
    """Rules limited by a glob with a literal prefix, by groups or by paths are not candidates
    for requests outside them: a large rule set costs what the rules that concern a request do."""
    config, rules_dir = generated_home
    teams = [
        {"id": f"t{i}", "action": "allow", "resources": ["pods"], "namespaces": [f"team-{i}*"]}
        for i in range(20)
    ]
    teams += [
        {"id": f"g{i}", "action": "allow", "resources": ["pods"], "groups": [f"ops-{i}", "x-*"]}
        for i in range(20)
    ]
    teams += [
        {"id": f"p{i}", "action": "deny", "targets": ["api"], "paths": [f"/v{i}/*"]}
        for i in range(20)
    ]
    teams.append({"id": "suffix", "action": "deny", "namespaces": ["*-frozen"]})
    (rules_dir / "00-first.yaml").write_text(yaml.safe_dump({"rules": teams}))
    (rules_dir / "10-second.yaml").write_text("rules: []\n")
    loaded = load_policy(config.rule_files(), config, compile_filter)
    pods = "https://kubernetes.default.svc/api/v1/namespaces/{}/pods"
    for url, identity, expected in (
        (pods.format("team-7a"), Identity("bob", groups=("ops-3",)), {"t7", "g3", "suffix"}),
        (pods.format("team-1"), Identity("bob", groups=("x-y",)), {"t1"} | {f"g{i}" for i in range(20)} | {"suffix"}),
        (pods.format("other"), Identity("bob", groups=()), {"suffix"}),
        ("https://api.internal/v12/users", Identity("bob"), {"p12", "suffix"}),
    ):  # fmt: skip
        decision, facts = decide_url(config, loaded, "GET", url, identity=identity)
        assert {r.id for r in loaded.policy.candidates(facts)} == expected, url
        scanned = scan_every_rule(
            [r for r in loaded.policy.rules if r.matches(facts)], facts, config
        )
        assert _outcome(decision) == _outcome(scanned), url
