"""The approval desk: holds requests on asyncio futures until a channel's reviewers decide.

Channels (the local approvals page, Slack) announce holds and submit reviews; the first
decision wins whichever channel it came from, and every channel is told the outcome. A channel
that fails is logged and ignored: holds still expire into denial, nothing is approved by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from holdgate.approvals import hold as hold_state
from holdgate.approvals.hold import Hold, HoldState, Outcome, Review, Reviewer

log = logging.getLogger("holdgate")


class Channel(Protocol):
    """Where reviewers see holds and decide them."""

    name: str

    async def start(self, desk: ApprovalDesk) -> None: ...

    async def stop(self) -> None: ...

    async def announce(self, hold: Hold) -> None:
        """A new pending hold."""

    async def update(self, hold: Hold, review: Review | None) -> None:
        """A counted review (`review`), or the final state (expired or cancelled: review None)."""

    async def escalate(self, hold: Hold) -> None:
        """The hold waited `escalate_after` without a decision."""


@dataclass(frozen=True, slots=True)
class HoldSpec:
    """What a rule says about holding a request."""

    rule_id: str
    rule_description: str
    reviewers: frozenset[str]
    required: int
    timeout: float
    window: float = 0.0
    escalate_after: float | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A change the approvals page streams to browsers."""

    kind: str  # "created" | "updated" | "escalated"
    hold: Hold


