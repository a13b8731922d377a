"""The pure Block Kit builder: one table of hold states and requests, rendered and checked."""

from __future__ import annotations

import calendar
from dataclasses import replace
from typing import Any

import pytest

from holdgate.approvals import hold as hold_state
from holdgate.approvals.hold import Hold, HoldState, Outcome, Reviewer
from holdgate.approvals.slack.messages import (
    APPROVE_ACTION,
    DENY_ACTION,
    EXCERPT_LIMIT,
    deny_modal,
    describe,
    escalation_reply,
    final_reply,
    hold_message,
    outcome_notice,
    read_deny_submission,
    reason_errors,
    review_reply,
    slack_date,
)
from tests.sim.slack_sim import block_text, validate_blocks

T0 = float(calendar.timegm((2025, 11, 25, 15, 0, 0)))
ALICE = Reviewer("slack:U_ALICE", "Alice Liddell")
BOB = Reviewer("slack:U_BOB", "Bob Marley")
KUBE: dict[str, Any] = {
    "target": "cluster",
    "method": "POST",
    "url": "https://kubernetes.default.svc/api/v1/namespaces/prod/secrets",
    "kubernetes": {
        "verb": "create",
        "resource": "secrets",
        "subresource": "",
        "namespace": "prod",
        "name": "db-creds",
        "api_group": "",
    },
    "body_excerpt": '{"kind":"Secret","data":{"password":"***"}}',
    "identity": {"agent": "ci-bot", "owner": "slack:U_OWNER", "groups": [], "run_id": "run-42"},
    "reason": "rotate the database credentials",
}
HTTP = {
    "target": "billing",
    "method": "DELETE",
    "url": "https://billing.internal/v1/invoices/42",
    "identity": {"agent": "ci-bot", "owner": "slack:U_OWNER", "groups": [], "run_id": ""},
    "reason": "",
}
NON_RESOURCE = {
    **HTTP,
    "target": "cluster",
    "kubernetes": {"resource_request": False, "verb": "get", "path": "/version", "namespace": ""},
}
EXEC = {
    **KUBE,
    "method": "GET",
    "url": "https://kubernetes.default.svc/api/v1/namespaces/prod/pods/web-1/exec?command=sh",
    "kubernetes": {
        "verb": "get",
        "resource": "pods",
        "subresource": "exec",
        "namespace": "prod",
        "name": "web-1",
    },
    "exec": {"command": ["sh", "-c", "rm -rf /tmp/cache && echo done"]},
    "body_excerpt": "",
}


def make_hold(summary: dict[str, Any] | None = None, **changes: Any) -> Hold:
    values: dict[str, Any] = {
        "id": "h0ld1d",
        "digest": "d",
        "agent": "ci-bot",
        "owner": "slack:U_OWNER",
        "rule_id": "prod-secrets",
        "rule_description": "Secrets in prod need a human",
        "reviewers": frozenset({"slack:U_ALICE", "slack:U_BOB", "slack-group:S0SRE"}),
        "required": 2,
        "created_at": T0,
        "expires_at": T0 + 600,
        "summary": KUBE if summary is None else summary,
    }
    return Hold(**{**values, **changes})


def approved_once(hold: Hold) -> Hold:
    return hold_state.review(hold, ALICE, True, "", T0 + 10)[0]


def approved(hold: Hold) -> Hold:
    return hold_state.review(approved_once(hold), BOB, True, "", T0 + 20)[0]


def denied(hold: Hold) -> Hold:
    return hold_state.review(hold, BOB, False, "not during the freeze", T0 + 20)[0]


def rendered(hold: Hold, notify: str = "") -> str:
    message = hold_message(hold, notify=notify)
    validate_blocks(list(message.blocks))  # Slack would refuse what breaks its limits
    return message.text + "\n" + block_text(message.blocks)


def header(hold: Hold) -> str:
    return next(b["text"]["text"] for b in hold_message(hold).blocks if b["type"] == "header")


def buttons(hold: Hold) -> list[tuple[str, str]]:
    return [
        (e["action_id"], e["value"])
        for b in hold_message(hold).blocks
        if b["type"] == "actions"
        for e in b["elements"]
    ]


