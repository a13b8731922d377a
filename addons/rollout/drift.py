"""`holdgate rules report`: where the rules and what agents do drifted apart.

Rules that never matched in the window, requests left to a target's default, approve rules
whose holds were always approved (candidates to allow) or always denied (candidates to deny),
approval latency per rule and per reviewer, and holds that expired unanswered. Pure: it
takes archive index lines (as `Observed`) and the loaded policy.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from holdgate.policy.rules import Action, LoadedPolicy
from holdgate.rollout.observed import Kind, Observed

# A rule is a candidate to allow (deny) once at least this many of its holds were approved
# (denied) and none the other way.
MIN_HOLDS = 3
OUTCOMES = ("approved", "denied", "expired", "cancelled", "refused")


@dataclass(frozen=True, slots=True)
class Latency:
    """How long answers took, in seconds: nearest-rank percentiles."""

    count: int
    p50: float
    p90: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        """The percentiles of some durations (at least one)."""
        ordered = sorted(seconds)

        def rank(p: float) -> float:
            return round(ordered[max(0, math.ceil(p * len(ordered)) - 1)], 3)

        return cls(len(ordered), rank(0.5), rank(0.9), round(ordered[-1], 3))

    def as_dict(self) -> dict[str, Any]:
        """Stable keys for --json."""
        return {"count": self.count, "p50": self.p50, "p90": self.p90, "max": self.max}


@dataclass(slots=True)
class DriftReport:
    """What `holdgate rules report` prints."""

    requests: int = 0
    first: str = ""
    last: str = ""
    never_matched: list[dict[str, Any]] = field(default_factory=list)
    defaults: list[dict[str, Any]] = field(default_factory=list)
    approve_rules: list[dict[str, Any]] = field(default_factory=list)
    latency_by_rule: list[dict[str, Any]] = field(default_factory=list)
    latency_by_reviewer: list[dict[str, Any]] = field(default_factory=list)
    expired: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report under stable keys (`--json`)."""
        return {
            "window": {"requests": self.requests, "first": self.first, "last": self.last},
            "never_matched": self.never_matched,
            "defaults": self.defaults,
            "approve_rules": self.approve_rules,
            "latency": {"by_rule": self.latency_by_rule, "by_reviewer": self.latency_by_reviewer},
            "expired_holds": self.expired,
            "problems": self.problems,
        }

    def as_text(self) -> str:
        """The report for a terminal: one aligned table per finding."""
        span = f" from {self.first} to {self.last}" if self.first else ""
        lines = [f"{self.requests} archived requests{span}", ""]
        sections: list[tuple[str, list[str], list[list[str]]]] = [
            (
                "Rules that never matched",
                ["rule", "action", "where"],
                [[r["rule"], r["action"], r["where"]] for r in self.never_matched],
            ),
            (
                "Requests no rule matched (the target's default decided)",
                ["count", "target", "agent", "default", "request", "last seen"],
                [
                    [
                        str(d["count"]),
                        d["target"],
                        d["agent"] or "-",
                        d["action"],
                        d["request"],
                        d["last"],
                    ]
                    for d in self.defaults
                ],  # fmt: skip
            ),
            (
                "Approve rules: how their holds ended",
                ["rule", *OUTCOMES, "window", "candidate"],
                [
                    [
                        a["rule"],
                        *(str(a[o]) for o in OUTCOMES),
                        str(a["window"]),
                        _candidate_text(a),
                    ]
                    for a in self.approve_rules
                ],  # fmt: skip
            ),
            (
                "Approval latency per rule (seconds, hold created to decided)",
                ["rule", "holds", "p50", "p90", "max"],
                [[r["rule"], *_latency_cells(r)] for r in self.latency_by_rule],
            ),
            (
                "Approval latency per reviewer (seconds, hold created to their review)",
                ["reviewer", "reviews", "p50", "p90", "max"],
                [[r["reviewer"], *_latency_cells(r)] for r in self.latency_by_reviewer],
            ),
            (
                "Holds that expired unanswered",
                ["time", "agent", "rule", "hold", "request"],
                [
                    [e["time"], e["agent"] or "-", e["rule"], e["hold"], e["request"]]
                    for e in self.expired
                ],  # fmt: skip
            ),
        ]
        for title, header, rows in sections:
            lines.append(f"{title}: {len(rows)}")
            lines += [f"  {row}" for row in _aligned([header, *rows])] if rows else []
            lines.append("")
        lines += [f"not verified, left out: {p}" for p in self.problems]
        return "\n".join(lines).rstrip() + "\n"


