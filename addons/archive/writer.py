"""The archive writer process: the gateway's store, run in a child process (`serve`)."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from holdgate.archive.durable_files import write_all
from holdgate.archive.flow_format import Preserialized
from holdgate.archive.records import Submission
from holdgate.archive.store import ArchiveStore

# The gateway runs the store in a child process so that encoding, fsync and uploads (boto3)
# never compete with mitmproxy's event loop for the GIL. Frames are length-prefixed pickles
# over the child's stdin and stdout (a private pipe between a process and its own child).
#
# gateway -> writer: ("start", settings, gateway) first, then
#   ("flow", token, state, client_conn, server_conn, captured, request_body, builtin_mask, wait)
#   with the connection states as pickles (shared by the flows of a connection),
#   ("rotate" | "drain", token, timeout), ("stop", timeout); end of file without "stop": the
#   gateway was killed.
# writer -> gateway: ("status", {...}), ("ack", ok, [tokens]), ("done", token, ok),
#   ("log", level, message).

FRAME_HEADER = struct.Struct("!I")
# Flows no response waits for are gathered this long (or this many) per fsync.
BATCH_WINDOW = 0.05
BATCH_MAX = 1000
WRITER_COMMAND = "import sys; from holdgate.archive.writer import serve; sys.exit(serve())"


def frame(message: Any) -> bytes:
    """One message on the writer pipe."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME_HEADER.pack(len(data)) + data


def take_frames(buffer: bytearray) -> Iterator[Any]:
    """The complete messages at the start of `buffer`, consumed from it."""
    header = FRAME_HEADER.size
    while len(buffer) >= header:
        (size,) = FRAME_HEADER.unpack_from(buffer)
        if len(buffer) < header + size:
            return
        data = bytes(buffer[header : header + size])
        del buffer[: header + size]
        yield pickle.loads(data)


class _ForwardLogs(logging.Handler):
    def __init__(self, send: Callable[[Any], None]) -> None:
        super().__init__(logging.INFO)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.send(("log", record.levelno, record.getMessage()))