PENDING = make_hold()
STATES = [
    # (name, hold, header starts with, shows buttons, more text that must appear)
    (
        "pending",
        PENDING,
        ":hourglass_flowing_sand: Approval needed: create secrets prod/db-creds",
        True,
        ["0 of 2 given", "*Expires*"],
    ),
    (
        "one approval",
        approved_once(PENDING),
        ":hourglass_flowing_sand: Approval needed",
        True,
        [
            "1 of 2 given: Alice Liddell (slack:U_ALICE)",
            ":white_check_mark: Alice Liddell (slack:U_ALICE) approved",
        ],
    ),
    (
        "approved",
        approved(PENDING),
        ":white_check_mark: Approved: create secrets",
        False,
        [
            "2 of 2 given: Alice Liddell (slack:U_ALICE), Bob Marley (slack:U_BOB)",
            "*Approved*: approved by",
            "*Decided*",
            "waited 20 seconds",
        ],
    ),
    (
        "denied",
        denied(PENDING),
        ":no_entry: Denied: create secrets",
        False,
        [
            "*Denied*: denied by Bob Marley (slack:U_BOB): not during the freeze",
            ":no_entry: Bob Marley (slack:U_BOB) denied: not during the freeze",
        ],
    ),
    (
        "expired",
        hold_state.expire(approved_once(PENDING), T0 + 600),
        ":hourglass: Expired: create secrets",
        False,
        ["approval expired after 10m without a decision; 1 of 2 approvals given"],
    ),
    (
        "cancelled",
        hold_state.cancel(PENDING, "the client disconnected", T0 + 5),
        ":heavy_multiplication_x: Cancelled: create secrets",
        False,
        ["cancelled: the client disconnected"],
    ),
    (
        "escalated",
        hold_state.escalate(PENDING),
        ":rotating_light: Escalated: approval needed: create secrets",
        True,
        ["*Expires*"],
    ),
]


@pytest.mark.parametrize(
    ("name", "hold", "title", "has_buttons", "texts"), STATES, ids=[s[0] for s in STATES]
)
def test_states(name: str, hold: Hold, title: str, has_buttons: bool, texts: list[str]) -> None:
    assert header(hold).startswith(title)
    expected = [(APPROVE_ACTION, hold.id), (DENY_ACTION, hold.id)] if has_buttons else []
    assert buttons(hold) == expected
    text = rendered(hold)
    for snippet in texts:
        assert snippet in text, snippet


REQUESTS = [
    (
        "non-resource",
        NON_RESOURCE,
        ["*Verb*\n`get`", "*Path*\n`/version`"],
        ["*Namespace*", "*Resource*"],
    ),
    # (name, summary, must appear, must not appear)
    (
        "kubernetes",
        KUBE,
        [
            "*Verb*\n`create`",
            "*Resource*\n`secrets`",
            "*Namespace*\n`prod`",
            "*Name*\n`db-creds`",
            "*Target*\ncluster",
            "`POST https://kubernetes.default.svc/api/v1/namespaces/prod/secrets`",
        ],
        ["*Command*"],
    ),
    (
        "http",
        HTTP,
        [
            "*Request*\n`DELETE https://billing.internal/v1/invoices/42`",
            "*Target*\nbilling",
            "_none given_",
        ],
        ["*Verb*", "*Body*", "*Command*"],
    ),
    (
        "exec",
        EXEC,
        [
            "*Resource*\n`pods/exec`",
            "*Command*\n```sh -c 'rm -rf /tmp/cache &amp;&amp; echo done'```",
        ],
        ["*Body*"],
    ),
    (
        "cluster-wide",
        {
            **KUBE,
            "kubernetes": {
                "verb": "delete",
                "resource": "clusterroles",
                "api_group": "rbac.authorization.k8s.io",
                "name": "admin",
            },
        },
        ["*Namespace*\n_cluster-wide_", "`clusterroles (rbac.authorization.k8s.io)`"],
        [],
    ),
]


