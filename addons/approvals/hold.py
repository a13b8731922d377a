"""The approval state machine for one held request. Pure: values in, values out.

A hold is PENDING until `required` distinct allowed reviewers approve (APPROVED), any allowed
reviewer denies (DENIED: any deny wins), it times out (EXPIRED), or its client goes away
(CANCELLED). Every transition returns a new `Hold` and an `Outcome` saying what the input did.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class HoldState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """Whether the hold is decided."""
        return self is not HoldState.PENDING


class Outcome(StrEnum):
    """What a review did to a hold."""

    RECORDED = "recorded"  # counted; the hold may still be pending
    DECIDED = "decided"  # counted, and it decided the hold
    DUPLICATE = "duplicate"  # the same reviewer said the same again: no change
    NOT_ALLOWED = "not_allowed"  # the reviewer is not one of the hold's reviewers
    SELF_APPROVAL = "self_approval"  # the agent's owner reviewing the agent's own request
    ALREADY_DECIDED = "already_decided"  # too late: the hold is final
    REASON_REQUIRED = "reason_required"  # a denial must say why
    UNAVAILABLE = "unavailable"  # the shared state store is unreachable: nothing recorded


@dataclass(frozen=True, slots=True)
class Reviewer:
    """A person acting on a hold, as a channel authenticated them."""

    id: str  # "slack:U123", "local:alice"
    name: str = ""
    # Groups the channel resolved for this person ("slack-group:S123").
    groups: frozenset[str] = frozenset()

    @property
    def label(self) -> str:
        """How messages name the reviewer."""
        return f"{self.name} ({self.id})" if self.name and self.name != self.id else self.id


@dataclass(frozen=True, slots=True)
class Review:
    """One reviewer's approve or deny."""

    reviewer: Reviewer
    approve: bool
    reason: str
    at: float

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form for flow metadata and the approvals API."""
        return {
            "reviewer": self.reviewer.id,
            "name": self.reviewer.name,
            "approve": self.approve,
            "reason": self.reason,
            "at": self.at,
        }


def hold_from_dict(data: dict[str, Any]) -> Hold:
    """A hold back from `Hold.as_dict()` (shared state); reviewers' groups are not kept."""
    reviews = tuple(
        Review(
            Reviewer(str(r["reviewer"]), str(r.get("name") or "")),
            bool(r["approve"]),
            str(r.get("reason") or ""),
            float(r["at"]),
        )
        for r in data.get("reviews") or ()
    )
    return Hold(
        id=str(data["id"]),
        digest=str(data["digest"]),
        agent=str(data["agent"]),
        owner=str(data.get("owner") or ""),
        rule_id=str(data["rule"]),
        reviewers=frozenset(data.get("reviewers") or ()),
        required=int(data["required"]),
        created_at=float(data["created_at"]),
        expires_at=float(data["expires_at"]),
        summary=dict(data.get("request") or {}),
        rule_description=str(data.get("rule_description") or ""),
        window=float(data.get("window_seconds") or 0.0),
        escalate_after=data.get("escalate_after"),
        state=HoldState(data["state"]),
        reviews=reviews,
        escalated=bool(data.get("escalated")),
        decided_at=data.get("decided_at"),
        reason=str(data.get("reason") or ""),
    )


