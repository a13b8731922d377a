"""mitmproxy's flow filters for the rules' `filter:` escape hatch, and flows built for `explain`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mitmproxy import connection, flowfilter, http


def compile_filter(expression: str) -> Callable[[Any], bool]:
    """Compile a mitmproxy filter expression; ValueError when invalid."""
    predicate = flowfilter.parse(expression)
    return lambda flow: bool(predicate(flow))


def make_flow(method: str, url: str, headers: dict[str, str], body: bytes) -> http.HTTPFlow:
    """A flow carrying one request, for evaluating filters outside the proxy."""
    client = connection.Client(peername=("127.0.0.1", 0), sockname=("127.0.0.1", 0))
    server = connection.Server(address=None)
    flow = http.HTTPFlow(client, server)
    flow.request = http.Request.make(
        method, url, body, http.Headers([(k.encode(), v.encode()) for k, v in headers.items()])
    )
    return flow
