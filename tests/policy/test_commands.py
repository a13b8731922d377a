"""`commands:` on a rule: globs on an exec command, least privilege for shells."""

from __future__ import annotations

import pytest

from holdgate.policy.lint import command_warnings
from holdgate.policy.rule_tests import decide_url
from holdgate.policy.rules import Action
from tests.conftest import load_policy_home

K = "https://kubernetes.default.svc/api/v1/namespaces"
RULES = """
rules:
  - id: shells-that-list
    action: allow
    resources: [pods/exec]
    verbs: [create]
    commands: ["ls", "ls /*", "cat /etc/host[n]ame"]
  - id: no-removals
    action: deny
    message: no rm
    commands: ["rm *", "* rm *"]
  - id: attach-asks
    action: approve
    resources: [pods/attach]
    commands: ["*"]
    reviewers: [local:admin]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    config = (
        "rules: [rules]\napprovals: {page: {listen_host: 127.0.0.1, listen_port: 0}}\n"
        "targets:\n  - {name: cluster, kind: kubernetes, hosts: [kubernetes.default.svc]}\n"
    )
    return load_policy_home(tmp_path_factory.mktemp("commands"), config, RULES)


@pytest.mark.parametrize(
    ("method", "url", "action", "rule"),
    [
        ("GET", f"{K}/sandbox/pods/web-0/exec?command=ls", Action.ALLOW, "shells-that-list"),
        ("POST", f"{K}/sandbox/pods/web-0/exec?command=ls&command=%2Ftmp", Action.ALLOW,
         "shells-that-list"),
        ("GET", f"{K}/sandbox/pods/web-0/exec?command=cat&command=/etc/hostname", Action.ALLOW,
         "shells-that-list"),
        # Not a command the rule lists: the target's default (deny; exec is privileged).
        ("GET", f"{K}/sandbox/pods/web-0/exec?command=sh", Action.DENY, None),
        ("GET", f"{K}/sandbox/pods/web-0/exec?command=ls&command=-la", Action.DENY, None),
        ("GET", f"{K}/sandbox/pods/web-0/exec?command=rm&command=-rf&command=%2F", Action.DENY,
         "no-removals"),
        ("GET", f"{K}/sandbox/pods/web-0/exec?command=ls&command=%2F&command=rm&command=x",
         Action.DENY, "no-removals"),
        # An attach joins a process whose command is unknown: deny and approve rules match it
        # (the deny rule on `rm` too: it cannot tell), allow rules do not.
        ("GET", f"{K}/sandbox/pods/web-0/attach?stdout=true", Action.DENY, "no-removals"),
        # Requests that run no command never match `commands`.
        ("GET", f"{K}/sandbox/pods/web-0", Action.DENY, None),
    ],
)  # fmt: skip
def test_commands(setup, method: str, url: str, action: Action, rule: str | None) -> None:
    config, loaded = setup
    decision, _ = decide_url(config, loaded, method, url)
    assert (decision.action, decision.rule.id if decision.rule else None) == (action, rule), (
        decision.reason
    )


def test_commands_beside_other_resources_are_warned_about() -> None:
    assert command_warnings({"commands": ["ls"], "resources": ["pods/exec", "pods/attach"]}) == []
    [warning] = command_warnings({"commands": ["ls"], "resources": ["pods", "pods/exec"]})
    assert "never matches pods" in warning
    [warning] = command_warnings({"commands": ["ls"]})
    assert "(any resource)" in warning
    assert command_warnings({"resources": ["pods"]}) == []
