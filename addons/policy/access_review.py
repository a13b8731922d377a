"""`kubectl auth can-i` through the gateway: the self-reviews an agent sends, answered from the
policy for that agent. Pure: values in, values out.

A SelfSubjectAccessReview asks about a request the agent has not made. The gateway decides that
request as if it were made (same agent, target and impersonation headers): "no" when a rule
denies it, "no" naming the rule and its reviewers when it needs approval, and when the gateway
would let it through the review goes upstream with the gateway's credential, whose answer is
the answer: "yes" only when both agree.

Rules that look into a request body (`body`, `violatesPodSecurity`) judge the object, like
admission in the apiserver: a question has no body, so they cannot refuse it; their ids are
added to the upstream's reason, and an allow rule with body conditions grants nothing here.

A SelfSubjectRulesReview always goes upstream; the rules it lists are kept only where the
gateway allows them too. A wildcard (`*` resource or group) is kept only when no deny or
approve rule could narrow it for the agent, verb and namespace; otherwise it is left out and
the answer says `incomplete`, as the apiserver does when it cannot list everything.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from holdgate.config.gateway_config import Config
from holdgate.kube.request_info import BodyObject, KubeRequest, unread_reason
from holdgate.policy.rules import Action, Decision, Policy, Rule
from holdgate.request.facts import RequestFacts

REVIEW_GROUP = "authorization.k8s.io"
ACCESS_REVIEWS = "selfsubjectaccessreviews"
RULES_REVIEWS = "selfsubjectrulesreviews"
# What `*` in a listed rule's verbs is checked as, one verb at a time.
STANDARD_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
_METHODS = {
    "get": "GET",
    "list": "GET",
    "watch": "GET",
    "update": "PUT",
    "patch": "PATCH",
    "delete": "DELETE",
    "deletecollection": "DELETE",
    "head": "HEAD",
    "put": "PUT",
    "post": "POST",
}
# The body of an asked request: there is none, and body conditions must say "cannot tell".
_NO_BODY = BodyObject("", "", "", "", None, "a question about a request has no body")


def self_review(facts: RequestFacts) -> str:
    """ACCESS_REVIEWS or RULES_REVIEWS when the request creates a self-review, else ""."""
    kube = facts.kube
    if kube is None or not kube.resource_request or kube.verb != "create" or kube.subresource:
        return ""
    if kube.api_group != REVIEW_GROUP or kube.resource not in (ACCESS_REVIEWS, RULES_REVIEWS):
        return ""
    return kube.resource


@dataclass(frozen=True, slots=True)
class AccessAnswer:
    """The gateway's side of an access review: its decision for the asked request, the
    review's status when the gateway answers alone (None: the upstream answers), and what it
    adds to the upstream's reason."""

    asked: KubeRequest | None
    decision: Decision | None
    status: dict[str, Any] | None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form for flow metadata."""
        out: dict[str, Any] = {"kind": ACCESS_REVIEWS}
        if self.asked is not None:
            out["asked"] = self.asked.as_dict()
        if self.decision is not None:
            out["decision"] = self.decision.as_dict()
        out["answered_by"] = "gateway" if self.status is not None else "upstream"
        if self.status is not None:
            out["status"] = self.status
        if self.note:
            out["note"] = self.note
        return out


def decide_review(
    policy: Policy, config: Config, facts: RequestFacts, review: str
) -> tuple[Decision, dict[str, Any]]:
    """The decision for a self-review request itself (it passes: the gateway answers it, here
    or by asking the upstream), and what the gateway answered, for the record."""
    body = facts.body
    spec = body.document.get("spec") if body is not None and body.document else None
    if not isinstance(spec, dict):
        why = unread_reason(body) or "the review has no spec"
        return Decision(Action.DENY, None, f"refused: {review}: {why}"), {"kind": review}
    if review == RULES_REVIEWS:
        # It goes upstream with the gateway's credential: as someone else only where a rule
        # allows that impersonation, as for any request.
        if refused := impersonation_refused(policy, config, facts):
            return refused, {"kind": review, "spec": spec}
        reason = "rules review: the upstream's rules, less what the gateway does not allow"
        return Decision(Action.ALLOW, None, reason), {"kind": review, "spec": spec}
    answer = answer_access(policy, config, facts, spec)
    if answer.status is None:
        reason = "access review: the gateway allows the asked request; the upstream answers"
    else:
        reason = f"access review answered by the gateway: {answer.status['reason']}"
    return Decision(Action.ALLOW, None, reason), {**answer.as_dict(), "spec": spec}


def impersonation_refused(policy: Policy, config: Config, facts: RequestFacts) -> Decision | None:
    """The refusal of a request's impersonation headers, decided as for any request
    (`Policy.impersonations`); None when every one is allowed. A review is not held: an
    approve rule refuses here."""
    decided = policy.impersonations(facts, config)
    if decided is None or decided.action is Action.ALLOW:
        return None
    if decided.action is Action.APPROVE:
        return Decision(Action.DENY, decided.rule, f"{decided.reason} (a review is not held)")
    return decided


def asked_request(spec: Mapping[str, Any]) -> KubeRequest | str:
    """The request a SelfSubjectAccessReview's spec asks about, or why it cannot be answered."""
    attributes = spec.get("resourceAttributes")
    if isinstance(attributes, Mapping):
        verb = str(attributes.get("verb") or "")
        group = str(attributes.get("group") or "")
        version = str(attributes.get("version") or "")
        resource = str(attributes.get("resource") or "")
        subresource = str(attributes.get("subresource") or "")
        namespace = str(attributes.get("namespace") or "")
        name = str(attributes.get("name") or "")
        if not verb or not resource:
            return "the review names no verb or no resource"
        if any(c in value for value in (verb, group, resource) for c in "*?["):
            return (
                "the gateway answers for one verb on one resource at a time ('*' spans requests "
                "its rules treat differently)"
            )
        return KubeRequest(
            resource_request=True,
            path=_resource_path(group, version, namespace, resource, name, subresource),
            verb=verb,
            api_prefix="api" if not group else "apis",
            api_group=group,
            api_version=version,
            namespace=namespace,
            resource=resource,
            subresource=subresource,
            name=name,
        )
    other = spec.get("nonResourceAttributes")
    if isinstance(other, Mapping) and other.get("path") and other.get("verb"):
        return KubeRequest(resource_request=False, path=str(other["path"]), verb=str(other["verb"]))
    return "the review names neither resource nor non-resource attributes"


