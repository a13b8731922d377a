"""What decides: rule compilation and the decision for one request. Pure: no mitmproxy here.

Evaluation order (deny-overrides): every rule that matches a request is considered, and the
most restrictive action wins: deny, then approve, then allow. Among rules with the same action
the first in load order (files by name, rules top to bottom) is the one reported. A request no
rule matches gets its target's `default`; a host no target declares gets the config's `default`.

A matcher that cannot tell (the body cannot be read, the request spans every namespace, the
name or the agent is unknown) counts against the request: deny and approve rules match, allow
rules do not. So a request the gateway cannot fully parse never gets more access than one it can.

An index (`RuleIndex`) keeps the cost per request flat in the number of rules: it rules out,
by exact target, resource, verb, namespace and agent, the rules whose matchers would say no,
and never changes a decision.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
from jsonpath_ng.ext import parse as parse_jsonpath

from holdgate.config.gateway_config import Config, TargetKind, schema_errors
from holdgate.config.yaml_source import Document, SourceError, SourceErrors, load_yaml
from holdgate.kube.impersonation import describe as describe_impersonation
from holdgate.kube.pod_security import TEMPLATE_PATHS as POD_TEMPLATE_PATHS
from holdgate.kube.pod_security import Level as PodSecurityLevel
from holdgate.kube.pod_security import pod_specs
from holdgate.kube.pod_security import violations as pod_security_violations
from holdgate.kube.request_info import unread_reason
from holdgate.masking.masks import (
    EMPTY_MASKS,
    KUBERNETES_SECRET_MASKS,
    MaskError,
    Masking,
    MaskSet,
    MaskStyle,
    compile_masks,
)
from holdgate.policy.lint import resource_errors, reviewer_problems, rule_warnings
from holdgate.request.facts import RequestFacts


class Action(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    APPROVE = "approve"


# Lower is more restrictive; the most restrictive matching rule decides.
_RESTRICTIVENESS = {Action.DENY: 0, Action.APPROVE: 1, Action.ALLOW: 2}

# Connect subresources (KubeRequest.connects) arrive as a WebSocket GET (verb get) or a SPDY POST
# (create); since Kubernetes 1.35 the apiserver also requires `create` for the GET (feature
# gate AuthorizePodWebsocketUpgradeCreatePermission, beta, on by default). Deny and approve
# rules naming either verb catch both transports; an allow rule must grant `create`.
#
# Privileged subresources (KubeRequest.privileged_subresource: a shell, a tunnel to a pod, node
# or service, a debug container, a minted credential): an allow rule grants them only by naming
# them in `resources` (never through `*`, `pods/*` or an omitted `resources`), and a target's
# `default: allow` never does. Stricter than RBAC on purpose: a read rule must not open a shell.


def privileged_power(facts: RequestFacts) -> str:
    """The privileged subresource (or the `proxy` verb) a request uses, or ""."""
    kube = facts.kube
    if kube is None or not kube.privileged_subresource:
        return ""
    if kube.verb == "proxy":
        return f"{kube.resource} (verb proxy)"
    return f"{kube.resource}/{kube.subresource}"


DEFAULT_APPROVAL_TIMEOUT = 600.0

# A matcher answers True, False, or None when it cannot tell.
Matcher = Callable[[RequestFacts], bool | None]
FilterCompiler = Callable[[str], Callable[[Any], bool]]


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled policy rule."""

    id: str
    action: Action
    description: str
    message: str
    source: str
    line: int
    order: int
    # `violatesPodSecurity`: the level a rule checks, so its reason can say what was found.
    pod_security: PodSecurityLevel | None = None
    # `body` conditions: when the body cannot be read, the reason says so.
    reads_body: bool = False
    reviewers: tuple[str, ...] = ()
    # What `holdgate check` should say about the rule as written (it still works).
    warnings: tuple[str, ...] = field(default=(), compare=False)
    required: int = 1
    timeout: float = DEFAULT_APPROVAL_TIMEOUT
    window: float = 0.0
    escalate_after: float | None = None
    # Approve rules: a held request must carry X-Holdgate-Reason, else it is refused at once.
    require_reason: bool = False
    mode: str | None = None  # "audit" / "enforce" (None: the target's, else the gateway's)
    ttl: float | None = None
    matchers: tuple[Matcher, ...] = field(default=(), compare=False, repr=False)
    # For the index: the exact values this rule is limited to.
    keys: IndexKeys = field(default_factory=lambda: IndexKeys(), compare=False, repr=False)

    @property
    def where(self) -> str:
        """FILE:LINE of the rule."""
        return f"{self.source}:{self.line}"

    def matches(self, facts: RequestFacts) -> bool:
        """Whether the rule applies; an undecidable matcher counts against the request."""
        unknown = False
        for matcher in self.matchers:
            result = matcher(facts)
            if result is False:
                return False
            if result is None:
                unknown = True
        return not unknown or self.action is not Action.ALLOW


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one request and why; `would` is what an audit-mode rule, target or
    gateway decided but did not enforce (the request passes as allowed)."""

    action: Action
    rule: Rule | None
    reason: str
    would: Decision | None = None
    # No rule matched: the target's `default` decided (what `holdgate rules suggest` reads).
    by_default: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form for flow metadata and `holdgate explain`."""
        out: dict[str, Any] = {
            "action": str(self.action),
            "rule": self.rule.id if self.rule else None,
            "reason": self.reason,
        }
        out["mode"] = "audit" if self.would is not None else "enforce"
        if self.by_default:
            out["default"] = True
        if self.would is not None:
            out["would"] = self.would.as_dict()
        if self.rule is not None:
            out["rule_source"] = self.rule.where
            if self.rule.action is Action.APPROVE:
                out["reviewers"] = list(self.rule.reviewers)
                out["required"] = self.rule.required
                out["timeout_seconds"] = self.rule.timeout
                if self.rule.require_reason:
                    out["require_reason"] = True
        return out


