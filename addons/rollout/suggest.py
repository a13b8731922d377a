"""`holdgate rules suggest`: least-privilege allow rules proposed from what agents did.

Only requests no rule decided (their target's `default` did) are proposed, grouped by agent,
target, reads / writes / privileged subresources, API group, resource and namespace (plain
HTTP targets by method and path). Requests a deny or approve rule decided, unreadable ones,
impersonations and the gateway's own follow-ups are never proposed; those an allow rule
already covers only on request. Each rule carries `tests:` made from real requests it covers,
and `validated` drops what does not hold beside the existing rules.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from holdgate.config.gateway_config import Config
from holdgate.policy.rule_tests import RuleTestFailure, run_rule_tests
from holdgate.policy.rules import Action, FilterCompiler, LoadedPolicy, load_policy
from holdgate.rollout.observed import Kind, Observed

# Writes name their objects in `resourceNames` when they touched at most this many.
NAMES_LIMIT = 5
# Paths under one parent are collapsed to `parent/*` when more than this many were seen.
PATHS_PER_PARENT = 8
TESTS_PER_RULE = 3
# Subresources that connect (a WebSocket GET or a SPDY POST): an allow rule grants `create`.
CONNECTS = frozenset({"exec", "attach", "portforward"})
SUGGESTED_FILE = "suggested.yaml"
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]+")
_GLOB_CHARS = re.compile(r"([*?\[])")


@dataclass(frozen=True, slots=True)
class GroupKey:
    """What one suggested rule covers: requests alike in everything but verb, name, path."""

    agent: str | None
    target: str
    kind: Kind
    group: str | None = None
    resource: str = ""
    namespace: str | None = None
    named: bool = False  # writes that name their object (update, patch, delete)
    method: str = ""  # plain HTTP targets


@dataclass(frozen=True, slots=True)
class Suggestion:
    """One proposed allow rule, its tests, and the requests it was made from."""

    id: str
    rule: dict[str, Any]
    tests: tuple[dict[str, Any], ...]
    requests: int


@dataclass(slots=True)
class SuggestedRules:
    """A proposed rule file: the rules, what was left out and why, what validation dropped."""

    rules: list[Suggestion] = field(default_factory=list)
    left_out: Counter[str] = field(default_factory=Counter)
    dropped: list[str] = field(default_factory=list)
    considered: int = 0
    first: str = ""
    last: str = ""

    def as_yaml(self) -> str:
        """The rule file, a comment header saying what it rests on first."""
        header = [
            "# Suggested by `holdgate rules suggest` from archived traffic: review before use.",
            f"# {self.considered} archived requests"
            + (f" from {self.first} to {self.last}" if self.first else "")
            + f"; {sum(s.requests for s in self.rules)} of them are covered by the "
            f"{len(self.rules)} rules below.",
        ]
        if self.left_out:
            header.append("# Not proposed:")
            header += [f"#   {n:5d}  {why}" for why, n in sorted(self.left_out.items())]
        if self.dropped:
            header.append("# Dropped by validation (loaded with the existing rules, tests run):")
            header += [f"#   {line}" for line in self.dropped]
        # Lists of names in flow style (`verbs: [get, list]`), tests one field a line.
        rules = _dump({"rules": [s.rule for s in self.rules]}, flow=None)
        tests = _dump({"tests": [t for s in self.rules for t in s.tests]}, flow=False)
        return "\n".join(header) + "\n" + rules + tests


def _dump(document: dict[str, Any], flow: bool | None) -> str:
    return yaml.safe_dump(
        document, sort_keys=False, width=120, allow_unicode=True, default_flow_style=flow
    )


def suggest(
    entries: Iterable[Observed],
    loaded: LoadedPolicy,
    config: Config,
    include_covered: bool = False,
) -> SuggestedRules:
    """Allow rules for the requests no rule decided (and, with `include_covered`, for those an
    allow rule already allows), grouped least-privilege, each with tests from real requests."""
    actions = {r.id: r.action for r in loaded.policy.rules}
    out = SuggestedRules()
    groups: dict[GroupKey, list[Observed]] = defaultdict(list)
    covered: set[str] = set()
    for seen in entries:
        out.considered += 1
        out.first = out.first or seen.time
        out.last = seen.time or out.last
        why = _left_out(seen, actions, config, include_covered)
        if why:
            out.left_out[why] += 1
            continue
        if seen.rule is not None:
            covered.add(seen.id)
        groups[_group_key(seen)].append(seen)
    taken = {r.id for r in loaded.policy.rules}
    for key in sorted(groups, key=_sort_key):
        requests = groups[key]
        rule_id = _unique(_rule_id(key, requests), taken)
        rule = _rule(rule_id, key, requests)
        tests = _tests(rule_id, requests, covered)
        out.rules.append(Suggestion(rule_id, rule, tests, len(requests)))
    return out


def _left_out(
    seen: Observed, actions: Mapping[str, Action], config: Config, include_covered: bool
) -> str:
    """Why a request is not proposed ("" when it is)."""
    if seen.unindexed:
        return "unindexed records (the flow could not be described)"
    if seen.followup_of:
        return "the gateway's own follow-up requests (ownership labels)"
    if seen.target is None:
        return "requests to hosts no target declares, or refused before a target was known"
    if config.target_named(seen.target) is None:
        return f"requests to target {seen.target}, which the configuration no longer has"
    if seen.problem:
        return "requests refused as unreadable (a problem with the request)"
    if seen.impersonates:
        return "impersonating requests"
    decided = seen.decided
    if decided is None:
        return "requests without a decision"
    audit = " (audit mode)" if seen.would is not None else ""
    if decided.rule is not None:
        action = actions.get(decided.rule) or Action(decided.action)
        if action is Action.DENY:
            return f"denied by deny rule {decided.rule}{audit}"
        if action is Action.APPROVE:
            return f"held by approve rule {decided.rule}{audit}"
        if not include_covered:
            return f"already allowed by rule {decided.rule} (--include-covered proposes them)"
        return ""
    if not seen.fell_to_default:
        return f"refused by the gateway without a rule ({decided.action})"
    return ""


def _group_key(seen: Observed) -> GroupKey:
    agent, target, kind = seen.agent, str(seen.target), seen.kind
    if kind is Kind.HTTP:
        return GroupKey(agent, target, kind, method=seen.method)
    if kind is Kind.NONRESOURCE:
        return GroupKey(agent, target, kind)
    named = kind is Kind.WRITE and bool(seen.name) and seen.verb != "create"
    return GroupKey(agent, target, kind, seen.group, seen.full_resource, seen.namespace, named)


def _sort_key(key: GroupKey) -> tuple[str, ...]:
    return (key.agent or "", key.target, key.kind, key.resource, key.namespace or "", key.method)


def _verbs(key: GroupKey, requests: list[Observed]) -> list[str]:
    if key.kind is Kind.POWER and key.resource.partition("/")[2] in CONNECTS:
        return ["create"]  # kubectl's WebSocket GET and SPDY POST both need `create`
    return sorted({str(r.verb) for r in requests})


def _rule(rule_id: str, key: GroupKey, requests: list[Observed]) -> dict[str, Any]:
    """The allow rule for one group, as it is written in the file."""
    times = sorted(r.time[:19] for r in requests if r.time)
    agents = f" by {key.agent}" if key.agent else ""
    span = f" from {times[0]} to {times[-1]} UTC" if times else ""
    if times and times[0] == times[-1]:
        span = f" at {times[0]} UTC"
    count = f"{len(requests)} request" + ("s" if len(requests) != 1 else "")
    rule: dict[str, Any] = {
        "id": rule_id,
        "description": f"seen {count}{agents}{span} (holdgate rules suggest)",
        "action": "allow",
        "targets": [key.target],
    }
    if key.agent:
        rule["agents"] = [key.agent]
    if key.kind is Kind.HTTP:
        rule["methods"] = [key.method]
        rule["paths"] = _collapsed(sorted({_escaped(r.path) for r in requests}))
        return rule
    rule["verbs"] = _verbs(key, requests)
    if key.kind is Kind.NONRESOURCE:
        rule["nonResourceURLs"] = _collapsed(sorted({r.path for r in requests}))
        return rule
    if key.group is not None:
        rule["apiGroups"] = [key.group]
    rule["resources"] = [key.resource]
    if key.namespace:
        rule["namespaces"] = [_escaped(key.namespace)]
    names = sorted({str(r.name) for r in requests})
    if key.named and len(names) <= NAMES_LIMIT:
        rule["resourceNames"] = names
    commands = sorted({" ".join(r.command) for r in requests if r.command})
    if key.resource == "pods/exec" and commands:
        rule["commands"] = [_escaped(c) for c in commands]
    return rule


def _escaped(text: str) -> str:
    """A literal as a glob that matches only itself."""
    return _GLOB_CHARS.sub(r"[\1]", text)


def _collapsed(paths: list[str]) -> list[str]:
    """Literal paths, those of a parent with many children seen replaced by `parent/*`."""
    children: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        children[path.rpartition("/")[0]].append(path)
    out: list[str] = []
    for parent, under in sorted(children.items()):
        out += [f"{parent}/*"] if len(under) > PATHS_PER_PARENT else under
    return sorted(out)


def _rule_id(key: GroupKey, requests: list[Observed]) -> str:
    if key.kind is Kind.HTTP:
        parts = [key.target, key.method.lower()]
    elif key.kind is Kind.NONRESOURCE:
        parts = ["nonresource", *_verbs(key, requests)]
    else:
        verbs = ".".join(_verbs(key, requests))
        parts = [key.resource.replace("/", "-"), verbs, key.namespace or "all"]
    text = "-".join(["suggested", key.agent or "any", *parts])
    return _ID_UNSAFE.sub("-", text).strip("-")


def _unique(rule_id: str, taken: set[str]) -> str:
    candidate, n = rule_id, 1
    while candidate in taken:
        n += 1
        candidate = f"{rule_id}-{n}"
    taken.add(candidate)
    return candidate


def _test_url(request: Observed) -> str:
    """The URL a test replays: a plain HTTP target's without its query (rules match method and
    path only, and queries carry API keys that do not belong in a rule file); a Kubernetes
    request's whole (its query is part of what it is: watch, exec's command)."""
    return request.url if request.kube else request.bare_url


def _tests(rule_id: str, requests: list[Observed], covered: set[str]) -> tuple[dict[str, Any], ...]:
    """Up to TESTS_PER_RULE distinct real requests the rule covers, expected to be allowed
    by it (by any rule, for requests an existing allow rule covered already)."""
    tests: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for request in requests:
        url = _test_url(request)
        if (request.method, url) in seen or len(tests) >= TESTS_PER_RULE:
            continue
        seen.add((request.method, url))
        test: dict[str, Any] = {
            "name": f"{rule_id} #{len(tests) + 1}",
            "request": f"{request.method} {url}",
        }
        if request.agent:
            test["agent"] = request.agent
        test["expect"] = "allow"
        if request.id not in covered:
            test["rule"] = rule_id
        tests.append(test)
    return tuple(tests)


def validated(
    suggested: SuggestedRules,
    config: Config,
    compile_filter: FilterCompiler | None = None,
    rounds: int = 3,
) -> SuggestedRules:
    """The suggestion loaded beside the existing rules as `holdgate check` loads them, its
    tests run: a failing test is dropped, a rule none of whose tests holds is dropped, and so
    is a rule that breaks an existing test; each drop is noted."""
    existing = config.rule_files()
    before = {
        _where(f) for f in run_rule_tests(config, load_policy(existing, config, compile_filter))
    }
    current = suggested
    with tempfile.TemporaryDirectory(prefix="holdgate-suggest-") as tmp:
        path = Path(tmp) / SUGGESTED_FILE
        for _ in range(rounds):
            if not current.rules:
                break
            path.write_text(current.as_yaml())
            loaded = load_policy([*existing, path], config, compile_filter)
            failures = run_rule_tests(config, loaded)
            mine = {f.test.name: f for f in failures if f.test.source == str(path)}
            breaking = {
                f.decision.rule.id: f
                for f in failures
                if f.test.source != str(path) and _where(f) not in before and f.decision.rule
            }
            if not mine and not breaking:
                break
            current = _without_failures(current, mine, breaking)
    return current


def _where(failure: RuleTestFailure) -> str:
    return f"{failure.test.source}:{failure.test.line}"


def _without_failures(
    suggested: SuggestedRules,
    failed: Mapping[str, RuleTestFailure],
    breaking: Mapping[str, RuleTestFailure],
) -> SuggestedRules:
    kept: list[Suggestion] = []
    dropped = list(suggested.dropped)
    for suggestion in suggested.rules:
        if suggestion.id in breaking:
            failure = breaking[suggestion.id]
            dropped.append(
                f"rule {suggestion.id}: it would break the existing test at {_where(failure)} "
                f"({failure.message})"
            )
            continue
        tests: list[dict[str, Any]] = []
        for test in suggestion.tests:
            test_failure = failed.get(test["name"])
            if test_failure is None:
                tests.append(test)
                continue
            dropped.append(f"test {test['request']}: {test_failure.message}")
        if not tests:
            dropped.append(f"rule {suggestion.id}: none of its tests holds")
            continue
        kept.append(replace(suggestion, tests=tuple(tests)))
    return replace(suggested, rules=kept, dropped=dropped)
