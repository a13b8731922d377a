"""The Slack channel against the Slack simulator, with the real approval desk, on one loop."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from holdgate.approvals.desk import ApprovalDesk, HoldSpec
from holdgate.approvals.hold import Hold, HoldState, Outcome, Reviewer
from holdgate.approvals.slack.channel import SlackChannel
from holdgate.config.slack_settings import SlackMode, SlackSettings
from tests.sim.slack_sim import Message, SlackSimulator

pytestmark = pytest.mark.timeout(30)

USERS = {
    "U_OWNER": "Olivia Owner",
    "U_ALICE": "Alice Liddell",
    "U_BOB": "Bob Marley",
    "U_CAROL": "Carol Danvers",
    "U_DAVE": "Dave Oncall",
    "U_STRANGER": "Sam Stranger",
}
GROUPS = {"S0SRE": ["U_DAVE", "U_CAROL"]}
PEOPLE = frozenset({"slack:U_ALICE", "slack:U_BOB", "slack:U_CAROL", "slack:U_OWNER"})
SUMMARY: dict[str, Any] = {
    "target": "cluster",
    "method": "POST",
    "url": "https://kubernetes.default.svc/api/v1/namespaces/prod/secrets",
    "kubernetes": {
        "verb": "create",
        "resource": "secrets",
        "namespace": "prod",
        "name": "db-creds",
        "api_group": "",
    },
    "body_excerpt": '{"kind":"Secret","data":{"password":"***"}}',
    "identity": {"agent": "ci-bot", "owner": "slack:U_OWNER", "groups": [], "run_id": "run-42"},
    "reason": "rotate the database credentials",
}


class FakeClock:
    """A monotonic clock the test moves by hand (for the group cache TTL)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spec(**changes: Any) -> HoldSpec:
    values: dict[str, Any] = {
        "rule_id": "prod-secrets",
        "rule_description": "Secrets in prod need a human",
        "reviewers": PEOPLE,
        "required": 1,
        "timeout": 20.0,
    }
    return HoldSpec(**{**values, **changes})


@dataclass
class Rig:
    sim: SlackSimulator
    desk: ApprovalDesk
    channel: SlackChannel

    async def hold(self, hold_spec: HoldSpec) -> tuple[asyncio.Task[Hold], str, Message]:
        """Start a held request; return its task, its id and its Slack message once posted."""
        before = len(self.sim.messages("C0APPROVALS"))
        task = asyncio.create_task(
            self.desk.hold(
                hold_spec, digest="d1", agent="ci-bot", owner="slack:U_OWNER", summary=SUMMARY
            )
        )
        message = await self.sim.wait_for(
            lambda: self.sim.messages("C0APPROVALS")[before:], what="the hold's message"
        )
        return task, message[0].buttons[0]["value"], message[0]

    def tidy(self, *tasks: asyncio.Task[Hold]) -> None:
        for task in tasks:
            task.cancel()


async def start_channel(
    sim: SlackSimulator, desk: ApprovalDesk, clock: FakeClock | None = None, **config: Any
) -> SlackChannel:
    settings = SlackSettings.from_dict(
        {"channel": "C0APPROVALS", "api_base_url": sim.base_url, **config}
    )
    environ = {
        "SLACK_BOT_TOKEN": sim.bot_token,
        "SLACK_APP_TOKEN": sim.app_token,
        "SLACK_SIGNING_SECRET": sim.signing_secret,
    }
    channel = SlackChannel(
        settings, environ, ping_interval=0.5, **({"clock": clock} if clock else {})
    )
    await channel.start(desk)
    desk.channels.append(channel)
    return channel


@pytest.fixture
async def sim() -> AsyncIterator[SlackSimulator]:
    async with SlackSimulator(users=USERS, groups=GROUPS) as simulator:
        yield simulator


@pytest.fixture
async def rig(sim: SlackSimulator) -> AsyncIterator[Rig]:
    desk = ApprovalDesk()
    channel = await start_channel(
        sim, desk, escalation_channel="C0ESCALATE", escalation_mention="S0ONCALL"
    )
    await sim.wait_for(lambda: sim.sockets, what="the Socket Mode connection")
    yield Rig(sim, desk, channel)
    await channel.stop()


