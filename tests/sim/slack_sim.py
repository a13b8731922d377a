"""A Slack simulator on loopback, faithful to the wire: the Web API methods holdgate uses,
Socket Mode over WebSocket, and signed HTTP interactivity requests.

It plays both sides of Slack: the API a bot calls (`/api/METHOD`, token checks, 429 injection,
every call recorded), and the workspace whose users click buttons and submit modals (delivered
as `interactive` envelopes over Socket Mode, or as signed POSTs to a Request URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from holdgate.approvals.slack.messages import APPROVE_ACTION, DENY_ACTION

T = TypeVar("T")

TEAM_ID = "T0SIM"
APP_ID = "A0HOLDGATE"
BOT_USER = "U0BOT"
BOT_ID = "B0BOT"
VERIFICATION_TOKEN = "sim-verification-token"  # legacy field Slack still sends in payloads
ACTIONS = {"approve": APPROVE_ACTION, "deny": DENY_ACTION}


@dataclass
class ApiCall:
    """One Web API request as the simulator received it, and how it answered."""

    seq: int
    method: str
    params: dict[str, Any]
    headers: dict[str, str]
    status: int = 200
    error: str | None = None


@dataclass
class Message:
    """A message the bot posted; `versions` keeps every edit (first = as posted)."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    versions: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)

    @property
    def buttons(self) -> list[dict[str, Any]]:
        """The buttons of the current version."""
        return _buttons(self.blocks)

    @property
    def rendered(self) -> str:
        """All text of the current version (text and every block), for assertions."""
        return self.text + "\n" + block_text(self.blocks)


@dataclass
class Ephemeral:
    """A message only `user` saw."""

    seq: int
    channel: str
    user: str
    text: str


@dataclass
class OpenView:
    """A modal open on a user's screen."""

    id: str
    user: str
    view: dict[str, Any]


@dataclass
class Delivery:
    """One interaction sent to the app: over Socket Mode or as a signed HTTP request."""

    envelope_id: str
    payload: dict[str, Any]
    sent_seq: int
    sent_at: float
    via: str
    acked_seq: int | None = None
    ack_latency: float | None = None
    ack_payload: dict[str, Any] | None = None
    http_status: int | None = None

    @property
    def acked(self) -> bool:
        """Whether the app acknowledged (or answered) this interaction."""
        return self.acked_seq is not None


