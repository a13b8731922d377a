"""What the archive's index lines carry for rollout, and how older lines are read."""

from __future__ import annotations

import json

from holdgate.archive.records import index_entry
from holdgate.rollout.observed import Kind, Observed


def _state(holdgate: dict) -> dict:
    return {
        "id": "f1",
        "request": {
            "method": b"GET",
            "scheme": b"https",
            "host": b"kubernetes.default.svc",
            "port": 443,
            "path": b"/api/v1/namespaces/dev/pods/web-0/exec?command=ls&command=%2F",
            "timestamp_start": 1_764_583_200.5,
        },
        "response": {"status_code": 403},
        "metadata": {"holdgate": holdgate},
    }


FACTS = {
    "target": "cluster",
    "kubernetes": {"resource_request": True, "verb": "get", "api_group": "", "resource": "pods",
                   "subresource": "exec", "namespace": "dev", "name": "web-0"},
    "exec": {"command": ["ls", "/"], "container": "web", "stdin": False, "tty": False},
    "identity": {"agent": "ci-bot", "groups": []},
}  # fmt: skip


def test_audit_and_hold_facts_are_indexed() -> None:
    hold = {"id": "h1", "state": "approved", "rule": "r", "created_at": 1.0, "expires_at": 601.0,
            "decided_at": 4.5, "waited_seconds": 3.5, "summary": "not indexed",
            "reviews": [{"reviewer": "local:admin", "name": "admin", "approve": True,
                         "reason": "not indexed", "at": 4.5}]}  # fmt: skip
    decision = {"action": "allow", "rule": "shells", "reason": "audit mode, would hold",
                "mode": "audit", "would": {"action": "approve", "rule": "shells", "mode": "enforce"}}  # fmt: skip
    entry = index_entry(_state({"request": FACTS, "decision": decision, "hold": hold}), "gw")
    assert entry["group"] == "" and entry["exec"] == ["ls", "/"]
    assert entry["mode"] == "audit" and entry["would"] == {"action": "approve", "rule": "shells"}
    assert entry["hold"] == {
        "id": "h1",
        "created_at": 1.0,
        "expires_at": 601.0,
        "decided_at": 4.5,
        "reviews": [{"reviewer": "local:admin", "name": "admin", "approve": True, "at": 4.5}],
    }
    assert "default" not in entry and "followup_of" not in entry and "problem" not in entry
    seen = Observed.of(json.loads(json.dumps(entry)))
    assert seen.kind is Kind.POWER and seen.command == ("ls", "/")
    assert seen.rule == "shells" and seen.decided and seen.decided.action == "approve"
    assert seen.hold and seen.hold.reviews[0].at == 4.5
    assert seen.what == "get pods/exec web-0 -n dev -- ls /"


def test_defaults_follow_ups_and_refusals_are_indexed() -> None:
    default = {"action": "deny", "rule": None, "reason": "no rule matched", "default": True}
    entry = index_entry(_state({"request": FACTS, "decision": default}), "gw")
    assert entry["default"] is True and Observed.of(entry).fell_to_default
    followup = index_entry(
        _state({"request": FACTS, "decision": {"action": "allow", "rule": None},
                "followup_of": "f0"}), "gw"
    )  # fmt: skip
    assert followup["followup_of"] == "f0" and not Observed.of(followup).fell_to_default
    refused = {"action": "deny", "rule": None, "rules_decided": {"action": "allow", "rule": "r"}}
    entry = index_entry(_state({"request": {**FACTS, "problem": "bad"}, "decision": refused}), "gw")
    assert entry["problem"] is True and entry["rules_decided"] == {"action": "allow", "rule": "r"}


def test_older_lines_are_read() -> None:
    """A line written before these fields: the default is inferred, the group unknown."""
    old = {"id": "f", "time": "t", "ts": 2.0, "agent": "a", "target": "cluster", "method": "GET",
           "url": "https://k/api/v1/namespaces/dev/pods", "status": 403, "verb": "list",
           "resource": "pods", "subresource": None, "namespace": "dev", "name": None,
           "rule": None, "decision": "deny", "outcome": None, "reviewers": []}  # fmt: skip
    seen = Observed.of(old)
    assert seen.fell_to_default and seen.group is None and seen.kind is Kind.READ
    assert Observed.of(
        {**old, "verb": "get", "resource": None, "url": "https://k/version"}
    ).kind is (Kind.NONRESOURCE)
    assert Observed.of({"id": "x", "error": "unindexable"}).unindexed


def test_self_reviews_are_never_taken_for_the_default() -> None:
    """`kubectl auth can-i` is answered by the gateway: no rule, and not a target's default."""
    facts = {
        "target": "cluster",
        "kubernetes": {"resource_request": True, "verb": "create", "api_group":
                       "authorization.k8s.io", "resource": "selfsubjectaccessreviews"},
        "identity": {"agent": "ci-bot", "groups": []},
    }  # fmt: skip
    decision = {"action": "allow", "rule": None, "reason": "access review answered by the gateway"}
    review = {"kind": "selfsubjectaccessreviews", "answered_by": "gateway"}
    state = {"request": facts, "decision": decision, "access_review": review}
    entry = index_entry(_state(state), "gw")
    assert entry["review"] == "selfsubjectaccessreviews"
    assert not Observed.of(json.loads(json.dumps(entry))).fell_to_default
    del entry["review"]  # what the same flow looked like before: inferred as the default
    assert Observed.of(entry).fell_to_default


def test_a_plain_http_request_is_described_without_its_query() -> None:
    line = {"id": "f2", "ts": 1.0, "target": "api", "method": "GET", "decision": "deny",
            "url": "https://api.internal/v1/status?api_key=canary-8086"}  # fmt: skip
    seen = Observed.of(line)
    assert seen.what == "GET https://api.internal/v1/status"
    assert seen.bare_url == "https://api.internal/v1/status"
