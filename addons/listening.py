"""Serving an aiohttp application on a host and port: the approvals page and the operations
listener share it (`Served`), and the Prometheus exposition they both answer on /metrics.
Imports nothing of holdgate's, so any folder may use it."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


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

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def metrics_response(registry: CollectorRegistry) -> web.Response:
    """The registry in Prometheus' text exposition format."""
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
