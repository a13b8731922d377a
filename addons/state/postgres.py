"""PostgreSQL as the replicas' shared state: settings, connections, migrations, the lease.

One connection runs transactions (serialised: holds are few, and each transaction is short),
another LISTENs for what other replicas changed. A supervisor keeps both connected: when the
database goes away the store is `up = False` (holds are refused, nothing is approved), and it
reconnects by itself with backoff, re-applying nothing but the lease and the listener.

Each gateway process is a replica with a name (its `gateway.name`) and an instance id (random
per start). Its lease, renewed every third of `lease` seconds with the database's clock, says
it is alive; a name another live instance holds is refused at start, after waiting out one
lease (a restarted pod keeps its name).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import dict_row

log = logging.getLogger("holdgate")

PASSWORD_ENV = "HOLDGATE_STATE_STORE_PASSWORD"
CHANNEL = "holdgate_holds"
DEFAULT_LEASE = 15.0
OPERATION_TIMEOUT = 5.0  # seconds any one database operation may take before the store is down
_LOCK_KEY = 0x686F6C64  # pg_advisory_xact_lock key for migrations ("hold")

# Applied in order at start, each once, under an advisory lock (replicas start together).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE holdgate_replicas (
        name text PRIMARY KEY,
        instance text NOT NULL,
        started_at timestamptz NOT NULL,
        lease_until timestamptz NOT NULL
    );
    CREATE TABLE holdgate_holds (
        id text PRIMARY KEY,
        replica text NOT NULL,
        instance text NOT NULL,
        state text NOT NULL,
        agent text NOT NULL,
        rule text NOT NULL,
        created_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        decided_at double precision,
        hold jsonb NOT NULL,
        slack jsonb NOT NULL DEFAULT '[]'::jsonb
    );
    CREATE INDEX holdgate_holds_pending ON holdgate_holds (created_at) WHERE state = 'pending';
    CREATE INDEX holdgate_holds_decided ON holdgate_holds (decided_at);
    CREATE TABLE holdgate_reviews (
        hold_id text NOT NULL REFERENCES holdgate_holds (id),
        reviewer text NOT NULL,
        name text NOT NULL,
        approve boolean NOT NULL,
        reason text NOT NULL,
        at double precision NOT NULL,
        channel text NOT NULL,
        replica text NOT NULL
    );
    CREATE INDEX holdgate_reviews_hold ON holdgate_reviews (hold_id);
    CREATE TABLE holdgate_windows (
        agent text NOT NULL,
        digest text NOT NULL,
        until double precision NOT NULL,
        hold_id text NOT NULL,
        PRIMARY KEY (agent, digest)
    );
    """,
    # The ledger of what agents created (ledger/shared.py), one for every replica.
    """
    CREATE TABLE holdgate_ledger (
        uid text PRIMARY KEY,
        created_at double precision NOT NULL,
        agent text NOT NULL,
        run_id text NOT NULL,
        target text NOT NULL,
        api_group text NOT NULL,
        api_version text NOT NULL,
        kind text NOT NULL,
        resource text NOT NULL,
        namespace text NOT NULL,
        name text NOT NULL,
        expires_at double precision,
        deleted_at double precision,
        deleted_by text NOT NULL DEFAULT ''
    );
    CREATE INDEX holdgate_ledger_object ON holdgate_ledger (name, namespace);
    """,
)


class StateUnavailable(Exception):
    """The shared state store cannot be reached: nothing is recorded, so nothing is approved."""


class ReplicaNameTaken(Exception):
    """Another live gateway holds the lease of this replica's name."""


