"""Kubernetes audit events (`audit.k8s.io/v1` `Event`) for flows to kubernetes targets.

The shape is the apiserver's (k8s.io/apiserver/pkg/apis/audit/v1/types.go), at level
RequestResponse, so Falco's k8saudit plugin and other audit consumers read it unchanged; the
gateway's own decision rides in `annotations`. Pure: nothing here imports mitmproxy.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

API_VERSION = "audit.k8s.io/v1"
ANNOTATION_PREFIX = "holdgate.dev/"
MASK = "<masked>"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

# Kubernetes verbs that answer with a stream the apiserver reports as started, then complete.
_STREAMING_SUBRESOURCES = frozenset({"exec", "attach", "portforward", "proxy"})


class Stage(StrEnum):
    """Audit stages holdgate emits (the apiserver also has RequestReceived and Panic)."""

    RESPONSE_STARTED = "ResponseStarted"
    RESPONSE_COMPLETE = "ResponseComplete"


@dataclass(frozen=True, slots=True)
class AuditInput:
    """What one flow tells about a Kubernetes request, as plain values."""

    audit_id: str
    gateway: str
    target: str | None
    method: str
    request_uri: str
    kubernetes: Mapping[str, Any]
    decision: Mapping[str, Any]
    received: float
    hold: Mapping[str, Any] | None = None
    identity: Mapping[str, Any] | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    response_started: float | None = None
    completed: float | None = None
    status_code: int | None = None
    request_object: Any = None
    response_object: Any = None
    notes: Mapping[str, str] = field(default_factory=dict)
    exec_command: Sequence[str] = ()
    error: str | None = None
    streaming: bool = False


def micro_time(timestamp: float) -> str:
    """RFC 3339 with microseconds in UTC, as metav1.MicroTime marshals."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def is_long_running(kubernetes: Mapping[str, Any], query: str = "") -> bool:
    """Whether the apiserver would treat the request as long-running (watch, exec, proxy...)."""
    if kubernetes.get("verb") in ("watch", "proxy"):
        return True
    if kubernetes.get("subresource") in _STREAMING_SUBRESOURCES:
        return True
    return kubernetes.get("subresource") == "log" and "follow=true" in query


def mask_secret_fields(obj: Any) -> Any:
    """A copy of a Secret (or a list of them) with data, stringData and last-applied masked."""
    if isinstance(obj, list):
        return [mask_secret_fields(item) for item in obj]
    if not isinstance(obj, dict):
        return obj
    kind = obj.get("kind")
    if kind == "Secret":
        out = copy.deepcopy(obj)
        for key in ("data", "stringData"):
            if isinstance(out.get(key), dict):
                out[key] = {k: MASK for k in out[key]}
        annotations = (out.get("metadata") or {}).get("annotations")
        if isinstance(annotations, dict) and LAST_APPLIED in annotations:
            annotations[LAST_APPLIED] = MASK
        return out
    if isinstance(kind, str) and kind.endswith("List") and isinstance(obj.get("items"), list):
        out = dict(obj)
        out["items"] = [mask_secret_fields(item) for item in obj["items"]]
        return out
    if kind == "WatchEvent" or ("type" in obj and isinstance(obj.get("object"), dict)):
        out = dict(obj)
        out["object"] = mask_secret_fields(obj["object"])
        return out
    return obj


def build_events(facts: AuditInput) -> list[dict[str, Any]]:
    """The audit events for one request: ResponseComplete, preceded by ResponseStarted for streams."""
    events = []
    if facts.streaming and facts.response_started is not None:
        events.append(_event(facts, Stage.RESPONSE_STARTED, facts.response_started))
    end = facts.completed or facts.response_started or facts.received
    events.append(_event(facts, Stage.RESPONSE_COMPLETE, end))
    return events


def event_list(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """An `EventList`, the body the apiserver's audit webhook backend (and Falco) expects."""
    return {"kind": "EventList", "apiVersion": API_VERSION, "metadata": {}, "items": list(events)}


def _event(facts: AuditInput, stage: Stage, stage_time: float) -> dict[str, Any]:
    kube = facts.kubernetes
    event: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": API_VERSION,
        "level": "RequestResponse",
        "auditID": facts.audit_id,
        "stage": str(stage),
        "requestURI": facts.request_uri,
        "verb": kube.get("verb") or facts.method.lower(),
        "user": _user(facts.identity),
        "sourceIPs": [facts.source_ip] if facts.source_ip else [],
    }
    if facts.user_agent:
        event["userAgent"] = facts.user_agent
    if kube.get("resource_request"):
        event["objectRef"] = _object_ref(kube)
    status = _response_status(facts)
    if status is not None:
        event["responseStatus"] = status
    if facts.request_object is not None:
        event["requestObject"] = facts.request_object
    if stage is Stage.RESPONSE_COMPLETE and facts.response_object is not None:
        event["responseObject"] = facts.response_object
    event["requestReceivedTimestamp"] = micro_time(facts.received)
    event["stageTimestamp"] = micro_time(stage_time)
    event["annotations"] = _annotations(facts)
    return event


