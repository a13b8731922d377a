"""The Slack approval channel: posts holds to Slack and turns button clicks into reviews.

Transport only: what a message says is `holdgate.approvals.slack.messages`, what a review does is
`holdgate.approvals.hold` via the desk. Interactions arrive over Socket Mode (default: no public URL
needed) or the signed HTTP interactivity endpoint; either way they are acknowledged first and
acted on after. Slack failing never decides a hold: it is logged, and holds expire into denial.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from holdgate.approvals.desk import ApprovalDesk
from holdgate.approvals.hold import Hold, Outcome, Review, Reviewer
from holdgate.approvals.slack import messages
from holdgate.config.slack_settings import SlackMode, SlackSettings, is_loopback_url

log = logging.getLogger("holdgate")

INTERACTIVITY_PATH = "/slack/interactivity"
SIGNATURE_WINDOW = 300  # Slack's documented 5 minutes
RATE_LIMIT_RETRIES = 3
MAX_CONNECT_BACKOFF = 60.0
STOP_GRACE = 5.0  # seconds that stop() lets final message updates finish


@dataclass(frozen=True, slots=True)
class MessageRef:
    """Where a hold's message lives in Slack."""

    channel: str
    ts: str


@dataclass
class _Cached:
    at: float
    value: Any


@dataclass
class _Posted:
    """The Slack messages of one hold: the main one first, then the escalation copy."""

    refs: list[MessageRef] = field(default_factory=list)

    @property
    def main(self) -> MessageRef | None:
        return self.refs[0] if self.refs else None


