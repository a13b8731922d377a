"""`report`: drift between rules and archived traffic, table-tested on a fixed policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from holdgate.rollout.drift import Latency, report
from holdgate.rollout.observed import observed
from tests.rollout.traffic import home, http, kube

NS = "/api/v1/namespaces"
CREATED = 1_764_583_200.0


def _held(rule: str, outcome: str, waited: float | None, **hold: object) -> dict:
    reviews = []
    if waited is not None and outcome in ("approved", "denied"):
        reviews = [{"reviewer": "local:admin", "name": "admin", "approve": outcome == "approved",
                    "at": CREATED + waited}]  # fmt: skip
    record = {"id": f"h-{rule}-{outcome}-{waited}", "created_at": CREATED,
              "expires_at": CREATED + 600, **hold}  # fmt: skip
    if reviews:
        record |= {"decided_at": CREATED + waited, "reviews": reviews}
    resource = "configmaps" if rule == "hold-configmaps" else "deployments"
    verb = "create" if rule == "hold-configmaps" else "delete"
    return kube("POST", f"{NS}/sandbox/{resource}", verb, resource, "sandbox", action="approve",
                rule=rule, outcome=outcome, hold=record)  # fmt: skip


@pytest.mark.parametrize(
    ("seconds", "p50", "p90", "top"),
    [([5], 5, 5, 5), ([1, 2, 3, 4], 2, 4, 4), (list(range(1, 11)), 5, 9, 10), ([3, 1, 2], 2, 3, 3)],
)
def test_latency_is_nearest_rank(seconds: list[float], p50: float, p90: float, top: float) -> None:
    assert Latency.of(seconds) == Latency(len(seconds), p50, p90, top)


def test_report(tmp_path: Path) -> None:
    _, loaded = home(tmp_path)
    lines = [
        kube("GET", f"{NS}/sandbox/pods", "list", "pods", "sandbox"),
        kube("GET", f"{NS}/sandbox/pods?limit=500", "list", "pods", "sandbox"),
        kube("GET", f"{NS}/sandbox/pods/a", "get", "pods", "sandbox", "a"),
        http("GET", "/v1/items/1"),
        kube("GET", f"{NS}/prod/secrets", "list", "secrets", "prod", rule="no-prod-secrets"),
        # Audit mode: the rule matched though the request passed.
        kube("GET", f"{NS}/kube-system/pods", "list", "pods", "kube-system", action="allow",
             rule=None, mode="audit", would={"action": "allow", "rule": "system-reads"},
             default=None),
        # The gateway's own request says nothing about rules.
        kube("PATCH", f"{NS}/sandbox/cronjobs/c", "patch", "cronjobs", "sandbox", "c",
             action="allow", rule="never-used", followup_of="flow-1"),
        _held("hold-configmaps", "approved", 10),
        _held("hold-configmaps", "approved", 20),
        _held("hold-configmaps", "expired", None),
        _held("hold-configmaps", "approved", None, window_of="h-1"),
        _held("hold-deletes", "denied", 30),
    ]  # fmt: skip
    drift = report(observed(lines), loaded, min_holds=2)
    assert drift.requests == len(lines) - 1
    assert [r["rule"] for r in drift.never_matched] == ["never-used"]
    assert drift.never_matched[0]["where"].endswith("rules.yaml:23")
    assert [(d["count"], d["request"], d["action"]) for d in drift.defaults] == [
        (2, "list pods -n sandbox", "deny"),
        (1, "GET /v1/items/1", "deny"),
        (1, "get pods -n sandbox", "deny"),
    ]
    holds = {a["rule"]: a for a in drift.approve_rules}
    assert holds["hold-configmaps"] == {
        "rule": "hold-configmaps",
        "approved": 2,
        "denied": 0,
        "expired": 1,
        "cancelled": 0,
        "refused": 0,
        "window": 1,
        "candidate": "allow",
    }
    # One denial is fewer than --min-holds 2: not a candidate yet.
    assert holds["hold-deletes"]["denied"] == 1 and holds["hold-deletes"]["candidate"] is None
    assert report(observed(lines), loaded, min_holds=1).approve_rules[1]["candidate"] == "deny"
    assert drift.latency_by_rule == [
        {"rule": "hold-configmaps", "count": 2, "p50": 10.0, "p90": 20.0, "max": 20.0},
        {"rule": "hold-deletes", "count": 1, "p50": 30.0, "p90": 30.0, "max": 30.0},
    ]
    assert drift.latency_by_reviewer == [
        {"reviewer": "admin (local:admin)", "count": 3, "p50": 20.0, "p90": 30.0, "max": 30.0}
    ]
    [expired] = drift.expired
    assert (expired["rule"], expired["hold"]) == (
        "hold-configmaps",
        "h-hold-configmaps-expired-None",
    )
    assert expired["request"] == "create configmaps -n sandbox" and expired["agent"] == "ci-bot"
    as_json = json.loads(json.dumps(drift.as_dict()))
    assert list(as_json) == [
        "window",
        "never_matched",
        "defaults",
        "approve_rules",
        "latency",
        "expired_holds",
        "problems",
    ]
    text = drift.as_text()
    assert "Rules that never matched: 1\n  rule        action  where\n  never-used  allow" in text
    assert "always approved (2): candidate to allow" in text
    assert "Holds that expired unanswered: 1" in text
    assert "  2      cluster  ci-bot  deny     list pods -n sandbox" in text


def test_an_empty_window(tmp_path: Path) -> None:
    _, loaded = home(tmp_path)
    drift = report([], loaded)
    assert drift.requests == 0 and len(drift.never_matched) == len(loaded.policy.rules)
    assert drift.as_text().startswith("0 archived requests\n")
    assert "Holds that expired unanswered: 0" in drift.as_text()