@dataclass(frozen=True, slots=True)
class RuleTest:
    """An expected decision written beside the rules (`tests:` in a rule file)."""

    name: str
    method: str
    url: str
    expect: Action
    rule: str | None
    check_rule: bool
    agent: str | None
    groups: tuple[str, ...]
    body: bytes
    content_type: str
    source: str
    line: int


class Policy:
    """An immutable, indexed rule set."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: tuple[Rule, ...] = tuple(sorted(rules, key=lambda r: r.order))
        # An undecidable matcher lets deny and approve rules match, never allow rules.
        self._index = RuleIndex(
            [r.keys for r in self.rules], [r.action is not Action.ALLOW for r in self.rules]
        )
        # The most restrictive action first (deny-overrides).
        self._actions = tuple(sorted(Action, key=_RESTRICTIVENESS.__getitem__))

    def candidates(self, facts: RequestFacts) -> Iterator[Rule]:
        """Rules that could match, in load order: the index rules out the others."""
        return (self.rules[i] for i in self._index.candidates(facts))

    def decide(self, facts: RequestFacts, config: Config) -> Decision:
        """The decision for one request, and for each impersonation it asks for.

        Each `Impersonate-*` header is an `impersonate` request of its own, as the apiserver
        authorizes it; one that no rule matches is refused whatever the target's default, and
        the most restrictive of all the decisions is the request's.
        """
        decision = self._decide(facts, config)
        enforced = decision
        if decision.action is not Action.DENY:
            as_someone = self.impersonations(facts, config)
            if as_someone is not None and (
                _RESTRICTIVENESS[as_someone.action] < _RESTRICTIVENESS[decision.action]
            ):
                decision = as_someone
        if decision is not enforced or facts.problem:
            return decision  # impersonation and unreadable requests are never audited through
        return audited(decision, facts, config)

    def impersonations(self, facts: RequestFacts, config: Config) -> Decision | None:
        """The most restrictive decision (the first of them) among the request's
        impersonations, each an `impersonate` request of its own; one no rule matches is
        refused. None when the request impersonates no one. Never audited through."""
        worst: Decision | None = None
        for request in facts.impersonates:
            as_someone = self._decide(
                dataclasses.replace(facts, kube=request, exec=None, body=None), config
            )
            what = describe_impersonation(request)
            if as_someone.rule is None:
                as_someone = Decision(
                    Action.DENY, None, f"impersonation of {what} refused: no rule allows it"
                )
            else:
                as_someone = dataclasses.replace(
                    as_someone, reason=f"impersonation of {what}: {as_someone.reason}"
                )
            if (
                worst is None
                or _RESTRICTIVENESS[as_someone.action] < _RESTRICTIVENESS[worst.action]
            ):
                worst = as_someone
            if worst.action is Action.DENY:
                break
        return worst

    def _decide(self, facts: RequestFacts, config: Config) -> Decision:
        if facts.problem:
            return Decision(Action.DENY, None, f"refused: {facts.problem}")
        if facts.target is None:
            action = Action(config.default)
            return Decision(
                action,
                None,
                f"host {facts.host}:{facts.port} is not a declared target; default {action}",
            )
        candidates = [self.rules[i] for i in self._index.candidates(facts)]
        # The most restrictive action among matching rules wins; within it, the first in load order.
        for of_action in self._actions:
            for rule in candidates:
                if rule.action is of_action and rule.matches(facts):
                    return Decision(rule.action, rule, decision_reason(rule, facts))
        action = Action(facts.target.default)
        reason = f"no rule matched; target {facts.target.name} default {action}"
        if power := privileged_power(facts):
            reason = (
                f"no rule matched; {power} is privileged: only an allow rule that names it in "
                "`resources` allows it (`*`, read verbs and a target's default never do)"
            )
            if action is Action.ALLOW:
                action = Action.DENY
        return Decision(action, None, reason, by_default=True)


# --- the index ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IndexKeys:
    """The patterns a rule limits each indexed field to (None: not limited, or not indexable).

    Exact values are looked up as they are; a glob by the literal prefix before its first
    wildcard (`team-*` -> `team-`), which every value it matches starts with.
    """

    targets: tuple[str, ...] | None = None
    resources: tuple[str, ...] | None = None
    verbs: tuple[str, ...] | None = None
    namespaces: tuple[str, ...] | None = None
    agents: tuple[str, ...] | None = None
    groups: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None


_DIMENSIONS = ("targets", "resources", "verbs", "namespaces", "agents", "groups", "paths")
_WILDCARDS = "*?["
# What a request presents on one dimension: keys (none at all: only unlimited rules can match),
# or UNKNOWN (the matcher cannot tell: lenient rules can match whatever they are limited to).
UNKNOWN = None
RequestKeys = tuple[str, ...] | None


def request_keys(facts: RequestFacts) -> tuple[RequestKeys, ...]:
    """The request's values on each indexed dimension, as the matchers below read them."""
    kube = facts.kube
    target: RequestKeys = (facts.target.name,) if facts.target is not None else ()
    identity = facts.identity
    agent: RequestKeys = (identity.agent,) if identity is not None else UNKNOWN
    groups: RequestKeys = tuple(identity.groups) if identity is not None else UNKNOWN
    path = (facts.path,)
    if kube is None:
        return (target, (), (), (), agent, groups, path)
    verbs: RequestKeys = (kube.verb,)
    if kube.connects:
        verbs = (kube.verb, "create", "get")
    if not kube.resource_request:
        return (target, (), verbs, (), agent, groups, path)
    namespace = kube.namespace
    if not namespace and kube.resource == "namespaces" and not kube.api_group:
        namespace = kube.name
    resource = (_combined_resource(kube.resource, kube.subresource),)
    namespaces = (namespace,) if namespace else UNKNOWN
    return (target, resource, verbs, namespaces, agent, groups, path)


