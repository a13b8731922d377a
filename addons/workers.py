"""`holdgate run --workers N`: N gateway processes on one host behind one listen port.

mitmproxy serves from one core. The parent starts N `holdgate run` workers that all listen on
the same port with SO_REUSEPORT, so the kernel spreads agents' connections over them, and then
only supervises: it forwards SIGTERM/SIGINT, and when one worker ends it stops the others and
exits with that worker's status (the orchestrator restarts the whole gateway).

Workers share holds, reviews and approval windows through the state store (required), and the
CA, admin token, mask key and archive signing key (created by the parent before they start).
Each worker is a gateway of its own name (`NAME-wI`) with its own archive chain and spool
(`SPOOL/worker-I`); worker 0 serves the approvals page and reaps; each serves its operations
listener (at the configured port + I when the port is fixed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

WORKER_ENV = "HOLDGATE_WORKER"  # "I/N" in a worker's environment
STOP_GRACE = 40.0  # seconds workers get to answer held requests and seal their archives


@dataclass(frozen=True, slots=True)
class Worker:
    """Which of the host's workers this process is."""

    index: int
    count: int

    @property
    def first(self) -> bool:
        """Worker 0: the approvals page, the reaper and the shared state files are its."""
        return self.index == 0

    def name(self, gateway: str) -> str:
        """This worker's gateway name: its lease and archive chain."""
        return f"{gateway}-w{self.index}"


def current(environ: dict[str, str] | os._Environ[str] = os.environ) -> Worker | None:
    """This process's worker identity, None when it is not one of `--workers`."""
    raw = environ.get(WORKER_ENV, "")
    if not raw:
        return None
    index, _, count = raw.partition("/")
    return Worker(int(index), int(count))


def listen_with_reuse_port() -> None:
    """Make mitmproxy's proxy listeners share their port with the other workers."""
    import asyncio

    from mitmproxy.proxy import mode_servers

    class _ReusePort:
        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

        @staticmethod
        async def start_server(*args: Any, **kwargs: Any) -> asyncio.Server:
            return await asyncio.start_server(*args, reuse_port=True, **kwargs)

    mode_servers.asyncio = _ReusePort()  # type: ignore[assignment]


def supervise(command: Sequence[str], count: int) -> int:
    """Run `count` workers of `command` until one ends (or a signal says stop); its status."""
    workers: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in workers:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(count):
            env = {**os.environ, WORKER_ENV: f"{index}/{count}"}
            workers.append(subprocess.Popen(list(command), env=env))
        print(
            f"holdgate: {count} workers started (pids {', '.join(str(w.pid) for w in workers)})",
            file=sys.stderr,
            flush=True,
        )
        status = _first_exit(workers)
        if not stopping:
            print(
                f"holdgate: a worker ended (status {status}); stopping the others",
                file=sys.stderr,
                flush=True,
            )
        for process in workers:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
        for process in workers:
            try:
                process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        return 0 if stopping else (status or 1)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _first_exit(workers: list[subprocess.Popen[bytes]]) -> int:
    """Block until any worker exits; its status."""
    while True:
        pid, raw = os.wait()
        for process in workers:
            if process.pid == pid:
                process.returncode = os.waitstatus_to_exitcode(raw)
                return process.returncode
