"""`holdgate rules suggest` and `holdgate rules report`: the archive read against the rules."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from holdgate.archive import signing
from holdgate.archive.backends import BackendError, make_backend
from holdgate.archive.cli import (
    PUBLIC_KEY_HELP,
    ReplayQuery,
    parse_when,
    select_index,
    settings_of,
    verification_key,
)
from holdgate.archive.durable_files import atomic_write
from holdgate.config.gateway_config import Config, load_config
from holdgate.config.yaml_source import SourceError, SourceErrors
from holdgate.policy.rules import LoadedPolicy, load_policy
from holdgate.request.flow_filter import compile_filter
from holdgate.rollout.drift import MIN_HOLDS, report
from holdgate.rollout.observed import Observed, observed
from holdgate.rollout.suggest import suggest, validated

EXIT_INVALID = 2


class BadInput(Exception):
    """What the command line or configuration got wrong, in one line."""


@dataclass(frozen=True, slots=True)
class Traffic:
    """The configuration, its rules, and the archived requests selected."""

    config: Config
    loaded: LoadedPolicy
    requests: list[Observed]
    problems: list[str]


def read_traffic(args: argparse.Namespace) -> Traffic:
    """Load the configuration and rules, and the archive's index lines the filters select
    (hashes verified, signatures with --public-key or the gateway's own key)."""
    try:
        config = load_config(Path(args.config) if args.config else None)
        loaded = load_policy(config.rule_files(), config, compile_filter)
    except SourceErrors as e:
        raise BadInput("; ".join(str(err) for err in e.errors)) from e
    except SourceError as e:
        raise BadInput(str(e)) from e
    except ValueError as e:
        raise BadInput(f"{args.config or 'embedded default'}: {e}") from e
    try:
        query = ReplayQuery(since=parse_when(args.since), agent=args.agent, target=args.target)
    except ValueError as e:
        raise BadInput(f"--since: {e}") from e
    settings = settings_of(config)
    try:
        public = verification_key(settings, args.public_key)
    except (OSError, signing.SigningKeyError) as e:
        raise BadInput(f"--public-key: {e}") from e
    backend = make_backend(settings)
    try:
        selection = select_index(backend, query, public=public, quiet=True)
    except BackendError as e:
        raise BadInput(f"{backend.describe()}: {e}") from e
    return Traffic(config, loaded, observed(selection.entries), selection.problems)


def cmd_suggest(args: argparse.Namespace) -> int:
    """`holdgate rules suggest`."""
    try:
        traffic = read_traffic(args)
    except BadInput as e:
        print(f"holdgate rules suggest: {e}", file=sys.stderr)
        return EXIT_INVALID
    _warn(traffic.problems)
    proposed = suggest(traffic.requests, traffic.loaded, traffic.config, args.include_covered)
    proposed = validated(proposed, traffic.config, compile_filter)
    text = proposed.as_yaml()
    summary = f"{len(proposed.rules)} rules proposed from {proposed.considered} archived requests"
    if args.out:
        atomic_write(Path(args.out), text.encode())
        print(f"wrote {args.out}: {summary}", file=sys.stderr)
    else:
        sys.stdout.write(text)
        print(summary, file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """`holdgate rules report`."""
    if args.min_holds < 1:
        print("holdgate rules report: --min-holds must be at least 1", file=sys.stderr)
        return EXIT_INVALID
    try:
        traffic = read_traffic(args)
    except BadInput as e:
        print(f"holdgate rules report: {e}", file=sys.stderr)
        return EXIT_INVALID
    drift = report(traffic.requests, traffic.loaded, args.min_holds)
    drift.problems = traffic.problems
    if args.json:
        print(json.dumps(drift.as_dict(), indent=2))
    else:
        sys.stdout.write(drift.as_text())
    return 0


def _warn(problems: list[str]) -> None:
    for problem in problems:
        print(f"holdgate rules: not verified, left out: {problem}", file=sys.stderr)


def add_commands(subparsers: Any, config_help: str) -> None:
    """Add `rules suggest` and `rules report` to the holdgate command line."""
    rules = subparsers.add_parser(
        "rules",
        help="rules from archived traffic: suggest least-privilege rules, report drift",
        description="Both read the archive the configuration names (hashes verified; "
        "signatures too with --public-key or the gateway's own key on this host) and the "
        "rules it loads.",
    )
    sub = rules.add_subparsers(dest="rules_command", required=True)

    def common(p: argparse.ArgumentParser, since: str) -> None:
        p.add_argument("--config", help=config_help)
        p.add_argument(
            "--since",
            default=since,
            help=f"requests from this time on: ISO 8601 or an age like 90m, 24h, 7d "
            f"(default {since})",
        )
        p.add_argument("--agent", help="agent name glob")
        p.add_argument("--target", help="target name glob")
        p.add_argument("--public-key", metavar="FILE", help=PUBLIC_KEY_HELP)

    p = sub.add_parser(
        "suggest",
        help="propose least-privilege allow rules, with tests, from what agents did",
        description="Proposes allow rules for the archived requests no rule decided (their "
        "target's default did), grouped by agent, target, reads / writes / privileged "
        "subresources, API group, resource and namespace (plain HTTP by method and path), "
        "each with `tests:` from real requests. Requests a deny or approve rule decided, "
        "unreadable ones, impersonations and the gateway's own follow-ups are never proposed; "
        "the file's header counts them. The file is loaded beside the existing rules and its "
        "tests run: what does not hold is dropped and said so. Review it before use.",
    )
    common(p, "7d")
    p.add_argument("--out", metavar="FILE", help="write the rule file here (default: stdout)")
    p.add_argument(
        "--include-covered",
        action="store_true",
        help="also propose rules for requests an existing allow rule already allows",
    )
    p.set_defaults(func=cmd_suggest)

    p = sub.add_parser(
        "report",
        help="rules that never matched, requests left to defaults, hold outcomes and latency",
        description="Rules that never matched in the window, requests that fell to a target's "
        "default, per approve rule how its holds ended (always approved: a candidate to allow; "
        "always denied: a candidate to deny), approval latency per rule and reviewer, and holds "
        "that expired unanswered. Exit 0; 2 for bad input.",
    )
    common(p, "30d")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--min-holds",
        type=int,
        default=MIN_HOLDS,
        metavar="N",
        help=f"holds all approved (or all denied) before a rule is a candidate (default "
        f"{MIN_HOLDS})",
    )
    p.set_defaults(func=cmd_report)