def _literal_prefix(pattern: str) -> str:
    """What every value a glob matches starts with."""
    cut = min((i for i in (pattern.find(c) for c in _WILDCARDS) if i >= 0), default=len(pattern))
    return pattern[:cut]


class _Dimension:
    """One indexed field: which rules a value is compatible with, as a bitset."""

    __slots__ = ("by_key", "by_prefix", "limited", "prefix_lengths", "unlimited", "when_unknown")

    def __init__(self, limits: list[tuple[str, ...] | None], lenient: list[bool]) -> None:
        self.unlimited = lenient_limited = 0
        self.by_key: dict[str, int] = {}
        self.by_prefix: dict[str, int] = {}
        for i, limited_to in enumerate(limits):
            bit = 1 << i
            # A glob with no literal prefix (`*-prod`) cannot be looked up: not limited here.
            if limited_to is None or any(
                not _literal_prefix(p) for p in limited_to if any(c in p for c in _WILDCARDS)
            ):
                self.unlimited |= bit
                continue
            if lenient[i]:
                lenient_limited |= bit
            for pattern in limited_to:
                if any(c in pattern for c in _WILDCARDS):
                    prefix = _literal_prefix(pattern)
                    self.by_prefix[prefix] = self.by_prefix.get(prefix, 0) | bit
                else:
                    self.by_key[pattern] = self.by_key.get(pattern, 0) | bit
        self.when_unknown = self.unlimited | lenient_limited
        self.limited = ((1 << len(limits)) - 1) & ~self.unlimited
        self.prefix_lengths = sorted({len(p) for p in self.by_prefix})

    def compatible(self, keys: RequestKeys) -> int:
        if keys is UNKNOWN:
            return self.when_unknown
        out = self.unlimited
        for key in keys:
            out |= self.by_key.get(key, 0)
            for length in self.prefix_lengths:
                if length > len(key):
                    break
                out |= self.by_prefix.get(key[:length], 0)
        return out


class RuleIndex:
    """Which rules a request can match: per dimension, a bitset (bit i: rule i) of the rules
    compatible with the request's value; the candidates are their intersection. Results are
    cached by the request's keys but the path (the index reads nothing else)."""

    def __init__(self, keys: list[IndexKeys], lenient: list[bool]) -> None:
        self._dimensions = [
            _Dimension([getattr(k, name) for k in keys], lenient) for name in _DIMENSIONS
        ]
        self._all = (1 << len(keys)) - 1
        # By the request's keys but the path (which varies with every object name): the
        # compatible rules as a bitset and as indices, and whether any is limited by path.
        self._cache: dict[tuple[RequestKeys, ...], tuple[int, tuple[int, ...], bool]] = {}

    def _lookup(self, keys: tuple[RequestKeys, ...]) -> tuple[int, tuple[int, ...], bool]:
        found = self._cache.get(keys)
        if found is None:
            out = self._all
            for dimension, values in zip(self._dimensions, keys, strict=False):
                out &= dimension.compatible(values)
                if not out:
                    break
            found = (out, tuple(_indices(out)), bool(out & self._dimensions[-1].limited))
            if len(self._cache) >= _INDEX_CACHE:
                self._cache.clear()
            self._cache[keys] = found
        return found

    def candidates(self, facts: RequestFacts) -> tuple[int, ...]:
        """The indices of the rules the request may match, lowest first."""
        *keys, path = request_keys(facts)
        bits, indices, by_path = self._lookup(tuple(keys))
        if by_path:
            return tuple(_indices(bits & self._dimensions[-1].compatible(path)))
        return indices


_INDEX_CACHE = 8192


def _indices(bits: int) -> Iterator[int]:
    """The set bits, lowest first."""
    while bits:
        low = bits & -bits
        yield low.bit_length() - 1
        bits ^= low