def settled(sim: SlackSimulator, message: Message, state: str) -> bool:
    """The message shows a final state and has no buttons left."""
    header = next(b["text"]["text"] for b in message.blocks if b["type"] == "header")
    return not message.buttons and f"{state}:" in header


# --- deciding ------------------------------------------------------------------------------


async def test_approve(rig: Rig) -> None:
    sim = rig.sim
    task, hold_id, message = await rig.hold(spec())
    assert "Approval needed: create secrets prod/db-creds" in message.rendered
    assert sim.calls_to("chat.postMessage")[0].headers["Authorization"] == f"Bearer {sim.bot_token}"

    delivery = await sim.click(hold_id, "U_ALICE")
    final = await task
    assert final.state is HoldState.APPROVED
    assert final.reviews[0].reviewer.id == "slack:U_ALICE"
    assert final.reviews[0].reviewer.name == "Alice Liddell"  # from users.info

    await sim.wait_for(lambda: settled(sim, message, "Approved") and sim.replies(message))
    assert "Alice Liddell (slack:U_ALICE)" in message.rendered
    assert "approved" in sim.replies(message)[0].text
    # Acknowledged first: the ack arrived before any Web API call the click caused.
    assert delivery.acked_seq is not None
    caused = [c for c in sim.calls if c.seq > delivery.sent_seq]
    assert caused and delivery.acked_seq < caused[0].seq


async def test_deny_asks_for_a_reason_in_a_modal(rig: Rig) -> None:
    sim = rig.sim
    task, hold_id, message = await rig.hold(spec())
    click = await sim.click(hold_id, "U_BOB", "deny")
    await sim.wait_for(lambda: sim.open_views, what="the deny modal")
    assert click.acked_seq is not None and click.acked_seq < sim.calls_to("views.open")[0].seq

    blank = await sim.submit_deny_reason("U_BOB", "   ")
    assert blank.ack_payload == {
        "response_action": "errors",
        "errors": {"reason": "Say why you deny this request."},
    }
    assert not task.done() and sim.open_views  # the modal stays open, the hold pending

    await sim.submit_deny_reason("U_BOB", "not during the change freeze")
    final = await task
    assert final.state is HoldState.DENIED
    assert final.reason == "denied by Bob Marley (slack:U_BOB): not during the change freeze"
    await sim.wait_for(lambda: settled(sim, message, "Denied") and sim.replies(message))
    assert "not during the change freeze" in message.rendered
    assert "denied: not during the change freeze" in sim.replies(message)[0].text


async def test_two_of_three(rig: Rig) -> None:
    sim = rig.sim
    task, hold_id, message = await rig.hold(
        spec(required=2, reviewers=frozenset({"slack:U_ALICE", "slack:U_BOB", "slack:U_CAROL"}))
    )
    await sim.click(hold_id, "U_ALICE")
    await sim.wait_for(
        lambda: "1 of 2 given: Alice Liddell" in message.rendered and sim.replies(message)
    )
    assert message.buttons and not task.done()
    assert "(1 of 2)" in sim.replies(message)[0].text

    await sim.click(hold_id, "U_CAROL")
    final = await task
    assert final.state is HoldState.APPROVED
    assert {r.reviewer.id for r in final.approvals} == {"slack:U_ALICE", "slack:U_CAROL"}
    await sim.wait_for(lambda: settled(sim, message, "Approved") and len(sim.replies(message)) == 2)
    assert (
        "2 of 2 given: Alice Liddell (slack:U_ALICE), Carol Danvers (slack:U_CAROL)"
        in message.rendered
    )


async def test_unauthorized_clicker_is_told_why(rig: Rig) -> None:
    sim = rig.sim
    task, hold_id, message = await rig.hold(spec())
    await sim.click(hold_id, "U_STRANGER")
    await sim.click(hold_id, "U_STRANGER", "deny")
    await sim.wait_for(lambda: len(sim.ephemerals_for("U_STRANGER")) == 2)
    notes = sim.ephemerals_for("U_STRANGER")
    assert all("not one of the reviewers" in n.text for n in notes)
    assert all(n.channel == "C0APPROVALS" for n in notes)
    assert not sim.calls_to("views.open")  # no modal for someone who may not decide
    assert not task.done() and message.buttons
    await sim.click(hold_id, "U_ALICE")
    assert (await task).state is HoldState.APPROVED


