"""Slack Block Kit rendering of holds. Pure: a hold's state in, Slack messages out.

The builder only shows what the hold's `summary` carries (already masked by the gateway):
it never looks at the request itself. Every piece of text that the agent controls is escaped,
so a URL or a reason cannot mention `@channel`, link, or break out of a code block.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from holdgate.approvals.hold import Hold, HoldState, Outcome, Review, Reviewer

APPROVE_ACTION = "holdgate_approve"
DENY_ACTION = "holdgate_deny"
ACTIONS_BLOCK = "holdgate_actions"
DENY_CALLBACK = "holdgate_deny_reason"
REASON_BLOCK = "reason"
REASON_INPUT = "reason_input"

HEADER_LIMIT = 150  # Slack's limit for header text
EXCERPT_LIMIT = 1000
COMMAND_LIMIT = 500
TEXT_LIMIT = 500
REASON_LIMIT = 500

STATE_LABELS: dict[HoldState, tuple[str, str]] = {
    HoldState.PENDING: (":hourglass_flowing_sand:", "Approval needed"),
    HoldState.APPROVED: (":white_check_mark:", "Approved"),
    HoldState.DENIED: (":no_entry:", "Denied"),
    HoldState.EXPIRED: (":hourglass:", "Expired"),
    HoldState.CANCELLED: (":heavy_multiplication_x:", "Cancelled"),
}
ESCALATED_LABEL = (":rotating_light:", "Escalated: approval needed")


@dataclass(frozen=True, slots=True)
class SlackMessage:
    """The `text` fallback (notifications, screen readers) and the Block Kit blocks."""

    text: str
    blocks: tuple[dict[str, Any], ...] = ()

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `chat.postMessage` / `chat.update`."""
        kwargs: dict[str, Any] = {"text": self.text}
        if self.blocks:
            kwargs["blocks"] = list(self.blocks)
        return kwargs


@dataclass(frozen=True, slots=True)
class DenySubmission:
    """What a submitted deny modal says."""

    hold_id: str
    channel: str
    message_ts: str
    reason: str


# --- text helpers ------------------------------------------------------------------------


def escape(text: str) -> str:
    """Escape Slack's control characters so text cannot mention, link or format."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def truncate(text: str, limit: int) -> str:
    """Cut text to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def clip(text: str, limit: int) -> str:
    """Cut text to at most `limit` characters, ending in an ellipsis if cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def code(text: str, limit: int = TEXT_LIMIT) -> str:
    """Inline code that a backtick in `text` cannot end."""
    return "`" + escape(truncate(text, limit)).replace("`", "ˋ") + "`"


def code_block(text: str, limit: int) -> str:
    """A code block that a fence in `text` cannot end."""
    body = escape(truncate(text, limit)).replace("```", "ˋˋˋ")
    return f"```{body}```"


def slack_date(unix: float) -> str:
    """Slack date formatting in the reader's time zone, with a UTC fallback."""
    fallback = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(unix))
    return f"<!date^{int(unix)}^{{date_short_pretty}} at {{time}}|{fallback}>"


def mention(entry: str) -> str:
    """A Slack mention for a reviewer entry or owner ("slack:U1", "slack-group:S1"), else text."""
    if entry.startswith("slack:"):
        return f"<@{escape(entry.removeprefix('slack:'))}>"
    if entry.startswith("slack-group:"):
        return f"<!subteam^{escape(entry.removeprefix('slack-group:'))}>"
    return escape(entry)


def reviewer_label(reviewer: Reviewer) -> str:
    """How a message names a reviewer."""
    return escape(reviewer.label)


def duration(seconds: float) -> str:
    """A short human duration ("90 seconds", "10 minutes", "2 hours")."""
    seconds = max(0, round(seconds))
    if seconds < 60 or (seconds < 120 and seconds % 60):
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = seconds // 60
    if minutes < 120 or minutes % 60:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    hours = minutes // 60
    return f"{hours} hours"


# --- what the request is -----------------------------------------------------------------


