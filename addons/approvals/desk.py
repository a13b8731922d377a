"""The approval desk: holds requests on asyncio futures until a channel's reviewers decide.

Channels (the local approvals page, Slack) announce holds and submit reviews; the first
decision wins whichever channel it came from, and every channel is told the outcome. A channel
that fails is logged and ignored: holds still expire into denial, nothing is approved by default.

With a shared state store (`shared`), every change of a hold is a transaction there and the
desk's `holds` mirror every replica's pending holds: a review arriving at any replica decides,
and the replica holding the request hears of it (LISTEN/NOTIFY) and answers its client. The
replica that makes a change tells the channels; the others only update their mirror and page.
The store unreachable: new holds are refused at once and reviews are not recorded, so nothing
is approved; holds already waiting expire into denial.
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
from holdgate.approvals.shared_holds import SharedHolds
from holdgate.state.postgres import StateUnavailable

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

    def __init__(
        self, clock: Callable[[], float] = time.time, shared: SharedHolds | None = None
    ) -> None:
        self.clock = clock
        self.shared = shared
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

    async def window_covers(self, agent: str, digest: str) -> str | None:
        """The hold id whose approval window covers this identical request, if any (none
        while a shared store is unreachable)."""
        if self.shared is not None:
            try:
                return await self.shared.window(agent, digest, self.clock())
            except StateUnavailable:
                return None
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
        if self.shared is not None:
            try:
                await self.shared.add(hold)
            except StateUnavailable as e:
                log.error("hold refused: %s", e)
                return hold_state.cancel(
                    hold,
                    f"the approvals database is unreachable ({e}); nothing can be approved "
                    "until it is back",
                    now,
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
            if future.done():
                return future.result()
            return await self._close(hold, lambda h: hold_state.expire(h, self.clock()))
        except asyncio.CancelledError:
            if not future.done():
                await self._close(
                    hold, lambda h: hold_state.cancel(h, "the gateway is stopping", self.clock())
                )
            raise
        finally:
            if escalation is not None:
                escalation.cancel()
            self._forget(hold.id, client_id)

    async def _close(self, hold: Hold, step: Callable[[Hold], Hold]) -> Hold:
        """Expire or cancel a pending hold; a decision made meanwhile (elsewhere) stands."""
        try:
            before, after, _ = await self._apply(hold.id, lambda h: (step(h), None))
        except StateUnavailable as e:
            log.error("hold %s closed here only: %s", hold.id, e)
            before, after = hold, step(self.holds.get(hold.id, hold))
        if after is None:
            after = step(self.holds.get(hold.id, hold))
        if before is not None and not before.state.final and after.state.final:
            await self._finish(after, None)
        else:
            self._settle(after)
        return after

    async def _apply(
        self, hold_id: str, step: Callable[[Hold], tuple[Hold, Any]], channel: str = ""
    ) -> tuple[Hold | None, Hold | None, Any]:
        """Apply one transition, here or in the shared store (StateUnavailable: not applied)."""
        if self.shared is not None:
            return await self.shared.change(hold_id, step, channel)
        before = self.holds.get(hold_id)
        if before is None:
            return None, None, None
        after, said = step(before)
        return before, after, said

    async def _escalate_later(self, hold_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        hold = self.holds.get(hold_id)
        if hold is None or not hold.escalation_due(self.clock()):
            return
        try:
            before, after, _ = await self._apply(hold_id, lambda h: (hold_state.escalate(h), None))
        except StateUnavailable as e:
            log.error("hold %s not escalated: %s", hold_id, e)
            return
        if before is None or after is None or before.escalated or not after.escalated:
            return
        self.holds[hold_id] = after
        log.info("hold %s escalated after %.0fs without a decision", hold_id, delay)
        self._publish(Event("escalated", after))
        await self._tell_channels("escalate", after)

    async def submit(
        self, hold_id: str, reviewer: Reviewer, approve: bool, reason: str = ""
    ) -> tuple[Hold | None, Outcome]:
        """A reviewer's decision from any channel; the first decision wins."""
        now = self.clock()
        try:
            before, new, outcome = await self._apply(
                hold_id, lambda h: hold_state.review(h, reviewer, approve, reason, now)
            )
        except StateUnavailable as e:
            log.error("hold %s: review by %s not recorded: %s", hold_id, reviewer.id, e)
            return self.find(hold_id), Outcome.UNAVAILABLE
        if before is None or new is None:
            recent = next((h for h in self._recent if h.id == hold_id), None)
            return recent, Outcome.ALREADY_DECIDED
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
        elif new.state.final and not before.state.final:
            await self._finish(new, None)  # it expired just now
        return new, outcome

    def cancel_client(self, client_id: str, why: str) -> None:
        """Cancel every pending hold of a client that went away."""
        loop = asyncio.get_running_loop()
        for hold_id in list(self._clients.pop(client_id, ())):
            hold = self.holds.get(hold_id)
            if hold is not None and not hold.state.final:
                loop.create_task(
                    self._close(hold, lambda h: hold_state.cancel(h, why, self.clock()))
                )

    async def cancel_all(self, why: str) -> None:
        """Cancel every pending hold of this gateway (it is stopping); channels are told."""
        for hold_id in list(self._futures):
            hold = self.holds.get(hold_id)
            if hold is not None and not hold.state.final:
                await self._close(hold, lambda h: hold_state.cancel(h, why, self.clock()))

    async def _finish(self, hold: Hold, review: Review | None) -> None:
        """A decision made here: settle it, grant its window, count it, tell every channel."""
        if self.shared is None and hold.state is HoldState.APPROVED and hold.window > 0:
            self._windows[(hold.agent, hold.digest)] = (self.clock() + hold.window, hold.id)
        self._settle(hold)
        for callback in self.on_decided:
            with contextlib.suppress(Exception):
                callback(hold)
        await self._tell_channels("update", hold, review)

    def _settle(self, hold: Hold) -> None:
        """A decided hold, wherever it was decided: answer its waiting request if it is held
        here, remember it for the page, and tell the page's browsers."""
        known = self.holds.get(hold.id)
        if known is not None and known.state.final and known.state is hold.state:
            return  # already settled (this replica's own change, heard back)
        self.holds[hold.id] = hold
        future = self._futures.get(hold.id)
        if future is not None and not future.done():
            future.set_result(hold)
        elif future is None:
            self.holds.pop(hold.id, None)  # another replica's hold: not ours to keep
        self._recent = [hold, *[h for h in self._recent if h.id != hold.id][:99]]
        self._publish(Event("updated", hold))

    # --- shared state: what other replicas changed ------------------------------------------

    async def heard(self, hold_id: str) -> None:
        """A hold changed in the shared store (by any replica): mirror it."""
        assert self.shared is not None
        found = await self.shared.get(hold_id)
        if found is None:
            return
        hold, _ = found
        if hold.state.final:
            self._settle(hold)
            return
        known = self.holds.get(hold_id)
        if known == hold:
            return
        self.holds[hold_id] = hold
        self._publish(Event("created" if known is None else "updated", hold))

    async def reload(self) -> None:
        """After (re)connecting to the shared store: mirror every pending hold anew, and settle
        this replica's waiting requests whose holds were decided meanwhile."""
        assert self.shared is not None
        pending = {h.id: h for h in await self.shared.pending()}
        for hold_id in list(self._futures):
            if hold_id in pending:
                continue
            found = await self.shared.get(hold_id)
            if found is not None:
                self._settle(found[0])
        for hold_id in [i for i in self.holds if i not in pending and i not in self._futures]:
            del self.holds[hold_id]
        self.holds.update(pending)
        if not self._recent:
            self._recent = await self.shared.recent()

    async def sweep(self) -> None:
        """Close pending holds no live replica holds, or long past their expiry."""
        assert self.shared is not None
        now = self.clock()
        for hold_id, why in await self.shared.orphans(now):
            if hold_id in self._futures:
                continue  # ours: our own timer closes it

            def close(h: Hold, why: str = why) -> tuple[Hold, None]:
                return (hold_state.cancel(h, why, now) if why else hold_state.expire(h, now)), None

            before, after, _ = await self.shared.change(hold_id, close)
            if before is not None and after is not None and not before.state.final:
                log.info("hold %s closed: %s", hold_id, after.reason)
                await self._finish(after, None)

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

    # --- where channels put a hold -------------------------------------------------------------

    async def remember_message(self, hold_id: str, ref: dict[str, str]) -> None:
        """Keep a channel's message reference for the other replicas (no-op without a store)."""
        if self.shared is None:
            return
        try:
            await self.shared.add_message_ref(hold_id, ref)
        except StateUnavailable as e:
            log.error("hold %s: its Slack message is known to this replica only: %s", hold_id, e)

    async def message_refs(self, hold_id: str) -> list[dict[str, str]]:
        """The channel messages other replicas posted for a hold ([] without a store)."""
        if self.shared is None:
            return []
        try:
            return await self.shared.message_refs(hold_id)
        except StateUnavailable:
            return []

    # --- what the page shows -------------------------------------------------------------

    def pending(self) -> list[Hold]:
        """Every pending hold, oldest first."""
        return sorted(
            (h for h in self.holds.values() if not h.state.final), key=lambda h: h.created_at
        )

    def held_here(self) -> int:
        """How many requests this process holds (with a shared store, `pending` lists every
        replica's)."""
        return len(self._futures)

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
