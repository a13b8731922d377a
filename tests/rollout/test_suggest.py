"""`suggest`: least-privilege rules from index lines, table-tested on a fixed policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from holdgate.config.gateway_config import Config
from holdgate.policy.rules import LoadedPolicy
from holdgate.request.flow_filter import compile_filter
from holdgate.rollout.observed import observed
from holdgate.rollout.suggest import NAMES_LIMIT, PATHS_PER_PARENT, suggest, validated
from tests.rollout.traffic import home, http, kube

NS = "/api/v1/namespaces"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Config, LoadedPolicy]:
    return home(tmp_path)


def _rules(setup, lines, include_covered=False):
    config, loaded = setup
    proposed = suggest(observed(lines), loaded, config, include_covered)
    return proposed, {s.id: s for s in proposed.rules}


def test_reads_group_by_resource_and_namespace(setup) -> None:
    proposed, rules = _rules(
        setup,
        [
            kube("GET", f"{NS}/sandbox/pods?limit=500", "list", "pods", "sandbox"),
            kube("GET", f"{NS}/sandbox/pods/web-0", "get", "pods", "sandbox", "web-0"),
            kube("GET", f"{NS}/sandbox/pods/web-0", "get", "pods", "sandbox", "web-0"),
            kube("GET", f"{NS}/dev/pods?watch=true", "watch", "pods", "dev"),
            kube("GET", "/apis/apps/v1/namespaces/dev/deployments", "list", "deployments", "dev",
                 group="apps"),
        ],
    )  # fmt: skip
    sandbox = rules["suggested-ci-bot-pods-get.list-sandbox"]
    assert sandbox.rule == {
        "id": "suggested-ci-bot-pods-get.list-sandbox",
        "description": "seen 3 requests by ci-bot from 2026-12-01T10:00:01 to "
        + sandbox.rule["description"].split(" to ")[1],
        "action": "allow",
        "targets": ["cluster"],
        "agents": ["ci-bot"],
        "verbs": ["get", "list"],
        "apiGroups": [""],
        "resources": ["pods"],
        "namespaces": ["sandbox"],
    } | {"description": sandbox.rule["description"]}
    assert sandbox.requests == 3
    # Distinct requests only, each a test naming the rule.
    assert [t["request"] for t in sandbox.tests] == [
        f"GET https://kubernetes.default.svc{NS}/sandbox/pods?limit=500",
        f"GET https://kubernetes.default.svc{NS}/sandbox/pods/web-0",
    ]
    assert {t["rule"] for t in sandbox.tests} == {sandbox.id}
    assert {t["agent"] for t in sandbox.tests} == {"ci-bot"}
    assert rules["suggested-ci-bot-pods-watch-dev"].rule["verbs"] == ["watch"]
    assert rules["suggested-ci-bot-deployments-list-dev"].rule["apiGroups"] == ["apps"]
    assert proposed.considered == 5 and not proposed.left_out


def test_writes_name_their_objects_when_few(setup) -> None:
    many = [
        kube("DELETE", f"{NS}/sandbox/pods/p{i}", "delete", "pods", "sandbox", f"p{i}")
        for i in range(NAMES_LIMIT + 1)
    ]
    _, rules = _rules(
        setup,
        [
            kube("PATCH", "/apis/apps/v1/namespaces/sandbox/deployments/web", "patch",
                 "deployments", "sandbox", "web", group="apps"),
            kube("PUT", "/apis/apps/v1/namespaces/sandbox/deployments/api", "update",
                 "deployments", "sandbox", "api", group="apps"),
            # A create names its object in the body: no resourceNames can cover it.
            kube("POST", f"{NS}/sandbox/services", "create", "services", "sandbox", "front"),
            *many,
        ],
    )  # fmt: skip
    named = rules["suggested-ci-bot-deployments-patch.update-sandbox"].rule
    assert named["resourceNames"] == ["api", "web"]
    created = rules["suggested-ci-bot-services-create-sandbox"].rule
    assert "resourceNames" not in created and created["verbs"] == ["create"]
    assert "resourceNames" not in rules["suggested-ci-bot-pods-delete-sandbox"].rule


def test_shells_name_their_commands(setup) -> None:
    base = f"{NS}/sandbox/pods/web-0/exec?container=web&stdout=true"
    proposed, rules = _rules(
        setup,
        [
            kube("GET", f"{base}&command=ls&command=%2F", "get", "pods", "sandbox", "web-0",
                 subresource="exec", exec=["ls", "/"]),
            kube("POST", f"{base}&command=ls&command=%2F", "create", "pods", "sandbox", "web-0",
                 subresource="exec", exec=["ls", "/"]),
            kube("GET", f"{base}&command=ls&command=*.txt", "get", "pods", "sandbox", "web-0",
                 subresource="exec", exec=["ls", "*.txt"]),
            kube("GET", f"{NS}/sandbox/pods/web-0/portforward?ports=80", "get", "pods",
                 "sandbox", "web-0", subresource="portforward"),
        ],
    )  # fmt: skip
    shell = rules["suggested-ci-bot-pods-exec-create-sandbox"]
    # `create` grants both kubectl transports; a glob character in a command is literal.
    assert shell.rule["verbs"] == ["create"] and shell.rule["resources"] == ["pods/exec"]
    assert shell.rule["commands"] == ["ls [*].txt", "ls /"]
    assert len(shell.tests) == 3
    forward = rules["suggested-ci-bot-pods-portforward-create-sandbox"].rule
    assert forward["resources"] == ["pods/portforward"] and "commands" not in forward
    config, _ = setup
    checked = validated(proposed, config, compile_filter)
    assert not checked.dropped and len(checked.rules) == 2


def test_http_targets_by_method_and_path(setup) -> None:
    items = [http("GET", f"/v1/items/{i}") for i in range(PATHS_PER_PARENT + 1)]
    _, rules = _rules(setup, [*items, http("GET", "/v1/status"), http("POST", "/v1/orders")])
    reads = rules["suggested-ci-bot-api-get"].rule
    assert reads["methods"] == ["GET"] and reads["targets"] == ["api"]
    assert reads["paths"] == ["/v1/items/*", "/v1/status"]
    assert "verbs" not in reads and "resources" not in reads
    assert rules["suggested-ci-bot-api-post"].rule["paths"] == ["/v1/orders"]


def test_http_queries_stay_out_of_the_rule_file(setup) -> None:
    """Rules match method and path; a query can carry an API key: the tests leave it out."""
    canary = "api-key-canary-5150"
    proposed, rules = _rules(setup, [http("GET", f"/v1/status?api_key={canary}")])
    (test,) = rules["suggested-ci-bot-api-get"].tests
    assert test["request"] == "GET https://api.internal/v1/status"
    assert canary not in yaml.safe_dump([s.rule for s in proposed.rules]) + str(test)


def test_what_is_never_proposed(setup) -> None:
    proposed, rules = _rules(
        setup,
        [
            kube("GET", f"{NS}/prod/secrets", "list", "secrets", "prod", rule="no-prod-secrets"),
            # Audit mode: it passed, but the deny rule would have refused it.
            kube("GET", f"{NS}/prod/secrets/a", "get", "secrets", "prod", "a", action="allow",
                 rule="no-prod-secrets", mode="audit",
                 would={"action": "deny", "rule": "no-prod-secrets"}),
            kube("POST", f"{NS}/sandbox/configmaps", "create", "configmaps", "sandbox",
                 rule="hold-configmaps", action="approve", outcome="approved"),
            kube("GET", f"{NS}/kube-system/pods", "list", "pods", "kube-system", action="allow",
                 rule="system-reads"),
            kube("GET", f"{NS}/sandbox/pods/x", "get", "pods", "sandbox", problem=True,
                 default=None),
            kube("GET", f"{NS}/sandbox/pods", "list", "pods", "sandbox", impersonates=1,
                 default=None),
            kube("PATCH", f"{NS}/sandbox/configmaps/c", "patch", "configmaps", "sandbox", "c",
                 action="allow", followup_of="flow-1", default=None),
            kube("GET", f"{NS}/sandbox/pods", "list", "pods", "sandbox", target="gone"),
        ],
    )  # fmt: skip
    assert rules == {}
    assert dict(proposed.left_out) == {
        "denied by deny rule no-prod-secrets": 1,
        "denied by deny rule no-prod-secrets (audit mode)": 1,
        "held by approve rule hold-configmaps": 1,
        "already allowed by rule system-reads (--include-covered proposes them)": 1,
        "requests refused as unreadable (a problem with the request)": 1,
        "impersonating requests": 1,
        "the gateway's own follow-up requests (ownership labels)": 1,
        "requests to target gone, which the configuration no longer has": 1,
    }
    text = proposed.as_yaml()
    assert "#       1  denied by deny rule no-prod-secrets\n" in text
    assert yaml.safe_load(text) == {"rules": [], "tests": []}


def test_covered_requests_on_request(setup) -> None:
    covered = kube("GET", f"{NS}/kube-system/pods", "list", "pods", "kube-system",
                   action="allow", rule="system-reads")  # fmt: skip
    proposed, rules = _rules(setup, [covered], include_covered=True)
    [rule] = rules.values()
    # Which allow rule reports it depends on load order: the test expects allow, any rule.
    assert rule.tests == ({"name": f"{rule.id} #1", "request": covered["method"] + " "
                           + covered["url"], "agent": "ci-bot", "expect": "allow"},)  # fmt: skip
    config, _ = setup
    assert validated(proposed, config, compile_filter).rules == proposed.rules


def test_older_index_lines_without_the_new_fields(setup) -> None:
    line = kube("GET", f"{NS}/sandbox/pods", "list", "pods", "sandbox")
    for key in ("default", "group"):
        del line[key]
    _, rules = _rules(setup, [line])
    [rule] = rules.values()
    assert "apiGroups" not in rule.rule and rule.rule["resources"] == ["pods"]


def test_ids_are_unique_and_valid(setup) -> None:
    config, _ = setup
    loaded = home(
        config.path.parent,
        "rules:\n  - {id: suggested-ci-bot-pods-list-sandbox, action: allow, resources: [nodes]}\n",
    )[1]
    proposed = suggest(
        observed([kube("GET", f"{NS}/sandbox/pods", "list", "pods", "sandbox"),
                  kube("GET", f"{NS}/sandbox/pods", "list", "pods", "sandbox", agent="a b/c")]),
        loaded, config,
    )  # fmt: skip
    assert sorted(s.id for s in proposed.rules) == [
        "suggested-a-b-c-pods-list-sandbox",
        "suggested-ci-bot-pods-list-sandbox-2",
    ]


def test_validation_drops_what_does_not_hold(setup) -> None:
    config, loaded = setup
    proposed = suggest(
        observed([
            # Allowing it would break the existing test that expects secrets in sandbox denied.
            kube("GET", f"{NS}/sandbox/secrets", "list", "secrets", "sandbox"),
            kube("GET", f"{NS}/dev/pods", "list", "pods", "dev"),
        ]),
        loaded, config,
    )  # fmt: skip
    assert len(proposed.rules) == 2
    checked = validated(proposed, config, compile_filter)
    assert [s.id for s in checked.rules] == ["suggested-ci-bot-pods-list-dev"]
    [note] = checked.dropped
    assert note.startswith(
        "rule suggested-ci-bot-secrets-list-sandbox: it would break the existing test at "
    )
    assert "# Dropped by validation" in checked.as_yaml()
    # A test that cannot hold (another rule decides it now) is dropped, and its rule with it.
    stale = suggest(
        observed([kube("DELETE", "/apis/apps/v1/namespaces/dev/deployments/web", "delete",
                       "deployments", "dev", "web", group="apps")]),
        loaded, config,
    )  # fmt: skip
    checked = validated(stale, config, compile_filter)
    assert checked.rules == []
    assert "approval required by rule hold-deletes" in checked.dropped[0]
    assert checked.dropped[1].endswith(": none of its tests holds")