async def test_owner_cannot_approve_own_agents_request(rig: Rig) -> None:
    sim = rig.sim
    task, hold_id, message = await rig.hold(spec())
    await sim.click(hold_id, "U_OWNER")
    [note] = await sim.wait_for(lambda: sim.ephemerals_for("U_OWNER"))
    assert "cannot approve its own request" in note.text
    assert not task.done() and rig.desk.find(hold_id).reviews == ()  # type: ignore[union-attr]
    rig.tidy(task)


async def test_double_click_is_idempotent(rig: Rig) -> None:
    sim = rig.sim
    task, hold_id, message = await rig.hold(spec(required=2))
    await sim.click(hold_id, "U_ALICE")
    await sim.click(hold_id, "U_ALICE")
    [note] = await sim.wait_for(lambda: sim.ephemerals_for("U_ALICE"))
    assert "already reviewed" in note.text and "1 of 2" in note.text
    assert len(rig.desk.find(hold_id).reviews) == 1  # type: ignore[union-attr]

    await sim.click(hold_id, "U_BOB")
    assert (await task).state is HoldState.APPROVED
    await sim.wait_for(lambda: settled(sim, message, "Approved"))
    await sim.click(hold_id, "U_CAROL")  # from a stale screen that still shows the buttons
    [late] = await sim.wait_for(lambda: sim.ephemerals_for("U_CAROL"))
    assert "Too late" in late.text and "approved" in late.text
    assert len(sim.replies(message)) == 2  # one per counted review, none for the extra clicks


async def test_expiry_updates_the_message(rig: Rig) -> None:
    sim = rig.sim
    task, hold_id, message = await rig.hold(spec(timeout=0.5))
    final = await task
    assert final.state is HoldState.EXPIRED
    await sim.wait_for(lambda: settled(sim, message, "Expired") and sim.replies(message))
    assert "approval expired after" in sim.replies(message)[0].text


async def test_escalation_posts_to_the_escalation_channel(rig: Rig) -> None:
    sim = rig.sim
    task, hold_id, message = await rig.hold(spec(escalate_after=0.2))
    [copy] = await sim.wait_for(lambda: sim.messages("C0ESCALATE"), what="the escalation post")
    assert copy.text.startswith("<!subteam^S0ONCALL>")
    assert "Escalated: approval needed" in copy.rendered
    await sim.wait_for(lambda: "Escalated" in message.rendered and sim.replies(message))
    assert "Escalated: no decision after" in sim.replies(message)[0].text

    await sim.click(hold_id, "U_ALICE", channel="C0ESCALATE")
    assert (await task).state is HoldState.APPROVED
    await sim.wait_for(lambda: settled(sim, message, "Approved") and settled(sim, copy, "Approved"))
    assert not sim.replies(copy)  # the discussion stays in one thread


@pytest.mark.parametrize("how", ["close", "disconnect", "abort"])
async def test_socket_mode_reconnects(rig: Rig, how: str) -> None:
    sim = rig.sim
    await sim.drop_sockets(how)
    await sim.wait_for(
        lambda: sim.connections == 2 and any(not s.closed for s in sim.sockets),
        what="a new connection",
    )
    assert len(sim.calls_to("apps.connections.open")) == 2
    assert all(
        c.headers["Authorization"] == f"Bearer {sim.app_token}"
        for c in sim.calls_to("apps.connections.open")
    )
    task, hold_id, _ = await rig.hold(spec())
    await sim.click(hold_id, "U_ALICE")
    assert (await task).state is HoldState.APPROVED


