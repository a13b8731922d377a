"""Serving an aiohttp application on a host and port: the approvals page and the operations
listener share it. Imports nothing of holdgate's, so any folder may use it."""

from __future__ import annotations

from aiohttp import web


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