def _candidate_text(row: dict[str, Any]) -> str:
    if row["candidate"] == "allow":
        return f"always approved ({row['approved']}): candidate to allow"
    if row["candidate"] == "deny":
        return f"always denied ({row['denied']}): candidate to deny"
    return "-"


def _latency_cells(row: dict[str, Any]) -> list[str]:
    return [str(row["count"]), f"{row['p50']:g}", f"{row['p90']:g}", f"{row['max']:g}"]


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def report(
    entries: Iterable[Observed], loaded: LoadedPolicy, min_holds: int = MIN_HOLDS
) -> DriftReport:
    """The drift between `loaded`'s rules and the archived requests in `entries`."""
    out = DriftReport()
    matched: set[str] = set()
    defaults: dict[tuple[str, str, str, str], list[Observed]] = defaultdict(list)
    holds: dict[str, Counter[str]] = defaultdict(Counter)
    by_rule: dict[str, list[float]] = defaultdict(list)
    by_reviewer: dict[str, list[float]] = defaultdict(list)
    for seen in entries:
        if seen.followup_of or seen.unindexed:
            continue  # the gateway's own requests and undescribed records say nothing of rules
        out.requests += 1
        out.first = out.first or seen.time
        out.last = seen.time or out.last
        for verdict in (seen.decision, seen.would, seen.rules_decided):
            if verdict is not None and verdict.rule:
                matched.add(verdict.rule)
        decided = seen.decided
        if seen.fell_to_default and decided is not None:
            key = (str(seen.target), seen.agent or "", decided.action, _pattern(seen))
            defaults[key].append(seen)
        if seen.hold is None or not seen.rule:
            continue
        outcome = "window" if seen.hold.window_of else (seen.outcome or "")
        holds[seen.rule][outcome] += 1
        created = seen.hold.created_at
        if created is None:
            continue
        if outcome in ("approved", "denied") and seen.hold.decided_at is not None:
            by_rule[seen.rule].append(seen.hold.decided_at - created)
        for review in seen.hold.reviews:
            if review.at is not None:
                by_reviewer[_reviewer_label(review.name, review.reviewer)].append(
                    review.at - created
                )
        if outcome == "expired":
            out.expired.append(
                {
                    "time": seen.time,
                    "agent": seen.agent,
                    "rule": seen.rule,
                    "hold": seen.hold.id,
                    "request": seen.what,
                    "method": seen.method,
                    "url": seen.url,
                }
            )
    out.never_matched = [
        {"rule": r.id, "action": str(r.action), "where": r.where}
        for r in loaded.policy.rules
        if r.id not in matched
    ]
    out.defaults = [
        {
            "target": target,
            "agent": agent or None,
            "action": action,
            "request": request,
            "count": len(seen),
            "first": seen[0].time,
            "last": seen[-1].time,
        }
        for (target, agent, action, request), seen in sorted(
            defaults.items(), key=lambda item: (-len(item[1]), item[0])
        )
    ]
    approve_ids = [r.id for r in loaded.policy.rules if r.action is Action.APPROVE]
    approve_ids += sorted(set(holds) - set(approve_ids))  # rules since removed or changed
    out.approve_rules = [_hold_row(rule, holds[rule], min_holds) for rule in approve_ids]
    out.latency_by_rule = [
        {"rule": rule, **Latency.of(seconds).as_dict()} for rule, seconds in sorted(by_rule.items())
    ]
    out.latency_by_reviewer = [
        {"reviewer": who, **Latency.of(seconds).as_dict()}
        for who, seconds in sorted(by_reviewer.items())
    ]
    return out


def _pattern(seen: Observed) -> str:
    """The request without its object name: how requests left to a default are grouped."""
    if seen.kind in (Kind.HTTP, Kind.NONRESOURCE):
        return f"{seen.method} {seen.path}"
    text = f"{seen.verb} {seen.full_resource}"
    return text + (f" -n {seen.namespace}" if seen.namespace else " (cluster-wide)")


def _reviewer_label(name: str, reviewer: str) -> str:
    return f"{name} ({reviewer})" if name and name != reviewer else reviewer


def _hold_row(rule: str, counts: Counter[str], min_holds: int) -> dict[str, Any]:
    row: dict[str, Any] = {"rule": rule, **{o: counts[o] for o in OUTCOMES}}
    row["window"] = counts["window"]
    candidate = None
    if counts["approved"] >= min_holds and not counts["denied"]:
        candidate = "allow"
    elif counts["denied"] >= min_holds and not counts["approved"]:
        candidate = "deny"
    row["candidate"] = candidate
    return row