def request_digest(method: str, url: str, body: bytes) -> str:
    """What an approval is bound to: method, URL and the body's digest."""
    h = hashlib.sha256()
    h.update(method.upper().encode())
    h.update(b"\0")
    h.update(url.encode())
    h.update(b"\0")
    h.update(hashlib.sha256(body).digest())
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Hold:
    """A held request and everything decided about it so far."""

    id: str
    digest: str
    agent: str
    owner: str
    rule_id: str
    reviewers: frozenset[str]
    required: int
    created_at: float
    expires_at: float
    # What reviewers are shown: target, method, url, classification, exec, masked body excerpt.
    summary: dict[str, Any] = field(default_factory=dict, compare=False)
    rule_description: str = ""
    window: float = 0.0
    escalate_after: float | None = None
    state: HoldState = HoldState.PENDING
    reviews: tuple[Review, ...] = ()
    escalated: bool = False
    decided_at: float | None = None
    reason: str = ""

    @property
    def approvals(self) -> tuple[Review, ...]:
        """The approving reviews so far."""
        return tuple(r for r in self.reviews if r.approve)

    def allows(self, reviewer: Reviewer) -> bool:
        """Whether this person is one of the hold's reviewers (by id or group)."""
        return reviewer.id in self.reviewers or bool(reviewer.groups & self.reviewers)

    def is_owner(self, reviewer: Reviewer) -> bool:
        """Whether the reviewer owns the agent that made the request."""
        return bool(self.owner) and reviewer.id == self.owner

    def escalation_due(self, now: float) -> bool:
        """Whether the hold should be escalated now."""
        return (
            self.state is HoldState.PENDING
            and not self.escalated
            and self.escalate_after is not None
            and now >= self.created_at + self.escalate_after
        )

    @property
    def waited(self) -> float:
        """Seconds from the hold to its decision (so far, if pending)."""
        end = self.decided_at if self.decided_at is not None else self.created_at
        return max(0.0, end - self.created_at)

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form for flow metadata and the approvals API."""
        return {
            "id": self.id,
            "state": str(self.state),
            "agent": self.agent,
            "owner": self.owner,
            "rule": self.rule_id,
            "rule_description": self.rule_description,
            "reviewers": sorted(self.reviewers),
            "required": self.required,
            "approvals": len(self.approvals),
            "reviews": [r.as_dict() for r in self.reviews],
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "decided_at": self.decided_at,
            "waited_seconds": round(self.waited, 3),
            "escalated": self.escalated,
            "escalate_after": self.escalate_after,
            "window_seconds": self.window,
            "reason": self.reason,
            "digest": self.digest,
            "request": self.summary,
        }


def review(
    hold: Hold, reviewer: Reviewer, approve: bool, reason: str, now: float
) -> tuple[Hold, Outcome]:
    """Apply one reviewer's decision."""
    if hold.state.final:
        return hold, Outcome.ALREADY_DECIDED
    if now >= hold.expires_at:
        return expire(hold, now), Outcome.ALREADY_DECIDED
    if not hold.allows(reviewer):
        return hold, Outcome.NOT_ALLOWED
    if approve and hold.is_owner(reviewer):
        return hold, Outcome.SELF_APPROVAL
    reason = reason.strip()
    if not approve and not reason:
        return hold, Outcome.REASON_REQUIRED
    previous = next((r for r in hold.reviews if r.reviewer.id == reviewer.id), None)
    if previous is not None and previous.approve == approve:
        return hold, Outcome.DUPLICATE
    # A reviewer who changes their mind replaces their earlier review.
    reviews = tuple(r for r in hold.reviews if r.reviewer.id != reviewer.id) + (
        Review(reviewer, approve, reason, now),
    )
    hold = replace(hold, reviews=reviews)
    if not approve:
        return replace(
            hold,
            state=HoldState.DENIED,
            decided_at=now,
            reason=f"denied by {reviewer.label}: {reason}",
        ), Outcome.DECIDED
    approvals = hold.approvals
    if len(approvals) >= hold.required:
        names = ", ".join(r.reviewer.label for r in approvals)
        return replace(
            hold, state=HoldState.APPROVED, decided_at=now, reason=f"approved by {names}"
        ), Outcome.DECIDED
    return hold, Outcome.RECORDED


def expire(hold: Hold, now: float) -> Hold:
    """Time out a pending hold: it becomes a denial."""
    if hold.state.final:
        return hold
    waited = _duration(now - hold.created_at)
    given = f"; {len(hold.approvals)} of {hold.required} approvals given" if hold.approvals else ""
    return replace(
        hold,
        state=HoldState.EXPIRED,
        decided_at=now,
        reason=f"approval expired after {waited} without a decision{given}",
    )


def cancel(hold: Hold, why: str, now: float) -> Hold:
    """Cancel a pending hold (its client disconnected, or the gateway is stopping)."""
    if hold.state.final:
        return hold
    return replace(hold, state=HoldState.CANCELLED, decided_at=now, reason=f"cancelled: {why}")


def escalate(hold: Hold) -> Hold:
    """Mark a pending hold as escalated."""
    return replace(hold, escalated=True) if hold.state is HoldState.PENDING else hold


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 120:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 120:
        return f"{minutes}m{seconds:02d}s" if seconds else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