def _resource_path(
    group: str, version: str, namespace: str, resource: str, name: str, subresource: str
) -> str:
    base = f"/api/{version or 'v1'}" if not group else f"/apis/{group}/{version or 'v1'}"
    if namespace and resource != "namespaces":
        base += f"/namespaces/{namespace}"
    parts = [base, resource, name, subresource if name else ""]
    return "/".join(p for p in parts if p)


def asked_facts(facts: RequestFacts, asked: KubeRequest) -> RequestFacts:
    """The facts of the asked request: the review's agent, target and impersonation, no body."""
    return dataclasses.replace(
        facts,
        method=_METHODS.get(asked.verb, "POST"),
        path=asked.path,
        query="",
        kube=asked,
        exec=None,
        body=_NO_BODY,
        flow=None,
    )


@lru_cache(maxsize=4)
def _without_body_rules(policy: Policy) -> Policy:
    """The policy less the rules that judge a request body (cached per loaded policy)."""
    return Policy(r for r in policy.rules if not _reads_body(r))


def _reads_body(rule: Rule) -> bool:
    return rule.reads_body or rule.pod_security is not None


def decide_asked(policy: Policy, config: Config, facts: RequestFacts) -> Decision:
    """The decision for an asked request by the rules that do not read a body."""
    return _without_body_rules(policy).decide(facts, config)


