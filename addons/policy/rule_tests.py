"""Run the `tests:` written beside rules through the same policy the gateway uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from holdgate.config.gateway_config import Config
from holdgate.config.yaml_source import SourceError, SourceErrors
from holdgate.identity.agents import Identity
from holdgate.policy.rules import Decision, LoadedPolicy, RuleTest, load_policy
from holdgate.request.facts import RequestFacts, build_facts
from holdgate.request.flow_filter import make_flow


@dataclass(frozen=True, slots=True)
class RuleTestFailure:
    """A rule test whose decision differs from what it expects."""

    test: RuleTest
    decision: Decision

    @property
    def message(self) -> str:
        """What went wrong, without the location."""
        got = f"{self.decision.action} by {self.decision.rule.id if self.decision.rule else 'no rule (default)'}"
        want = str(self.test.expect)
        if self.test.check_rule:
            want += f" by {self.test.rule or 'no rule (default)'}"
        return f"test {self.test.name!r}: expected {want}, got {got} ({self.decision.reason})"

    def __str__(self) -> str:
        return f"{self.test.source}:{self.test.line}: {self.message}"


def decide_url(
    config: Config,
    loaded: LoadedPolicy,
    method: str,
    url: str,
    *,
    body: bytes = b"",
    content_type: str = "",
    identity: Identity | None = None,
) -> tuple[Decision, RequestFacts]:
    """Classify and decide one request given as METHOD URL, as the gateway would."""
    parts = urlsplit(url)
    headers = {"content-type": content_type} if content_type else {}
    flow = make_flow(method, url, headers, body)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    facts = build_facts(
        config,
        method=method,
        host=parts.hostname or "",
        port=port,
        path_and_query=path,
        content_type=content_type,
        body=body,
        identity=identity,
        flow=flow,
    )
    return loaded.policy.decide(facts, config), facts


def run_rule_tests(config: Config, loaded: LoadedPolicy) -> list[RuleTestFailure]:
    """Every rule test whose outcome differs from its expectation."""
    failures = []
    for test in loaded.tests:
        identity = config.agents.identity_of(test.agent, test.groups) if test.agent else None
        decision, _ = decide_url(
            config,
            loaded,
            test.method,
            test.url,
            body=test.body,
            content_type=test.content_type,
            identity=identity,
        )
        got_rule = decision.rule.id if decision.rule else None
        if decision.action is not test.expect or (test.check_rule and got_rule != test.rule):
            failures.append(RuleTestFailure(test, decision))
    return failures


def load_tested_policy(
    files: list[Path], config: Config, compile_filter: Any, mask_key: bytes | None = None
) -> LoadedPolicy:
    """Load the rules and run their `tests:`; a failing test is refused like a syntax error."""
    loaded = load_policy(files, config, compile_filter, mask_key)
    failures = run_rule_tests(config, loaded)
    if failures:
        raise SourceErrors([SourceError(f.test.source, f.test.line, f.message) for f in failures])
    return loaded
