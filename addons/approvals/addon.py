"""The mitmproxy side of approvals: hold flows on the desk, serve the page, run the channels."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from mitmproxy import connection, http

from holdgate.approvals.desk import ApprovalDesk, Channel, HoldSpec
from holdgate.approvals.hold import Hold, request_digest
from holdgate.approvals.page import ApprovalsPage, LocalReviewer
from holdgate.approvals.shared_holds import SharedHolds
from holdgate.config.gateway_config import ApprovalSettings, Config
from holdgate.config.state_files import admin_token, admin_token_path
from holdgate.masking.masks import MaskSet, mask_request_body
from holdgate.masking.responses import kind_hint
from holdgate.metrics import GatewayMetrics
from holdgate.policy.rules import Decision
from holdgate.request.facts import RequestFacts
from holdgate.state.postgres import ReplicaNameTaken, StateStore

log = logging.getLogger("holdgate")

REASON_HEADER = "X-Holdgate-Reason"
APPROVALS_PAGE = "the approvals page"  # as the line that says it cannot start names it
MAX_REASON = 500
MAX_EXCERPT = 2000
STOPPING = "the gateway is stopping; not approved"
# Seconds the stop waits for held clients to get their refusal (and the archive their flows).
STOP_GRACE = 5.0
# A decision on an exec, attach or portforward also answers kubectl's immediate retry over the
# other transport (WebSocket GET, then SPDY POST) within this many seconds, once.
FALLBACK_SECONDS = 30.0


class Approvals:
    """Holds requests of approve rules until a channel decides; serves the approvals page."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics
        self.desk: ApprovalDesk | None = None
        self.page: ApprovalsPage | None = None
        self.channels: list[Channel] = []
        self.config: Config | None = None
        self.desk_url = ""
        self.port_override = -1
        self.slack_settings: Any = None
        # Holds shared with the other replicas through this store (None: this process only).
        self.state: StateStore | None = None
        # One page per host: with `--workers`, worker 0 serves it (it lists every worker's holds).
        self.serve_page = True
        # Held flows whose answer is not sent yet (waited for at stop).
        self._answering: set[str] = set()
        self._answered = asyncio.Event()
        # Decided exec/attach/portforward holds, for kubectl's retry: key -> (when, method, hold).
        self._connect_answers: dict[tuple[Any, ...], tuple[float, str, Hold]] = {}

    def configure_from(self, config: Config, port_override: int = -1) -> None:
        """Set up from a loaded configuration (approvals off when it has no `approvals`)."""
        self.config = config
        self.port_override = port_override
        if config.approvals is None:
            self.desk = None
            return
        if config.approvals.slack is not None:
            from holdgate.config.slack_settings import SlackSettings

            settings = SlackSettings.from_dict(config.approvals.slack)  # ValueError: config error
            missing = settings.missing_secrets(os.environ)
            if missing:
                raise ValueError(
                    "approvals.slack: environment variable(s) not set: " + ", ".join(missing)
                )
            self.slack_settings = settings
        if self.desk is None:
            shared = SharedHolds(self.state) if self.state is not None else None
            self.desk = ApprovalDesk(shared=shared)
            if self.state is not None:
                self.state.listeners.append(self.desk.heard)
                self.state.on_connected.append(self.desk.reload)
                self.state.on_tick.append(self.desk.sweep)
            self.desk.on_decided.append(self._count)
            # Held by this process (with replicas, each counts its own: a sum adds up).
            self.metrics.count_pending(lambda: self.desk.held_here() if self.desk else 0)

    @property
    def enabled(self) -> bool:
        return self.desk is not None

    def _count(self, hold: Hold) -> None:
        self.metrics.hold_decisions.labels(str(hold.state), hold.rule_id).inc()
        self.metrics.hold_wait.observe(hold.waited)

    async def running(self) -> None:
        if self.desk is None or self.config is None or self.page is not None:
            return
        settings = self.config.approvals
        assert settings is not None
        if self.state is not None:
            state = self.state
            self.metrics.watch_state_store(lambda: state.up)
            try:
                await state.start()
            except ReplicaNameTaken as e:
                log.error("holdgate: %s", e)
                raise SystemExit(2) from e
        if settings.page_host is not None and self.serve_page:
            await self._start_page(settings)
        if self.slack_settings is not None:
            from holdgate.approvals.slack.channel import SlackChannel

            self.channels.append(SlackChannel(self.slack_settings))
        for channel in self.channels:
            try:
                await channel.start(self.desk)
                self.desk.channels.append(channel)
            except Exception as e:  # Slack down at start: holds still expire into denial
                log.error("approval channel %s failed to start: %s", channel.name, e)

    async def channel_problems(self) -> str:
        """Why a configured approval channel cannot take decisions now ("" when all can)."""
        problems = []
        for channel in self.channels:
            health = getattr(channel, "health", None)
            if health is not None and (why := await health()):
                problems.append(f"{channel.name}: {why}")
        return "; ".join(problems)

    async def state_store_problem(self) -> str:
        """Why the shared state store cannot be used now ("" when it can, or there is none)."""
        if self.state is None or self.state.up:
            return ""
        return f"state store: {self.state.problem}"

    async def _start_page(self, settings: ApprovalSettings) -> None:
        assert self.desk is not None and self.config is not None and settings.page_host
        token = admin_token(self.config.state_dir)
        self.page = ApprovalsPage(
            self.desk,
            admin_token=token,
            reviewers=tuple(LocalReviewer(n, d) for n, d in settings.local_reviewers),
            registry=self.metrics.registry,
        )
        url = await self.page.listen(
            settings.page_host, settings.page_port_or(self.port_override), APPROVALS_PAGE
        )
        if not url:
            self.page = None
            return
        self.desk_url = url
        # The token itself never goes to the log: logs are collected and kept.
        log.info(
            "holdgate approvals page listening at %s (admin token in %s)",
            self.desk_url,
            admin_token_path(self.config.state_dir),
        )
        _write_desk_file(self.config.state_dir, self.desk_url)

    async def done(self) -> None:
        # Cancel pending holds first, so every channel can still show the outcome; then let each
        # held client get its answer (and the archive its flow) before the proxy goes away.
        if self.desk is not None:
            await self.desk.cancel_all(STOPPING)
            await self._answers_sent(STOP_GRACE)
        for channel in self.channels:
            try:
                await channel.stop()
            except Exception as e:
                log.error("approval channel %s failed to stop: %s", channel.name, e)
        self.channels = []
        if self.page is not None:
            await self.page.stop()
            self.page = None
        if self.state is not None:
            await self.state.stop()

    async def _answers_sent(self, timeout: float) -> None:
        """Wait (bounded) until every decided held flow has had its response sent."""
        deadline = time.monotonic() + timeout
        while self._answering and time.monotonic() < deadline:
            self._answered.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answered.wait(), deadline - time.monotonic())
        if self._answering:
            log.error(
                "approvals: %d held requests had no answer sent before the stop",
                len(self._answering),
            )

    def response(self, flow: http.HTTPFlow) -> None:
        self._settle(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._settle(flow)

    def _settle(self, flow: http.HTTPFlow) -> None:
        if self._answering and flow.id in self._answering:
            self._answering.discard(flow.id)
            self._answered.set()

    def client_disconnected(self, client: connection.Client) -> None:
        if self.desk is not None:
            self.desk.cancel_client(client.id, "the client disconnected while waiting")

    def over_limit(self, agent: str) -> str:
        """Why one more hold for this agent would be too many ("" when it is not)."""
        if self.desk is None or self.config is None or self.config.approvals is None:
            return ""
        settings = self.config.approvals
        pending = self.desk.pending()
        if len(pending) >= settings.max_pending:
            return f"{len(pending)} requests are already waiting for approval (the gateway's limit)"
        mine = sum(1 for h in pending if h.agent == agent)
        if mine >= settings.max_pending_per_agent:
            return (
                f"this agent already has {mine} requests waiting for approval "
                f"(limit {settings.max_pending_per_agent}); retry once they are decided"
            )
        return ""

    async def hold(
        self,
        flow: http.HTTPFlow,
        facts: RequestFacts,
        decision: Decision,
        masks: MaskSet,
        followup: str = "",
    ) -> Hold:
        """Hold the flow until its request is decided; returns the final hold. `followup`:
        what the gateway does after the request, if approved (shown to reviewers)."""
        assert self.desk is not None and decision.rule is not None
        rule = decision.rule
        request = flow.request
        identity = facts.identity
        agent = identity.agent if identity else ""
        flow.marked = ":lock:"
        key = _connect_key(facts, agent)
        if key is not None and (answered := self._fallback_answer(key, request.method)):
            log.info(
                "hold %s %s also answers kubectl's retry over the other transport (%s)",
                answered.id,
                answered.state,
                request.method,
            )
            return answered
        digest = request_digest(request.method, request.pretty_url, request.raw_content or b"")
        summary: dict[str, Any] = {
            "target": facts.target.name if facts.target else None,
            "method": request.method,
            "url": request.pretty_url,
            "kubernetes": facts.kube.as_dict() if facts.kube else None,
            "exec": {"command": list(facts.exec.command)} if facts.exec else None,
            "identity": identity.as_dict() if identity else None,
            "reason": request.headers.get(REASON_HEADER, "")[:MAX_REASON],
            "body_excerpt": body_excerpt(facts, request, masks),
            "followup": followup,
        }
        spec = HoldSpec(
            rule_id=rule.id,
            rule_description=rule.description,
            reviewers=frozenset(rule.reviewers),
            required=rule.required,
            timeout=rule.timeout,
            window=rule.window,
            escalate_after=rule.escalate_after,
        )
        self._answering.add(flow.id)
        hold = await self.desk.hold(
            spec,
            digest=digest,
            agent=agent,
            owner=identity.owner if identity else "",
            summary=summary,
            client_id=flow.client_conn.id,
        )
        if key is not None and hold.state.final:
            self._connect_answers[key] = (time.monotonic(), request.method, hold)
        return hold

    def _fallback_answer(self, key: tuple[Any, ...], method: str) -> Hold | None:
        """The decided hold of the same exec, attach or portforward sent moments ago over the
        other transport (kubectl retries a refused WebSocket GET as a SPDY POST at once)."""
        now = time.monotonic()
        for stale in [
            k for k, (at, _, _) in self._connect_answers.items() if now - at > FALLBACK_SECONDS
        ]:
            del self._connect_answers[stale]
        entry = self._connect_answers.get(key)
        if entry is None or entry[1] == method:
            return None
        del self._connect_answers[key]  # one retry, once
        return entry[2]

    async def window_covers(self, flow: http.HTTPFlow, facts: RequestFacts) -> str | None:
        """The hold whose approval window covers this identical request, if any."""
        if self.desk is None:
            return None
        request = flow.request
        digest = request_digest(request.method, request.pretty_url, request.raw_content or b"")
        agent = facts.identity.agent if facts.identity else ""
        return await self.desk.window_covers(agent, digest)


def _connect_key(facts: RequestFacts, agent: str) -> tuple[Any, ...] | None:
    """What makes two exec, attach or portforward requests the same question to a reviewer."""
    kube = facts.kube
    if kube is None or not kube.connects:
        return None
    command = tuple(facts.exec.command) if facts.exec else ()
    container = facts.exec.container if facts.exec else ""
    ports = facts.query if kube.subresource == "portforward" else ""
    return (agent, kube.namespace, kube.name, kube.subresource, container, command, ports)


def body_excerpt(facts: RequestFacts, request: http.Request, masks: MaskSet) -> str:
    """What reviewers see of a body: masked, or withheld whole when it cannot be masked."""
    body = request.raw_content or b""
    if not body:
        return ""
    kind = kind_hint(facts)
    content_type = request.headers.get("content-type", "")
    if request.headers.get("content-encoding", "identity") not in ("", "identity"):
        return f"({len(body)} bytes, content-encoded; withheld)"
    result = mask_request_body(content_type, body, masks, kind=kind)
    if result.replaced_whole:
        return f"({len(body)} bytes; withheld: {result.reason})"
    text = result.body.decode("utf-8", "replace")
    if len(text) > MAX_EXCERPT:
        text = text[:MAX_EXCERPT] + f"... ({len(text) - MAX_EXCERPT} more characters)"
    return text


def _write_desk_file(state_dir: Path, url: str) -> None:
    path = state_dir / "approvals-url"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(url + "\n")


def hold_record(hold: Hold) -> dict[str, Any]:
    """The hold as stored in flow metadata (without the request facts already there)."""
    record = hold.as_dict()
    record.pop("request", None)
    return record