def _slack_error(e: BaseException) -> str:
    """A log-safe description of a Slack failure (never the token)."""
    if isinstance(e, SlackApiError):
        code = e.response.get("error", "unknown_error") if e.response is not None else "no response"
        hint = {
            "invalid_auth": " (the token was rejected: check the bot/app token variables)",
            "not_authed": " (no token was sent)",
            "ratelimited": " (rate limited by Slack, retries exhausted)",
            "channel_not_found": " (check slack.channel, and that the bot is in the channel)",
            "not_in_channel": " (invite the bot to the channel)",
            "no_such_subteam": " (check the rule's slack-group: reviewers)",
            "missing_scope": f" (the app lacks a scope: {e.response.get('needed', '?')})",
        }.get(str(code), "")
        return f"{code}{hint}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class SlackChannel:
    """Holds as Slack messages with Approve / Deny buttons, on the running asyncio loop."""

    name = "slack"

    def __init__(
        self,
        settings: SlackSettings,
        environ: Mapping[str, str] | None = None,
        *,
        ping_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        environ = os.environ if environ is None else environ
        missing = settings.missing_secrets(environ)
        if missing:
            raise ValueError(
                f"slack ({settings.mode} mode): environment variable(s) not set: {', '.join(missing)}"
            )
        self.settings = settings
        self._bot_token = environ[settings.bot_token_env].strip()
        self._app_token = environ.get(settings.app_token_env, "").strip()
        self._signing_secret = environ.get(settings.signing_secret_env, "").strip()
        self._ping_interval = ping_interval
        self._clock = clock
        self._desk: ApprovalDesk | None = None
        self.web: AsyncWebClient | None = None
        self._socket: SocketModeClient | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.http_url = ""  # the bound interactivity URL (http mode), once started
        self._signed_in = False
        self._posted: dict[str, _Posted] = {}
        self._tails: dict[str, asyncio.Task[None]] = {}  # hold id -> its last queued Slack call
        self._tasks: set[asyncio.Task[None]] = set()
        self._users: dict[str, _Cached] = {}
        self._groups: dict[str, _Cached] = {}
        self._group_locks: dict[str, asyncio.Lock] = {}
        self._seen: dict[str, float] = {}  # signatures and trigger ids seen -> when (replay dedupe)
        self._verifier = SignatureVerifier(self._signing_secret) if self._signing_secret else None

    # --- Channel protocol ----------------------------------------------------------------

    async def start(self, desk: ApprovalDesk) -> None:
        """Create the clients and start listening; Slack being down does not fail start-up."""
        self._desk = desk
        self.web = AsyncWebClient(
            token=self._bot_token,
            base_url=self.settings.api_base_url,
            logger=logging.getLogger("holdgate.slack"),
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(),
                AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
            ],
        )
        if is_loopback_url(self.settings.api_base_url):
            self.web.proxy = None  # the SDK would otherwise route loopback through *_PROXY
        if self.settings.mode is SlackMode.HTTP:
            await self._start_http()
        self._connecting = asyncio.create_task(self._connect())

    async def health(self) -> str:
        """Why Slack cannot take decisions now ("" when it can): for readiness."""
        if self.web is None:
            return "not started"
        if self.settings.mode is SlackMode.SOCKET:
            if self._socket is None or not await self._socket.is_connected():
                return "Socket Mode not connected"
            return ""
        return "" if self._signed_in else "not signed in to Slack (auth.test failed)"

    async def stop(self) -> None:
        """Stop listening; let pending message updates finish briefly."""
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connecting
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await self._socket.close()
            self._socket = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=STOP_GRACE)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)

    async def announce(self, hold: Hold) -> None:
        """Post the hold (in the background: the desk must not wait on Slack)."""
        self._queue(hold.id, lambda: self._post_hold(hold))

    async def update(self, hold: Hold, review: Review | None) -> None:
        """Edit the hold's messages in place and thread the review."""
        self._queue(hold.id, lambda: self._update_hold(hold, review))

    async def escalate(self, hold: Hold) -> None:
        """Post the hold to the escalation channel (or mention the group in the thread)."""
        self._queue(hold.id, lambda: self._escalate_hold(hold))

    # --- outbound ------------------------------------------------------------------------

    def _queue(self, hold_id: str, make: Callable[[], Awaitable[None]]) -> None:
        """Run Slack calls of one hold in order (an update needs the announced message)."""
        previous = self._tails.get(hold_id)

        async def run() -> None:
            if previous is not None:
                await asyncio.wait([previous])  # its outcome is its own; only the order matters
            try:
                await make()
            except Exception:
                log.exception("slack: failed to update the message of hold %s", hold_id)

        task = asyncio.create_task(run())
        self._tails[hold_id] = task
        self._track(task)

        def forget(t: asyncio.Task[None]) -> None:
            if self._tails.get(hold_id) is t:
                del self._tails[hold_id]

        task.add_done_callback(forget)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._track(asyncio.create_task(coro))

    async def _call(self, what: str, call: Awaitable[Any], hold_id: str = "") -> Any:
        """One Web API call; failures are logged and return None (fail closed: nothing decided)."""
        try:
            return await call
        except asyncio.CancelledError:
            raise
        except Exception as e:
            where = f" for hold {hold_id}" if hold_id else ""
            log.error("slack: %s failed%s: %s", what, where, _slack_error(e))
            return None

    async def _post_hold(self, hold: Hold) -> None:
        assert self.web is not None
        message = messages.hold_message(hold)
        response = await self._call(
            "chat.postMessage",
            self.web.chat_postMessage(channel=self.settings.channel, **message.as_kwargs()),
            hold.id,
        )
        if response is not None:
            ref = MessageRef(response["channel"], response["ts"])
            self._posted[hold.id] = _Posted([ref])
            await self._remember(hold.id, ref)
            log.info("slack: hold %s posted to %s", hold.id, response["channel"])

    async def _remember(self, hold_id: str, ref: MessageRef) -> None:
        """Keep where a hold's message is for the other replicas (a click, an expiry or a
        dead replica's hold may be handled by any of them)."""
        if self._desk is not None:
            await self._desk.remember_message(hold_id, {"channel": ref.channel, "ts": ref.ts})

    async def _messages_of(self, hold_id: str) -> _Posted | None:
        """The hold's messages: posted here, or (with a shared store) by another replica."""
        posted = self._posted.get(hold_id)
        if posted is None and self._desk is not None:
            refs = await self._desk.message_refs(hold_id)
            if refs:
                posted = _Posted([MessageRef(r["channel"], r["ts"]) for r in refs])
        return posted

    async def _update_hold(self, hold: Hold, review: Review | None) -> None:
        assert self.web is not None
        posted = await self._messages_of(hold.id)
        if posted is None or posted.main is None:
            log.warning("slack: hold %s has no Slack message to update (its post failed)", hold.id)
            return
        for i, ref in enumerate(posted.refs):
            message = messages.hold_message(hold, notify=self.settings.notify if i else "")
            await self._call(
                "chat.update",
                self.web.chat_update(channel=ref.channel, ts=ref.ts, **message.as_kwargs()),
                hold.id,
            )
        if review is not None:
            reply = messages.review_reply(hold, review)
        elif hold.state.final:
            reply = messages.final_reply(hold)
        else:
            reply = None
        if reply is not None:
            await self._call(
                "chat.postMessage (thread)",
                self.web.chat_postMessage(
                    channel=posted.main.channel, thread_ts=posted.main.ts, **reply.as_kwargs()
                ),
                hold.id,
            )
        if hold.state.final:
            self._posted.pop(hold.id, None)

    async def _escalate_hold(self, hold: Hold) -> None:
        assert self.web is not None
        posted = await self._messages_of(hold.id)
        notify = self.settings.notify
        if posted is not None and posted.main is not None:
            main = posted.main
            await self._call(
                "chat.update",
                self.web.chat_update(
                    channel=main.channel, ts=main.ts, **messages.hold_message(hold).as_kwargs()
                ),
                hold.id,
            )
            reply = messages.escalation_reply(
                hold, "" if self.settings.escalation_channel else notify
            )
            await self._call(
                "chat.postMessage (thread)",
                self.web.chat_postMessage(
                    channel=main.channel, thread_ts=main.ts, **reply.as_kwargs()
                ),
                hold.id,
            )
        if self.settings.escalation_channel:
            message = messages.hold_message(hold, notify=notify)
            response = await self._call(
                "chat.postMessage (escalation)",
                self.web.chat_postMessage(
                    channel=self.settings.escalation_channel, **message.as_kwargs()
                ),
                hold.id,
            )
            if response is not None:
                ref = MessageRef(response["channel"], response["ts"])
                self._posted.setdefault(hold.id, _Posted()).refs.append(ref)
                log.info("slack: hold %s escalated to %s", hold.id, response["channel"])
                await self._remember(hold.id, ref)

    async def _ephemeral(self, channel: str, user: str, text: str, hold_id: str) -> None:
        assert self.web is not None
        await self._call(
            "chat.postEphemeral",
            self.web.chat_postEphemeral(channel=channel, user=user, text=text),
            hold_id,
        )

    # --- connecting ----------------------------------------------------------------------

    async def _connect(self) -> None:
        assert self.web is not None
        auth = await self._call("auth.test", self.web.auth_test())
        self._signed_in = auth is not None
        if auth is not None:
            log.info(
                "slack: signed in as %s to %s (%s mode)",
                auth.get("user"),
                auth.get("team"),
                self.settings.mode,
            )
        else:
            log.error(
                "slack: cannot reach Slack or the bot token is wrong; holds will expire unless decided elsewhere"
            )
        if self.settings.mode is not SlackMode.SOCKET:
            return
        socket = SocketModeClient(
            self._app_token,
            logger=logging.getLogger("holdgate.slack"),
            web_client=self.web,
            ping_interval=self._ping_interval,
        )
        if is_loopback_url(self.settings.api_base_url):
            socket.proxy = None
        socket.socket_mode_request_listeners.append(self._on_socket_request)  # type: ignore[arg-type]
        self._socket = socket
        # The first URL is fetched here so a bad app token or Slack being down is logged in one
        # clear line per attempt (with backoff); afterwards the SDK reconnects by itself.
        delay = self._ping_interval
        while socket.wss_uri is None:
            response = await self._call(
                "apps.connections.open (Socket Mode)",
                self.web.apps_connections_open(app_token=self._app_token),
            )
            if response is not None:
                socket.wss_uri = response["url"]
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_CONNECT_BACKOFF)
        await socket.connect()
        log.info("slack: Socket Mode connected")

    async def _on_socket_request(
        self, client: AsyncBaseSocketModeClient, request: SocketModeRequest
    ) -> None:
        """Acknowledge the envelope first (Slack wants it within 3 s), then act."""
        ack = self._ack_payload(request.payload) if request.type == "interactive" else None
        await client.send_socket_mode_response(SocketModeResponse(request.envelope_id, ack))
        if request.type == "interactive" and ack is None:
            await self._interaction(request.payload)

    async def _start_http(self) -> None:
        app = web.Application()
        app.router.add_post(INTERACTIVITY_PATH, self._on_http_request)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.http_host, self.settings.http_port)
        await site.start()
        self._runner = runner
        port = runner.addresses[0][1] if runner.addresses else self.settings.http_port
        host = self.settings.http_host
        self.http_url = f"http://{f'[{host}]' if ':' in host else host}:{port}{INTERACTIVITY_PATH}"
        log.info("slack: interactivity endpoint listening at %s", self.http_url)

    async def _on_http_request(self, request: web.Request) -> web.StreamResponse:
        """Verify Slack's signature, drop replays, answer at once and act after."""
        body = await request.read()
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        signature = request.headers.get("X-Slack-Signature", "")
        problem = self._signature_problem(body, timestamp, signature)
        if problem:
            log.warning(
                "slack: rejected interactivity request from %s: %s", request.remote, problem
            )
            return web.Response(status=401, text=problem)
        if self._seen_before(f"sig:{signature}"):
            log.warning("slack: ignored a replayed interactivity request from %s", request.remote)
            return web.Response(status=200)
        try:
            payload = json.loads(parse_qs(body.decode())["payload"][0])
            if not isinstance(payload, dict):
                raise ValueError("payload is not an object")
        except (KeyError, ValueError, UnicodeDecodeError) as e:
            log.warning("slack: malformed interactivity request: %s", e)
            return web.Response(status=400, text="malformed payload")
        ack = self._ack_payload(payload)
        if ack is not None:
            return web.json_response(ack)
        self._spawn(self._interaction(payload))
        return web.Response(status=200)

    def _signature_problem(self, body: bytes, timestamp: str, signature: str) -> str:
        if self._verifier is None:
            return "no signing secret configured"
        if not timestamp.isdigit() or not signature:
            return "missing or malformed X-Slack-Request-Timestamp / X-Slack-Signature"
        if abs(time.time() - int(timestamp)) > SIGNATURE_WINDOW:
            return "stale X-Slack-Request-Timestamp (outside the 5-minute window)"
        if not self._verifier.is_valid(body, timestamp, signature):
            return "bad X-Slack-Signature"
        return ""

    def _seen_before(self, key: str) -> bool:
        """Remember a request key for the signature window; True if it was seen already."""
        now = time.monotonic()
        for old in [k for k, at in self._seen.items() if now - at > 2 * SIGNATURE_WINDOW]:
            del self._seen[old]
        if key in self._seen:
            return True
        self._seen[key] = now
        return False

    # --- inbound -------------------------------------------------------------------------

    def _ack_payload(self, payload: Mapping[str, Any]) -> dict[str, Any] | None:
        """What the acknowledgement carries: field errors for a deny without a reason, else None."""
        if payload.get("type") != "view_submission":
            return None
        try:
            return messages.reason_errors(messages.read_deny_submission(payload.get("view") or {}))
        except ValueError:
            return None

    async def _interaction(self, payload: Mapping[str, Any]) -> None:
        """Handle one acknowledged interaction; never raises."""
        trigger = str(payload.get("trigger_id") or "")
        if trigger and self._seen_before(f"trigger:{trigger}"):
            log.info("slack: ignored a redelivered interaction (trigger %s)", trigger)
            return
        try:
            kind = payload.get("type")
            if kind == "block_actions":
                for action in payload.get("actions") or []:
                    await self._on_action(payload, action)
            elif kind == "view_submission":
                await self._on_deny_submission(payload)
        except Exception:
            log.exception("slack: failed to handle a %s interaction", payload.get("type"))

    async def _on_action(self, payload: Mapping[str, Any], action: Mapping[str, Any]) -> None:
        assert self._desk is not None and self.web is not None
        action_id = action.get("action_id")
        if action_id not in (messages.APPROVE_ACTION, messages.DENY_ACTION):
            return
        hold_id = str(action.get("value") or "")
        user = payload.get("user") or {}
        channel = str(
            (payload.get("channel") or {}).get("id")
            or (payload.get("container") or {}).get("channel_id")
            or ""
        )
        message_ts = str(
            (payload.get("container") or {}).get("message_ts")
            or (payload.get("message") or {}).get("ts")
            or ""
        )
        hold = self._desk.find(hold_id)
        reviewer = await self._reviewer(user, hold)
        if action_id == messages.APPROVE_ACTION:
            new, outcome = await self._desk.submit(hold_id, reviewer, True, "")
            if outcome not in (Outcome.RECORDED, Outcome.DECIDED):
                await self._ephemeral(
                    channel,
                    str(user.get("id")),
                    messages.outcome_notice(new, outcome, reviewer),
                    hold_id,
                )
            return
        # Deny: check what can be checked now, so nobody fills in a modal for nothing.
        if hold is None or hold.state.final:
            outcome = Outcome.ALREADY_DECIDED
        elif not hold.allows(reviewer):
            outcome = Outcome.NOT_ALLOWED
        else:
            view = messages.deny_modal(hold, channel, message_ts)
            await self._call(
                "views.open",
                self.web.views_open(trigger_id=str(payload.get("trigger_id")), view=view),
                hold_id,
            )
            return
        await self._ephemeral(
            channel, str(user.get("id")), messages.outcome_notice(hold, outcome, reviewer), hold_id
        )

    async def _on_deny_submission(self, payload: Mapping[str, Any]) -> None:
        assert self._desk is not None
        try:
            submission = messages.read_deny_submission(payload.get("view") or {})
        except ValueError as e:
            log.info("slack: ignored a view submission: %s", e)
            return
        user = payload.get("user") or {}
        reviewer = await self._reviewer(user, self._desk.find(submission.hold_id))
        new, outcome = await self._desk.submit(
            submission.hold_id, reviewer, False, submission.reason
        )
        if outcome not in (Outcome.RECORDED, Outcome.DECIDED) and submission.channel:
            notice = messages.outcome_notice(new, outcome, reviewer)
            await self._ephemeral(
                submission.channel, str(user.get("id")), notice, submission.hold_id
            )

    # --- who clicked ---------------------------------------------------------------------

    async def _reviewer(self, user: Mapping[str, Any], hold: Hold | None) -> Reviewer:
        """The Slack user as a reviewer, with the hold's Slack groups they belong to."""
        user_id = str(user.get("id") or "")
        fallback = str(user.get("name") or user.get("username") or "")
        name = await self._user_name(user_id, fallback)
        groups = set()
        for entry in sorted(hold.reviewers if hold is not None else ()):
            if entry.startswith("slack-group:"):
                group = entry.removeprefix("slack-group:")
                if user_id in await self._group_members(group):
                    groups.add(entry)
        return Reviewer(id=f"slack:{user_id}", name=name, groups=frozenset(groups))

    def _fresh(self, cache: dict[str, _Cached], key: str) -> _Cached | None:
        entry = cache.get(key)
        if entry is not None and self._clock() - entry.at < self.settings.group_cache_seconds:
            return entry
        return None

    async def _user_name(self, user_id: str, fallback: str) -> str:
        assert self.web is not None
        cached = self._fresh(self._users, user_id)
        if cached is not None:
            return str(cached.value)
        response = await self._call("users.info", self.web.users_info(user=user_id))
        if response is None:
            return fallback
        info = response.get("user") or {}
        name = str(
            info.get("real_name")
            or (info.get("profile") or {}).get("real_name")
            or info.get("name")
            or fallback
        )
        self._users[user_id] = _Cached(self._clock(), name)
        return name

    async def _group_members(self, group: str) -> frozenset[str]:
        """Members of a Slack user group, cached for `group_cache_seconds`; empty if unknown."""
        assert self.web is not None
        lock = self._group_locks.setdefault(group, asyncio.Lock())
        async with lock:  # one lookup per group at a time, however many clicks arrive
            cached = self._fresh(self._groups, group)
            if cached is not None:
                members: frozenset[str] = cached.value
                return members
            response = await self._call(
                f"usergroups.users.list ({group})", self.web.usergroups_users_list(usergroup=group)
            )
            if response is None:
                return frozenset()  # fail closed: an unresolvable group grants nothing
            members = frozenset(str(u) for u in response.get("users") or [])
            self._groups[group] = _Cached(self._clock(), members)
            return members
