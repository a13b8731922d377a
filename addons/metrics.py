"""Prometheus metrics of one gateway (its own registry: no global state)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily


class GatewayMetrics:
    """Requests by decision, holds pending, hold outcomes and wait times."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "holdgate_requests_total",
            "Requests decided, by action, rule and mode (audit: the action is what would have "
            "happened; the request passed).",
            ["action", "rule", "mode"],
            registry=self.registry,
        )
        self.holds_pending = Gauge(
            "holdgate_holds_pending",
            "Requests this gateway process holds for approval now (replicas: each its own).",
            registry=self.registry,
        )
        self.state_store_up = Gauge(
            "holdgate_state_store_up",
            "1 when the replicas' shared state store (PostgreSQL) is reachable, 0 when it is not "
            "(holds are refused); absent without a state store.",
            registry=self.registry,
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

        self.archive_refusals = Counter(
            "holdgate_archive_refusals_total",
            "Requests refused because the archive could not record them (no audit, no action).",
            registry=self.registry,
        )
        self._archive: Callable[[], dict[str, Any]] = dict
        for name, help_text, key in (
            ("holdgate_archive_backlog_segments", "Sealed segments waiting for upload.", "backlog_segments"),
            ("holdgate_archive_backlog_bytes", "Bytes of segments waiting for upload.", "backlog_bytes"),
            ("holdgate_archive_oldest_waiting_seconds", "Age of the oldest segment not yet uploaded.", "oldest_waiting_since"),
            ("holdgate_archive_last_upload_timestamp_seconds", "Time of the last successful upload (0: none yet).", "last_upload"),
        ):  # fmt: skip
            Gauge(name, help_text, registry=self.registry).set_function(self._archive_value(key))
        self.registry.register(_UploadErrors(lambda: self._archive().get("upload_errors") or {}))

    def watch_archive(self, health: Callable[[], dict[str, Any]]) -> None:
        """Report the archive's health from a live source (the writer's last report)."""
        self._archive = health

    def _archive_value(self, key: str) -> Callable[[], float]:
        def value() -> float:
            raw = float(self._archive().get(key) or 0.0)
            if key == "oldest_waiting_since":
                return max(0.0, time.time() - raw) if raw else 0.0
            return raw

        return value

    def count_pending(self, pending: Callable[[], int]) -> None:
        """Report the pending-hold count from a live source."""
        self.holds_pending.set_function(pending)

    def watch_state_store(self, up: Callable[[], bool]) -> None:
        """Report whether the shared state store is reachable, from a live source."""
        self.state_store_up.set_function(lambda: 1.0 if up() else 0.0)


class _UploadErrors:
    """holdgate_archive_upload_errors_total{kind}: failed uploads by S3 error code (the writer counts)."""

    def __init__(self, errors: Callable[[], dict[str, int]]) -> None:
        self.errors = errors

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "holdgate_archive_upload_errors",
            "Failed upload attempts, by kind (S3's error code, connection, other).",
            labels=["kind"],
        )
        for kind, count in sorted(self.errors().items()):
            family.add_metric([kind], count)
        yield family