def _kube(summary: Mapping[str, Any]) -> Mapping[str, Any]:
    kube = summary.get("kubernetes")
    return kube if isinstance(kube, Mapping) else {}


def _exec_command(summary: Mapping[str, Any]) -> str:
    exec_info = summary.get("exec")
    if not isinstance(exec_info, Mapping):
        return ""
    command = exec_info.get("command")
    if isinstance(command, list | tuple):
        return shlex.join(str(part) for part in command)
    return str(command) if command else ""


def describe(summary: Mapping[str, Any]) -> str:
    """One line saying what is asked: "create secrets prod/db" or "POST https://...". Unescaped."""
    kube = _kube(summary)
    if kube.get("verb") and kube.get("resource_request") is False and kube.get("path"):
        return f"{kube['verb']} {kube['path']}"
    if kube.get("verb") and kube.get("resource"):
        resource = str(kube["resource"])
        if kube.get("subresource"):
            resource += f"/{kube['subresource']}"
        where = "/".join(str(kube[k]) for k in ("namespace", "name") if kube.get(k))
        return " ".join(part for part in (str(kube["verb"]), resource, where) if part)
    method = str(summary.get("method") or "")
    url = str(summary.get("url") or "")
    return f"{method} {url}".strip() or "a request"


def _field(label: str, value: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": f"*{label}*\n{value}"}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _context(*texts: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": t} for t in texts]}


def _who_fields(hold: Hold) -> list[dict[str, Any]]:
    identity = hold.summary.get("identity")
    identity = identity if isinstance(identity, Mapping) else {}
    agent = code(hold.agent or str(identity.get("agent") or "unknown"), 200)
    if identity.get("run_id"):
        agent += f" (run {code(str(identity['run_id']), 200)})"
    owner = hold.owner or str(identity.get("owner") or "")
    fields = [
        _field("Agent", agent),
        _field("Owner", mention(owner) if owner else "_none_"),
        _field("Target", escape(str(hold.summary.get("target") or "unknown"))),
    ]
    rule = code(hold.rule_id, 200)
    if hold.rule_description:
        rule += f": {escape(truncate(hold.rule_description, 300))}"
    fields.append(_field("Rule", rule))
    return fields


