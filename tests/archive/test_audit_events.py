"""Kubernetes audit events built from flow facts: one table of cases, then the details."""

from __future__ import annotations

from typing import Any

import pytest

from holdgate.archive.audit_events import (
    MASK,
    AuditInput,
    build_events,
    event_list,
    is_long_running,
    mask_secret_fields,
    micro_time,
)

T0 = 1_700_000_000.25

GET_POD = {
    "resource_request": True,
    "verb": "get",
    "api_group": "",
    "api_version": "v1",
    "namespace": "prod",
    "resource": "pods",
    "subresource": "",
    "name": "web-1",
}
WATCH_SECRETS = {**GET_POD, "verb": "watch", "resource": "secrets", "name": ""}
EXEC = {**GET_POD, "verb": "create", "subresource": "exec"}
CREATE_DEPLOY = {
    **GET_POD,
    "verb": "create",
    "api_group": "apps",
    "resource": "deployments",
    "name": "",
}
VERSION = {"resource_request": False, "verb": "get", "path": "/version"}


def facts(**overrides: Any) -> AuditInput:
    """An allowed `kubectl get pod` unless overridden."""
    values: dict[str, Any] = {
        "audit_id": "f-1",
        "gateway": "gw",
        "target": "prod",
        "method": "GET",
        "request_uri": "/api/v1/namespaces/prod/pods/web-1",
        "kubernetes": GET_POD,
        "decision": {"action": "allow", "rule": "allow-reads", "reason": "reads are fine"},
        "received": T0,
        "response_started": T0 + 0.1,
        "completed": T0 + 0.2,
        "status_code": 200,
    }
    values.update(overrides)
    return AuditInput(**values)


@pytest.mark.parametrize(
    ("case", "inp", "stages", "verb", "object_ref", "decision"),
    [
        (
            "allowed get",
            facts(),
            ["ResponseComplete"],
            "get",
            {"resource": "pods", "namespace": "prod", "name": "web-1", "apiVersion": "v1"},
            "allow",
        ),
        (
            "denied create",
            facts(
                method="POST",
                kubernetes=CREATE_DEPLOY,
                decision={"action": "deny", "rule": "deny-prod", "reason": "no"},
                status_code=403,
            ),
            ["ResponseComplete"],
            "create",
            {
                "resource": "deployments",
                "namespace": "prod",
                "apiGroup": "apps",
                "apiVersion": "v1",
            },
            "forbid",
        ),
        (
            "watch streams",
            facts(kubernetes=WATCH_SECRETS, streaming=True),
            ["ResponseStarted", "ResponseComplete"],
            "watch",
            {"resource": "secrets", "namespace": "prod", "apiVersion": "v1"},
            "allow",
        ),
        (
            "exec held and approved",
            facts(
                kubernetes=EXEC,
                streaming=True,
                status_code=101,
                decision={"action": "approve", "rule": "approve-exec", "reason": "held"},
                hold={
                    "state": "approved",
                    "reviews": [{"reviewer": "slack:U1", "name": "Ann", "approve": True}],
                },
                exec_command=("sh", "-c", "id"),
            ),
            ["ResponseStarted", "ResponseComplete"],
            "create",
            {
                "resource": "pods",
                "subresource": "exec",
                "namespace": "prod",
                "name": "web-1",
                "apiVersion": "v1",
            },
            "allow",
        ),
        (
            "exec held and expired",
            facts(
                kubernetes=EXEC,
                streaming=True,
                status_code=403,
                response_started=None,
                decision={"action": "approve", "rule": "approve-exec", "reason": "held"},
                hold={"state": "expired", "reason": "expired after 300s"},
            ),
            ["ResponseComplete"],
            "create",
            {
                "resource": "pods",
                "subresource": "exec",
                "namespace": "prod",
                "name": "web-1",
                "apiVersion": "v1",
            },
            "forbid",
        ),
        (
            "non-resource",
            facts(kubernetes=VERSION, request_uri="/version"),
            ["ResponseComplete"],
            "get",
            None,
            "allow",
        ),
    ],
)
def test_events(
    case: str,
    inp: AuditInput,
    stages: list[str],
    verb: str,
    object_ref: dict[str, str] | None,
    decision: str,
) -> None:
    events = build_events(inp)
    assert [e["stage"] for e in events] == stages, case
    for event in events:
        assert event["kind"] == "Event" and event["apiVersion"] == "audit.k8s.io/v1"
        assert event["level"] == "RequestResponse"
        assert event["auditID"] == inp.audit_id
        assert event["verb"] == verb
        assert event["requestURI"] == inp.request_uri
        assert event.get("objectRef") == object_ref
        assert event["annotations"]["authorization.k8s.io/decision"] == decision
        assert event["annotations"]["holdgate.dev/decision"] == inp.decision["action"]
        assert event["annotations"]["holdgate.dev/rule"] == inp.decision["rule"]
        assert event["requestReceivedTimestamp"] == micro_time(inp.received)
        assert all(isinstance(v, str) for v in event["annotations"].values())


