"""Listening on a host and port, for the approvals page and the operations listener: checking
beforehand that the ports are free (`busy_listener`), serving an aiohttp app (`Served`) with
one error line when it cannot, and the Prometheus exposition both answer on /metrics.
Imports nothing of holdgate's, so any folder may use it."""

from __future__ import annotations

import logging
import socket

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("holdgate")


def cannot_listen(host: str, port: int, what: str, error: OSError) -> str:
    """The one line that says a listener cannot start."""
    return f"cannot listen on {host}:{port} for {what}: {error.strerror or error}"


def busy_listener(listeners: list[tuple[str, str, int]]) -> str:
    """The first (what, host, port) that cannot be listened on, as one line; "" when all can."""
    for what, host, port in listeners:
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
            family, kind, proto, _, address = infos[0]
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as e:
            return cannot_listen(host, port, what, e)
    return ""


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving `app` on host:port (port 0: any); the runner and the bound port.

    Raises OSError when the address cannot be listened on (nothing is left running).
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    sockets = getattr(site._server, "sockets", None) or []
    return runner, sockets[0].getsockname()[1] if sockets else port


class Served:
    """A server of `app()`'s routes: start on a host and port, stop."""

    _runner: web.AppRunner | None = None
    port = 0

    def app(self) -> web.Application:
        raise NotImplementedError

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (port 0: any; OSError when it cannot); returns the bound port."""
        self._runner, self.port = await serve(self.app(), host, port)
        return self.port

    async def listen(self, host: str, port: int, what: str) -> str:
        """Start, and return the URL to reach it (loopback for a wildcard host); "" after one
        error line when the address cannot be listened on (logged during startup, that line
        stops the gateway: mitmproxy's errorcheck)."""
        try:
            bound = await self.start(host, port)
        except OSError as e:
            log.error("holdgate: %s", cannot_listen(host, port, what, e))
            return ""
        shown = host if host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        return f"http://{shown}:{bound}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def metrics_response(registry: CollectorRegistry) -> web.Response:
    """The registry in Prometheus' text exposition format."""
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