def _what_blocks(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    kube = _kube(summary)
    if kube.get("verb"):
        fields = [_field("Verb", code(str(kube["verb"]), 100))]
        if kube.get("resource_request") is False:
            fields.append(_field("Path", code(str(kube.get("path") or ""), 300)))
        else:
            if kube.get("resource"):
                resource = str(kube["resource"])
                if kube.get("subresource"):
                    resource += f"/{kube['subresource']}"
                if kube.get("api_group"):
                    resource += f" ({kube['api_group']})"
                fields.append(_field("Resource", code(resource, 200)))
            namespace = kube.get("namespace")
            fields.append(
                _field("Namespace", code(str(namespace), 200) if namespace else "_cluster-wide_")
            )
            if kube.get("name"):
                fields.append(_field("Name", code(str(kube["name"]), 300)))
        blocks.append({"type": "section", "fields": fields})
    method, url = str(summary.get("method") or ""), str(summary.get("url") or "")
    if method or url:
        blocks.append(_section(f"*Request*\n{code(f'{method} {url}'.strip(), TEXT_LIMIT)}"))
    command = _exec_command(summary)
    if command:
        blocks.append(_section(f"*Command*\n{code_block(command, COMMAND_LIMIT)}"))
    excerpt = summary.get("body_excerpt")
    if isinstance(excerpt, str) and excerpt:
        blocks.append(_section(f"*Body* (masked excerpt)\n{code_block(excerpt, EXCERPT_LIMIT)}"))
    followup = summary.get("followup")
    if isinstance(followup, str) and followup:
        blocks.append(_section(f"*Then*\n{code(followup, TEXT_LIMIT)}"))
    return blocks


def _approvals_given(hold: Hold) -> str:
    return f"{len(hold.approvals)} of {hold.required} approvals given"


def _approvals_field(hold: Hold) -> str:
    names = ", ".join(reviewer_label(r.reviewer) for r in hold.approvals)
    return f"{len(hold.approvals)} of {hold.required} given" + (f": {names}" if names else "")


def _review_line(review: Review) -> str:
    if review.approve:
        return f":white_check_mark: {reviewer_label(review.reviewer)} approved"
    return f":no_entry: {reviewer_label(review.reviewer)} denied: {escape(truncate(review.reason, REASON_LIMIT))}"


def window_note(hold: Hold) -> str:
    """The note saying what else an approval covers, or ""."""
    if hold.window <= 0:
        return ""
    return f"Approval also covers identical requests by this agent for {duration(hold.window)}."


def _label(hold: Hold) -> tuple[str, str]:
    if hold.state is HoldState.PENDING and hold.escalated:
        return ESCALATED_LABEL
    return STATE_LABELS[hold.state]


# --- messages ----------------------------------------------------------------------------


def hold_message(hold: Hold, *, notify: str = "") -> SlackMessage:
    """The message for a hold in its current state; `notify` (a mention) leads it if given."""
    emoji, label = _label(hold)
    what = describe(hold.summary)
    header = clip(f"{emoji} {label}: {what}", HEADER_LIMIT)
    blocks: list[dict[str, Any]] = []
    if notify:
        blocks.append(_section(f"{notify} this request waits for a decision."))
    blocks.append(
        {
            "type": "header",
            "text": {"type": "plain_text", "text": header, "emoji": True},
        }
    )
    # The agent's reason first: what reviewers weigh before the details.
    reason = str(hold.summary.get("reason") or "").strip()
    blocks.append(
        _section(
            "*Reason given by the agent*\n"
            + (f"> {escape(truncate(reason, REASON_LIMIT))}" if reason else "_none given_")
        )
    )
    blocks.append({"type": "section", "fields": _who_fields(hold)})
    blocks.extend(_what_blocks(hold.summary))
    status = [_field("Approvals", _approvals_field(hold))]
    if hold.state is HoldState.PENDING:
        status.append(_field("Expires", slack_date(hold.expires_at)))
    elif hold.decided_at is not None:
        status.append(_field("Decided", slack_date(hold.decided_at)))
    blocks.append({"type": "section", "fields": status})
    if hold.reviews:
        blocks.append(_section("*Reviews*\n" + "\n".join(_review_line(r) for r in hold.reviews)))
    if hold.state.final:
        blocks.append(_section(f"*{label}*: {escape(truncate(hold.reason, 1000))}"))
    note = window_note(hold)
    if note:
        blocks.append(_context(f":information_source: {note}"))
    if hold.state is HoldState.PENDING:
        blocks.append(
            {
                "type": "actions",
                "block_id": ACTIONS_BLOCK,
                "elements": [
                    _button("Approve", APPROVE_ACTION, hold.id, "primary"),
                    _button("Deny", DENY_ACTION, hold.id, "danger"),
                ],
            }
        )
    reviewers = ", ".join(mention(r) for r in sorted(hold.reviewers)) or "_nobody_"
    footer = f"Hold {code(hold.id, 64)} · reviewers: {reviewers}"
    if hold.state.final:
        footer += f" · waited {escape(duration(hold.waited))}"
    blocks.append(_context(footer))
    text = f"{label}: {escape(truncate(what, 300))} (agent {escape(truncate(hold.agent, 100))})"
    if notify:
        text = f"{notify} {text}"
    return SlackMessage(text=text, blocks=tuple(blocks))


def _button(text: str, action_id: str, value: str, style: str) -> dict[str, Any]:
    return {
        "type": "button",
        "text": {"type": "plain_text", "text": text, "emoji": True},
        "action_id": action_id,
        "value": value,
        "style": style,
    }


def review_reply(hold: Hold, review: Review) -> SlackMessage:
    """The threaded reply recording one review."""
    line = _review_line(review)
    if review.approve:
        line += f" ({len(hold.approvals)} of {hold.required})"
    if hold.state is HoldState.APPROVED:
        line += ": the request proceeds."
    elif hold.state is HoldState.DENIED:
        line += "\nThe request is refused."
    return SlackMessage(text=line)


def final_reply(hold: Hold) -> SlackMessage:
    """The threaded reply for a hold that ended without a review (expired, cancelled)."""
    emoji, label = _label(hold)
    return SlackMessage(text=f"{emoji} {label}: {escape(hold.reason)}")


def escalation_reply(hold: Hold, notify: str) -> SlackMessage:
    """The threaded reply saying that a hold was escalated."""
    waited = duration(hold.escalate_after or 0)
    lead = f"{notify} " if notify else ""
    return SlackMessage(
        text=f":rotating_light: {lead}Escalated: no decision after {waited}; "
        f"{_approvals_given(hold)}."
    )


def outcome_notice(hold: Hold | None, outcome: Outcome, reviewer: Reviewer) -> str:
    """What the clicker is told privately when their click changed nothing."""
    if hold is None:
        return "This request is no longer known to the gateway: it was decided or expired."
    what = escape(truncate(describe(hold.summary), 200))
    if outcome is Outcome.NOT_ALLOWED:
        return f"You ({reviewer_label(reviewer)}) are not one of the reviewers of {what}. Nothing was changed."
    if outcome is Outcome.SELF_APPROVAL:
        return (
            f"You own the agent {code(hold.agent, 200)}: you cannot approve its own request. "
            "Another reviewer has to."
        )
    if outcome is Outcome.DUPLICATE:
        return f"You already reviewed {what}; {_approvals_given(hold)}."
    if outcome is Outcome.ALREADY_DECIDED:
        _, label = _label(hold)
        return f"Too late: {what} is already {label.lower()} ({escape(hold.reason)})."
    if outcome is Outcome.REASON_REQUIRED:
        return "A denial needs a reason: the agent and the audit log show it."
    if outcome is Outcome.UNAVAILABLE:
        return (
            "The gateway's approvals database is unreachable: your review of "
            f"{what} was not recorded. Try again once it is back."
        )
    return f"Your review of {what} was recorded."


# --- the deny modal ----------------------------------------------------------------------


def deny_modal(hold: Hold, channel: str, message_ts: str) -> dict[str, Any]:
    """The modal asking a reviewer why they deny a hold."""
    metadata = json.dumps({"hold": hold.id, "channel": channel, "ts": message_ts})
    return {
        "type": "modal",
        "callback_id": DENY_CALLBACK,
        "private_metadata": metadata,
        "title": {"type": "plain_text", "text": "Deny request"},
        "submit": {"type": "plain_text", "text": "Deny"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            _section(
                f"Deny {code(hold.agent, 200)}'s request to "
                f"*{escape(truncate(describe(hold.summary), 300))}*?"
            ),
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "label": {"type": "plain_text", "text": "Reason"},
                "hint": {"type": "plain_text", "text": "The agent and the audit log see this."},
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_INPUT,
                    "multiline": True,
                    "max_length": REASON_LIMIT,
                },
            },
        ],
    }


def read_deny_submission(view: Mapping[str, Any]) -> DenySubmission:
    """The hold, message and reason of a submitted deny modal; ValueError if it is not one."""
    if view.get("callback_id") != DENY_CALLBACK:
        raise ValueError(f"not a deny modal: callback_id {view.get('callback_id')!r}")
    try:
        metadata = json.loads(view.get("private_metadata") or "")
        hold_id, channel, ts = str(metadata["hold"]), str(metadata["channel"]), str(metadata["ts"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"deny modal without valid private_metadata: {e}") from e
    values = view.get("state", {}).get("values", {})
    field = values.get(REASON_BLOCK, {}).get(REASON_INPUT, {})
    reason = field.get("value") if isinstance(field, Mapping) else None
    return DenySubmission(hold_id, channel, ts, str(reason or "").strip())


def reason_errors(submission: DenySubmission) -> dict[str, Any] | None:
    """The `response_action: errors` answer for a deny modal without a reason, else None."""
    if submission.reason:
        return None
    return {"response_action": "errors", "errors": {REASON_BLOCK: "Say why you deny this request."}}