def test_timestamps_and_stage_times() -> None:
    started, complete = build_events(facts(kubernetes=WATCH_SECRETS, streaming=True))
    assert started["requestReceivedTimestamp"] == "2023-11-14T22:13:20.250000Z"
    assert started["stageTimestamp"] == micro_time(T0 + 0.1)
    assert complete["stageTimestamp"] == micro_time(T0 + 0.2)


def test_user_from_identity_or_anonymous() -> None:
    identity = {"agent": "ci-bot", "owner": "alice", "groups": ["ci"], "run_id": "job-7"}
    (event,) = build_events(facts(identity=identity))
    assert event["user"] == {
        "username": "ci-bot",
        "groups": ["ci"],
        "extra": {"holdgate.dev/owner": ["alice"], "holdgate.dev/run-id": ["job-7"]},
    }
    (event,) = build_events(facts())
    assert event["user"] == {"username": "system:anonymous", "groups": ["system:unauthenticated"]}


def test_hold_outcome_reviewers_and_command_in_annotations() -> None:
    (_, event) = build_events(
        facts(
            kubernetes=EXEC,
            streaming=True,
            decision={"action": "approve", "rule": "approve-exec", "reason": "held"},
            hold={
                "state": "approved",
                "reason": "approved by Ann",
                "reviews": [{"reviewer": "slack:U1", "name": "Ann", "approve": True}],
            },
            exec_command=("sh", "-c", "id"),
        )
    )
    annotations = event["annotations"]
    assert annotations["holdgate.dev/outcome"] == "approved"
    assert annotations["holdgate.dev/reviewers"] == "Ann (slack:U1): approve"
    assert annotations["holdgate.dev/exec-command"] == '["sh", "-c", "id"]'
    assert annotations["authorization.k8s.io/reason"] == "approved by Ann"


def test_response_status_from_a_kubernetes_status_body() -> None:
    status = {
        "kind": "Status",
        "status": "Failure",
        "message": "denied by rule deny-prod",
        "reason": "Forbidden",
        "code": 403,
    }
    (event,) = build_events(facts(status_code=403, response_object=status))
    assert event["responseStatus"] == {
        "metadata": {},
        "code": 403,
        "status": "Failure",
        "message": "denied by rule deny-prod",
        "reason": "Forbidden",
    }
    assert event["responseObject"] == status


def test_no_response_object_on_started_stage_and_error_without_response() -> None:
    started, complete = build_events(
        facts(kubernetes=WATCH_SECRETS, streaming=True, response_object={"kind": "x"})
    )
    assert "responseObject" not in started and complete["responseObject"] == {"kind": "x"}
    (event,) = build_events(
        facts(status_code=None, response_started=None, completed=None, error="connection refused")
    )
    assert event["responseStatus"]["code"] == 502
    assert event["annotations"]["holdgate.dev/error"] == "connection refused"


def test_event_list() -> None:
    events = build_events(facts())
    assert event_list(events) == {
        "kind": "EventList",
        "apiVersion": "audit.k8s.io/v1",
        "metadata": {},
        "items": events,
    }


@pytest.mark.parametrize(
    ("kube", "query", "expected"),
    [
        (GET_POD, "", False),
        (WATCH_SECRETS, "", True),
        (EXEC, "", True),
        ({**GET_POD, "subresource": "log"}, "follow=true", True),
        ({**GET_POD, "subresource": "log"}, "", False),
        ({**GET_POD, "verb": "proxy"}, "", True),
    ],
)
def test_long_running(kube: dict[str, Any], query: str, expected: bool) -> None:
    assert is_long_running(kube, query) is expected


def test_mask_secret_fields() -> None:
    secret = {
        "kind": "Secret",
        "metadata": {
            "name": "s",
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": '{"data":{"k":"CANARY"}}'
            },
        },
        "data": {"k": "Q0FOQVJZ"},
        "stringData": {"p": "CANARY"},
    }
    masked = mask_secret_fields(secret)
    assert masked["data"] == {"k": MASK} and masked["stringData"] == {"p": MASK}
    assert "CANARY" not in repr(masked) and "Q0FOQVJZ" not in repr(masked)
    assert secret["data"] == {"k": "Q0FOQVJZ"}  # the input is not changed
    listed = mask_secret_fields({"kind": "SecretList", "items": [secret, secret]})
    assert "CANARY" not in repr(listed)
    event = mask_secret_fields({"type": "ADDED", "object": secret})
    assert "CANARY" not in repr(event)
    pod = {"kind": "Pod", "data": {"k": "v"}}
    assert mask_secret_fields(pod) == pod