def serve(stdin_fd: int = 0, stdout_fd: int = 1) -> int:
    """The archive writer process: run a store for the gateway that started it.

    One thread reads the pipe and writes the spool (a batch is whatever arrived since the last
    fsync); the uploader and webhook threads run beside it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the gateway; it stops us
    out_lock = threading.Lock()
    gateway_gone = threading.Event()

    def send(message: Any) -> None:
        data = frame(message)
        with out_lock:
            if gateway_gone.is_set():
                return
            try:
                write_all(stdout_fd, data)
            except OSError:
                # The gateway was killed (EPIPE): what its pipe still holds is written all the
                # same, and nobody reads our reports any more.
                gateway_gone.set()

    holdgate_log = logging.getLogger("holdgate")
    holdgate_log.addHandler(_ForwardLogs(send))
    holdgate_log.setLevel(logging.INFO)
    holdgate_log.propagate = False
    buffer = bytearray()
    while not buffer or len(buffer) < FRAME_HEADER.size + FRAME_HEADER.unpack_from(buffer)[0]:
        first = os.read(stdin_fd, 1 << 20)
        if not first:
            return 2
        buffer += first
    start = next(take_frames(buffer))
    if start[0] != "start":
        return 2
    _, settings, gateway = start
    acks: list[int] = []
    acks_lock = threading.Lock()

    def acknowledge(batch: Sequence[Submission], ok: bool) -> None:
        tokens = [sub.token for sub in batch if sub.token is not None]
        with acks_lock:
            if ok and not any(sub.urgent for sub in batch):
                acks.extend(tokens)  # nobody waits: the next status tick reports them
                return
            if ok:
                tokens, acks[:] = acks + tokens, []
        send(("ack", ok, tokens))

    def flush_acks() -> None:
        with acks_lock:
            tokens, acks[:] = list(acks), []
        if tokens:
            send(("ack", True, tokens))

    store = ArchiveStore(settings, gateway, on_durable=acknowledge)
    # Until the spool is ours (a killed gateway's writer may still be finishing), nothing is
    # read: flows wait in the pipe and the gateway refuses what needs a record.
    while True:
        send(
            ("status", {"can_record": False, "error": "the archive is starting", "starting": True})
        )
        store.start(lock_timeout=1.0, threaded=False)
        if store.writer is not None:
            break
        send(("status", {"can_record": False, "error": store.last_error}))
        if select.select([stdin_fd], [], [], 1.0)[0]:
            more = os.read(stdin_fd, 1 << 20)
            if not more:
                return 1  # the gateway is gone
            buffer += more
    stopped = threading.Event()

    def report_status() -> None:
        last: tuple[bool, str] | None = None
        last_health: dict[str, Any] | None = None
        ticks = 0
        while True:
            current = (store.can_record(), store.last_error)
            if current != last:
                send(("status", {"can_record": current[0], "error": current[1]}))
                last = current
            flush_acks()
            ticks += 1
            if ticks % 10 == 1:  # the spool's backlog, once a second, when it changed
                health: dict[str, Any] | None = None
                with contextlib.suppress(OSError):  # a failing spool: the status says so
                    health = store.health()
                if health is not None and health != last_health:
                    send(("health", health))
                    last_health = health
            if stopped.wait(0.1):
                return

    threading.Thread(target=report_status, name="holdgate-archive-status", daemon=True).start()
    connections: dict[bytes, Preserialized] = {}
    # End of file without a stop: the gateway was killed. Its successor waits for the spool, so
    # uploads are left to it; an upload under way gets up to stop_timeout to finish.
    stop_timeout, upload = 2.0, False
    os.set_blocking(stdin_fd, False)
    finished = False
    batch: list[Submission] = []
    controls: list[tuple[str, int, float]] = []
    batch_due = 0.0
    while not finished and store.writer is not None:
        writer = store.writer
        waits = [w for w in (writer.wait_time(),) if w is not None]
        if batch:
            waits.append(batch_due - time.monotonic())
        select.select([stdin_fd], [], [], max(0.0, min(waits)) if waits else None)
        try:
            chunk: bytes | None = os.read(stdin_fd, 1 << 20)
        except BlockingIOError:
            chunk = None
        if chunk == b"":
            finished = True
        elif chunk:
            buffer += chunk
        urgent = False
        for message in take_frames(buffer):
            kind = message[0]
            if kind == "flow":
                _, token, state, client, server, captured, request_body, builtin, wait = message
                if str(state.get("id")) in store.recovered:
                    send(("ack", True, [token]))  # written before a crash, resent: keep one copy
                    continue
                state["client_conn"] = _connection(connections, client)
                state["server_conn"] = _connection(connections, server)
                if not batch:
                    batch_due = time.monotonic() + BATCH_WINDOW
                batch.append(Submission(state, captured, request_body, None, builtin, token, wait))
                urgent = urgent or wait
            elif kind in ("rotate", "drain"):
                controls.append(message)
            elif kind == "stop":
                stop_timeout, upload, finished = message[1], True, True
        # A response waits: write now. Otherwise gather flows for one fsync per window.
        if (
            urgent
            or controls
            or finished
            or len(batch) >= BATCH_MAX
            or (batch and time.monotonic() >= batch_due)
        ):
            writer.write(batch, rotate=bool(controls))
            batch = []
        else:
            writer.write((), rotate=False)  # age rotation and retries
        for kind, token, timeout in controls:
            if kind == "rotate":
                send(("done", token, True))
            else:
                threading.Thread(
                    target=lambda t=token, w=timeout: send(("done", t, store.wait_uploaded(w))),
                    daemon=True,
                ).start()
        controls = []
    store.stop(timeout=stop_timeout, upload=upload)
    stopped.set()
    flush_acks()
    send(("status", {"can_record": False, "error": "the archive writer stopped"}))
    return 0


def _connection(cache: dict[bytes, Preserialized], pickled: bytes) -> Preserialized:
    shared = cache.get(pickled)
    if shared is None:
        if len(cache) >= 4096:
            cache.clear()
        shared = cache[pickled] = Preserialized(pickle.loads(pickled))
    return shared
