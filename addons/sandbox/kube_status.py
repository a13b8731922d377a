"""Kubernetes `Status` failures, shaped exactly like the apiserver's (k8s.io/apimachinery errors)."""

from __future__ import annotations

from typing import Any

from holdgate.sandbox.kube_resources import ResourceType

Obj = dict[str, Any]


def status_body(
    code: int, reason: str, message: str, details: Obj | None = None, *, status: str = "Failure"
) -> Obj:
    """A `v1 Status` object, fields in the apiserver's order."""
    body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": status}
    if message:
        body["message"] = message
    if reason:
        body["reason"] = reason
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def _details(rt: ResourceType, name: str) -> Obj:
    details: Obj = {"name": name}
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.plural
    return details


class StatusError(Exception):
    """A request failure that the server answers with a `Status` body."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    @property
    def body(self) -> Obj:
        """The JSON body of the response."""
        return status_body(self.code, self.reason, self.message, self.details)

    @classmethod
    def not_found(cls, rt: ResourceType, name: str) -> StatusError:
        """`secrets "x" not found` (404)."""
        return cls(404, "NotFound", f'{rt.qualified} "{name}" not found', _details(rt, name))

    @classmethod
    def already_exists(cls, rt: ResourceType, name: str) -> StatusError:
        """`secrets "x" already exists` (409)."""
        return cls(
            409, "AlreadyExists", f'{rt.qualified} "{name}" already exists', _details(rt, name)
        )

    @classmethod
    def conflict(cls, rt: ResourceType, name: str, why: str) -> StatusError:
        """An optimistic-concurrency failure (409 Conflict)."""
        return cls(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {rt.qualified} "{name}": {why}',
            _details(rt, name),
        )

    @classmethod
    def invalid(
        cls, rt: ResourceType, name: str, causes: list[tuple[str, str, str]]
    ) -> StatusError:
        """A validation failure (422); causes are (reason, field, message) triples."""
        text = ", ".join(f"{field}: {message}" for _, field, message in causes)
        details: Obj = {"name": name}
        if rt.group:
            details["group"] = rt.group
        details["kind"] = rt.kind
        details["causes"] = [
            {"reason": reason, "message": message, "field": field}
            for reason, field, message in causes
        ]
        return cls(422, "Invalid", f'{rt.kind} "{name}" is invalid: {text}', details)

    @classmethod
    def forbidden(cls, rt: ResourceType, name: str, why: str) -> StatusError:
        """A request the server refuses on principle (403)."""
        return cls(
            403, "Forbidden", f'{rt.qualified} "{name}" is forbidden: {why}', _details(rt, name)
        )

    @classmethod
    def bad_request(cls, message: str) -> StatusError:
        """A malformed request (400)."""
        return cls(400, "BadRequest", message)

    @classmethod
    def method_not_allowed(cls) -> StatusError:
        """A verb the resource does not serve (405)."""
        return cls(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            {},
        )

    @classmethod
    def unsupported_media_type(cls, content_type: str, accepted: list[str]) -> StatusError:
        """A body the server cannot decode (415)."""
        return cls(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: {', '.join(accepted)}",
        )

    @classmethod
    def no_such_path(cls) -> StatusError:
        """An API path that names no resource (404 with empty details)."""
        return cls(404, "NotFound", "the server could not find the requested resource", {})

    @classmethod
    def unauthorized(cls) -> StatusError:
        """A missing or wrong bearer token (401)."""
        return cls(401, "Unauthorized", "Unauthorized")

    @classmethod
    def gone(cls, requested: int, oldest: int) -> StatusError:
        """A watch from a resourceVersion the history no longer holds (410)."""
        return cls(410, "Expired", f"too old resource version: {requested} ({oldest})")