@dataclass(frozen=True, slots=True)
class MaskRule:
    """Masks that apply to the requests a rule's matchers select."""

    id: str
    source: str
    line: int
    order: int
    masks: MaskSet
    keyed: bool = False
    # False switches the built-in Secret masks off for matching requests.
    secrets: bool | None = None
    matchers: tuple[Matcher, ...] = field(default=(), compare=False, repr=False)
    keys: IndexKeys = field(default_factory=lambda: IndexKeys(), compare=False, repr=False)

    @property
    def where(self) -> str:
        """FILE:LINE of the mask rule."""
        return f"{self.source}:{self.line}"

    def matches(self, facts: RequestFacts) -> bool:
        """Masks apply unless a matcher rules the request out (when in doubt, mask)."""
        return all(m(facts) is not False for m in self.matchers)

    def surely_matches(self, facts: RequestFacts) -> bool:
        """Every matcher is sure: what switching masks off needs (a cluster-wide list is not sure)."""
        return all(m(facts) is True for m in self.matchers)


class MaskPolicy:
    """Mask rules and the built-in Secret masks."""

    def __init__(self, rules: Iterable[MaskRule], key: bytes | None = None) -> None:
        self.rules = tuple(rules)
        self.key = key
        # When in doubt, mask: a matcher that cannot tell leaves every mask rule in.
        self._index = RuleIndex([r.keys for r in self.rules], [True] * len(self.rules))
        # The merged masks of each combination of rules seen (few distinct ones in practice).
        self._merged: dict[tuple[tuple[int, ...], bool], Masking] = {}

    def for_request(self, facts: RequestFacts) -> Masking:
        """The masks for one request (the Secret built-ins on Kubernetes targets, unless switched off)."""
        candidates = self._index.candidates(facts)
        chosen = tuple(i for i in candidates if self.rules[i].matches(facts))
        builtins = (
            facts.target is not None
            and facts.target.kind is TargetKind.KUBERNETES
            and not any(
                self.rules[i].secrets is False and self.rules[i].surely_matches(facts)
                for i in candidates
            )
            and _may_hold_secrets(facts)
        )
        cached = self._merged.get((chosen, builtins))
        if cached is None:
            if len(self._merged) >= _MERGED_CACHE:
                self._merged.clear()
            cached = self._merged[(chosen, builtins)] = self._merge(chosen, builtins)
        return cached

    def _merge(self, chosen: tuple[int, ...], builtins: bool) -> Masking:
        rules = [self.rules[i] for i in chosen]
        keyed = any(r.keyed for r in rules)
        style = MaskStyle.keyed(self.key) if keyed and self.key else MaskStyle()
        user = EMPTY_MASKS.merge(r.masks for r in rules)
        # The built-ins run last: their base64-preserving masks must not be overwritten.
        masks = user.merge([KUBERNETES_SECRET_MASKS]) if builtins else user
        return Masking(
            masks.with_style(style), tuple(r.id for r in rules if not r.masks.is_empty), builtins
        )


_MERGED_CACHE = 4096


def _may_hold_secrets(facts: RequestFacts) -> bool:
    """Whether a response can carry Secret objects (what the built-in masks are for)."""
    kube = facts.kube
    if kube is None:
        return True  # not classified: assume it may
    if not kube.resource_request:
        return False
    return kube.resource == "secrets" or kube.resource == "*"


def audited(decision: Decision, facts: RequestFacts, config: Config) -> Decision:
    """The decision as its mode makes it: in audit mode a denial or a hold passes as allowed,
    keeping what would have happened. The rule's mode wins, then the target's, the gateway's."""
    if decision.action is Action.ALLOW or facts.target is None:
        return decision  # undeclared hosts stay refused, as their tunnels are
    mode = decision.rule.mode if decision.rule is not None else None
    if mode is None and facts.target is not None:
        mode = facts.target.mode
    if (mode or config.mode) != "audit":
        return decision
    would = "would deny" if decision.action is Action.DENY else "would hold for approval"
    return Decision(
        Action.ALLOW, decision.rule, f"audit mode, {would}: {decision.reason}", decision
    )


def decision_reason(rule: Rule, facts: RequestFacts) -> str:
    """Why `rule` decides `facts`: its message, and what its body conditions found or could not."""
    reason = _reason(rule)
    if rule.pod_security is not None:
        _, found = pod_security_finding(facts, rule.pod_security)
        return f"{reason} ({found})" if found else reason
    if rule.reads_body and facts.body and (unread := unread_reason(facts.body)):
        return f"{reason} ({unread}: its body conditions cannot be checked)"
    return reason


def _reason(rule: Rule) -> str:
    if rule.action is Action.DENY:
        return f"denied by rule {rule.id}: {rule.message or rule.description or 'no message'}"
    if rule.action is Action.APPROVE:
        return (
            f"approval required by rule {rule.id}: {rule.description or rule.message or ''}".rstrip(
                ": "
            )
        )
    return f"allowed by rule {rule.id}"


def _combined_resource(resource: str, subresource: str) -> str:
    return f"{resource}/{subresource}" if subresource else resource


# --- matchers -------------------------------------------------------------------------------


def _globs(patterns: list[str]) -> Callable[[str], bool]:
    exact = frozenset(p for p in patterns if not any(c in p for c in "*?["))
    wild = tuple(p for p in patterns if p not in exact)
    if "*" in wild:
        return lambda value: True
    return lambda value: value in exact or any(fnmatch.fnmatchcase(value, p) for p in wild)


def _target_matcher(patterns: list[str]) -> Matcher:
    match = _globs(patterns)
    return lambda f: f.target is not None and match(f.target.name)