def judging_rules(policy: Policy, facts: RequestFacts) -> list[Rule]:
    """The deny or approve rules that read a body and could still refuse the asked request."""
    return [
        r
        for r in policy.candidates(facts)
        if _reads_body(r) and r.action is not Action.ALLOW and r.matches(facts)
    ]


def answer_access(
    policy: Policy, config: Config, facts: RequestFacts, spec: Mapping[str, Any]
) -> AccessAnswer:
    """The gateway's answer to a SelfSubjectAccessReview sent as `facts`."""
    asked = asked_request(spec)
    if isinstance(asked, str):
        return AccessAnswer(None, None, {"allowed": False, "reason": f"holdgate: {asked}"})
    asked_as = asked_facts(facts, asked)
    decision = decide_asked(policy, config, asked_as)
    if decision.action is Action.DENY:
        status = {"allowed": False, "denied": True, "reason": f"holdgate: {decision.reason}"}
        return AccessAnswer(asked, decision, status)
    if decision.action is Action.APPROVE:
        return AccessAnswer(
            asked, decision, {"allowed": False, "reason": _needs_approval(decision)}
        )
    notes = []
    if decision.would is not None:
        notes.append(f"holdgate audit mode: would {decision.would.action}: {decision.would.reason}")
    if judging := judging_rules(policy, asked_as):
        ids = ", ".join(r.id for r in judging)
        notes.append(f"holdgate: the object sent is checked by {ids}")
    return AccessAnswer(asked, decision, None, "; ".join(notes))


def _needs_approval(decision: Decision) -> str:
    rule = decision.rule
    if rule is None:
        return f"holdgate: {decision.reason}"
    who = ", ".join(rule.reviewers) or "nobody (the rule names no reviewers)"
    needed = f"{rule.required} of " if rule.required > 1 else "one of "
    reason = " and an X-Holdgate-Reason header" if rule.require_reason else ""
    return f"holdgate: needs approval by {needed}{who} (rule {rule.id}){reason}"


def with_note(status: Mapping[str, Any], note: str) -> dict[str, Any]:
    """The upstream's status with the gateway's note added to its reason."""
    out = dict(status)
    if note:
        reason = str(out.get("reason") or "")
        out["reason"] = f"{reason}; {note}" if reason else note
    return out


# --- rules reviews --------------------------------------------------------------------------


def filter_rules(
    policy: Policy,
    config: Config,
    facts: RequestFacts,
    namespace: str,
    status: Mapping[str, Any],
) -> dict[str, Any]:
    """A SelfSubjectRulesReview's status, less what the gateway does not allow the agent."""
    left_out: set[str] = set()
    kept: list[dict[str, Any]] = []
    for rule in status.get("resourceRules") or []:
        kept.extend(_allowed_resource_rules(policy, config, facts, namespace, rule, left_out))
    kept_urls: list[dict[str, Any]] = []
    for rule in status.get("nonResourceRules") or []:
        verbs = _verbs(rule.get("verbs"))
        for url in rule.get("nonResourceURLs") or []:
            allowed = [v for v in verbs if _allows_url(policy, config, facts, url, v)]
            if allowed:
                kept_urls.append({"verbs": allowed, "nonResourceURLs": [url]})
            if len(allowed) < len(verbs):
                left_out.add(url)
    out = dict(status)
    out["resourceRules"] = kept
    out["nonResourceRules"] = kept_urls
    if left_out:
        out["incomplete"] = True
        shown = ", ".join(sorted(left_out)[:12]) + (", ..." if len(left_out) > 12 else "")
        note = f"holdgate left out what its rules do not allow this agent or may narrow: {shown}"
        error = str(status.get("evaluationError") or "")
        out["evaluationError"] = f"{error}; {note}" if error else note
    return out


