"""The approval state machine, table-tested."""

from __future__ import annotations

import pytest

from holdgate.approvals.hold import (
    Hold,
    HoldState,
    Outcome,
    Reviewer,
    cancel,
    escalate,
    expire,
    request_digest,
    review,
)

ALICE = Reviewer("slack:UALICE", "Alice")
BOB = Reviewer("slack:UBOB", "Bob")
CAROL = Reviewer("local:carol", "carol")
OWNER = Reviewer("slack:UOWNER", "Olga")
MALLORY = Reviewer("slack:UMALLORY", "Mallory")
ONCALL = Reviewer("slack:UONCALL", "Oscar", groups=frozenset({"slack-group:SONCALL"}))


def hold(**changes: object) -> Hold:
    base = Hold(
        id="h1",
        digest=request_digest("POST", "https://k/api/v1/namespaces/x/secrets", b"{}"),
        agent="ci-bot",
        owner="slack:UOWNER",
        rule_id="r",
        reviewers=frozenset(
            {"slack:UALICE", "slack:UBOB", "local:carol", "slack:UOWNER", "slack-group:SONCALL"}
        ),
        required=1,
        created_at=100.0,
        expires_at=700.0,
    )
    return Hold(**{**{f: getattr(base, f) for f in base.__slots__}, **changes})  # type: ignore[attr-defined]


# (initial hold, [(reviewer, approve, reason, now)], final state, last outcome, reason contains)
CASES = [
    (
        "approve",
        hold(),
        [(ALICE, True, "", 110)],
        HoldState.APPROVED,
        Outcome.DECIDED,
        "approved by Alice (slack:UALICE)",
    ),
    (
        "deny needs reason",
        hold(),
        [(ALICE, False, " ", 110)],
        HoldState.PENDING,
        Outcome.REASON_REQUIRED,
        "",
    ),
    (
        "deny",
        hold(),
        [(BOB, False, "freeze", 110)],
        HoldState.DENIED,
        Outcome.DECIDED,
        "denied by Bob (slack:UBOB): freeze",
    ),
    (
        "2 of 3: first",
        hold(required=2),
        [(ALICE, True, "", 110)],
        HoldState.PENDING,
        Outcome.RECORDED,
        "",
    ),
    (
        "2 of 3: second",
        hold(required=2),
        [(ALICE, True, "", 110), (CAROL, True, "", 120)],
        HoldState.APPROVED,
        Outcome.DECIDED,
        "approved by Alice (slack:UALICE), carol (local:carol)",
    ),
    (
        "any deny wins",
        hold(required=2),
        [(ALICE, True, "", 110), (BOB, False, "no", 120)],
        HoldState.DENIED,
        Outcome.DECIDED,
        "denied by Bob",
    ),
    (
        "double click",
        hold(required=2),
        [(ALICE, True, "", 110), (ALICE, True, "", 111)],
        HoldState.PENDING,
        Outcome.DUPLICATE,
        "",
    ),
    (
        "same person twice does not make two",
        hold(required=2),
        [(ALICE, True, "", 110), (ALICE, True, "", 111), (ALICE, True, "", 112)],
        HoldState.PENDING,
        Outcome.DUPLICATE,
        "",
    ),
    (
        "change of mind to deny",
        hold(required=2),
        [(ALICE, True, "", 110), (ALICE, False, "oops", 111)],
        HoldState.DENIED,
        Outcome.DECIDED,
        "denied by Alice",
    ),
    (
        "unauthorized",
        hold(),
        [(MALLORY, True, "", 110)],
        HoldState.PENDING,
        Outcome.NOT_ALLOWED,
        "",
    ),
    (
        "unauthorized deny ignored",
        hold(),
        [(MALLORY, False, "ha", 110)],
        HoldState.PENDING,
        Outcome.NOT_ALLOWED,
        "",
    ),
    (
        "owner cannot approve",
        hold(),
        [(OWNER, True, "", 110)],
        HoldState.PENDING,
        Outcome.SELF_APPROVAL,
        "",
    ),
    (
        "owner may deny",
        hold(),
        [(OWNER, False, "not mine", 110)],
        HoldState.DENIED,
        Outcome.DECIDED,
        "denied by Olga",
    ),
    (
        "via group",
        hold(),
        [(ONCALL, True, "", 110)],
        HoldState.APPROVED,
        Outcome.DECIDED,
        "approved by Oscar",
    ),
    (
        "too late",
        hold(),
        [(ALICE, True, "", 700)],
        HoldState.EXPIRED,
        Outcome.ALREADY_DECIDED,
        "approval expired after 10m without a decision",
    ),
    (
        "after decision",
        hold(),
        [(ALICE, True, "", 110), (BOB, False, "late", 120)],
        HoldState.APPROVED,
        Outcome.ALREADY_DECIDED,
        "approved by Alice",
    ),
]


@pytest.mark.parametrize(
    ("initial", "steps", "state", "outcome", "reason"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_reviews(initial: Hold, steps, state: HoldState, outcome: Outcome, reason: str) -> None:
    current, last = initial, None
    for reviewer, approve, why, now in steps:
        current, last = review(current, reviewer, approve, why, now)
    assert (current.state, last) == (state, outcome)
    assert reason in current.reason
    if state.final:
        assert current.decided_at is not None


def test_expire_reports_duration_and_partial_approvals() -> None:
    h, _ = review(hold(required=2), ALICE, True, "", 110)
    done = expire(h, 100 + 3 * 3600)
    assert done.state is HoldState.EXPIRED
    assert done.reason == "approval expired after 3h00m without a decision; 1 of 2 approvals given"
    assert expire(done, 99999) is done


def test_cancel_and_final_states_are_sticky() -> None:
    c = cancel(hold(), "the client disconnected while waiting", 150)
    assert c.state is HoldState.CANCELLED and "client disconnected" in c.reason
    assert review(c, ALICE, True, "", 160)[1] is Outcome.ALREADY_DECIDED
    assert cancel(c, "again", 170) is c


def test_escalation_due() -> None:
    h = hold(escalate_after=60.0)
    assert not h.escalation_due(159) and h.escalation_due(160)
    e = escalate(h)
    assert e.escalated and not e.escalation_due(500)


def test_digest_binds_method_url_and_body() -> None:
    a = request_digest("POST", "https://k/x", b"{}")
    assert a == request_digest("post", "https://k/x", b"{}")
    assert a != request_digest("PUT", "https://k/x", b"{}")
    assert a != request_digest("POST", "https://k/y", b"{}")
    assert a != request_digest("POST", "https://k/x", b"{ }")


def test_the_approvals_list_line_says_what_each_hold_is_about() -> None:
    from holdgate.cli import hold_line

    hold = {
        "id": "ab12",
        "agent": "ci-bot",
        "rule": "approve-prod-exec",
        "approvals": 0,
        "required": 1,
        "request": {
            "method": "POST",
            "url": "https://kubernetes.default.svc/api/v1/namespaces/prod/pods/web-0/exec",
            "kubernetes": {
                "resource_request": True,
                "verb": "create",
                "resource": "pods",
                "subresource": "exec",
                "name": "web-0",
                "namespace": "prod",
            },
            "exec": {"command": ["sh", "-c", "cat /etc/hosts"]},
            "reason": "debug \x1b[31mticket 42",
        },
    }
    line = hold_line(hold)
    assert line.startswith("ab12  ci-bot  create pods/exec web-0 -n prod -- sh -c cat /etc/hosts")
    assert "rule approve-prod-exec  0/1 approvals  reason: debug" in line
    assert "\x1b" not in line