def _kube_only(f: RequestFacts) -> bool | None:
    return f.kube is not None


def _api_groups_matcher(groups: list[str]) -> Matcher:
    allowed = frozenset(groups)

    def match(f: RequestFacts) -> bool | None:
        if f.kube is None or not f.kube.resource_request:
            return False
        return "*" in allowed or f.kube.api_group in allowed

    return match


def _resources_matcher(resources: list[str]) -> Matcher:
    """RBAC's ResourceMatches, plus `pods/*` for every subresource of pods."""
    allowed = frozenset(resources)

    def match(f: RequestFacts) -> bool | None:
        if f.kube is None or not f.kube.resource_request:
            return False
        sub = f.kube.subresource
        combined = _combined_resource(f.kube.resource, sub)
        if "*" in allowed or combined in allowed:
            return True
        return bool(sub) and (f"*/{sub}" in allowed or f"{f.kube.resource}/*" in allowed)

    return match


def _verbs_matcher(verbs: list[str]) -> Matcher:
    allowed = frozenset(verbs)

    def match(f: RequestFacts) -> bool | None:
        if f.kube is None:
            return False
        if "*" in allowed or f.kube.verb in allowed:
            return True
        return f.kube.connects and ("create" in allowed or "get" in allowed)

    return match


def _named_power_matcher(resources: list[str] | None, verbs: list[str] | None) -> Matcher:
    """For allow rules: a privileged subresource only where `resources` names it exactly."""
    named = frozenset(resources or ())
    granted = frozenset(verbs or ("*",))
    may_create = "*" in granted or "create" in granted

    def match(f: RequestFacts) -> bool | None:
        kube = f.kube
        if kube is None or not kube.privileged_subresource:
            return True
        if kube.verb == "proxy":
            return "proxy" in granted and verbs is not None
        if f"{kube.resource}/{kube.subresource}" not in named:
            return False
        return may_create if kube.connects else True

    return match


def pod_security_finding(facts: RequestFacts, level: PodSecurityLevel) -> tuple[bool | None, str]:
    """Whether a write's pods fail `level` (None: cannot be known), and what was found."""
    kube = facts.kube
    if kube is None or not kube.resource_request or kube.verb not in ("create", "update", "patch"):
        return False, ""
    ephemeral = kube.resource == "pods" and kube.subresource == "ephemeralcontainers"
    if kube.resource not in POD_TEMPLATE_PATHS or (kube.subresource and not ephemeral):
        return False, ""
    body = facts.body
    if body is None or body.document is None:
        return None, f"{unread_reason(body)}, so its pods cannot be checked"
    document = body.document
    try:
        if ephemeral:
            meta, spec = document.get("metadata") or {}, document.get("spec") or {}
            if not isinstance(spec, dict) or not isinstance(meta, dict):
                raise ValueError("spec or metadata is not an object")
            specs = [(meta, spec)]
        else:
            specs = pod_specs(kube.resource, document)
    except ValueError as e:
        return None, f"the pod template cannot be read ({e})"
    found = [v for meta, spec in specs for v in pod_security_violations(meta, spec, level)]
    if found:
        return True, f"violates Pod Security {level}: {'; '.join(found[:8])}"
    if kube.verb == "patch" and specs and level is PodSecurityLevel.RESTRICTED:
        return None, "a patch of the pod template: whether the result meets restricted is unknown"
    return False, ""


def _pod_security_matcher(level_name: str) -> Matcher:
    """Writes whose pods do not meet a Pod Security Standards level (None: cannot be known)."""
    level = PodSecurityLevel(level_name)
    return lambda f: pod_security_finding(f, level)[0]


def _resource_names_matcher(names: list[str]) -> Matcher:
    allowed = frozenset(names)

    def match(f: RequestFacts) -> bool | None:
        if f.kube is None or not f.kube.resource_request:
            return False
        if not f.kube.name:
            return None  # a list or a nameless create may cover the named objects
        return f.kube.name in allowed

    return match


def _non_resource_matcher(urls: list[str]) -> Matcher:
    exact = frozenset(u for u in urls if not u.endswith("*"))
    prefixes = tuple(u[:-1] for u in urls if u.endswith("*"))

    def match(f: RequestFacts) -> bool | None:
        if f.kube is None or f.kube.resource_request:
            return False
        return f.path in exact or f.path.startswith(prefixes)

    return match


def _namespaces_matcher(patterns: list[str]) -> Matcher:
    match_ns = _globs(patterns)

    def match(f: RequestFacts) -> bool | None:
        kube = f.kube
        if kube is None or not kube.resource_request:
            return False
        namespace = kube.namespace
        if not namespace and kube.resource == "namespaces" and not kube.api_group:
            namespace = (
                kube.name
            )  # a namespace is in itself (RequestInfo does so for all but create)
        if not namespace:
            return None  # cluster-wide: spans every namespace, including these
        return match_ns(namespace)

    return match


def _agents_matcher(patterns: list[str]) -> Matcher:
    match_agent = _globs(patterns)

    def match(f: RequestFacts) -> bool | None:
        if f.identity is None:
            return None
        return match_agent(f.identity.agent)

    return match