async def test_user_groups_are_resolved_and_cached(sim: SlackSimulator) -> None:
    clock = FakeClock()
    desk = ApprovalDesk()
    channel = await start_channel(sim, desk, clock=clock, group_cache_seconds=300)
    rig = Rig(sim, desk, channel)
    group_spec = spec(reviewers=frozenset({"slack-group:S0SRE", "slack-group:S0OTHER"}))
    try:
        task, hold_id, _ = await rig.hold(group_spec)
        await sim.click(hold_id, "U_DAVE")
        final = await task
        assert final.state is HoldState.APPROVED
        assert final.reviews[0].reviewer.groups == frozenset({"slack-group:S0SRE"})
        lookups = [c.params["usergroup"] for c in sim.calls_to("usergroups.users.list")]
        assert sorted(lookups) == ["S0OTHER", "S0SRE"]  # an unknown group grants nothing

        sim.groups["S0SRE"].remove("U_DAVE")
        task, hold_id, _ = await rig.hold(group_spec)
        await sim.click(hold_id, "U_DAVE")
        assert (await task).state is HoldState.APPROVED  # still cached: membership is not re-read
        assert len(sim.calls_to("usergroups.users.list")) == 3  # S0OTHER failed, so not cached

        clock.now += 301
        task, hold_id, _ = await rig.hold(group_spec)
        await sim.click(hold_id, "U_DAVE")
        [note] = await sim.wait_for(lambda: sim.ephemerals_for("U_DAVE"))
        assert "not one of the reviewers" in note.text
        assert [c.params["usergroup"] for c in sim.calls_to("usergroups.users.list")].count(
            "S0SRE"
        ) == 2
        rig.tidy(task)
    finally:
        await channel.stop()


# --- failing closed -----------------------------------------------------------------------


async def test_rate_limited_post_is_retried(rig: Rig) -> None:
    sim = rig.sim
    sim.rate_limit("chat.postMessage", 1)
    task, hold_id, message = await rig.hold(spec())
    assert [(c.status, c.error) for c in sim.calls_to("chat.postMessage")] == [
        (429, "ratelimited"),
        (200, None),
    ]
    await sim.click(hold_id, "U_ALICE")
    assert (await task).state is HoldState.APPROVED


async def test_slack_down_holds_still_expire(sim: SlackSimulator, logs: LogWatch) -> None:
    desk = ApprovalDesk()
    channel = await start_channel(sim, desk)
    await sim.wait_for(lambda: sim.sockets)
    await sim.stop()
    try:
        final = await desk.hold(
            spec(timeout=0.5), digest="d", agent="ci-bot", owner="", summary=SUMMARY
        )
        assert final.state is HoldState.EXPIRED and not final.approvals
        await logs.wait_for(f"slack: chat.postMessage failed for hold {final.id}")
    finally:
        await channel.stop()


async def test_invalid_token_is_logged_and_nothing_is_approved(
    sim: SlackSimulator, logs: LogWatch
) -> None:
    desk = ApprovalDesk()
    settings = SlackSettings.from_dict(
        {
            "channel": "C0APPROVALS",
            "api_base_url": sim.base_url,
            "mode": "http",
            "http_listen": "127.0.0.1:0",
        }
    )
    channel = SlackChannel(
        settings, {"SLACK_BOT_TOKEN": "xoxb-revoked", "SLACK_SIGNING_SECRET": "s"}
    )
    await channel.start(desk)
    desk.channels.append(channel)
    try:
        final = await desk.hold(
            spec(timeout=0.3), digest="d", agent="ci-bot", owner="", summary=SUMMARY
        )
        assert final.state is HoldState.EXPIRED
        await logs.wait_for(
            f"slack: chat.postMessage failed for hold {final.id}: invalid_auth (the token was rejected"
        )
        assert {c.error for c in sim.calls} == {"invalid_auth"}
        assert "xoxb-revoked" not in logs.text
    finally:
        await channel.stop()


