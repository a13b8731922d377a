"""The operations listener: `/healthz`, `/readyz` and `/metrics`, in every configuration.

Separate from the approvals page (which needs tokens and may be off): probes and Prometheus
reach it without credentials, so it serves nothing but liveness, readiness and counters.
`operations.listen_host` / `listen_port` place it (default 127.0.0.1 and any free port, logged
and written to `<state>/operations-url`; a deployment sets a fixed port for its probes).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from holdgate.listening import Served, metrics_response

# What the listener serves, as the line that says it cannot start names it.
OPERATIONS_ENDPOINTS = "/healthz, /readyz and /metrics"
# A readiness check: "" when ready, else why not.
Check = Callable[[], Awaitable[str]]


def operations_url_file(state_dir: Path) -> Path:
    """Where the operations listener's URL is written at start."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return state_dir / "operations-url"


def operations_settings(raw: Mapping[str, Any] | None, port_override: int = -1) -> tuple[str, int]:
    """(host, port) from the `operations:` section (validated by the config schema); a
    `port_override` of 0 or more (`holdgate_operations_port`) replaces the port."""
    section = raw or {}
    port = int(section.get("listen_port", 0)) if port_override < 0 else port_override
    return str(section.get("listen_host", "127.0.0.1")), port


class OperationsServer(Served):
    """Serves liveness, readiness (each check by name) and the metrics registry."""

    def __init__(self, registry: CollectorRegistry, checks: Mapping[str, Check]) -> None:
        self.registry = registry
        self.checks = dict(checks)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def readiness(self) -> dict[str, str]:
        """Each check's answer ("" is ready)."""
        out = {}
        for name, check in self.checks.items():
            try:
                out[name] = await check()
            except Exception as e:  # a failing check is a reason, not a crash
                out[name] = f"check failed: {e}"
        return out

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        # As the apiserver's /readyz: `?exclude=NAME` leaves a check out of the verdict (a probe
        # leaves out what every replica shares, such as the approvals channel or state store,
        # whose outage taking every replica out of its Service would stop allowed traffic too).
        excluded = set(request.query.getall("exclude", []))
        found = await self.readiness()
        ready = not any(v for k, v in found.items() if k not in excluded)
        body = {
            "ready": ready,
            "checks": {
                k: (v or "ok") + (" (excluded)" if k in excluded else "") for k, v in found.items()
            },
        }
        return web.Response(
            status=200 if ready else 503,
            text=json.dumps(body, indent=1) + "\n",
            content_type="application/json",
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return metrics_response(self.registry)