def _groups_matcher(patterns: list[str]) -> Matcher:
    match_group = _globs(patterns)

    def match(f: RequestFacts) -> bool | None:
        if f.identity is None:
            return None
        return any(match_group(g) for g in f.identity.groups)

    return match


def _commands_matcher(patterns: list[str]) -> Matcher:
    """The exec command, its words joined by single spaces, against globs (`*` spans spaces)."""
    match_command = _globs(patterns)

    def match(f: RequestFacts) -> bool | None:
        kube = f.kube
        if kube is None or kube.resource != "pods" or kube.subresource not in ("exec", "attach"):
            return False  # only exec and attach start or join a process
        if f.exec is None or not f.exec.command:
            return None  # attach joins a process whose command the request does not say
        return match_command(" ".join(f.exec.command))

    return match


def _methods_matcher(methods: list[str]) -> Matcher:
    allowed = frozenset(m.upper() for m in methods)
    return lambda f: "*" in allowed or f.method in allowed


def _paths_matcher(patterns: list[str]) -> Matcher:
    match_path = _globs(patterns)
    return lambda f: match_path(f.path)


@dataclass(frozen=True, slots=True)
class BodyCondition:
    """A JSONPath into the request body and what the value found there must be."""

    expression: Any
    equals: Any = None
    has_equals: bool = False
    pattern: re.Pattern[str] | None = None
    exists: bool | None = None

    def holds(self, document: Any) -> bool:
        """Whether any value at the path satisfies the condition."""
        values = [m.value for m in self.expression.find(document)] if document is not None else []
        if self.exists is not None:
            return bool(values) == self.exists
        if self.has_equals:
            return any(_same(v, self.equals) for v in values)
        assert self.pattern is not None
        return any(self.pattern.search(_as_text(v)) for v in values)


def _same(a: Any, b: Any) -> bool:
    # YAML `true` must not equal JSON 1 (Python says True == 1).
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _body_matcher(conditions: list[BodyCondition]) -> Matcher:
    def match(f: RequestFacts) -> bool | None:
        if f.body is None:
            document = None
        elif f.body.error or f.body.document is None:
            return None  # unreadable, compressed, or a protobuf kind we cannot decode in full
        else:
            document = f.body.document
        return all(c.holds(document) for c in conditions)

    return match


def _filter_matcher(predicate: Callable[[Any], bool]) -> Matcher:
    def match(f: RequestFacts) -> bool | None:
        if f.flow is None:
            return None
        return bool(predicate(f.flow))

    return match


# --- loading --------------------------------------------------------------------------------

_KUBE_FIELDS = (
    "apiGroups",
    "resources",
    "verbs",
    "resourceNames",
    "nonResourceURLs",
    "namespaces",
    "violatesPodSecurity",
    "commands",
)