class LogWatch(logging.Handler):
    """Collects holdgate's log lines and wakes waiters on each one."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self._event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self._event.set()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def wait_for(self, text: str, timeout: float = 5.0) -> None:
        """Wait until a line containing `text` was logged."""
        async with asyncio.timeout(timeout):
            while text not in self.text:
                self._event.clear()
                await self._event.wait()


@pytest.fixture
def logs() -> Iterator[LogWatch]:
    watch = LogWatch()
    logger = logging.getLogger("holdgate")
    previous = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(watch)
    yield watch
    logger.removeHandler(watch)
    logger.setLevel(previous)


async def test_wrong_app_token_is_logged_and_retried(sim: SlackSimulator, logs: LogWatch) -> None:
    desk = ApprovalDesk()
    settings = SlackSettings.from_dict({"channel": "C0APPROVALS", "api_base_url": sim.base_url})
    environ = {"SLACK_BOT_TOKEN": sim.bot_token, "SLACK_APP_TOKEN": "xapp-wrong"}
    channel = SlackChannel(settings, environ, ping_interval=0.1)
    await channel.start(desk)
    try:
        await sim.wait_for(lambda: len(sim.calls_to("apps.connections.open")) >= 2)
        await logs.wait_for("slack: apps.connections.open (Socket Mode) failed: invalid_auth")
        assert sim.connections == 0 and "xapp-wrong" not in logs.text
    finally:
        await channel.stop()


# --- HTTP interactivity -------------------------------------------------------------------


@pytest.fixture
async def http_rig(sim: SlackSimulator) -> AsyncIterator[Rig]:
    desk = ApprovalDesk()
    channel = await start_channel(sim, desk, mode="http", http_listen="127.0.0.1:0")
    assert channel.settings.mode is SlackMode.HTTP and channel.http_url
    sim.interactivity_url = channel.http_url
    await sim.wait_for(lambda: sim.calls_to("auth.test"), what="the channel's auth.test")
    yield Rig(sim, desk, channel)
    await channel.stop()


async def test_http_signed_requests_are_accepted(http_rig: Rig) -> None:
    sim = http_rig.sim
    assert not sim.calls_to("apps.connections.open")
    task, hold_id, message = await http_rig.hold(spec())
    click = await sim.click(hold_id, "U_BOB", "deny")
    assert click.http_status == 200
    submitted = await sim.submit_deny_reason("U_BOB", "wrong namespace")
    assert submitted.http_status == 200 and submitted.ack_payload is None
    final = await task
    assert final.state is HoldState.DENIED and "wrong namespace" in final.reason
    await sim.wait_for(lambda: settled(sim, message, "Denied"))


async def test_http_rejects_bad_signatures_stale_requests_and_replays(
    http_rig: Rig, logs: LogWatch
) -> None:
    sim = http_rig.sim
    task, hold_id, message = await http_rig.hold(spec(required=2))
    url = http_rig.channel.http_url
    payload = _approve_payload(message, hold_id, "U_ALICE")

    forged = await sim.post_signed(url, payload, secret="not-the-secret")
    assert forged.status == 401 and "bad X-Slack-Signature" in forged.text
    stale = await sim.post_signed(url, payload, timestamp=int(time.time()) - 301)
    assert stale.status == 401 and "stale" in stale.text
    assert len(sim.calls) == 2  # auth.test and the announcement: nothing else happened

    genuine = await sim.post_signed(url, payload)
    assert genuine.status == 200
    await sim.wait_for(lambda: "1 of 2 given: Alice Liddell" in message.rendered)
    replayed = await sim.replay(genuine)
    assert replayed.status == 200
    assert "ignored a replayed interactivity request" in logs.text
    await sim.click(hold_id, "U_BOB")
    assert (await task).state is HoldState.APPROVED
    assert len(sim.calls_to("users.info")) == 2  # Alice once, Bob once: the replay did nothing
    assert not sim.ephemerals


def _approve_payload(message: Message, hold_id: str, user: str) -> dict[str, Any]:
    button = next(b for b in message.buttons if b["action_id"] == "holdgate_approve")
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T0SIM"},
        "api_app_id": "A0HOLDGATE",
        "trigger_id": f"trigger-{user}-{hold_id}",
        "team": {"id": "T0SIM", "domain": "holdgate-sim"},
        "container": {"type": "message", "message_ts": message.ts, "channel_id": message.channel},
        "channel": {"id": message.channel, "name": "approvals"},
        "message": {"ts": message.ts, "text": message.text, "blocks": message.blocks},
        "actions": [{**button, "type": "button", "action_ts": str(time.time())}],
    }


async def test_decision_made_elsewhere_shows_in_slack(rig: Rig) -> None:
    sim = rig.sim
    task, hold_id, message = await rig.hold(spec(reviewers=PEOPLE | {"local:root"}))
    _, outcome = await rig.desk.submit(hold_id, Reviewer("local:root", "root"), True)
    assert outcome is Outcome.DECIDED and (await task).state is HoldState.APPROVED
    await sim.wait_for(lambda: settled(sim, message, "Approved") and sim.replies(message))
    assert "root (local:root) approved" in sim.replies(message)[0].text
    await sim.click(hold_id, "U_ALICE")  # the first decision wins
    [note] = await sim.wait_for(lambda: sim.ephemerals_for("U_ALICE"))
    assert "Too late" in note.text


async def test_client_giving_up_cancels_and_says_so(rig: Rig) -> None:
    sim = rig.sim
    before = len(sim.messages("C0APPROVALS"))
    task = asyncio.create_task(
        rig.desk.hold(spec(), digest="d", agent="ci-bot", owner="", summary=SUMMARY, client_id="c1")
    )
    [message] = await sim.wait_for(lambda: sim.messages("C0APPROVALS")[before:])
    rig.desk.cancel_client("c1", "the client disconnected")
    assert (await task).state is HoldState.CANCELLED
    await sim.wait_for(lambda: settled(sim, message, "Cancelled") and sim.replies(message))
    assert "cancelled: the client disconnected" in sim.replies(message)[0].text


async def test_escalation_without_a_second_channel_mentions_in_the_thread(
    sim: SlackSimulator,
) -> None:
    desk = ApprovalDesk()
    channel = await start_channel(sim, desk, escalation_mention="S0ONCALL")
    rig = Rig(sim, desk, channel)
    try:
        task, _, message = await rig.hold(spec(escalate_after=0.1))
        [reply] = await sim.wait_for(lambda: sim.replies(message), what="the escalation reply")
        assert reply.text.startswith(":rotating_light: <!subteam^S0ONCALL> Escalated")
        assert sim.messages("C0ESCALATE") == []
        rig.tidy(task)
    finally:
        await channel.stop()


# --- settings -----------------------------------------------------------------------------

SETTINGS_ERRORS = [
    ({}, "slack.channel: required"),
    ({"channel": "C1", "chanel": "C2"}, "slack: unknown key 'chanel'"),
    ({"channel": "C1", "mode": "webhook"}, "slack.mode: expected 'socket' or 'http'"),
    (
        {"channel": "C1", "api_base_url": "slack.com/api"},
        "slack.api_base_url: expected an http(s) URL",
    ),
    ({"channel": "C1", "http_listen": "3000"}, "slack.http_listen: expected HOST:PORT"),
    ({"channel": "C1", "http_listen": "127.0.0.1:99999"}, "slack.http_listen: expected HOST:PORT"),
    (
        {"channel": "C1", "escalation_mention": "#oncall"},
        "slack.escalation_mention: expected a user group ID",
    ),
    (
        {"channel": "C1", "group_cache_seconds": -1},
        "slack.group_cache_seconds: expected a number >= 0",
    ),
    (
        {"channel": "C1", "group_cache_seconds": "5m"},
        "slack.group_cache_seconds: expected a number >= 0",
    ),
    ({"channel": 42}, "slack.channel: expected a string"),
]


@pytest.mark.parametrize(("data", "message"), SETTINGS_ERRORS)
def test_settings_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SlackSettings.from_dict(data)


def test_settings_defaults_and_values() -> None:
    default = SlackSettings.from_dict({"channel": "C0123456"})
    assert (default.mode, default.api_base_url, default.http_host, default.http_port) == (
        SlackMode.SOCKET,
        "https://slack.com/api/",
        "127.0.0.1",
        3000,
    )
    assert default.group_cache_seconds == 300 and default.notify == ""
    full = SlackSettings.from_dict(
        {
            "channel": "C0123456",
            "escalation_channel": "C0654321",
            "escalation_mention": "S0ONCALL",
            "mode": "http",
            "api_base_url": "https://slack-gov.com/api",
            "http_listen": "[::1]:3100",
            "bot_token_env": "BOT",
            "app_token_env": "APP",
            "signing_secret_env": "SIGNING",
            "group_cache_seconds": 60,
        }
    )
    assert full.api_base_url == "https://slack-gov.com/api/"
    assert (full.http_host, full.http_port) == ("::1", 3100)
    assert full.notify == "<!subteam^S0ONCALL>"
    assert full.missing_secrets({"BOT": "x"}) == ["SIGNING"]
    assert full.missing_secrets({"BOT": "x", "SIGNING": "y", "APP": ""}) == []
    assert default.missing_secrets({"SLACK_BOT_TOKEN": " "}) == [
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
    ]


def test_channel_refuses_to_start_without_its_secrets() -> None:
    settings = SlackSettings.from_dict({"channel": "C1"})
    with pytest.raises(ValueError, match="SLACK_APP_TOKEN"):
        SlackChannel(settings, {"SLACK_BOT_TOKEN": "xoxb-1"})
