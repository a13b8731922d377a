"""What the gateway knows about one request, built the same way for the proxy, `explain` and rule tests."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from holdgate.config.gateway_config import Config, Target, TargetKind
from holdgate.identity.agents import Identity
from holdgate.kube.impersonation import impersonation_requests
from holdgate.kube.request_info import (
    BodyObject,
    ExecCommand,
    KubeRequest,
    UnsafePath,
    classify,
    exec_command,
    read_body,
    safe_path,
    with_body,
)


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """One request as policy sees it."""

    target: Target | None
    method: str
    host: str
    port: int
    path: str
    query: str
    kube: KubeRequest | None = None
    exec: ExecCommand | None = None
    body: BodyObject | None = None
    identity: Identity | None = None
    # Impersonate-* headers, each an `impersonate` request of its own (Kubernetes targets).
    impersonates: tuple[KubeRequest, ...] = ()
    # Why the request could not be understood; policy refuses such requests.
    problem: str = ""
    # What a rule's mitmproxy filter expression is evaluated on (a flow), when there is one.
    flow: Any = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form for flow metadata and `holdgate explain`."""
        out: dict[str, Any] = {
            "target": self.target.name if self.target else None,
            "method": self.method,
            "host": self.host,
            "port": self.port,
            "path": self.path,
        }
        if self.kube is not None:
            out["kubernetes"] = self.kube.as_dict()
        if self.exec is not None:
            out["exec"] = {
                "command": list(self.exec.command),
                "container": self.exec.container,
                "stdin": self.exec.stdin,
                "tty": self.exec.tty,
            }
        if self.body is not None:
            out["body"] = {
                "api_version": self.body.api_version,
                "kind": self.body.kind,
                "name": self.body.name,
                "namespace": self.body.namespace,
                "error": self.body.error,
            }
        if self.identity is not None:
            out["identity"] = self.identity.as_dict()
        if self.impersonates:
            out["impersonates"] = [k.as_dict() for k in self.impersonates]
        if self.problem:
            out["problem"] = self.problem
        return out


def split_path(path_and_query: str) -> tuple[str, str]:
    """Split a request target into path and raw query string."""
    path, _, query = path_and_query.partition("?")
    return path or "/", query


def build_facts(
    config: Config,
    *,
    method: str,
    host: str,
    port: int,
    path_and_query: str,
    content_type: str = "",
    content_encoding: str = "",
    body: bytes = b"",
    identity: Identity | None = None,
    headers: Iterable[tuple[str, str]] = (),
    problem: str = "",
    flow: Any = None,
) -> RequestFacts:
    """Route a request to its target and classify it.

    `headers`: the request's impersonation headers (others are ignored). `problem`: why the
    gateway already knows it must refuse the request (it is still classified, for the record).
    """
    method = method.upper()
    path, query = split_path(path_and_query)
    target = config.target_for(host, port)
    body_object = read_body(content_type, content_encoding, body) if body else None
    kube = exec_ = None
    impersonates: tuple[KubeRequest, ...] = ()
    if target is not None and target.kind is TargetKind.KUBERNETES:
        try:
            kube = with_body(classify(method, path, query), body_object)
            exec_ = exec_command(kube, query)
        except UnsafePath as e:
            kube, problem = None, problem or f"path cannot be classified safely: {e}"
        try:
            impersonates = impersonation_requests(headers)
        except UnsafePath as e:
            problem = problem or f"impersonation cannot be classified safely: {e}"
    else:
        # Every target kind gets the same path discipline: no dot or empty segments, no
        # encoded slashes; rules match the decoded path, as the service reads it.
        try:
            path = safe_path(path, query)
        except UnsafePath as e:
            problem = problem or f"path cannot be classified safely: {e}"
    return RequestFacts(
        target=target,
        method=method,
        host=host.lower(),
        port=port,
        path=path,
        query=query,
        kube=kube,
        exec=exec_,
        body=body_object,
        identity=identity,
        impersonates=impersonates,
        problem=problem,
        flow=flow,
    )