def parse_duration(text: str) -> float:
    """Seconds in a duration such as 90s, 15m, 2h or 1h30m."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not m or not text:
        raise ValueError(f"invalid duration {text!r}")
    hours, minutes, seconds = (int(g or 0) for g in m.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


def _compile_body(
    doc: Document, loc: tuple[str | int, ...], items: list[dict[str, Any]]
) -> tuple[list[BodyCondition], list[SourceError]]:
    conditions, errors = [], []
    for i, item in enumerate(items):
        try:
            expression = parse_jsonpath(item["path"])
        except (JsonPathLexerError, JsonPathParserError, Exception) as e:
            errors.append(doc.error(loc + (i, "path"), f"invalid JSONPath {item['path']!r}: {e}"))
            continue
        pattern = None
        if "matches" in item:
            try:
                pattern = re.compile(item["matches"])
            except re.error as e:
                errors.append(
                    doc.error(loc + (i, "matches"), f"invalid regex {item['matches']!r}: {e}")
                )
                continue
        conditions.append(
            BodyCondition(
                expression=expression,
                equals=item.get("equals"),
                has_equals="equals" in item,
                pattern=pattern,
                exists=item.get("exists"),
            )
        )
    return conditions, errors


# Rule fields whose matcher is made from the field's value alone, in the order they are tried.
_FIELD_MATCHERS: tuple[tuple[str, Callable[[Any], Matcher]], ...] = (
    ("apiGroups", _api_groups_matcher),
    ("resources", _resources_matcher),
    ("verbs", _verbs_matcher),
    ("resourceNames", _resource_names_matcher),
    ("nonResourceURLs", _non_resource_matcher),
    ("namespaces", _namespaces_matcher),
    ("agents", _agents_matcher),
    ("groups", _groups_matcher),
    ("violatesPodSecurity", lambda level: _pod_security_matcher(level)),
    ("commands", _commands_matcher),
    ("methods", _methods_matcher),
    ("paths", _paths_matcher),
)


def _compile_matchers(
    doc: Document,
    loc: tuple[str | int, ...],
    raw: dict[str, Any],
    config: Config | None,
    compile_filter: FilterCompiler | None,
) -> tuple[list[Matcher], IndexKeys, list[SourceError]]:
    """The matchers of a policy or mask rule, and the keys it is indexed under."""
    errors: list[SourceError] = []
    matchers: list[Matcher] = []
    if "targets" in raw:
        matchers.append(_target_matcher(raw["targets"]))
        if config is not None:
            for i, name in enumerate(raw["targets"]):
                if not any(c in name for c in "*?[") and config.target_named(name) is None:
                    errors.append(doc.error(loc + ("targets", i), f"unknown target {name!r}"))
                elif (
                    (t := config.target_named(name))
                    and t.kind is not TargetKind.KUBERNETES
                    and any(k in raw for k in _KUBE_FIELDS)
                ):
                    errors.append(
                        doc.error(
                            loc + ("targets", i),
                            f"target {name!r} is not kubernetes; Kubernetes fields cannot match it",
                        )
                    )
    for i, message in resource_errors(raw.get("resources") or ()):
        errors.append(doc.error(loc + ("resources", i), message))
    if "resources" in raw and "nonResourceURLs" in raw:
        errors.append(
            doc.error(loc, "a rule has either resources or nonResourceURLs, as in RBAC, not both")
        )
    if any(k in raw for k in _KUBE_FIELDS):
        matchers.append(_kube_only)
    matchers.extend(make(raw[key]) for key, make in _FIELD_MATCHERS if key in raw)
    if raw.get("action") == "allow":
        matchers.append(_named_power_matcher(raw.get("resources"), raw.get("verbs")))
    if "body" in raw:
        conditions, body_errors = _compile_body(doc, loc + ("body",), raw["body"])
        errors.extend(body_errors)
        matchers.append(_body_matcher(conditions))
    if "filter" in raw:
        if compile_filter is None:
            matchers.append(lambda f: None)
        else:
            try:
                matchers.append(_filter_matcher(compile_filter(raw["filter"])))
            except ValueError as e:
                errors.append(doc.error(loc + ("filter",), f"invalid filter expression: {e}"))
    return matchers, _index_keys(raw), errors


def _exact(patterns: list[str] | None, wildcards: str) -> tuple[str, ...] | None:
    """The patterns as exact values, or None when any pattern is a wildcard."""
    if patterns is None or any(c in p for p in patterns for c in wildcards):
        return None
    return tuple(patterns)


def _patterns(patterns: list[str] | None) -> tuple[str, ...] | None:
    return tuple(patterns) if patterns is not None else None


def _index_keys(raw: dict[str, Any]) -> IndexKeys:
    """What the matchers of `raw` limit a request to: exact values, and globs for the fields
    matched with fnmatch (resources and verbs: exact only, `*` is not a glob there)."""
    return IndexKeys(
        targets=_patterns(raw.get("targets")),
        resources=_exact(raw.get("resources"), "*"),
        verbs=_exact(raw.get("verbs"), "*"),
        namespaces=_patterns(raw.get("namespaces")),
        agents=_patterns(raw.get("agents")),
        groups=_patterns(raw.get("groups")),
        paths=_patterns(raw.get("paths")),
    )


def _compile_rule(
    doc: Document,
    index: int,
    raw: dict[str, Any],
    order: int,
    config: Config | None,
    compile_filter: FilterCompiler | None,
) -> tuple[Rule | None, list[SourceError]]:
    loc: tuple[str | int, ...] = ("rules", index)
    action = Action(raw["action"])
    matchers, keys, errors = _compile_matchers(doc, loc, raw, config, compile_filter)
    durations: dict[str, float] = {}
    for key in ("timeout", "window", "escalate_after", "ttl"):
        if key in raw:
            try:
                durations[key] = parse_duration(raw[key])
            except ValueError as e:
                errors.append(doc.error(loc + (key,), str(e)))
    timeout = durations.get("timeout", DEFAULT_APPROVAL_TIMEOUT)
    if timeout <= 0:
        errors.append(doc.error(loc + ("timeout",), "timeout must be longer than 0s"))
    warnings = rule_warnings(raw)
    if action is Action.APPROVE:
        reviewer_errors, reviewer_warnings = reviewer_problems(raw.get("reviewers") or (), config)
        errors.extend(doc.error(loc + ("reviewers", i), m) for i, m in reviewer_errors)
        warnings += reviewer_warnings
        if config is not None and config.approvals is None:
            warnings.append("the config has no `approvals` section: this rule refuses with 403")
        if not raw.get("reviewers"):
            errors.append(doc.error(loc, "an approve rule needs reviewers"))
        elif raw.get("required", 1) > len(raw["reviewers"]) and not any(
            r.startswith("slack-group:") for r in raw["reviewers"]
        ):
            errors.append(
                doc.error(loc + ("required",), "more approvals required than reviewers listed")
            )
    else:
        if action is Action.DENY and "ttl" in raw:
            errors.append(
                doc.error(
                    loc + ("ttl",),
                    "'ttl' applies to what allow and approve rules let agents create",
                )
            )
        for key in (
            "reviewers",
            "required",
            "timeout",
            "window",
            "escalate_after",
            "require_reason",
        ):
            if key in raw:
                errors.append(doc.error(loc + (key,), f"{key!r} only applies to approve rules"))
    if errors:
        return None, errors
    return (
        Rule(
            id=raw["id"],
            action=action,
            description=raw.get("description", ""),
            message=raw.get("message", ""),
            source=str(doc.path),
            line=doc.line_of(loc),
            order=order,
            reviewers=tuple(raw.get("reviewers", ())),
            pod_security=PodSecurityLevel(raw["violatesPodSecurity"])
            if "violatesPodSecurity" in raw
            else None,
            reads_body="body" in raw,
            warnings=tuple(warnings),
            required=raw.get("required", 1),
            timeout=timeout,
            window=durations.get("window", 0.0),
            escalate_after=durations.get("escalate_after"),
            require_reason=bool(raw.get("require_reason", False)),
            mode=raw.get("mode"),
            ttl=durations.get("ttl"),
            matchers=tuple(matchers),
            keys=keys,
        ),
        [],
    )


def _compile_mask_rule(
    doc: Document,
    index: int,
    raw: dict[str, Any],
    order: int,
    config: Config | None,
    compile_filter: FilterCompiler | None,
) -> tuple[MaskRule | None, list[SourceError]]:
    loc: tuple[str | int, ...] = ("masks", index)
    matchers, keys, errors = _compile_matchers(doc, loc, raw, config, compile_filter)
    try:
        masks = compile_masks(raw.get("mask", []), raw.get("headers", []))
    except MaskError as e:
        field_name = "mask" if e.field == "paths" else e.field
        errors.append(doc.error(loc + (field_name, e.index), str(e)))
        return None, errors
    if errors:
        return None, errors
    return (
        MaskRule(
            id=raw["id"],
            source=str(doc.path),
            line=doc.line_of(loc),
            order=order,
            masks=masks,
            keyed=raw.get("style") == "hmac",
            secrets=raw.get("secrets"),
            matchers=tuple(matchers),
            keys=keys,
        ),
        [],
    )


def _compile_test(doc: Document, index: int, raw: dict[str, Any]) -> RuleTest:
    method, _, url = raw["request"].partition(" ")
    body = raw.get("body")
    content_type = raw.get("contentType", "")
    if body is None:
        body_bytes = b""
    elif isinstance(body, str):
        body_bytes = body.encode()
    else:
        body_bytes = json.dumps(body).encode()
        content_type = content_type or "application/json"
    return RuleTest(
        name=raw.get("name", raw["request"]),
        method=method,
        url=url,
        expect=Action(raw["expect"]),
        rule=raw.get("rule"),
        check_rule="rule" in raw,
        agent=raw.get("agent"),
        groups=tuple(raw.get("groups", ())),
        body=body_bytes,
        content_type=content_type,
        source=str(doc.path),
        line=doc.line_of(("tests", index)),
    )


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A policy and the tests written beside its rules."""

    policy: Policy
    tests: tuple[RuleTest, ...]
    files: tuple[Path, ...]
    masking: MaskPolicy = field(default_factory=lambda: MaskPolicy(()))

    @property
    def warnings(self) -> list[str]:
        """FILE:LINE: message for what rules say that they cannot mean (they still load)."""
        return [f"{r.where}: {w}" for r in self.policy.rules for w in r.warnings]