@dataclass(frozen=True, slots=True)
class StateStoreSettings:
    """`state_store:` as configured: a PostgreSQL URL without its password, the password (from
    $HOLDGATE_STATE_STORE_PASSWORD or `password_file`; libpq's PGPASSWORD and ~/.pgpass work
    too), and the lease of each replica in seconds."""

    url: str
    password: str = field(default="", repr=False)
    lease: float = DEFAULT_LEASE

    @classmethod
    def from_config(
        cls, raw: Any, environ: Mapping[str, str], base: Path | None = None
    ) -> StateStoreSettings | None:
        """The settings, None when the config has no `state_store` (ValueError: misconfigured)."""
        if raw is None:
            return None
        section = {"url": raw} if isinstance(raw, str) else dict(raw)
        url = str(section.get("url") or "")
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise ValueError(f"state_store: {url!r} is not a postgresql://HOST/DATABASE URL")
        if parts.password is not None:
            raise ValueError(
                f"state_store: the URL carries a password; give it in ${PASSWORD_ENV} or "
                "state_store.password_file, never in the configuration"
            )
        password = environ.get(PASSWORD_ENV, "")
        if not password and section.get("password_file"):
            path = Path(str(section["password_file"]))
            if base is not None and not path.is_absolute():
                path = base / path
            try:
                password = path.read_text().strip()
            except OSError as e:
                raise ValueError(f"state_store.password_file: cannot read {path}: {e}") from e
        lease = float(section.get("lease_seconds") or DEFAULT_LEASE)
        return cls(url=url, password=password, lease=lease)

    def connect_kwargs(self) -> dict[str, Any]:
        """psycopg's connection options: autocommit, a connect timeout, the password if any."""
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": 5}
        if self.password:
            kwargs["password"] = self.password
        return kwargs

    @property
    def shown(self) -> str:
        """The URL as logs may show it (it never holds the password)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"


Listener = Callable[[str], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]


class StateStore:
    """The connections to PostgreSQL of one replica, kept alive by a supervisor task."""

    def __init__(self, settings: StateStoreSettings, replica: str) -> None:
        self.settings = settings
        self.replica = replica
        self.instance = secrets.token_hex(8)
        self.up = False
        self.problem = "not connected yet"
        self.listeners: list[Listener] = []
        self.on_connected: list[Hook] = []  # after each (re)connect: reload what is mirrored
        self.on_tick: list[Hook] = []  # after each lease renewal: sweep what died
        self._tx: psycopg.AsyncConnection[Any] | None = None
        self._listen: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._stopping = False

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, wait: float = 10.0) -> None:
        """Connect (waiting up to `wait` seconds, else carry on down and keep trying); a name
        another live instance holds is ReplicaNameTaken."""
        first = asyncio.get_running_loop().create_future()
        self._supervisor = asyncio.create_task(self._supervise(first))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(first), wait + self.settings.lease)
        if first.done() and first.exception() is not None:
            raise first.exception()  # type: ignore[misc]

    async def stop(self) -> None:
        """Give up the lease (others see this replica gone at once) and disconnect."""
        self._stopping = True
        if self.up:
            with contextlib.suppress(Exception):
                async with self.transaction() as conn:
                    await conn.execute(
                        "UPDATE holdgate_replicas SET lease_until = now() WHERE instance = %s",
                        (self.instance,),
                    )
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        await self._close()

    async def _supervise(self, first: asyncio.Future[None]) -> None:
        backoff = 0.2
        while not self._stopping:
            try:
                await self._connect(claim_wait=self.settings.lease if not first.done() else 0)
                backoff = 0.2
                self._mark(up=True, problem="")
                for hook in self.on_connected:
                    await hook()
                if not first.done():
                    first.set_result(None)
                await self._serve()
            except asyncio.CancelledError:
                raise
            except ReplicaNameTaken as e:
                self._mark(up=False, problem=str(e))
                if not first.done():
                    first.set_exception(e)
                    return
            except Exception as e:  # psycopg.Error, OSError, TimeoutError: the database is away
                self._mark(up=False, problem=f"{type(e).__name__}: {_one_line(e)}")
            await self._close()
            if self._stopping:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _mark(self, *, up: bool, problem: str) -> None:
        if up and not self.up:
            log.info("state store %s: connected (replica %s)", self.settings.shown, self.replica)
        elif not up and (self.up or problem != self.problem):
            log.error(
                "state store %s unreachable: %s; holds are refused until it is back",
                self.settings.shown,
                problem,
            )
        self.up = up
        self.problem = problem
        if up:
            self._connected.set()
        else:
            self._connected.clear()

    async def _connect(self, claim_wait: float) -> None:
        kwargs = self.settings.connect_kwargs()
        url = self.settings.url
        self._tx = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(url, row_factory=dict_row, **kwargs),
            OPERATION_TIMEOUT,
        )
        await self._migrate()
        await self._claim(claim_wait)
        listen = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(url, **kwargs), OPERATION_TIMEOUT
        )
        await listen.execute(f"LISTEN {CHANNEL}")
        self._listen = listen

    async def _close(self) -> None:
        for conn in (self._tx, self._listen):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._tx = self._listen = None

    async def _migrate(self) -> None:
        async with self.transaction(require_up=False) as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS holdgate_schema "
                "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cursor = await conn.execute(
                "SELECT coalesce(max(version), 0) AS v FROM holdgate_schema"
            )
            row = await cursor.fetchone()
            applied = int(row["v"]) if row else 0
            for version, sql in enumerate(MIGRATIONS[applied:], start=applied + 1):
                await conn.execute(sql)
                await conn.execute("INSERT INTO holdgate_schema (version) VALUES (%s)", (version,))
                log.info("state store: schema migration %d applied", version)

    async def _claim(self, wait: float) -> None:
        """Take this replica's lease, waiting out (once, up to `wait`) another instance's."""
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            async with self.transaction(require_up=False) as conn:
                cursor = await conn.execute(
                    """
                    INSERT INTO holdgate_replicas AS r (name, instance, started_at, lease_until)
                    VALUES (%(name)s, %(instance)s, now(), now() + make_interval(secs => %(lease)s))
                    ON CONFLICT (name) DO UPDATE
                        SET instance = EXCLUDED.instance, started_at = EXCLUDED.started_at,
                            lease_until = EXCLUDED.lease_until
                        WHERE r.instance = EXCLUDED.instance OR r.lease_until < now()
                    RETURNING name
                    """,
                    {"name": self.replica, "instance": self.instance, "lease": self.settings.lease},
                )
                if await cursor.fetchone() is not None:
                    return
            if asyncio.get_running_loop().time() >= deadline:
                raise ReplicaNameTaken(
                    f"another running gateway is replica {self.replica!r} (its lease is live): "
                    "give each replica its own gateway.name (the pod name by default)"
                )
            await asyncio.sleep(min(1.0, self.settings.lease / 3))

    async def _serve(self) -> None:
        """Listen and renew the lease until either fails."""
        tasks = [
            asyncio.create_task(self._listen_loop()),
            asyncio.create_task(self._lease_loop()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _listen_loop(self) -> None:
        assert self._listen is not None
        async for notice in self._listen.notifies():
            for listener in self.listeners:
                try:
                    await listener(notice.payload)
                except Exception:
                    log.exception("state store: handling a change of %s failed", notice.payload)
        raise ConnectionError("the listening connection closed")

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease / 3)
            async with self.transaction() as conn:
                cursor = await conn.execute(
                    "UPDATE holdgate_replicas SET lease_until = now() + make_interval(secs => %s) "
                    "WHERE instance = %s RETURNING name",
                    (self.settings.lease, self.instance),
                )
                if await cursor.fetchone() is None:
                    # Declared dead while away (its holds were closed by others): claim anew.
                    await self._claim(0)
            for hook in self.on_tick:
                try:
                    await hook()
                except StateUnavailable:
                    raise
                except Exception:
                    log.exception("state store: periodic sweep failed")

    # --- use ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(
        self, require_up: bool = True
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """One transaction on the shared connection; StateUnavailable when the store is down
        or the database fails (the connection is then dropped and the supervisor reconnects)."""
        if require_up and not self.up:
            raise StateUnavailable(f"the state store is unreachable ({self.problem})")
        async with self._lock:
            conn = self._tx
            if conn is None or conn.closed:
                raise StateUnavailable("the state store is not connected")
            try:
                async with asyncio.timeout(OPERATION_TIMEOUT), conn.transaction():
                    yield conn
            except (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError) as e:
                self._mark(up=False, problem=f"{type(e).__name__}: {_one_line(e)}")
                with contextlib.suppress(Exception):
                    await conn.close()  # the supervisor's listener fails too, and reconnects
                raise StateUnavailable(f"the state store failed: {_one_line(e)}") from e

    @staticmethod
    async def notify(conn: psycopg.AsyncConnection[Any], payload: str) -> None:
        """Tell every replica (this one too) at commit that `payload` changed."""
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


_SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS holdgate_schema "
    "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
)
_APPLIED = "SELECT coalesce(max(version), 0) AS v FROM holdgate_schema"
_RECORD = "INSERT INTO holdgate_schema (version) VALUES (%s)"


def _pending(applied: Mapping[str, Any] | None) -> list[tuple[int, str]]:
    done = int(applied["v"]) if applied else 0
    return list(enumerate(MIGRATIONS[done:], start=done + 1))


def connect_sync(settings: StateStoreSettings) -> psycopg.Connection[Any]:
    """A blocking connection for commands and the ledger, the schema brought up to date
    (StateUnavailable when the database cannot be reached)."""
    try:
        conn = psycopg.connect(settings.url, row_factory=dict_row, **settings.connect_kwargs())
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            conn.execute(_SCHEMA_TABLE)
            for version, sql in _pending(conn.execute(_APPLIED).fetchone()):
                conn.execute(sql)
                conn.execute(_RECORD, (version,))
    except psycopg.Error as e:
        raise StateUnavailable(f"the state store {settings.shown}: {_one_line(e)}") from e
    return conn


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
