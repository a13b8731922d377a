"""The archive addon: every flow, masked, into the audit archive (see addons/archive/store.py).

Add it after every addon that decides, masks or streams (it must see the final flow), then
call `configure_settings` once the configuration is loaded. On the event loop the hooks only
take a copy of the flow's state and write it to a pipe: a writer process (started by this
addon) sanitizes, encodes, fsyncs and uploads, so archive work never holds mitmproxy's GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import pickle
import select
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mitmproxy import connection, ctx, exceptions, http, version

from holdgate.archive.records import Captured, plain
from holdgate.archive.spool import MAX_PENDING
from holdgate.archive.writer import WRITER_COMMAND, frame, take_frames
from holdgate.config.archive_settings import (
    ArchiveSettings,
    RequireFor,
    is_privileged,
    waits_for_fsync,
)

log = logging.getLogger("holdgate.archive")

# How long a response waits for its record to be durable before it is released anyway.
RESPONSE_WAIT = 10.0
_REMEMBERED = 100_000
_WITHHELD = (
    b'{"holdgate":"body withheld from the archive: the gateway did not mask it"}',
    "application/json",
)
_NOTED = 10_000
# fcntl.F_SETPIPE_SZ (Linux; Python 3.10+ names it, older type stubs may not) and the pipe
# size asked for (the unprivileged maximum by default).
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_BYTES = 1 << 20
# Flows kept for a writer that confirms nothing (a failed disk); beyond this the oldest go.
HARD_LIMIT = MAX_PENDING * 10

StreamModifier = Callable[[bytes], Iterable[bytes] | bytes]
Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Future[bool]]


class Archive:
    """Records allowed, denied, held, errored, streamed and WebSocket flows in the archive."""

    def __init__(self) -> None:
        self.settings: ArchiveSettings | None = None
        self.gateway_name = "holdgate"
        self.writer: WriterProcess | None = None
        # True once the gateway masks: responses arrive masked, request bodies via note_request_body.
        self.masked_by_gateway = False
        self._request_bodies: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._captures: dict[str, Captured] = {}
        self._recorded: OrderedDict[str, None] = OrderedDict()
        self._connections = ConnectionStates()

    # --- wiring ----------------------------------------------------------------------------------

    def configure_settings(self, settings: ArchiveSettings, gateway_name: str) -> None:
        """Start archiving with these settings (restarting the writer if it ran with others)."""
        if self.writer is not None:
            if self.settings == settings and self.gateway_name == gateway_name:
                return
            self.writer.stop()
        self.settings, self.gateway_name = settings, gateway_name
        self.writer = WriterProcess(settings, gateway_name)
        self.writer.start()

    def note_request_body(self, flow: http.HTTPFlow, body: bytes, content_type: str) -> None:
        """The request body to archive for this flow, as the gateway's masks render it.

        With `masked_by_gateway` set, a request body nobody noted is withheld from the archive.
        """
        self._request_bodies[flow.id] = (body, content_type)
        if len(self._request_bodies) > _NOTED:
            self._request_bodies.popitem(last=False)

    def record_extra(self, flow: http.HTTPFlow) -> None:
        """A flow the gateway made itself (the follow-up PATCH of a create): archived as is."""
        content_type = flow.request.headers.get("content-type", "")
        self.note_request_body(flow, flow.request.raw_content or b"", content_type)
        self._record(flow)

    def can_record(self) -> bool:
        """Whether flows can be written to the spool now."""
        return self.writer is not None and self.writer.can_record()

    def refusal_reason(self, request: Mapping[str, Any], action: str) -> str | None:
        """Why this request must be refused (the spool cannot be written), or None."""
        settings = self.settings
        if settings is None or settings.require_for is RequireFor.NONE or self.can_record():
            return None
        if settings.require_for is RequireFor.PRIVILEGED and not is_privileged(request, action):
            return None
        error = self.writer.last_error if self.writer else "the archive is not configured"
        return (
            f"the audit archive cannot record this request ({error}); "
            f"refused by archive.require_for: {settings.require_for}"
        )

    # --- lifecycle -------------------------------------------------------------------------------

    def done(self) -> None:
        if self.writer is not None:
            log.info("archive: stopping: closing the open segment and uploading what is left")
            self.writer.stop()

    # --- hooks -----------------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Keep a bounded copy of a streamed body, chained after whatever masks the stream."""
        if self.writer is None or flow.response is None or not flow.response.stream:
            return
        assert self.settings is not None
        capture = Captured(self.settings.capture_bytes)
        self._captures[flow.id] = capture
        flow.response.stream = _recording(flow.response.stream, capture)

    async def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is not None:
            return  # recorded with its messages at websocket_end
        wait = self.settings is not None and waits_for_fsync(
            self.settings.fsync_before_response, flow.metadata.get("holdgate") or {}
        )
        future = self._record(flow, wait=wait)
        if future is None:
            # Without the fsync wait the response still waits while the record is only in this
            # process (the pipe to the writer is full): once in the pipe it outlives our death.
            drained = self.writer.drained() if self.writer is not None else None
            if drained is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(drained, RESPONSE_WAIT)
            return
        try:
            durable = await asyncio.wait_for(future, RESPONSE_WAIT)
        except TimeoutError:
            durable = False
        if not durable:
            log.warning("archive: flow %s released before its record was durable", flow.id)

    def error(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        """A refused CONNECT (undeclared host, missing proxy credentials) is a flow too."""
        self._record(flow)

    # --- helpers ---------------------------------------------------------------------------------

    def _record(self, flow: http.HTTPFlow, wait: bool = False) -> asyncio.Future[bool] | None:
        writer = self.writer
        if writer is None or flow.id in self._recorded:
            return None
        self._recorded[flow.id] = None
        if len(self._recorded) > _REMEMBERED:
            self._recorded.popitem(last=False)
        capture = self._captures.pop(flow.id, None)
        request_body = self._request_bodies.pop(flow.id, None)
        if request_body is None and self.masked_by_gateway and flow.request.raw_content:
            request_body = _WITHHELD  # fail closed: never archive a body nobody masked
        waiter: Waiter | None = None
        loop = asyncio.get_running_loop()
        if writer.loop is not loop:
            writer.attach(loop)
        if wait:
            waiter = (loop, loop.create_future())
        writer.submit(
            snapshot(flow),
            self._connections.get(flow.client_conn),
            self._connections.get(flow.server_conn),
            capture,
            request_body,
            not self.masked_by_gateway,
            waiter,
        )
        return waiter[1] if waiter else None


class ConnectionStates:
    """Pickled connection states by connection id, taken again only when a connection changed."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._states: OrderedDict[str, tuple[tuple[Any, ...], bytes]] = OrderedDict()

    def get(self, conn: connection.Connection) -> bytes:
        """The connection's state (pickled), shared by the flows of a keep-alive connection."""
        # Attributes compare by identity first, so an unchanged connection costs little.
        fingerprint = tuple(vars(conn).values())
        cached = self._states.get(conn.id)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        state = pickle.dumps(conn.get_state(), protocol=pickle.HIGHEST_PROTOCOL)
        self._states[conn.id] = (fingerprint, state)
        self._states.move_to_end(conn.id)
        if len(self._states) > self.size:
            self._states.popitem(last=False)
        return state


def snapshot(flow: http.HTTPFlow) -> dict[str, Any]:
    """A copy of the flow's state as `flow.get_state()` gives it, minus what is never archived.

    Connection states are sent separately (shared by a connection's flows); only holdgate's
    metadata is copied (mitmproxy's `proxyauth` holds a password); `_backup` (an unmasked
    original) is left out.
    """
    return {
        "version": version.FLOW_FORMAT_VERSION,
        "type": flow.type,
        "id": flow.id,
        "error": flow.error.get_state() if flow.error else None,
        "client_conn": None,
        "server_conn": None,
        "intercepted": flow.intercepted,
        "is_replay": flow.is_replay,
        "marked": flow.marked,
        # Pickled at once by `WriterProcess.submit` (which falls back to `plain` if it cannot be).
        "metadata": {"holdgate": flow.metadata.get("holdgate") or {}},
        "comment": flow.comment,
        "timestamp_created": flow.timestamp_created,
        "backup": None,
        "request": _as_asked(flow),
        "response": flow.response.get_state() if flow.response else None,
        "websocket": flow.websocket.get_state() if flow.websocket else None,
    }


def _as_asked(flow: http.HTTPFlow) -> dict[str, Any]:
    """The request's state with the scheme, host and port the agent asked for (the gateway
    routed it to its target's upstream, kept in the metadata as `upstream`)."""
    state = flow.request.get_state()
    asked = (flow.metadata.get("holdgate") or {}).get("asked")
    if isinstance(asked, Mapping):
        state = {
            **state,
            "scheme": str(asked["scheme"]).encode(),
            "host": str(asked["host"]),
            "port": int(asked["port"]),
        }
    return state


def _recording(previous: StreamModifier | bool, capture: Captured) -> StreamModifier:
    """A stream modifier that runs `previous` (if callable) and keeps what it lets through."""

    def stream(data: bytes) -> Iterable[bytes] | bytes:
        out = previous(data) if callable(previous) else data
        if isinstance(out, bytes):
            capture.add(out)
            return out
        chunks = list(out)
        for chunk in chunks:
            capture.add(chunk)
        return chunks

    return stream


class WriterProcess:
    """The archive writer process, from the gateway's side: flows out, acknowledgements back.

    Everything runs on the event loop and never blocks it: the pipe to the writer is
    non-blocking (what does not fit waits in a buffer flushed when the pipe drains) and
    acknowledgements are read by the loop itself, so no gateway thread contends for the GIL.
    Flows stay in memory until the writer has made them durable; if the writer dies, a new
    one is started and they are sent again (the writer drops what it already holds).
    """

    def __init__(self, settings: ArchiveSettings, gateway: str) -> None:
        self.settings = settings
        self.gateway = gateway
        self.status: dict[str, Any] = {
            "can_record": False,
            "error": "the archive is starting",
            "starting": True,
        }
        # The spool's backlog and the uploads' record, reported by the writer once a second.
        self.health: dict[str, Any] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tokens = itertools.count(1)
        self._unacked: dict[int, tuple[bytes, Waiter | None]] = {}
        self._controls: dict[int, asyncio.Future[bool]] = {}
        self._out = bytearray()
        self._drained: list[asyncio.Future[None]] = []
        self._in = bytearray()
        self._stopping = False
        self.dropped = 0

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start the writer and wait (bounded) for its first report on the spool."""
        self._spawn()
        self._flush_blocking(timeout)
        deadline = time.monotonic() + timeout
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while self.status.get("starting"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                log.error("archive: the writer did not report within %.0fs", timeout)
                break
            if not self._receive(fd):
                break
        with contextlib.suppress(RuntimeError):
            self.attach(asyncio.get_running_loop())

    def _spawn(self) -> None:
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER_COMMAND],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert process.stdin is not None and process.stdout is not None
        with contextlib.suppress(OSError):
            # A larger pipe (Linux) takes bursts without records waiting in this process.
            fcntl.fcntl(process.stdin.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
        os.set_blocking(process.stdin.fileno(), False)
        os.set_blocking(process.stdout.fileno(), False)
        self.process = process
        self._out.clear()
        self._in.clear()
        self._send(frame(("start", self.settings, self.gateway)))

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read acknowledgements on this event loop (the gateway's)."""
        if self.loop is loop or self.process is None or self.process.stdout is None:
            return
        self.loop = loop
        loop.add_reader(self.process.stdout.fileno(), self._on_readable, self.process)
        if self._out:
            loop.add_writer(self.process.stdin.fileno(), self._on_writable)  # type: ignore[union-attr]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the writer: it closes the open segment and tries a last upload within `timeout`."""
        self._stopping = True
        process = self.process
        if process is None:
            return
        self._detach()
        self._send(frame(("stop", timeout)))
        deadline = time.monotonic() + timeout + 5
        self._flush_blocking(timeout)
        if process.stdin is not None:
            process.stdin.close()
        assert process.stdout is not None
        fd = process.stdout.fileno()
        while time.monotonic() < deadline:
            ready = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]
            if not ready or not self._receive(fd):
                break
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("archive: the writer did not stop in time; killed")
            process.kill()
            process.wait(5)
        if self._unacked:
            log.error("archive: %d flows were never confirmed durable", len(self._unacked))

    def _detach(self) -> None:
        if self.loop is not None and self.process is not None:
            assert self.process.stdin is not None and self.process.stdout is not None
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(self.process.stdout.fileno())
            if not self.process.stdin.closed:
                with contextlib.suppress(ValueError, OSError):
                    self.loop.remove_writer(self.process.stdin.fileno())
        self.loop = None

    # --- requests --------------------------------------------------------------------------------

    def submit(
        self,
        state: dict[str, Any],
        client_conn: bytes,
        server_conn: bytes,
        captured: Captured | None,
        request_body: tuple[bytes, str] | None,
        builtin_mask: bool,
        waiter: Waiter | None,
    ) -> None:
        """Send one flow to the writer."""
        token = next(self._tokens)
        message = (
            "flow",
            token,
            state,
            client_conn,
            server_conn,
            captured,
            request_body,
            builtin_mask,
            waiter is not None,
        )
        try:
            data = frame(message)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError):
            # Something in the metadata does not pickle: send it as plain data instead.
            state["metadata"] = {"holdgate": plain(state["metadata"].get("holdgate"))}
            data = frame(message)
        if len(self._unacked) >= HARD_LIMIT:
            # The writer has not confirmed anything for very long: keep memory bounded.
            oldest = next(iter(self._unacked))
            dropped = self._unacked.pop(oldest)[1]
            if dropped is not None and not dropped[1].done():
                dropped[1].set_result(False)
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.error("archive: %d flows dropped: the writer confirms nothing", self.dropped)
        self._unacked[token] = (data, waiter)
        self._send(data)

    async def control(self, kind: str, timeout: float) -> bool:
        """Ask the writer to rotate or drain; True when it did within `timeout`."""
        loop = asyncio.get_running_loop()
        self.attach(loop)
        token = next(self._tokens)
        future: asyncio.Future[bool] = loop.create_future()
        self._controls[token] = future
        self._send(frame((kind, token, timeout)))
        try:
            return await asyncio.wait_for(future, timeout + 5)
        except TimeoutError:
            return False
        finally:
            self._controls.pop(token, None)

    def drained(self) -> asyncio.Future[None] | None:
        """A future done once everything sent so far is in the pipe; None if it already is."""
        if not self._out or self.loop is None:
            return None
        future: asyncio.Future[None] = self.loop.create_future()
        self._drained.append(future)
        return future

    def can_record(self) -> bool:
        """Whether flows reach the spool now."""
        process = self.process
        return (
            process is not None
            and process.poll() is None
            and bool(self.status.get("can_record"))
            and len(self._unacked) < MAX_PENDING
        )

    @property
    def last_error(self) -> str:
        """Why flows cannot be recorded, if they cannot."""
        if len(self._unacked) >= MAX_PENDING:
            return f"{len(self._unacked)} flows wait for the archive writer"
        return str(self.status.get("error") or "")

    # --- the pipe --------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        """Write what the pipe takes now; the rest waits until it drains."""
        process = self.process
        if process is None or process.stdin is None or process.stdin.closed:
            return
        if not self._out:
            try:
                written = os.write(process.stdin.fileno(), data)
            except BlockingIOError:
                written = 0
            except OSError:
                return  # the writer is gone: unconfirmed flows go to the next one
            if written == len(data):
                return
            data = data[written:]
        self._out += data
        if self.loop is not None and len(self._out) == len(data):
            self.loop.add_writer(process.stdin.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        process = self.process
        if process is None or process.stdin is None or process.stdin.closed:
            return
        try:
            written = os.write(process.stdin.fileno(), self._out)
        except BlockingIOError:
            return
        except OSError:
            written = len(self._out)
        del self._out[:written]
        if not self._out and self.loop is not None:
            self.loop.remove_writer(process.stdin.fileno())
            drained, self._drained = self._drained, []
            for future in drained:
                if not future.done():
                    future.set_result(None)

    def _flush_blocking(self, timeout: float) -> None:
        """Push the buffer into the pipe, waiting for it (start-up and shutdown only)."""
        process = self.process
        deadline = time.monotonic() + timeout
        while self._out and process is not None and process.stdin is not None:
            if process.poll() is not None or time.monotonic() > deadline:
                return
            fd = process.stdin.fileno()
            if select.select([], [fd], [], 0.5)[1]:
                try:
                    del self._out[: os.write(fd, self._out)]
                except BlockingIOError:
                    continue
                except OSError:
                    return

    def _on_readable(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        if self._receive(process.stdout.fileno()) or self._stopping:
            return
        self._detach()
        process.wait()
        self.status = {"can_record": False, "error": "the archive writer exited"}
        log.error("archive: the writer exited (code %s); starting a new one", process.returncode)
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, self._respawn, loop)  # a writer that dies at once must not spin

    def _respawn(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._stopping:
            return
        self._spawn()
        self.attach(loop)
        for data, _waiter in list(self._unacked.values()):
            self._send(data)

    def _receive(self, fd: int) -> bool:
        """Handle what the writer sent; False at end of file."""
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self._in += chunk
        for message in take_frames(self._in):
            kind = message[0]
            if kind == "ack":
                self._acknowledged(message[2], message[1])
            elif kind == "status":
                self.status = message[1]
            elif kind == "health":
                self.health = message[1]
            elif kind == "done":
                future = self._controls.get(message[1])
                if future is not None and not future.done():
                    future.set_result(bool(message[2]))
            elif kind == "log":
                log.log(message[1], message[2])
        return True

    def _acknowledged(self, tokens: list[int], ok: bool) -> None:
        for token in tokens:
            entry = self._unacked.pop(token, None) if ok else self._unacked.get(token)
            if entry is None or entry[1] is None:
                continue
            future = entry[1][1]
            if not future.done():
                future.set_result(ok)
            if not ok:
                # Release the response now; keep the flow until it is durable.
                self._unacked[token] = (entry[0], None)


class ReadOnlyViewer:
    """Keeps mitmweb read-only over an archive replay: no proxy server, no request replays."""

    def __init__(self) -> None:
        self._started = False

    def running(self) -> None:
        self._started = True

    def configure(self, updated: set[str]) -> None:
        if self._started and "server" in updated and ctx.options.server:
            raise exceptions.OptionsError("read-only archive viewer: the proxy server stays off")

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.is_replay == "request":
            flow.response = http.Response.make(
                403, b"read-only archive viewer: replaying requests is disabled"
            )