def _user(identity: Mapping[str, Any] | None) -> dict[str, Any]:
    if not identity or not identity.get("agent"):
        return {"username": "system:anonymous", "groups": ["system:unauthenticated"]}
    user: dict[str, Any] = {"username": str(identity["agent"])}
    groups = [str(g) for g in identity.get("groups") or ()]
    if groups:
        user["groups"] = groups
    extra = {
        f"{ANNOTATION_PREFIX}{key}": [str(identity[name])]
        for key, name in (("owner", "owner"), ("run-id", "run_id"))
        if identity.get(name)
    }
    if extra:
        user["extra"] = extra
    return user


def _object_ref(kube: Mapping[str, Any]) -> dict[str, str]:
    ref = {
        "resource": kube.get("resource") or "",
        "namespace": kube.get("namespace") or "",
        "name": kube.get("name") or "",
        "apiGroup": kube.get("api_group") or "",
        "apiVersion": kube.get("api_version") or "",
        "subresource": kube.get("subresource") or "",
    }
    return {k: v for k, v in ref.items() if v}


def _response_status(facts: AuditInput) -> dict[str, Any] | None:
    if facts.status_code is None:
        if facts.error is None:
            return None
        # No response reached the client: mitmproxy answers 502 or the client went away.
        return {"metadata": {}, "status": "Failure", "message": facts.error, "code": 502}
    status: dict[str, Any] = {"metadata": {}, "code": facts.status_code}
    body = facts.response_object
    if isinstance(body, dict) and body.get("kind") == "Status":
        for key in ("status", "message", "reason", "details"):
            if key in body:
                status[key] = body[key]
    elif facts.status_code >= 400:
        status["status"] = "Failure"
    return status


def hold_outcome(decision: Mapping[str, Any], hold: Mapping[str, Any] | None) -> str:
    """How a held request ended (approved, denied, expired, cancelled), or "" when not held."""
    return str((hold or {}).get("state") or decision.get("outcome") or "")


def reviewers_of(hold: Mapping[str, Any] | None) -> list[str]:
    """Who reviewed a held request, as `name (id): approve|deny` labels."""
    out = []
    for review in (hold or {}).get("reviews") or []:
        if not isinstance(review, Mapping):
            continue
        who = str(review.get("reviewer") or "")
        name = str(review.get("name") or "")
        label = f"{name} ({who})" if name and name != who else who
        out.append(f"{label}: {'approve' if review.get('approve') else 'deny'}")
    return out


def _annotations(facts: AuditInput) -> dict[str, str]:
    decision = facts.decision
    action = str(decision.get("action") or "")
    outcome = hold_outcome(decision, facts.hold)
    allowed = action == "allow" or (action == "approve" and outcome == "approved")
    reason = str((facts.hold or {}).get("reason") or decision.get("reason") or "")
    annotations = {
        "authorization.k8s.io/decision": "allow" if allowed else "forbid",
        "authorization.k8s.io/reason": reason,
        f"{ANNOTATION_PREFIX}decision": action,
        f"{ANNOTATION_PREFIX}rule": str(decision.get("rule") or ""),
        f"{ANNOTATION_PREFIX}gateway": facts.gateway,
    }
    if facts.target:
        annotations[f"{ANNOTATION_PREFIX}target"] = facts.target
    if outcome:
        annotations[f"{ANNOTATION_PREFIX}outcome"] = outcome
    reviewers = reviewers_of(facts.hold)
    if reviewers:
        annotations[f"{ANNOTATION_PREFIX}reviewers"] = "; ".join(reviewers)
    if facts.exec_command:
        annotations[f"{ANNOTATION_PREFIX}exec-command"] = json.dumps(list(facts.exec_command))
    if facts.error:
        annotations[f"{ANNOTATION_PREFIX}error"] = facts.error
    for key, note in facts.notes.items():
        annotations[f"{ANNOTATION_PREFIX}{key}"] = note
    return annotations
