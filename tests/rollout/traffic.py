"""Index lines and a configuration for the rollout table tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from holdgate.config.gateway_config import Config
from holdgate.policy.rules import LoadedPolicy
from tests.conftest import load_policy_home

K = "https://kubernetes.default.svc"
API = "https://api.internal"

CONFIG = """
rules: [rules]
approvals: {page: {listen_host: 127.0.0.1, listen_port: 0}}
targets:
  - {name: cluster, kind: kubernetes, hosts: [kubernetes.default.svc], default: deny}
  - {name: api, kind: http, hosts: [api.internal], default: deny}
"""

RULES = """
rules:
  - id: system-reads
    action: allow
    resources: [pods]
    verbs: [get, list]
    namespaces: [kube-system]
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
  - id: hold-deletes
    action: approve
    resources: [deployments]
    verbs: [delete]
    reviewers: [local:admin]
  - id: never-used
    action: allow
    resources: [cronjobs]
    verbs: [get]
tests:
  - request: GET https://kubernetes.default.svc/api/v1/namespaces/sandbox/secrets
    agent: ci-bot
    expect: deny
    rule: null
"""


def home(tmp: Path, rules: str = RULES) -> tuple[Config, LoadedPolicy]:
    """A configuration with the rules above, and its loaded policy."""
    return load_policy_home(tmp, CONFIG, rules)


_COUNTER = iter(range(1, 1_000_000))


def kube(
    method: str,
    path: str,
    verb: str,
    resource: str | None,
    namespace: str | None = None,
    name: str | None = None,
    *,
    subresource: str | None = None,
    group: str = "",
    action: str = "deny",
    rule: str | None = None,
    agent: str | None = "ci-bot",
    **extra: Any,
) -> dict[str, Any]:
    """An index line of a Kubernetes request as the gateway writes it today (left to the
    target's default unless a rule is named)."""
    n = next(_COUNTER)
    line: dict[str, Any] = {
        "id": f"flow-{n}",
        "time": f"2026-12-01T10:{n // 60 % 60:02d}:{n % 60:02d}.000+00:00",
        "ts": 1_764_583_200.0 + n,
        "agent": agent,
        "target": "cluster",
        "method": method,
        "url": K + path,
        "verb": verb,
        "resource": resource,
        "subresource": subresource,
        "namespace": namespace,
        "name": name,
        "rule": rule,
        "decision": action,
        "outcome": None,
        "group": group,
    }
    if rule is None:
        line["default"] = True
    line.update(extra)
    return line


def http(
    method: str, path: str, *, action: str = "deny", rule: str | None = None
) -> dict[str, Any]:
    """An index line of a plain HTTP request."""
    line = kube(method, "", None, None, action=action, rule=rule)
    line.update(target="api", url=API + path, verb=None, resource=None)
    del line["group"]
    return line