@dataclass
class SignedPost:
    """A signed interactivity POST and the app's answer (kept to replay it)."""

    url: str
    body: bytes
    headers: dict[str, str]
    status: int = 0
    text: str = ""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's v0 request signature."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def block_text(blocks: Iterable[dict[str, Any]]) -> str:
    """Every text in Block Kit blocks, one per line."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                out.append(node["text"])
            for value in node.values():
                if isinstance(value, dict | list):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(list(blocks))
    return "\n".join(out)


def _buttons(blocks: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for block in blocks:
        if block.get("type") == "actions":
            for element in block.get("elements", []):
                if element.get("type") == "button":
                    found.append({**element, "block_id": block.get("block_id", "")})
    return found


class BlockKitError(ValueError):
    """Blocks Slack would refuse with `invalid_blocks`."""


def validate_blocks(blocks: list[dict[str, Any]]) -> None:
    """The Block Kit limits Slack enforces on messages (the ones a builder can break)."""
    if len(blocks) > 50:
        raise BlockKitError("more than 50 blocks")
    for i, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "header":
            text = block.get("text", {})
            if text.get("type") != "plain_text" or not 0 < len(text.get("text", "")) <= 150:
                raise BlockKitError(f"blocks[{i}]: header needs plain_text of 1..150 characters")
        elif kind == "section":
            text, fields = block.get("text"), block.get("fields")
            if text is None and not fields:
                raise BlockKitError(f"blocks[{i}]: section needs text or fields")
            if text is not None and not 0 < len(text.get("text", "")) <= 3000:
                raise BlockKitError(f"blocks[{i}]: section text must be 1..3000 characters")
            if fields is not None and (
                len(fields) > 10 or any(not 0 < len(f.get("text", "")) <= 2000 for f in fields)
            ):
                raise BlockKitError(f"blocks[{i}]: at most 10 fields of 1..2000 characters")
        elif kind == "actions":
            elements = block.get("elements", [])
            if not 0 < len(elements) <= 25:
                raise BlockKitError(f"blocks[{i}]: actions need 1..25 elements")
            for element in elements:
                if len(element.get("value", "")) > 2000 or len(element.get("action_id", "")) > 255:
                    raise BlockKitError(f"blocks[{i}]: button value or action_id too long")
        elif kind == "context":
            if not 0 < len(block.get("elements", [])) <= 10:
                raise BlockKitError(f"blocks[{i}]: context needs 1..10 elements")
        elif kind not in ("divider", "input", "image", "rich_text"):
            raise BlockKitError(f"blocks[{i}]: unknown block type {kind!r}")


class SlackSimulator:
    """Slack on 127.0.0.1: start it, point the app at `base_url`, drive users, assert calls."""

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-sim-bot-token",
        app_token: str = "xapp-sim-app-token",
        signing_secret: str = "sim-signing-secret",
        channels: Iterable[str] = ("C0APPROVALS", "C0ESCALATE"),
        users: dict[str, str] | None = None,
        groups: dict[str, list[str]] | None = None,
        trigger_ttl: float = 3.0,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.channels = set(channels)
        self.users: dict[str, str] = dict(users or {})  # user id -> real name
        self.groups: dict[str, list[str]] = {k: list(v) for k, v in (groups or {}).items()}
        self.trigger_ttl = trigger_ttl
        # Where interactions go: None = Socket Mode, else this Request URL (HTTP mode).
        self.interactivity_url: str | None = None
        self.calls: list[ApiCall] = []
        self.posted: list[Message] = []
        self.ephemerals: list[Ephemeral] = []
        self.views: list[OpenView] = []  # every view ever opened
        self.open_views: list[OpenView] = []
        self.deliveries: dict[str, Delivery] = {}
        self.sockets: list[web.WebSocketResponse] = []
        self.connections = 0  # WebSocket connections accepted so far
        self._transports: dict[int, asyncio.Transport | None] = {}
        self._seq = itertools.count(1)
        self._ts = itertools.count(1)
        self._ratelimits: dict[str, int] = {}
        self._tickets: set[str] = set()
        self._triggers: dict[str, tuple[str, float]] = {}  # trigger id -> (user, issued at)
        self._changed_event = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> SlackSimulator:
        """Listen on an ephemeral loopback port."""
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Close every socket and stop listening (Slack is then unreachable)."""
        for ws in list(self.sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._changed()

    async def __aenter__(self) -> SlackSimulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """The Web API base URL to give the app (`api_base_url`)."""
        return f"http://127.0.0.1:{self.port}/api/"

    # --- waiting -------------------------------------------------------------------------

    def _changed(self) -> None:
        self._changed_event.set()
        self._changed_event = asyncio.Event()

    async def wait_for(
        self, predicate: Callable[[], T | None], timeout: float = 5.0, what: str = ""
    ) -> T:
        """Wait until `predicate()` is truthy, re-checking on every change the simulator sees."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"Slack simulator: timed out waiting for {what or predicate}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed_event.wait(), remaining)

    # --- fault injection -----------------------------------------------------------------

    def rate_limit(self, method: str, times: int = 1) -> None:
        """Answer the next `times` calls of `method` with 429 `ratelimited`, Retry-After: 1."""
        self._ratelimits[method] = self._ratelimits.get(method, 0) + times

    async def drop_sockets(self, how: str = "close") -> None:
        """End every Socket Mode connection: a close frame, Slack's `disconnect` message, or
        a dead TCP connection (`abort`: no close frame at all)."""
        for ws in list(self.sockets):
            if how == "abort":
                transport = self._transports.get(id(ws))
                if transport is not None:
                    transport.abort()
            elif how == "disconnect":
                await ws.send_json(
                    {
                        "type": "disconnect",
                        "reason": "refresh_requested",
                        "debug_info": {"host": "applink-sim"},
                    }
                )
            else:
                await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)

    # --- what the app did ----------------------------------------------------------------

    def calls_to(self, method: str) -> list[ApiCall]:
        """Every call of one Web API method, in order."""
        return [c for c in self.calls if c.method == method]

    def messages(self, channel: str | None = None) -> list[Message]:
        """Top-level messages the bot posted (optionally in one channel)."""
        return [m for m in self.posted if m.thread_ts is None and channel in (None, m.channel)]

    def replies(self, message: Message) -> list[Message]:
        """The thread under a message."""
        return [
            m for m in self.posted if m.thread_ts == message.ts and m.channel == message.channel
        ]

    def message_for(self, hold_id: str, channel: str | None = None) -> Message | None:
        """The first top-level message that carries (or carried) buttons for this hold."""
        for m in self.messages(channel):
            for _, blocks in m.versions:
                if any(b.get("value") == hold_id for b in _buttons(blocks)):
                    return m
        return None

    def ephemerals_for(self, user: str) -> list[Ephemeral]:
        """The ephemeral messages one user was shown."""
        return [e for e in self.ephemerals if e.user == user]

    # --- users acting --------------------------------------------------------------------

    async def click(
        self,
        hold_id: str,
        user: str,
        action: str = "approve",
        channel: str | None = None,
        connection: int | None = None,
    ) -> Delivery:
        """A user clicks Approve or Deny on the hold's message (as it was when they saw it);
        `connection`: deliver it to that Socket Mode connection (in the order they opened)."""
        message = await self.wait_for(
            lambda: self.message_for(hold_id, channel), what=f"a message for hold {hold_id}"
        )
        action_id = ACTIONS[action]
        # The newest version that still showed the button: users may click a stale screen.
        seen = next(
            (
                (text, blocks, b)
                for text, blocks in reversed(message.versions)
                for b in _buttons(blocks)
                if b["value"] == hold_id and b["action_id"] == action_id
            ),
            None,
        )
        if seen is None:
            raise AssertionError(f"no {action} button for hold {hold_id}")
        text, blocks, button = seen
        trigger = self._new_trigger(user)
        payload: dict[str, Any] = {
            "type": "block_actions",
            "user": self._user(user),
            "api_app_id": APP_ID,
            "token": VERIFICATION_TOKEN,
            "container": {
                "type": "message",
                "message_ts": message.ts,
                "channel_id": message.channel,
                "is_ephemeral": False,
            },
            "trigger_id": trigger,
            "team": {"id": TEAM_ID, "domain": "holdgate-sim"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": message.channel, "name": message.channel.lower()},
            "message": {
                "type": "message",
                "subtype": "bot_message",
                "user": BOT_USER,
                "bot_id": BOT_ID,
                "app_id": APP_ID,
                "ts": message.ts,
                "text": text,
                "team": TEAM_ID,
                "blocks": blocks,
            },
            "state": {"values": {}},
            "response_url": f"http://127.0.0.1:{self.port}/actions/{trigger}",
            "actions": [
                {
                    "type": "button",
                    "action_id": button["action_id"],
                    "block_id": button["block_id"],
                    "text": button["text"],
                    "value": button["value"],
                    "style": button.get("style", ""),
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        return await self.deliver(payload, connection=connection)

    async def submit_deny_reason(self, user: str, reason: str) -> Delivery:
        """The user types a reason into the modal the app opened for them and submits it."""
        view = await self.wait_for(
            lambda: next((v for v in reversed(self.open_views) if v.user == user), None),
            what=f"a modal open for {user}",
        )
        values: dict[str, Any] = {}
        for block in view.view.get("blocks", []):
            if block.get("type") == "input":
                element = block["element"]
                values[block["block_id"]] = {
                    element["action_id"]: {"type": element["type"], "value": reason}
                }
        submitted = {**view.view, "state": {"values": values}}
        payload = {
            "type": "view_submission",
            "team": {"id": TEAM_ID, "domain": "holdgate-sim"},
            "user": self._user(user),
            "api_app_id": APP_ID,
            "token": VERIFICATION_TOKEN,
            "trigger_id": self._new_trigger(user),
            "view": submitted,
            "response_urls": [],
            "is_enterprise_install": False,
            "enterprise": None,
        }
        delivery = await self.deliver(payload, accepts_response_payload=True)
        await self.wait_for(lambda: delivery.acked, what="the view_submission ack")
        ack = delivery.ack_payload or {}
        if ack.get("response_action") != "errors":
            self.open_views.remove(view)
        return delivery

    async def deliver(
        self,
        payload: dict[str, Any],
        accepts_response_payload: bool = False,
        connection: int | None = None,
    ) -> Delivery:
        """Send an interaction to the app the way Slack would: Socket Mode (to the newest open
        connection, or the `connection`-th one opened: Slack picks any of an app's) or signed
        HTTP."""
        envelope_id = secrets.token_hex(8)
        delivery = Delivery(envelope_id, payload, next(self._seq), time.monotonic(), via="socket")
        self.deliveries[envelope_id] = delivery
        if self.interactivity_url:
            delivery.via = "http"
            post = await self.post_signed(self.interactivity_url, payload)
            delivery.http_status = post.status
            delivery.ack_latency = time.monotonic() - delivery.sent_at
            delivery.acked_seq = next(self._seq)
            if post.status == 200 and post.text.strip():
                delivery.ack_payload = json.loads(post.text)
            self._changed()
            return delivery
        if connection is not None:
            ws = self.sockets[connection]
            if ws.closed:
                raise AssertionError(f"Socket Mode connection {connection} is closed")
        else:
            ws = await self.wait_for(
                lambda: next((s for s in reversed(self.sockets) if not s.closed), None),
                what="a Socket Mode connection",
            )
        await ws.send_json(
            {
                "envelope_id": envelope_id,
                "payload": payload,
                "type": "interactive",
                "accepts_response_payload": accepts_response_payload,
            }
        )
        self._changed()
        return delivery

    # --- signed HTTP interactivity -------------------------------------------------------

    async def post_signed(
        self,
        url: str,
        payload: dict[str, Any],
        *,
        timestamp: int | None = None,
        secret: str | None = None,
    ) -> SignedPost:
        """POST `payload=` form-encoded, signed like Slack (tests may use a wrong secret or time)."""
        body = urlencode({"payload": json.dumps(payload)}).encode()
        ts = str(int(time.time()) if timestamp is None else timestamp)
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": sign(secret or self.signing_secret, ts, body),
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        }
        return await self.replay(SignedPost(url, body, headers))

    async def replay(self, post: SignedPost) -> SignedPost:
        """Send a recorded request again, byte for byte."""
        async with (
            aiohttp.ClientSession() as session,
            session.post(post.url, data=post.body, headers=post.headers) as response,
        ):
            result = SignedPost(
                post.url, post.body, post.headers, response.status, await response.text()
            )
        self._changed()
        return result

    # --- the Web API ---------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                params.update(await request.json())
            else:
                params.update(dict(await request.post()))
        call = ApiCall(next(self._seq), method, params, dict(request.headers))
        self.calls.append(call)
        try:
            if self._ratelimits.get(method, 0) > 0:
                self._ratelimits[method] -= 1
                call.status, call.error = 429, "ratelimited"
                return web.json_response(
                    {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": "1"}
                )
            handler = getattr(self, "_m_" + method.replace(".", "_"), None)
            if handler is None:
                return self._fail(call, "unknown_method")
            token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            token = token or str(params.get("token", ""))
            wanted = self.app_token if method == "apps.connections.open" else self.bot_token
            if not token:
                return self._fail(call, "not_authed")
            if token != wanted:
                return self._fail(call, "invalid_auth")
            result = handler(params)
            if "error" in result:
                return self._fail(call, result["error"])
            return web.json_response({"ok": True, **result})
        finally:
            self._changed()

    def _fail(self, call: ApiCall, error: str) -> web.Response:
        call.error = error
        return web.json_response({"ok": False, "error": error})

    def _m_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://holdgate-sim.slack.com/",
            "team": "holdgate sim",
            "user": "holdgate",
            "team_id": TEAM_ID,
            "user_id": BOT_USER,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _m_apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        ticket = secrets.token_hex(8)
        self._tickets.add(ticket)
        return {"url": f"ws://127.0.0.1:{self.port}/socket?ticket={ticket}&app_id={APP_ID}"}

    def _blocks(self, params: dict[str, Any]) -> list[dict[str, Any]] | dict[str, str]:
        blocks = params.get("blocks") or []
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        try:
            validate_blocks(blocks)
        except BlockKitError:
            return {"error": "invalid_blocks"}
        return blocks

    def _m_chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel", ""))
        if channel not in self.channels:
            return {"error": "channel_not_found"}
        blocks = self._blocks(params)
        if isinstance(blocks, dict):
            return blocks
        text = str(params.get("text") or "")
        if not text and not blocks:
            return {"error": "no_text"}
        thread_ts = params.get("thread_ts")
        if thread_ts is not None and not any(m.ts == thread_ts for m in self.messages(channel)):
            return {"error": "thread_not_found"}
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        message = Message(channel, ts, text, blocks, thread_ts, [(text, blocks)])
        self.posted.append(message)
        return {
            "channel": channel,
            "ts": ts,
            "message": {
                "type": "message",
                "text": text,
                "ts": ts,
                "bot_id": BOT_ID,
                "blocks": blocks,
            },
        }

    def _m_chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(params.get("channel", "")), str(params.get("ts", ""))
        if channel not in self.channels:
            return {"error": "channel_not_found"}
        message = next((m for m in self.posted if m.channel == channel and m.ts == ts), None)
        if message is None:
            return {"error": "message_not_found"}
        blocks = self._blocks(params)
        if isinstance(blocks, dict):
            return blocks
        message.text = str(params.get("text") or message.text)
        message.blocks = blocks
        message.versions.append((message.text, blocks))
        return {"channel": channel, "ts": ts, "text": message.text}

    def _m_chat_postEphemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, user = str(params.get("channel", "")), str(params.get("user", ""))
        if channel not in self.channels:
            return {"error": "channel_not_found"}
        if user not in self.users:
            return {"error": "user_not_found"}
        self.ephemerals.append(
            Ephemeral(next(self._seq), channel, user, str(params.get("text") or ""))
        )
        return {"message_ts": f"{int(time.time())}.{next(self._ts):06d}"}

    def _m_views_open(self, params: dict[str, Any]) -> dict[str, Any]:
        trigger = str(params.get("trigger_id", ""))
        issued = self._triggers.pop(trigger, None)
        if issued is None:
            return {"error": "invalid_trigger_id"}
        user, at = issued
        if time.monotonic() - at > self.trigger_ttl:
            return {"error": "expired_trigger_id"}
        view = params.get("view")
        if isinstance(view, str):
            view = json.loads(view)
        if not isinstance(view, dict) or view.get("type") != "modal":
            return {"error": "invalid_arguments"}
        view_id = "V" + secrets.token_hex(5).upper()
        full = {
            "id": view_id,
            "team_id": TEAM_ID,
            "type": "modal",
            "blocks": view.get("blocks", []),
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "state": {"values": {}},
            "hash": secrets.token_hex(6),
            "title": view.get("title"),
            "submit": view.get("submit"),
            "close": view.get("close"),
            "clear_on_close": False,
            "notify_on_close": False,
            "root_view_id": view_id,
            "previous_view_id": None,
            "app_id": APP_ID,
            "external_id": "",
            "app_installed_team_id": TEAM_ID,
            "bot_id": BOT_ID,
        }
        opened = OpenView(view_id, user, full)
        self.views.append(opened)
        self.open_views.append(opened)
        return {"view": full}

    def _m_users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = str(params.get("user", ""))
        if user not in self.users:
            return {"error": "user_not_found"}
        real = self.users[user]
        name = real.split()[0].lower() if real else user.lower()
        return {
            "user": {
                "id": user,
                "team_id": TEAM_ID,
                "name": name,
                "real_name": real,
                "deleted": False,
                "is_bot": False,
                "profile": {"real_name": real, "display_name": name},
            }
        }

    def _m_usergroups_users_list(self, params: dict[str, Any]) -> dict[str, Any]:
        group = str(params.get("usergroup", ""))
        if group not in self.groups:
            return {"error": "no_such_subteam"}
        return {"users": list(self.groups[group])}

    # --- Socket Mode ---------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.Response(status=401, text="invalid ticket")
        self._tickets.discard(ticket)  # a URL from apps.connections.open is good for one connection
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.sockets.append(ws)
        self._transports[id(ws)] = request.transport
        self.connections += 1
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": len(self.sockets),
                "debug_info": {
                    "host": "applink-sim",
                    "build_number": 1,
                    "approximate_connection_time": 3600,
                },
                "connection_info": {"app_id": APP_ID},
            }
        )
        self._changed()
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                delivery = self.deliveries.get(str(data.get("envelope_id", "")))
                if delivery is not None and not delivery.acked:
                    delivery.acked_seq = next(self._seq)
                    delivery.ack_latency = time.monotonic() - delivery.sent_at
                    delivery.ack_payload = data.get("payload")
                self._changed()
        finally:
            self.sockets.remove(ws)
            self._transports.pop(id(ws), None)
            self._changed()
        return ws

    # --- users ---------------------------------------------------------------------------

    def _user(self, user: str) -> dict[str, Any]:
        real = self.users.get(user, "")
        name = real.split()[0].lower() if real else user.lower()
        return {"id": user, "username": name, "name": name, "team_id": TEAM_ID}

    def _new_trigger(self, user: str) -> str:
        trigger = f"{next(self._ts)}.{secrets.randbelow(10**12)}.{secrets.token_hex(16)}"
        self._triggers[trigger] = (user, time.monotonic())
        return trigger
