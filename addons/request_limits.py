"""Bounds on what one request may make the gateway hold: its head and its body.

mitmproxy 12.2 buffers an HTTP/1 request head without limit ("FIXME: protect against header
size DoS" in its `_http1.py`) and, when the client goes away mid-head, logs the whole buffer.
`limit_request_heads` caps the head (431, connection closed, nothing logged of it), as Go's
`net/http` does with `MaxHeaderBytes`. Request bodies are capped per target kind (the
apiserver itself refuses bodies over 3 MiB); responses are bounded by mitmproxy's
`body_size_limit`, which the gateway sets when the operator has not.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import _http1

MIB = 1 << 20
MAX_HEAD_BYTES = 64 * 1024
# What one request body may be, by target kind (the apiserver's own limit for Kubernetes).
MAX_REQUEST_BODY = {"kubernetes": 3 * MIB, "http": 10 * MIB}
# mitmproxy's body_size_limit when none is set: what one flow may buffer at most.
DEFAULT_BODY_SIZE_LIMIT = "64m"
_LOGGED_HEAD_BYTES = 512


def limit_request_heads() -> None:
    """Cap HTTP/1 request heads at MAX_HEAD_BYTES in this process (idempotent)."""
    original: Callable[..., Generator[Any, Any, None]] = _http1.Http1Server.read_headers
    if getattr(original, "holdgate_limited", False):
        return

    def read_headers(
        self: _http1.Http1Server, event: events.ConnectionEvent
    ) -> Generator[Any, Any, None]:
        if isinstance(event, events.ConnectionClosed) and len(self.buf) > _LOGGED_HEAD_BYTES:
            # mitmproxy logs an unfinished head whole: keep only its start.
            start = bytes(self.buf)[:_LOGGED_HEAD_BYTES]
            self.buf.maybe_extract_at_most(len(self.buf))
            self.buf += start
        yield from original(self, event)
        if (
            isinstance(event, events.DataReceived)
            and self.state == self.read_headers
            and len(self.buf) > MAX_HEAD_BYTES
        ):
            self.buf.maybe_extract_at_most(len(self.buf))
            yield commands.SendData(
                self.conn,
                _http1.make_error_response(431, f"request head larger than {MAX_HEAD_BYTES} bytes"),
            )
            yield commands.CloseConnection(self.conn)
            self.state = self.done

    read_headers.holdgate_limited = True  # type: ignore[attr-defined]
    _http1.Http1Server.read_headers = read_headers  # type: ignore[method-assign]
