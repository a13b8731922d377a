"""A real PostgreSQL server for tests: initdb in a temporary directory, loopback only, password
authentication (scram-sha-256), stopped and removed at the end.

PostgreSQL refuses to run as root: as root the server runs as the `postgres` user (Debian's
packages create it) through runuser.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

USER = "holdgate"
DATABASE = "holdgate"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def unavailable() -> str:
    """Why no PostgreSQL server can be started here ("" when one can)."""
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) are not on the PATH"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return ""


@dataclass
class PostgresServer:
    """One PostgreSQL cluster on 127.0.0.1 with a database and a password-protected user."""

    directory: Path
    port: int = field(default_factory=_free_port)
    password: str = field(default_factory=lambda: "pg-canary-" + secrets.token_hex(8))

    @property
    def url(self) -> str:
        """The URL a gateway is configured with (no password in it)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=60, check=False, cwd=self.directory
        )

    def init(self) -> None:
        """initdb with the test user as superuser, password authentication only."""
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        secret = self.directory / "pwfile"
        secret.write_text(self.password + "\n")
        if os.geteuid() == 0:
            os.chown(secret, pwd.getpwnam("postgres").pw_uid, -1)
        result = self._run(
            "initdb", "-D", str(self.data), "-U", USER, "--auth=scram-sha-256",
            f"--pwfile={secret}", "--encoding=UTF8", "--no-instructions",
        )  # fmt: skip
        secret.unlink()
        assert result.returncode == 0, result.stderr

    def start(self) -> None:
        """Start the server (again) on its port, loopback and its own socket directory only."""
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.directory} -c fsync=off"
        result = self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.directory / "log"),
            "-w", "-t", "30", "start",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + self.log()

    def stop(self) -> None:
        """Stop the server (fast: open connections are cut)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def log(self) -> str:
        path = self.directory / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def create_database(self) -> None:
        with psycopg.connect(
            f"postgresql://{USER}@127.0.0.1:{self.port}/postgres",
            password=self.password,
            autocommit=True,
        ) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        """Rows of one query against the gateway's database (what the store holds)."""
        with psycopg.connect(self.url, password=self.password, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started server with the gateway's database; stopped and removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="holdgate-pg-"))
    server = PostgresServer(directory)
    try:
        server.init()
        server.start()
        server.create_database()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
