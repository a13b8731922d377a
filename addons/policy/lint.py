"""Rules that say something they cannot mean: errors where a rule can never work as written,
warnings where part of it never will. Pure; `load_policy` runs it on every rule.

- Resource names are RBAC's plurals: `secret` or `deploy` match nothing the apiserver names.
- Reviewers must be able to approve: `slack:` takes a user ID (U.., W..), not an @name;
  `slack:` and `slack-group:` need a Slack channel in the config; `local:` the approvals page,
  and `local:NAME` a declared local reviewer (or `admin`, the page's admin token).
- `commands` (globs on an exec command) matches only pods/exec and pods/attach requests.
- Some RBAC verbs (`bind`, `escalate`, `use`, `approve`, `sign`, `attest`) are checked by the
  apiserver during admission, never a request's verb: a rule cannot match them here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from holdgate.config.gateway_config import Config

# Singular names and kubectl short names of built-in resources -> the plural RBAC uses.
_PLURALS = {
    "pod": "pods", "po": "pods", "service": "services", "svc": "services",
    "secret": "secrets", "configmap": "configmaps", "cm": "configmaps",
    "namespace": "namespaces", "ns": "namespaces", "node": "nodes", "no": "nodes",
    "deployment": "deployments", "deploy": "deployments", "replicaset": "replicasets",
    "rs": "replicasets", "statefulset": "statefulsets", "sts": "statefulsets",
    "daemonset": "daemonsets", "ds": "daemonsets", "job": "jobs", "cronjob": "cronjobs",
    "cj": "cronjobs", "ingress": "ingresses", "ing": "ingresses", "role": "roles",
    "rolebinding": "rolebindings", "clusterrole": "clusterroles",
    "clusterrolebinding": "clusterrolebindings", "serviceaccount": "serviceaccounts",
    "sa": "serviceaccounts", "persistentvolume": "persistentvolumes",
    "pv": "persistentvolumes", "persistentvolumeclaim": "persistentvolumeclaims",
    "pvc": "persistentvolumeclaims", "event": "events", "ev": "events",
    "endpoint": "endpoints", "ep": "endpoints", "networkpolicy": "networkpolicies",
    "netpol": "networkpolicies", "storageclass": "storageclasses", "sc": "storageclasses",
    "customresourcedefinition": "customresourcedefinitions",
    "crd": "customresourcedefinitions", "horizontalpodautoscaler": "horizontalpodautoscalers",
    "hpa": "horizontalpodautoscalers", "poddisruptionbudget": "poddisruptionbudgets",
    "pdb": "poddisruptionbudgets", "lease": "leases", "limitrange": "limitranges",
    "limits": "limitranges", "resourcequota": "resourcequotas", "quota": "resourcequotas",
    "podtemplate": "podtemplates", "replicationcontroller": "replicationcontrollers",
    "rc": "replicationcontrollers", "certificatesigningrequest": "certificatesigningrequests",
    "csr": "certificatesigningrequests", "priorityclass": "priorityclasses",
    "pc": "priorityclasses",
}  # fmt: skip
ADMISSION_VERBS = frozenset({"bind", "escalate", "use", "approve", "sign", "attest"})
_SLACK_USER = re.compile(r"^[UW][A-Z0-9]+$")
_SLACK_GROUP = re.compile(r"^S[A-Z0-9]+$")


def resource_errors(resources: Iterable[str]) -> list[tuple[int, str]]:
    """(index, message) for each resource written as a singular or short name."""
    out = []
    for i, entry in enumerate(resources):
        resource, slash, sub = entry.partition("/")
        plural = _PLURALS.get(resource.lower())
        if plural is not None:
            fixed = plural + slash + sub
            out.append(
                (
                    i,
                    f"{entry!r} is not a resource name: RBAC names resources in the plural, "
                    f"write {fixed!r}",
                )
            )
    return out


def verb_warnings(verbs: Iterable[str]) -> list[str]:
    """A message for each verb no request carries."""
    return [
        f"verb {verb!r} is checked by the apiserver during admission and is never a request's "
        "verb: this rule cannot match it"
        for verb in verbs
        if verb in ADMISSION_VERBS
    ]


def reviewer_problems(
    reviewers: Iterable[str], config: Config | None
) -> tuple[list[tuple[int, str]], list[str]]:
    """(index, error) for reviewers that are malformed or can never approve, and warnings.

    A reviewer who can never approve is an error when no reviewer of the rule can; otherwise a
    warning (the rule still works through the others).
    """
    errors: list[tuple[int, str]] = []
    unreachable: list[tuple[int, str]] = []
    listed = list(reviewers)
    approvals = config.approvals if config is not None else None
    slack = approvals is not None and approvals.slack is not None
    local = {name for name, _ in approvals.local_reviewers} if approvals is not None else set()
    for i, reviewer in enumerate(listed):
        kind, _, who = reviewer.partition(":")
        if kind == "slack" and not _SLACK_USER.match(who):
            errors.append(
                (i, f"{reviewer!r}: slack reviewers are user IDs (U..., W...), not names")
            )
        elif kind == "slack-group" and not _SLACK_GROUP.match(who):
            errors.append((i, f"{reviewer!r}: slack-group reviewers are user group IDs (S...)"))
        elif config is None or approvals is None:
            continue  # without approvals an approve rule refuses (403): said once, by the caller
        elif kind in ("slack", "slack-group") and not slack:
            unreachable.append((i, f"{reviewer!r}: no Slack channel is configured"))
        elif kind == "local" and approvals.page_host is None:
            unreachable.append(
                (i, f"{reviewer!r}: the approvals page is off (local reviewers decide there)")
            )
        elif kind == "local" and who != "admin" and who not in local:
            unreachable.append((i, f"{reviewer!r}: no local reviewer {who!r} is declared"))
    warnings: list[str] = []
    if unreachable and len(unreachable) == len(listed) and not errors:
        errors.extend(
            (i, f"no reviewer of this rule can ever approve: {why}") for i, why in unreachable
        )
    else:
        warnings.extend(f"reviewer can never approve: {why}" for _, why in unreachable)
    return errors, warnings


# The only requests that carry a command: exec starts one, attach joins one.
COMMAND_RESOURCES = frozenset({"pods/exec", "pods/attach"})


def command_warnings(raw: dict[str, Any]) -> list[str]:
    """A message when `commands` is set on a rule that names more than exec and attach."""
    if "commands" not in raw:
        return []
    others = sorted(set(raw.get("resources") or ["(any resource)"]) - COMMAND_RESOURCES)
    if not others:
        return []
    return [
        f"`commands` matches only pods/exec and pods/attach requests, so this rule never "
        f"matches {', '.join(others)}: name only pods/exec or pods/attach in `resources`"
    ]


def rule_warnings(raw: dict[str, Any]) -> list[str]:
    """Warnings about a rule as written (verbs no request carries, `commands` beside other
    resources)."""
    return [*verb_warnings(raw.get("verbs") or ()), *command_warnings(raw)]