@pytest.mark.parametrize(
    ("name", "summary", "present", "absent"), REQUESTS, ids=[r[0] for r in REQUESTS]
)
def test_requests(
    name: str, summary: dict[str, Any], present: list[str], absent: list[str]
) -> None:
    text = rendered(make_hold(summary))
    for snippet in present:
        assert snippet in text, snippet
    for snippet in absent:
        assert snippet not in text, snippet


def test_who_and_why() -> None:
    text = rendered(PENDING)
    assert "*Agent*\n`ci-bot` (run `run-42`)" in text
    assert "*Owner*\n<@U_OWNER>" in text
    assert "*Rule*\n`prod-secrets`: Secrets in prod need a human" in text
    assert "*Reason given by the agent*\n> rotate the database credentials" in text
    assert "reviewers: <!subteam^S0SRE>, <@U_ALICE>, <@U_BOB>" in text
    assert '*Body* (masked excerpt)\n```{"kind":"Secret","data":{"password":"***"}}```' in text


def test_describe() -> None:
    assert describe(KUBE) == "create secrets prod/db-creds"
    assert describe(EXEC) == "get pods/exec prod/web-1"
    assert describe(HTTP) == "DELETE https://billing.internal/v1/invoices/42"
    assert describe({}) == "a request"
    assert describe(NON_RESOURCE) == "get /version"


def test_long_body_excerpt_is_truncated() -> None:
    excerpt = "x" * (EXCERPT_LIMIT + 500)
    text = rendered(make_hold({**KUBE, "body_excerpt": excerpt}))
    assert "x" * EXCERPT_LIMIT + "… (500 more characters)```" in text
    assert "x" * (EXCERPT_LIMIT + 1) not in text


def test_huge_fields_stay_within_slack_limits() -> None:
    huge = "y" * 10_000
    summary = {
        **KUBE,
        "url": huge,
        "reason": huge,
        "kubernetes": {**KUBE["kubernetes"], "name": huge},
        "exec": {"command": [huge]},
    }
    rendered(make_hold(summary, rule_description=huge, agent=huge))  # validates the blocks


def test_expiry_uses_slack_date_formatting() -> None:
    assert (
        slack_date(T0 + 600)
        == f"<!date^{int(T0) + 600}^{{date_short_pretty}} at {{time}}|2025-11-25 15:10 UTC>"
    )
    assert f"*Expires*\n{slack_date(T0 + 600)}" in rendered(PENDING)


@pytest.mark.parametrize(
    ("window", "note"),
    [
        (0, None),
        (600, "Approval also covers identical requests by this agent for 10 minutes."),
        (60, "Approval also covers identical requests by this agent for 1 minute."),
        (90, "Approval also covers identical requests by this agent for 90 seconds."),
    ],
)
def test_window_note(window: float, note: str | None) -> None:
    text = rendered(make_hold(window=window))
    if note is None:
        assert "also covers" not in text
    else:
        assert note in text


def test_agent_controlled_text_cannot_mention_link_or_break_out() -> None:
    summary = {
        **KUBE,
        "reason": "<!channel> please <https://evil.example|click>",
        "body_excerpt": "```\n<!here>",
        "url": "https://x/`<@U_ADMIN>`",
    }
    text = rendered(make_hold(summary, agent="bot<!everyone>"))
    assert "<!channel>" not in text and "<!here>" not in text and "<!everyone>" not in text
    assert "<@U_ADMIN>" not in text and "<https://evil" not in text
    assert "&lt;!channel&gt; please &lt;https://evil.example|click&gt;" in text
    assert "```ˋˋˋ\n&lt;!here&gt;```" in text


def test_only_the_summary_is_shown() -> None:
    # The gateway masks the summary; anything else a hold might carry never reaches Slack.
    summary = {
        **KUBE,
        "raw_body": '{"password":"hunter2"}',
        "headers": {"Authorization": "Bearer s3cret"},
    }
    text = rendered(make_hold(summary))
    assert "hunter2" not in text and "s3cret" not in text
    assert "***" in text


