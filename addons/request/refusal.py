"""Answers the gateway gives instead of the upstream's: one place builds every refusal."""

from __future__ import annotations

import json
from dataclasses import dataclass

from holdgate.kube.request_info import KubeRequest


@dataclass(frozen=True, slots=True)
class Refusal:
    """An HTTP answer: status, headers and body."""

    status: int
    headers: dict[str, str]
    body: bytes


_REASONS = {
    401: "Unauthorized",
    403: "Forbidden",
    407: "ProxyAuthenticationRequired",
    413: "RequestEntityTooLarge",
    429: "TooManyRequests",
}


def kubernetes_status(
    message: str, *, code: int = 403, kube: KubeRequest | None = None, rule: str | None = None
) -> Refusal:
    """A Kubernetes `Status` failure, which kubectl prints as `Error from server (Forbidden): ...`."""
    status: dict[str, object] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": _REASONS.get(code, "Forbidden"),
        "code": code,
    }
    if kube is not None and kube.resource_request:
        details: dict[str, str] = {"kind": kube.resource}
        if kube.api_group:
            details["group"] = kube.api_group
        if kube.name:
            details["name"] = kube.name
        status["details"] = details
    return Refusal(code, _headers(rule), json.dumps(status).encode())


def json_error(message: str, *, code: int = 403, rule: str | None = None) -> Refusal:
    """A JSON error for plain HTTP targets."""
    body = {"error": _REASONS.get(code, "Forbidden").lower(), "message": message, "rule": rule}
    return Refusal(code, _headers(rule), json.dumps(body).encode())


def refusal(
    message: str,
    *,
    kubernetes: bool,
    code: int = 403,
    kube: KubeRequest | None = None,
    rule: str | None = None,
) -> Refusal:
    """The refusal a client of this kind of target understands."""
    if kubernetes:
        return kubernetes_status(message, code=code, kube=kube, rule=rule)
    return json_error(message, code=code, rule=rule)


def _headers(rule: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
    if rule:
        headers["X-Holdgate-Rule"] = rule
    return headers