class ApprovalDesk:
    """All pending holds of one gateway, and the approval windows they granted."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.holds: dict[str, Hold] = {}
        self.channels: list[Channel] = []
        self._futures: dict[str, asyncio.Future[Hold]] = {}
        self._clients: dict[str, set[str]] = {}
        # (agent, digest) -> until when an approval also covers identical requests.
        self._windows: dict[tuple[str, str], tuple[float, str]] = {}
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._recent: list[Hold] = []
        self.on_decided: list[Callable[[Hold], None]] = []

    # --- holding -------------------------------------------------------------------------

    def window_covers(self, agent: str, digest: str) -> str | None:
        """The hold id whose approval window covers this identical request, if any."""
        entry = self._windows.get((agent, digest))
        if entry is None:
            return None
        until, hold_id = entry
        if self.clock() >= until:
            del self._windows[(agent, digest)]
            return None
        return hold_id

    async def hold(
        self,
        spec: HoldSpec,
        *,
        digest: str,
        agent: str,
        owner: str,
        summary: dict[str, Any],
        client_id: str = "",
    ) -> Hold:
        """Hold a request until it is decided; returns the final hold."""
        now = self.clock()
        hold = Hold(
            id=secrets.token_hex(6),
            digest=digest,
            agent=agent,
            owner=owner,
            rule_id=spec.rule_id,
            rule_description=spec.rule_description,
            reviewers=spec.reviewers,
            required=spec.required,
            created_at=now,
            expires_at=now + spec.timeout,
            summary=summary,
            window=spec.window,
            escalate_after=spec.escalate_after,
        )
        future: asyncio.Future[Hold] = asyncio.get_running_loop().create_future()
        self.holds[hold.id] = hold
        self._futures[hold.id] = future
        if client_id:
            self._clients.setdefault(client_id, set()).add(hold.id)
        self._publish(Event("created", hold))
        await self._tell_channels("announce", hold)
        escalation = None
        if spec.escalate_after is not None and spec.escalate_after < spec.timeout:
            escalation = asyncio.create_task(self._escalate_later(hold.id, spec.escalate_after))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=spec.timeout)
        except TimeoutError:
            current = self.holds.get(hold.id, hold)
            if current.state.final:
                return current
            final = hold_state.expire(current, self.clock())
            await self._finish(final, None)
            return final
        except asyncio.CancelledError:
            current = self.holds.get(hold.id, hold)
            await self._finish(
                hold_state.cancel(current, "the gateway is stopping", self.clock()), None
            )
            raise
        finally:
            if escalation is not None:
                escalation.cancel()
            self._forget(hold.id, client_id)

    async def _escalate_later(self, hold_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        hold = self.holds.get(hold_id)
        if hold is None or not hold.escalation_due(self.clock()):
            return
        hold = hold_state.escalate(hold)
        self.holds[hold_id] = hold
        log.info("hold %s escalated after %.0fs without a decision", hold_id, delay)
        self._publish(Event("escalated", hold))
        await self._tell_channels("escalate", hold)

    async def submit(
        self, hold_id: str, reviewer: Reviewer, approve: bool, reason: str = ""
    ) -> tuple[Hold | None, Outcome]:
        """A reviewer's decision from any channel; the first decision wins."""
        hold = self.holds.get(hold_id)
        if hold is None:
            recent = next((h for h in self._recent if h.id == hold_id), None)
            return recent, Outcome.ALREADY_DECIDED
        new, outcome = hold_state.review(hold, reviewer, approve, reason, self.clock())
        log.info(
            "hold %s: %s %s by %s: %s",
            hold_id,
            "approve" if approve else "deny",
            outcome,
            reviewer.id,
            new.state,
        )
        if outcome in (Outcome.RECORDED, Outcome.DECIDED):
            counted = new.reviews[-1]
            if new.state.final:
                await self._finish(new, counted)
            else:
                self.holds[hold_id] = new
                self._publish(Event("updated", new))
                await self._tell_channels("update", new, counted)
        elif new.state.final and not hold.state.final:
            await self._finish(new, None)  # it expired just now
        return new, outcome

    def cancel_client(self, client_id: str, why: str) -> None:
        """Cancel every pending hold of a client that went away."""
        for hold_id in list(self._clients.pop(client_id, ())):
            hold = self.holds.get(hold_id)
            if hold is not None and not hold.state.final:
                final = hold_state.cancel(hold, why, self.clock())
                asyncio.get_running_loop().create_task(self._finish(final, None))

    async def cancel_all(self, why: str) -> None:
        """Cancel every pending hold (the gateway is stopping); channels are told."""
        for hold in self.pending():
            await self._finish(hold_state.cancel(hold, why, self.clock()), None)

    async def _finish(self, hold: Hold, review: Review | None) -> None:
        self.holds[hold.id] = hold
        future = self._futures.get(hold.id)
        if future is not None and not future.done():
            future.set_result(hold)
        if hold.state is HoldState.APPROVED and hold.window > 0:
            self._windows[(hold.agent, hold.digest)] = (self.clock() + hold.window, hold.id)
        self._recent = [hold, *self._recent[:99]]
        for callback in self.on_decided:
            with contextlib.suppress(Exception):
                callback(hold)
        self._publish(Event("updated", hold))
        await self._tell_channels("update", hold, review)

    def _forget(self, hold_id: str, client_id: str) -> None:
        self.holds.pop(hold_id, None)
        self._futures.pop(hold_id, None)
        if client_id in self._clients:
            self._clients[client_id].discard(hold_id)
            if not self._clients[client_id]:
                del self._clients[client_id]

    async def _tell_channels(self, method: str, hold: Hold, *args: Any) -> None:
        for channel in self.channels:
            try:
                await getattr(channel, method)(hold, *args)
            except Exception as e:  # a broken channel must never decide or block a hold
                log.error(
                    "approval channel %s failed to %s hold %s: %s", channel.name, method, hold.id, e
                )

    # --- what the page shows -------------------------------------------------------------

    def pending(self) -> list[Hold]:
        """Every pending hold, oldest first."""
        return sorted(
            (h for h in self.holds.values() if not h.state.final), key=lambda h: h.created_at
        )

    def recent(self) -> list[Hold]:
        """The last decided holds, newest first."""
        return list(self._recent)

    def find(self, hold_id: str) -> Hold | None:
        """A pending or recently decided hold."""
        return self.holds.get(hold_id) or next((h for h in self._recent if h.id == hold_id), None)

    def subscribe(self) -> asyncio.Queue[Event]:
        """A queue of changes, for live pages."""
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=1000)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        self._subscribers.discard(queue)

    def _publish(self, event: Event) -> None:
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)