def test_escalation_message_leads_with_the_mention() -> None:
    message = hold_message(hold_state.escalate(PENDING), notify="<!subteam^S0ONCALL>")
    assert message.text.startswith("<!subteam^S0ONCALL> Escalated: approval needed")
    assert message.blocks[0]["text"]["text"].startswith("<!subteam^S0ONCALL>")
    reply = escalation_reply(replace(PENDING, escalate_after=600.0), "<!subteam^S0ONCALL>")
    assert (
        reply.text
        == ":rotating_light: <!subteam^S0ONCALL> Escalated: no decision after 10 minutes; 0 of 2 approvals given."
    )


def test_replies() -> None:
    once = approved_once(PENDING)
    assert (
        review_reply(once, once.reviews[-1]).text
        == ":white_check_mark: Alice Liddell (slack:U_ALICE) approved (1 of 2)"
    )
    done = approved(PENDING)
    assert review_reply(done, done.reviews[-1]).text.endswith(
        "approved (2 of 2): the request proceeds."
    )
    no = denied(PENDING)
    assert review_reply(no, no.reviews[-1]).text == (
        ":no_entry: Bob Marley (slack:U_BOB) denied: not during the freeze\nThe request is refused."
    )
    expired = hold_state.expire(PENDING, T0 + 30)
    assert (
        final_reply(expired).text
        == ":hourglass: Expired: approval expired after 30s without a decision"
    )


NOTICES = [
    (Outcome.NOT_ALLOWED, PENDING, "are not one of the reviewers of create secrets prod/db-creds"),
    (Outcome.SELF_APPROVAL, PENDING, "you cannot approve its own request"),
    (
        Outcome.DUPLICATE,
        approved_once(PENDING),
        "You already reviewed create secrets prod/db-creds; 1 of 2",
    ),
    (
        Outcome.ALREADY_DECIDED,
        denied(PENDING),
        "Too late: create secrets prod/db-creds is already denied",
    ),
    (Outcome.ALREADY_DECIDED, None, "no longer known to the gateway"),
    (Outcome.REASON_REQUIRED, PENDING, "A denial needs a reason"),
]


@pytest.mark.parametrize(
    ("outcome", "hold", "text"), NOTICES, ids=[f"{n[0]}-{n[1] is not None}" for n in NOTICES]
)
def test_outcome_notices(outcome: Outcome, hold: Hold | None, text: str) -> None:
    assert text in outcome_notice(hold, outcome, ALICE)


def test_deny_modal_round_trip() -> None:
    view = deny_modal(PENDING, "C0APPROVALS", "1700000000.000100")
    assert view["type"] == "modal" and view["submit"]["text"] == "Deny"
    [reason_input] = [b for b in view["blocks"] if b["type"] == "input"]
    assert not reason_input.get("optional", False)  # Slack itself insists on a reason
    submitted = {
        **view,
        "state": {
            "values": {
                "reason": {"reason_input": {"type": "plain_text_input", "value": "  too risky  "}}
            }
        },
    }
    result = read_deny_submission(submitted)
    assert (result.hold_id, result.channel, result.message_ts, result.reason) == (
        "h0ld1d",
        "C0APPROVALS",
        "1700000000.000100",
        "too risky",
    )
    assert reason_errors(result) is None
    blank = read_deny_submission(
        {
            **view,
            "state": {
                "values": {"reason": {"reason_input": {"type": "plain_text_input", "value": " "}}}
            },
        }
    )
    assert reason_errors(blank) == {
        "response_action": "errors",
        "errors": {"reason": "Say why you deny this request."},
    }


@pytest.mark.parametrize(
    "view",
    [
        {"callback_id": "someone_else"},
        {"callback_id": "holdgate_deny_reason", "private_metadata": "not json"},
        {"callback_id": "holdgate_deny_reason", "private_metadata": "{}"},
    ],
)
def test_foreign_or_broken_views_are_refused(view: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        read_deny_submission(view)


def test_state_labels_cover_every_state() -> None:
    for state in HoldState:
        hold = replace(
            PENDING, state=state, decided_at=None if state is HoldState.PENDING else T0 + 1
        )
        assert header(hold)
