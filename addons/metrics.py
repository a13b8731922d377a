"""Prometheus metrics of one gateway (its own registry: no global state)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class GatewayMetrics:
    """Requests by decision, holds pending, hold outcomes and wait times."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "holdgate_requests_total",
            "Requests decided, by action and rule.",
            ["action", "rule"],
            registry=self.registry,
        )
        self.holds_pending = Gauge(
            "holdgate_holds_pending", "Requests waiting for approval now.", registry=self.registry
        )
        self.hold_decisions = Counter(
            "holdgate_hold_decisions_total",
            "Held requests decided, by outcome and rule.",
            ["outcome", "rule"],
            registry=self.registry,
        )
        self.hold_wait = Histogram(
            "holdgate_hold_wait_seconds",
            "Time from hold to decision.",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600),
            registry=self.registry,
        )

        self.rule_reloads = Counter(
            "holdgate_rule_reloads_total",
            "Rule changes seen by hot reload: applied, or refused (invalid, or their tests fail).",
            ["result"],
            registry=self.registry,
        )

    def count_pending(self, pending: Callable[[], int]) -> None:
        """Report the pending-hold count from a live source."""
        self.holds_pending.set_function(pending)
