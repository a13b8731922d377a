"""Holds, reviews, approval windows and Slack message references in the shared state store.

Every change of a hold is one transaction: the row is locked (`FOR UPDATE`), the pure state
machine (`approvals.hold`) applied, the row and any new reviews written, and every replica
notified at commit. So two reviews arriving at two replicas at the same moment are counted
once each, in some order, and exactly one of them decides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from psycopg.types.json import Jsonb

from holdgate.approvals.hold import Hold, HoldState, hold_from_dict
from holdgate.state.postgres import StateStore

T = TypeVar("T")
# A pending hold whose expiry passed this long ago is closed by any replica (its holder did
# not: it is gone, or cut off from the database).
EXPIRY_GRACE = 5.0


class SharedHolds:
    """The state store's view of holds, for the desk of one replica."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    @property
    def replica(self) -> str:
        return self.store.replica

    async def add(self, hold: Hold) -> None:
        """Record a new pending hold, held by this replica."""
        async with self.store.transaction() as conn:
            await conn.execute(
                """
                INSERT INTO holdgate_holds
                    (id, replica, instance, state, agent, rule, created_at, expires_at, hold)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
                """,
                (
                    hold.id,
                    self.store.replica,
                    self.store.instance,
                    str(hold.state),
                    hold.agent,
                    hold.rule_id,
                    hold.created_at,
                    hold.expires_at,
                    Jsonb(hold.as_dict()),
                ),
            )
            await self.store.notify(conn, hold.id)

    async def change(
        self, hold_id: str, step: Callable[[Hold], tuple[Hold, T]], channel: str = ""
    ) -> tuple[Hold | None, Hold | None, T | None]:
        """Apply `step` to the hold in one transaction: (before, after, what step said);
        (None, None, None) for a hold the store does not know."""
        async with self.store.transaction() as conn:
            cursor = await conn.execute(
                "SELECT hold FROM holdgate_holds WHERE id = %s FOR UPDATE", (hold_id,)
            )
            row = await cursor.fetchone()
            if row is None:
                return None, None, None
            before = hold_from_dict(row["hold"])
            after, said = step(before)
            if after == before:
                return before, after, said
            await conn.execute(
                "UPDATE holdgate_holds SET state = %s, decided_at = %s, hold = %s WHERE id = %s",
                (str(after.state), after.decided_at, Jsonb(after.as_dict()), hold_id),
            )
            known = {(r.reviewer.id, r.approve, r.at) for r in before.reviews}
            for review in after.reviews:
                if (review.reviewer.id, review.approve, review.at) in known:
                    continue
                await conn.execute(
                    """
                    INSERT INTO holdgate_reviews
                        (hold_id, reviewer, name, approve, reason, at, channel, replica)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                    """,
                    (
                        hold_id,
                        review.reviewer.id,
                        review.reviewer.name,
                        review.approve,
                        review.reason,
                        review.at,
                        channel or review.reviewer.id.partition(":")[0],
                        self.store.replica,
                    ),
                )
            if after.state is HoldState.APPROVED and after.window > 0 and after.decided_at:
                await conn.execute(
                    """
                    INSERT INTO holdgate_windows (agent, digest, until, hold_id)
                    VALUES (%s, %s, %s, %s)
                    ON CONFLICT (agent, digest)
                        DO UPDATE SET until = EXCLUDED.until, hold_id = EXCLUDED.hold_id
                    """,
                    (after.agent, after.digest, after.decided_at + after.window, after.id),
                )
            await self.store.notify(conn, hold_id)
        return before, after, said

    async def get(self, hold_id: str) -> tuple[Hold, str] | None:
        """A hold and the instance holding its request."""
        async with self.store.transaction() as conn:
            cursor = await conn.execute(
                "SELECT hold, instance FROM holdgate_holds WHERE id = %s", (hold_id,)
            )
            row = await cursor.fetchone()
        return (hold_from_dict(row["hold"]), str(row["instance"])) if row else None

    async def pending(self) -> list[Hold]:
        """Every pending hold of every replica, oldest first."""
        async with self.store.transaction() as conn:
            cursor = await conn.execute(
                "SELECT hold FROM holdgate_holds WHERE state = 'pending' ORDER BY created_at"
            )
            rows = await cursor.fetchall()
        return [hold_from_dict(r["hold"]) for r in rows]

    async def recent(self, limit: int = 100) -> list[Hold]:
        """The last decided holds, newest first."""
        async with self.store.transaction() as conn:
            cursor = await conn.execute(
                "SELECT hold FROM holdgate_holds WHERE state <> 'pending' "
                "ORDER BY decided_at DESC NULLS LAST LIMIT %s",
                (limit,),
            )
            rows = await cursor.fetchall()
        return [hold_from_dict(r["hold"]) for r in rows]

    async def window(self, agent: str, digest: str, now: float) -> str | None:
        """The hold whose approval window covers this identical request, if any."""
        async with self.store.transaction() as conn:
            cursor = await conn.execute(
                "SELECT hold_id FROM holdgate_windows WHERE agent = %s AND digest = %s "
                "AND until > %s",
                (agent, digest, now),
            )
            row = await cursor.fetchone()
        return str(row["hold_id"]) if row else None

    async def orphans(self, now: float) -> list[tuple[str, str]]:
        """Pending holds no live replica holds (its lease ran out, or it restarted), or whose
        expiry is long past: (hold id, why)."""
        async with self.store.transaction() as conn:
            cursor = await conn.execute(
                """
                SELECT id, replica, gone FROM (
                    SELECT h.id, h.replica, h.expires_at,
                           NOT EXISTS (SELECT 1 FROM holdgate_replicas r
                                       WHERE r.instance = h.instance AND r.lease_until > now())
                               AS gone
                    FROM holdgate_holds h
                    WHERE h.state = 'pending'
                ) pending
                WHERE gone OR expires_at < %s
                """,
                (now - EXPIRY_GRACE,),
            )
            rows = await cursor.fetchall()
        return [
            (
                str(r["id"]),
                f"the gateway holding the request (replica {r['replica']}) stopped"
                if r["gone"]
                else "",
            )
            for r in rows
        ]

    async def message_refs(self, hold_id: str) -> list[dict[str, str]]:
        """The Slack messages posted for a hold (by whichever replica posted them)."""
        async with self.store.transaction() as conn:
            cursor = await conn.execute(
                "SELECT slack FROM holdgate_holds WHERE id = %s", (hold_id,)
            )
            row = await cursor.fetchone()
        refs = row["slack"] if row else []
        return [dict(r) for r in refs] if isinstance(refs, list) else []

    async def add_message_ref(self, hold_id: str, ref: dict[str, str]) -> None:
        """Remember a Slack message posted for a hold."""
        async with self.store.transaction() as conn:
            await conn.execute(
                "UPDATE holdgate_holds SET slack = slack || %s WHERE id = %s",
                (Jsonb([ref]), hold_id),
            )