def _first_use(
    doc: Document,
    location: tuple[str | int, ...],
    what: str,
    item: Rule | MaskRule,
    seen: dict[str, Any],
    errors: list[SourceError],
) -> bool:
    """Remember `item` under its id; False (and an error) when the id was used before."""
    first = seen.get(item.id)
    if first is not None:
        errors.append(
            doc.error(location, f"duplicate {what} id {item.id!r} (first at {first.where})")
        )
        return False
    seen[item.id] = item
    return True


def load_policy(
    files: Iterable[Path],
    config: Config | None = None,
    compile_filter: FilterCompiler | None = None,
    mask_key: bytes | None = None,
) -> LoadedPolicy:
    """Read, validate and compile rule files; all problems are raised together as SourceErrors."""
    errors: list[SourceError] = []
    rules: list[Rule] = []
    tests: list[RuleTest] = []
    mask_rules: list[MaskRule] = []
    seen: dict[str, Rule] = {}
    seen_masks: dict[str, MaskRule] = {}
    files = tuple(files)
    for path in files:
        try:
            doc = load_yaml(path)
        except SourceError as e:
            errors.append(e)
            continue
        if doc.data is None:
            continue
        if not isinstance(doc.data, dict):
            errors.append(doc.error((), "a rule file must be a mapping with `rules:` and `tests:`"))
            continue
        problems = schema_errors(doc, "rules")
        if problems:
            errors.extend(problems)
            continue
        for i, raw in enumerate(doc.data.get("rules") or []):
            rule, rule_errors = _compile_rule(doc, i, raw, len(rules), config, compile_filter)
            errors.extend(rule_errors)
            if rule is None:
                continue
            if _first_use(doc, ("rules", i, "id"), "rule", rule, seen, errors):
                rules.append(rule)
        for i, raw in enumerate(doc.data.get("masks") or []):
            mask_rule, mask_errors = _compile_mask_rule(
                doc, i, raw, len(mask_rules), config, compile_filter
            )
            errors.extend(mask_errors)
            if mask_rule is None:
                continue
            if _first_use(doc, ("masks", i, "id"), "mask", mask_rule, seen_masks, errors):
                mask_rules.append(mask_rule)
        tests.extend(
            _compile_test(doc, i, raw) for i, raw in enumerate(doc.data.get("tests") or [])
        )
    for test in tests:
        if test.rule is not None and test.rule not in seen:
            errors.append(
                SourceError(test.source, test.line, f"test names unknown rule {test.rule!r}")
            )
    if errors:
        raise SourceErrors(errors)
    return LoadedPolicy(Policy(rules), tuple(tests), files, MaskPolicy(mask_rules, mask_key))