def _verbs(verbs: Any) -> list[str]:
    listed = [str(v) for v in verbs or []]
    return list(STANDARD_VERBS) if "*" in listed else listed


def _wild(value: str) -> bool:
    return any(c in value for c in "*?[")


def _allowed_resource_rules(
    policy: Policy,
    config: Config,
    facts: RequestFacts,
    namespace: str,
    rule: Mapping[str, Any],
    left_out: set[str],
) -> list[dict[str, Any]]:
    verbs = _verbs(rule.get("verbs"))
    names = [str(n) for n in rule.get("resourceNames") or []]
    out = []
    for group in [str(g) for g in rule.get("apiGroups") or []]:
        for combined in [str(r) for r in rule.get("resources") or []]:
            resource, _, subresource = combined.partition("/")
            allowed = []
            for verb in verbs:
                asked = [
                    KubeRequest(
                        resource_request=True,
                        path=_resource_path(group, "", namespace, resource, name, subresource),
                        verb=verb,
                        api_group=group,
                        namespace=namespace,
                        resource=resource,
                        subresource=subresource,
                        name=name,
                    )
                    for name in names or [""]
                ]
                if all(_allows(policy, config, facts, a) for a in asked):
                    allowed.append(verb)
                else:
                    left_out.add(f"{combined}{'.' + group if group else ''} {verb}")
            if allowed:
                kept: dict[str, Any] = {
                    "verbs": allowed,
                    "apiGroups": [group],
                    "resources": [combined],
                }
                if names:
                    kept["resourceNames"] = names
                out.append(kept)
    return out


def _allows(policy: Policy, config: Config, facts: RequestFacts, asked: KubeRequest) -> bool:
    """Whether the gateway lets the asked request (or every request a wildcard stands for) through."""
    asked_as = asked_facts(facts, asked)
    if self_review(asked_as):
        return True  # the gateway always answers self-reviews
    decision = decide_asked(policy, config, asked_as)
    if decision.action is not Action.ALLOW:
        return False
    if not (_wild(asked.api_group) or _wild(asked.resource) or _wild(asked.subresource)):
        return True
    return not any(_could_narrow(r, facts, asked.verb, asked.namespace) for r in policy.rules)


def _could_narrow(rule: Rule, facts: RequestFacts, verb: str, namespace: str) -> bool:
    """Whether a deny or approve rule could apply to some resource for this agent and verb."""
    if rule.action is Action.ALLOW or _reads_body(rule):
        return False
    keys = rule.keys
    identity = facts.identity
    target = facts.target.name if facts.target is not None else ""
    # exec, attach and portforward are asked with get (WebSocket) or create (SPDY): rules
    # naming either verb catch both, and a wildcard resource includes them.
    connects = keys.resources is None or any(r.startswith("pods/") for r in keys.resources)
    verbs = ("get", "create") if verb in ("get", "create") and connects else (verb,)
    return (
        _any_match(keys.targets, (target,))
        and _any_match(keys.verbs, verbs)
        and (not namespace or _any_match(keys.namespaces, (namespace,)))
        and (identity is None or _any_match(keys.agents, (identity.agent,)))
        and (identity is None or _any_match(keys.groups, identity.groups))
    )


def _any_match(patterns: tuple[str, ...] | None, values: tuple[str, ...]) -> bool:
    if patterns is None:
        return True
    return any(fnmatch.fnmatchcase(v, p) for v in values for p in patterns)


def _allows_url(policy: Policy, config: Config, facts: RequestFacts, url: str, verb: str) -> bool:
    """Whether the gateway allows a non-resource URL (a `/prefix/*` as the prefix itself)."""
    if url == "*":
        return False  # every path: the gateway's rules never allow all of them at once
    asked = KubeRequest(resource_request=False, path=url, verb=verb)
    decision = decide_asked(policy, config, asked_facts(facts, asked))
    return decision.action is Action.ALLOW
