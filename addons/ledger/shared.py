"""The ledger in the replicas' shared state store, and which ledger a configuration uses.

With `state_store`, every replica (and `holdgate resources`, `reap`, `run-end` wherever they
run) reads and writes one ledger in PostgreSQL: what an agent created through any replica is
reported and reaped once. Without it, the ledger is the gateway's own SQLite file.

Calls block (as SQLite's do): each is one short statement on one kept connection, reconnected
once when the database dropped it. When the database is away they raise StateUnavailable;
the entry still reaches the archive on its flow's metadata.
"""

from __future__ import annotations

import os
import time
from typing import Any, Protocol

import psycopg

from holdgate.config.gateway_config import Config
from holdgate.kube.request_info import KubeRequest
from holdgate.ledger.store import Created, Filter, Ledger, ledger_path, matches, object_namespace
from holdgate.state.postgres import StateStoreSettings, StateUnavailable, connect_sync

_COLUMNS = (
    "uid, created_at, agent, run_id, target, api_group, api_version, kind, resource, "
    "namespace, name, expires_at, deleted_at, deleted_by"
)


class LedgerStore(Protocol):
    """What the ownership addon, the reaper and the ledger commands need of a ledger."""

    def record(self, entry: Created) -> None: ...

    def mark_deleted(self, uid: str, by: str, now: float | None = None) -> None: ...

    def mark_deleted_object(
        self, target: str, kube: KubeRequest, by: str, now: float | None = None
    ) -> list[Created]: ...

    def find(self, where: Filter, now: float | None = None) -> list[Created]: ...


def open_ledger(config: Config) -> LedgerStore:
    """The ledger this configuration uses: shared in the state store, else SQLite."""
    settings = StateStoreSettings.from_config(
        config.raw.get("state_store"), os.environ, config.path.parent
    )
    if settings is None:
        return Ledger(ledger_path(config.state_dir))
    return SharedLedger(settings)


class SharedLedger:
    """The ledger in PostgreSQL (table holdgate_ledger)."""

    def __init__(self, settings: StateStoreSettings) -> None:
        self.settings = settings
        self._conn: psycopg.Connection[Any] | None = None

    def _execute(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        for attempt in (1, 2):
            if self._conn is None or self._conn.closed:
                self._conn = connect_sync(self.settings)
            try:
                cursor = self._conn.execute(sql, params)
                return list(cursor.fetchall()) if cursor.description else []
            except psycopg.OperationalError as e:
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise StateUnavailable(f"the ledger's database failed: {e}") from e
        return []

    def record(self, entry: Created) -> None:
        """Add an object (a re-create with the same uid is ignored)."""
        values = entry.as_dict()
        self._execute(
            f"INSERT INTO holdgate_ledger ({_COLUMNS}) VALUES "
            "(%(uid)s, %(created_at)s, %(agent)s, %(run_id)s, %(target)s, %(api_group)s, "
            "%(api_version)s, %(kind)s, %(resource)s, %(namespace)s, %(name)s, %(expires_at)s, "
            "%(deleted_at)s, %(deleted_by)s) ON CONFLICT (uid) DO NOTHING",
            values,
        )

    def mark_deleted(self, uid: str, by: str, now: float | None = None) -> None:
        """Note that an object is gone (deleted by someone, or found missing)."""
        self._execute(
            "UPDATE holdgate_ledger SET deleted_at = %s, deleted_by = %s "
            "WHERE uid = %s AND deleted_at IS NULL",
            (now or time.time(), by, uid),
        )

    def mark_deleted_object(
        self, target: str, kube: KubeRequest, by: str, now: float | None = None
    ) -> list[Created]:
        """Note that the object a DELETE named is gone; returns the entries it closed."""
        rows = self._execute(
            f"UPDATE holdgate_ledger SET deleted_at = %s, deleted_by = %s "
            "WHERE name = %s AND namespace = %s AND resource = %s AND api_group = %s "
            f"AND target = %s AND deleted_at IS NULL RETURNING {_COLUMNS}",
            (
                now or time.time(),
                by,
                kube.name,
                object_namespace(kube),
                kube.resource,
                kube.api_group,
                target,
            ),
        )
        return [Created(**row) for row in rows]

    def find(self, where: Filter, now: float | None = None) -> list[Created]:
        """Entries matching a filter, oldest first."""
        now = now or time.time()
        rows = self._execute(f"SELECT {_COLUMNS} FROM holdgate_ledger ORDER BY created_at")
        return [e for e in (Created(**row) for row in rows) if matches(e, where, now)]
