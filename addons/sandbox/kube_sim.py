"""An in-process Kubernetes API server simulator (aiohttp, real TLS, bearer-token auth).

It is the test peer of the gateway and the sandbox upstream of the embedded default, so it
answers the way kube-apiserver v1.37 does for what kubectl and the `kubernetes` Python client
use: discovery (legacy and aggregated), `/openapi/v3`, CRUD with JSON and protobuf bodies,
the patch formats, `Table` and `PartialObjectMetadata` output, watches, `pods/log` and
`pods/exec` over WebSocket, RBAC for its one credential (`access`: 403 outside it, and the
self-reviews of `kubectl auth can-i`). Every request is recorded (before authentication) so tests can
assert on what the upstream actually received.

Run it on an existing loop (`await sim.start()`), from synchronous code
(`with running_simulator(token, cert_dir) as sim:`), or standalone:
`python -m holdgate.sandbox.kube_sim --port 6443 --token T --cert-dir DIR`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import hmac
import json
import os
import pathlib
import signal
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import yaml
from aiohttp import web
from multidict import MultiMapping

from holdgate.kube.request_info import classify
from holdgate.sandbox import kube_discovery, kube_openapi, kube_rbac
from holdgate.sandbox.kube_bodies import decode_json, decode_object, decode_yaml, media_type
from holdgate.sandbox.kube_exec import PROTOCOLS, ExecRecord, ExecRequest, serve_exec
from holdgate.sandbox.kube_openapi import SchemaNav
from holdgate.sandbox.kube_patch import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    PATCH_TYPES,
    STRATEGIC_MERGE_PATCH,
    PatchError,
    json_patch,
    merge_patch,
    strategic_merge,
)
from holdgate.sandbox.kube_resources import (
    DEPLOYMENTS,
    NAMESPACES,
    PODS,
    SECRETS,
    ResourceType,
    now_utc,
    table_cells,
    table_columns,
    unknown_fields,
)
from holdgate.sandbox.kube_routing import (
    Output,
    Target,
    aggregated_version,
    negotiate,
    parse_target,
)
from holdgate.sandbox.kube_status import StatusError
from holdgate.sandbox.kube_store import Event, FieldSelector, KubeStore, LabelSelector
from holdgate.sandbox.kube_tls import ensure_tls

Obj = dict[str, Any]

PUBLIC_PATHS = ("/healthz", "/livez", "/readyz")
JSON_TYPE = "application/json"
DEFAULT_WATCH_TIMEOUT = 1800.0
MAX_BODY_BYTES = 3 * 1024 * 1024  # the apiserver's MaxRequestBodyBytes
MAX_HEADER_BYTES = 1 << 20  # Go's http.DefaultMaxHeaderBytes
SEED_NAMESPACES = ("default", "kube-system", "kube-public", "prod", "sandbox")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the simulator received it (headers with lower-case names)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    content_type: str

    @property
    def params(self) -> dict[str, list[str]]:
        """The parsed query string."""
        return parse_qs(self.query, keep_blank_values=True)


# ---------------------------------------------------------------- helpers


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def _json_response(
    value: Any,
    status: int = 200,
    content_type: str = JSON_TYPE,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        body=_dumps(value), status=status, headers={"Content-Type": content_type, **(headers or {})}
    )


def _status_response(error: StatusError) -> web.Response:
    return _json_response(error.body, status=error.code)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "t", "yes")


def _partial(obj: Obj, version: str) -> Obj:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": copy.deepcopy(obj.get("metadata", {})),
    }


def _list_item(obj: Obj) -> Obj:
    """Items of built-in lists carry no kind/apiVersion."""
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def _scale(obj: Obj) -> Obj:
    meta = obj["metadata"]
    selector = ",".join(
        f"{k}={v}"
        for k, v in sorted(
            (obj.get("spec", {}).get("selector", {}).get("matchLabels") or {}).items()
        )
    )
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": obj.get("spec", {}).get("replicas", 0)},
        "status": {"replicas": obj.get("status", {}).get("replicas", 0), "selector": selector},
    }


def _manager(request: web.Request, params: MultiMapping[str]) -> str:
    manager = params.get("fieldManager") or request.headers.get("User-Agent", "").split("/", 1)[0]
    if len(manager) > 128:
        raise StatusError.bad_request("fieldManager: Too long: may not be more than 128 bytes")
    return manager


def _dry_run(params: MultiMapping[str]) -> bool:
    values = params.getall("dryRun", [])
    for value in values:
        if value != "All":
            raise StatusError.bad_request(
                f'dryRun: Unsupported value: "{value}": supported values: "All"'
            )
    return bool(values)


# ---------------------------------------------------------------- the simulator


class KubeSimulator:
    """A Kubernetes API server on loopback: `await start()`, use `url`/`ca_path`, `await stop()`."""

    def __init__(
        self,
        *,
        token: str,
        cert_dir: pathlib.Path,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: bool = True,
    ) -> None:
        self.token = token
        self.cert_dir = pathlib.Path(cert_dir)
        self.host = host
        self.port = port
        self.url = ""
        self.ca_path = self.cert_dir / "ca.crt"
        self.store = KubeStore()
        # What the credential may do (RBAC rules); a cluster admin unless a test narrows it.
        self.access: tuple[kube_rbac.PolicyRule, ...] = kube_rbac.FULL_ACCESS
        self.requests: list[RecordedRequest] = []
        self.execs: list[ExecRecord] = []
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._logs: dict[tuple[str, str, str], list[str]] = {}
        self._log_followers: dict[tuple[str, str, str], set[asyncio.Queue[str | None]]] = {}
        self._lock = threading.Lock()
        if seed:
            self.seed()

    # -- lifecycle

    async def start(self) -> None:
        """Create TLS material if missing and listen; sets `url` (port 0 picks a free port)."""
        if self._runner is not None:
            return
        tls = ensure_tls(self.cert_dir, self.host)
        self.ca_path = tls.ca_cert
        self.store.publish_root_ca(tls.ca_cert.read_text())
        self._loop = asyncio.get_running_loop()
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_response_prepare.append(self._add_headers)
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            shutdown_timeout=2.0,
            access_log=None,
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=tls.server_context())
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self.url = f"https://{self.host}:{self.port}"

    async def stop(self) -> None:
        """End watches, log follows and exec sessions, then close the listener."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.store.close_watches()
        with self._lock:
            followers = [q for qs in self._log_followers.values() for q in qs]
        for queue in followers:
            queue.put_nowait(None)
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"server shutting down")
        await runner.cleanup()

    # -- helpers for tests and the embedded default

    def clear_requests(self) -> None:
        """Forget the recorded requests (and exec sessions)."""
        self.requests.clear()
        self.execs.clear()

    def requests_to(self, path_prefix: str, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests whose path starts with path_prefix (and with that method)."""
        return [
            r
            for r in self.requests
            if r.path.startswith(path_prefix) and (method is None or r.method == method.upper())
        ]

    def kubeconfig(
        self, *, token: str | None = None, namespace: str = "default", name: str = "sandbox"
    ) -> str:
        """A kubeconfig (YAML) pointing straight at the simulator."""
        ca = base64.b64encode(self.ca_path.read_bytes()).decode("ascii")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": name, "cluster": {"server": self.url, "certificate-authority-data": ca}}
            ],
            "users": [{"name": name, "user": {"token": self.token if token is None else token}}],
            "contexts": [
                {"name": name, "context": {"cluster": name, "user": name, "namespace": namespace}}
            ],
            "current-context": name,
            "preferences": {},
        }
        return yaml.safe_dump(config, sort_keys=False)

    def seed(self) -> None:
        """The sandbox cluster: the usual namespaces, `web-0` pods in sandbox and prod, a secret."""
        for ns in SEED_NAMESPACES:
            if self.store.find(NAMESPACES, "", ns) is None:
                self.store.create(
                    NAMESPACES, "", {"metadata": {"name": ns}}, manager="kube-apiserver"
                )
        pod_template = {
            "metadata": {"name": "web-0", "labels": {"app": "web"}},
            "spec": {
                "containers": [
                    {"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}
                ]
            },
        }
        for ns in ("sandbox", "prod"):
            if self.store.find(PODS, ns, "web-0") is None:
                self.store.create(
                    PODS, ns, copy.deepcopy(pod_template), manager="kube-controller-manager"
                )
        secret = {
            "metadata": {"name": "db-credentials", "labels": {"app": "web"}},
            "type": "Opaque",
            "stringData": {"username": "app", "password": "s3cr3t-prod-password"},
        }
        if self.store.find(SECRETS, "prod", "db-credentials") is None:
            self.store.create(SECRETS, "prod", secret, manager="kubectl-create")

    def pod_log(self, namespace: str, pod: str, container: str) -> list[str]:
        """The log lines of a container so far."""
        key = (namespace, pod, container)
        with self._lock:
            if key not in self._logs:
                self._logs[key] = [
                    f"Starting {container} in pod {namespace}/{pod}\n",
                    "Listening on 0.0.0.0:80\n",
                    "Ready to serve requests\n",
                ]
            return list(self._logs[key])

    def append_log(self, namespace: str, pod: str, line: str, container: str = "web") -> None:
        """Append a log line (thread-safe); `logs -f` followers receive it live."""
        text = line if line.endswith("\n") else line + "\n"
        key = (namespace, pod, container)
        self.pod_log(namespace, pod, container)
        with self._lock:
            self._logs[key].append(text)
            followers = list(self._log_followers.get(key, ()))
        if self._loop is not None:
            for queue in followers:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(queue.put_nowait, text)

    # -- the request pipeline

    async def _add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault("Audit-Id", str(uuid.uuid4()))
        response.headers.setdefault("Cache-Control", "no-cache, private")
        response.headers.setdefault(
            "X-Kubernetes-Pf-Flowschema-Uid", "5f0b2c39-1e5a-4c38-9a0e-0f6a3c2b1d10"
        )
        response.headers.setdefault(
            "X-Kubernetes-Pf-Prioritylevel-Uid", "a4b6c8d0-2e4f-4a6b-8c0d-1e3f5a7b9c2d"
        )

    def _authenticated(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.token.encode()
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        too_large = False
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body, too_large = b"", True
        raw_path = request.rel_url.raw_path
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=raw_path,
                query=request.rel_url.raw_query_string,
                headers={k.lower(): v for k, v in _joined_headers(request).items()},
                body=body,
                content_type=request.headers.get("Content-Type", ""),
            )
        )
        path = request.path
        try:
            if any(path == p or path.startswith(p + "/") for p in PUBLIC_PATHS):
                return web.Response(text="ok", content_type="text/plain")
            if not self._authenticated(request):
                raise StatusError.unauthorized()
            if too_large:
                raise StatusError(
                    413,
                    "RequestEntityTooLarge",
                    f"Request entity too large: limit is {MAX_BODY_BYTES}",
                )
            self._authorize(request)
            return await self._route(request, path, body)
        except StatusError as e:
            return _status_response(e)

    def _authorize(self, request: web.Request) -> None:
        """403 for what the credential's RBAC rules do not allow."""
        asked = classify(request.method, request.rel_url.raw_path, request.rel_url.raw_query_string)
        if kube_rbac.allowing_rule(self.access, asked) is None:
            details = {"kind": asked.resource} if asked.resource_request else None
            if details is not None and asked.name:
                details["name"] = asked.name
            if details is not None and asked.api_group:
                details["group"] = asked.api_group
            raise StatusError(403, "Forbidden", kube_rbac.forbidden_message(asked), details)

    def _self_review(self, request: web.Request, resource: str, body: bytes) -> web.Response:
        """`kubectl auth can-i`: what this credential may do, as RBAC answers it."""
        if request.method != "POST":
            raise StatusError.method_not_allowed()
        review = decode_object(request.headers.get("Content-Type", ""), body)
        spec = review.get("spec") or {}
        if resource == "selfsubjectaccessreviews":
            status = kube_rbac.access_review_status(self.access, spec)
            kind = "SelfSubjectAccessReview"
        else:
            status = kube_rbac.rules_review_status(self.access)
            kind = "SelfSubjectRulesReview"
        answer = {
            "kind": kind,
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }
        return _json_response(answer, status=201)

    async def _route(self, request: web.Request, path: str, body: bytes) -> web.StreamResponse:
        path = path.rstrip("/") or "/"
        accept = request.headers.get("Accept", "")
        review = path.removeprefix("/apis/authorization.k8s.io/v1/")
        if review in ("selfsubjectaccessreviews", "selfsubjectrulesreviews"):
            return self._self_review(request, review, body)
        if path == "/version":
            return self._get_only(request) or _json_response(kube_discovery.version_info())
        if path == "/openapi/v3":
            return self._get_only(request) or _json_response(kube_openapi.root_document())
        if path.startswith("/openapi/v3/"):
            return self._get_only(request) or self._openapi_document(request, path)
        if path in ("/api", "/apis"):
            denied = self._get_only(request)
            if denied:
                return denied
            version = aggregated_version(accept)
            if version:
                return _json_response(
                    kube_discovery.aggregated_discovery(path == "/api", version),
                    content_type=kube_discovery.aggregated_content_type(version),
                    headers={"Vary": "Accept"},
                )
            if path == "/api":
                return _json_response(kube_discovery.api_versions(f"{self.host}:{self.port}"))
            return _json_response(kube_discovery.api_group_list())
        parts = [p for p in path.split("/") if p]
        if (
            parts[:1] == ["apis"]
            and len(parts) == 2
            and (group := kube_discovery.api_group(parts[1]))
        ):
            return self._get_only(request) or _json_response(group)
        if (parts[:1] == ["api"] and len(parts) == 2) or (
            parts[:1] == ["apis"] and len(parts) == 3
        ):
            group_name, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            resources = kube_discovery.api_resource_list(group_name, version)
            if resources is None:
                raise StatusError.no_such_path()
            return self._get_only(request) or _json_response(resources)
        target = parse_target(path)
        if target is None:
            if parts[:1] in (["api"], ["apis"]):
                raise StatusError.no_such_path()
            return web.Response(status=404, text="404 page not found\n", content_type="text/plain")
        return await self._resource(request, target, body)

    @staticmethod
    def _get_only(request: web.Request) -> web.Response | None:
        if request.method in ("GET", "HEAD"):
            return None
        return _status_response(StatusError.method_not_allowed())

    def _openapi_document(self, request: web.Request, path: str) -> web.Response:
        found = kube_openapi.find_document(path)
        if found is None:
            return web.Response(status=404, text="404 page not found\n", content_type="text/plain")
        digest = kube_openapi.document_hash(*found)
        headers = {"Content-Type": JSON_TYPE, "Etag": f'"{digest}"'}
        if request.query.get("hash") == digest:
            headers["Cache-Control"] = "public, immutable"
            headers["Expires"] = "Mon, 01 Jan 2035 00:00:00 GMT"
        if request.headers.get("If-None-Match") == f'"{digest}"':
            return web.Response(status=304, headers=headers)
        return web.Response(body=kube_openapi.group_version_document(*found), headers=headers)

    # -- resources

    async def _resource(
        self, request: web.Request, target: Target, body: bytes
    ) -> web.StreamResponse:
        method, params = request.method, request.query
        rt, name, sub = target.rt, target.name, target.subresource
        if sub == "exec":
            return await self._exec(request, target)
        if sub == "log":
            if method != "GET":
                raise StatusError.method_not_allowed()
            return await self._log(request, target)
        if method in ("GET", "HEAD"):
            if target.watch_path or _truthy(params.get("watch")):
                return await self._watch(request, target)
            if name is None:
                return self._list(request, target)
            obj = self.store.get(rt, target.namespace or "", name)
            if sub == "scale":
                return _json_response(_scale(obj))
            return _json_response(
                self._render(rt, obj, negotiate(request.headers.get("Accept", "")), params)
            )
        if target.watch_path:
            raise StatusError.method_not_allowed()
        if method == "POST" and name is None:
            if rt.namespaced and target.namespace is None:
                raise StatusError.method_not_allowed()
            return self._create(request, target, body)
        if method == "PUT" and name is not None:
            return self._update(request, target, body)
        if method == "PATCH" and name is not None:
            return self._patch(request, target, body)
        if method == "DELETE" and sub is None:
            if name is not None:
                return self._delete(request, target, body)
            if "deletecollection" in rt.verbs:
                return self._delete_collection(request, target)
        raise StatusError.method_not_allowed()

    def _render(self, rt: ResourceType, obj: Obj, output: Output, params: MultiMapping[str]) -> Obj:
        if output.form == "table":
            meta = {"resourceVersion": obj.get("metadata", {}).get("resourceVersion", "")}
            return self._table(rt, [obj], output.version, meta, params)
        if output.form == "partial":
            return _partial(obj, output.version)
        return obj

    def _table(
        self,
        rt: ResourceType,
        objs: list[Obj],
        version: str,
        meta: Obj,
        params: MultiMapping[str],
        columns: bool = True,
    ) -> Obj:
        include = params.get("includeObject", "Metadata")
        now = now_utc()
        rows = []
        for obj in objs:
            row: Obj = {"cells": table_cells(rt, obj, now)}
            if include == "Object":
                row["object"] = obj
            elif include != "None":
                row["object"] = _partial(obj, version)
            rows.append(row)
        return {
            "kind": "Table",
            "apiVersion": f"meta.k8s.io/{version}",
            "metadata": meta,
            "columnDefinitions": table_columns(rt) if columns else None,
            "rows": rows,
        }

    def _selectors(
        self, target: Target, params: MultiMapping[str]
    ) -> tuple[LabelSelector, FieldSelector]:
        labels = LabelSelector.parse(params.get("labelSelector", ""))
        field_text = params.get("fieldSelector", "")
        if target.name is not None and target.watch_path:
            field_text = ",".join(f for f in (field_text, f"metadata.name={target.name}") if f)
        return labels, FieldSelector.parse(target.rt, field_text)

    def _list(self, request: web.Request, target: Target) -> web.Response:
        params = request.query
        labels, fields = self._selectors(target, params)
        try:
            limit = int(params.get("limit", "0") or 0)
        except ValueError as e:
            raise StatusError.bad_request(f"limit: Invalid value: {params.get('limit')!r}") from e
        items, rv, cont, remaining = self.store.list_objects(
            target.rt,
            target.namespace,
            labels,
            fields,
            limit=max(limit, 0),
            continue_token=params.get("continue", ""),
        )
        meta: Obj = {"resourceVersion": rv}
        if cont:
            meta["continue"] = cont
            meta["remainingItemCount"] = remaining
        output = negotiate(request.headers.get("Accept", ""))
        if output.form == "table":
            return _json_response(self._table(target.rt, items, output.version, meta, params))
        if output.form == "partial":
            return _json_response(
                {
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": f"meta.k8s.io/{output.version}",
                    "metadata": meta,
                    "items": [_partial(i, output.version) for i in items],
                }
            )
        return _json_response(
            {
                "kind": target.rt.list_kind,
                "apiVersion": target.rt.api_version,
                "metadata": meta,
                "items": [_list_item(i) for i in items],
            }
        )

    def _validation(
        self, rt: ResourceType, obj: Obj, params: MultiMapping[str], structured: bool
    ) -> dict[str, str]:
        """Server-side field validation; the Warning headers to send (or 400 when Strict)."""
        directive = params.get("fieldValidation", "Warn") or "Warn"
        if directive not in ("Ignore", "Warn", "Strict"):
            raise StatusError.bad_request(
                f'fieldValidation: Unsupported value: "{directive}": supported values: "Ignore", "Strict", "Warn"'
            )
        if not structured or directive == "Ignore":
            return {}
        unknown = unknown_fields(rt, obj)
        if not unknown:
            return {}
        if directive == "Strict":
            text = ", ".join(f'unknown field "{u}"' for u in unknown)
            raise StatusError.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: strict decoding error: {text}'
            )
        return {"Warning": ", ".join(f'299 - "unknown field \\"{u}\\""' for u in unknown)}

    def _create(self, request: web.Request, target: Target, body: bytes) -> web.Response:
        params = request.query
        content_type = request.headers.get("Content-Type", "")
        obj = decode_object(content_type, body)
        structured = media_type(content_type) in ("application/json", "application/yaml", "")
        warnings = self._validation(target.rt, obj, params, structured)
        created = self.store.create(
            target.rt,
            target.namespace or "",
            obj,
            manager=_manager(request, params),
            dry_run=_dry_run(params),
        )
        return _json_response(created, status=201, headers=warnings)

    def _update(self, request: web.Request, target: Target, body: bytes) -> web.Response:
        params = request.query
        content_type = request.headers.get("Content-Type", "")
        obj = decode_object(content_type, body)
        rt, ns, name = target.rt, target.namespace or "", target.name or ""
        if target.subresource == "scale":
            return self._write_scale(request, target, obj)
        structured = media_type(content_type) in ("application/json", "application/yaml", "")
        warnings = self._validation(rt, obj, params, structured)
        sub = "status" if target.subresource == "status" else ""
        updated, _ = self.store.update(
            rt,
            ns,
            name,
            obj,
            manager=_manager(request, params),
            subresource=sub,
            dry_run=_dry_run(params),
        )
        return _json_response(updated, headers=warnings)

    def _write_scale(self, request: web.Request, target: Target, scale: Obj) -> web.Response:
        ns, name = target.namespace or "", target.name or ""
        current = self.store.get(DEPLOYMENTS, ns, name)
        replicas = scale.get("spec", {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise StatusError.invalid(
                DEPLOYMENTS,
                name,
                [
                    (
                        "FieldValueInvalid",
                        "spec.replicas",
                        f"Invalid value: {replicas}: must be greater than or equal to 0",
                    )
                ],
            )
        wanted_rv = scale.get("metadata", {}).get("resourceVersion")
        current["spec"]["replicas"] = replicas
        if wanted_rv:
            current["metadata"]["resourceVersion"] = wanted_rv
        updated, _ = self.store.update(
            DEPLOYMENTS,
            ns,
            name,
            current,
            manager=_manager(request, request.query),
            subresource="scale",
            dry_run=_dry_run(request.query),
        )
        return _json_response(_scale(updated))

    def _patch(self, request: web.Request, target: Target, body: bytes) -> web.Response:
        params = request.query
        rt, ns, name = target.rt, target.namespace or "", target.name or ""
        content_type = media_type(request.headers.get("Content-Type", ""))
        if content_type not in PATCH_TYPES:
            raise StatusError.unsupported_media_type(
                content_type, [JSON_PATCH, MERGE_PATCH, APPLY_PATCH, STRATEGIC_MERGE_PATCH]
            )
        manager, dry_run = _manager(request, params), _dry_run(params)
        if content_type == APPLY_PATCH:
            return self._apply(request, target, body)
        current = self.store.get(rt, ns, name)
        base = _scale(current) if target.subresource == "scale" else current
        try:
            if content_type == JSON_PATCH:
                patched = json_patch(base, decode_json(body))
            else:
                document = decode_json(body)
                if not isinstance(document, dict):
                    raise StatusError.bad_request(
                        "json: cannot unmarshal array into Go value of type map[string]interface {}"
                    )
                if content_type == MERGE_PATCH or target.subresource == "scale":
                    patched = merge_patch(base, document)
                else:
                    patched = strategic_merge(base, document, SchemaNav.for_resource(rt))
        except PatchError as e:
            raise StatusError(422, "Invalid", str(e)) from e
        if not isinstance(patched, dict):
            raise StatusError(422, "Invalid", "the patch did not produce an object")
        if target.subresource == "scale":
            return self._write_scale(request, target, patched)
        warnings = self._validation(rt, patched, params, True)
        sub = "status" if target.subresource == "status" else ""
        updated, _ = self.store.update(
            rt, ns, name, patched, manager=manager, subresource=sub, dry_run=dry_run
        )
        return _json_response(updated, headers=warnings)

    def _apply(self, request: web.Request, target: Target, body: bytes) -> web.Response:
        """Server-side apply, simplified: create, or strategic-merge the applied configuration."""
        params = request.query
        rt, ns, name = target.rt, target.namespace or "", target.name or ""
        if not params.get("fieldManager"):
            raise StatusError.bad_request(
                f"PATCH {request.path}: fieldManager is required for apply requests"
            )
        applied = decode_yaml(body)
        if not isinstance(applied, dict):
            raise StatusError.bad_request(
                "error decoding YAML: the applied configuration is not an object"
            )
        applied_name = applied.get("metadata", {}).get("name")
        if applied_name and applied_name != name:
            raise StatusError.bad_request(
                f"the name of the object ({applied_name}) does not match the name on the URL ({name})"
            )
        warnings = self._validation(rt, applied, params, True)
        manager, dry_run = params["fieldManager"], _dry_run(params)
        current = self.store.find(rt, ns, name)
        if current is None:
            applied.setdefault("metadata", {})["name"] = name
            created = self.store.create(
                rt, ns, applied, manager=manager, operation="Apply", dry_run=dry_run
            )
            return _json_response(created, status=201, headers=warnings)
        merged = strategic_merge(current, applied, SchemaNav.for_resource(rt))
        sub = "status" if target.subresource == "status" else ""
        updated, _ = self.store.update(
            rt,
            ns,
            name,
            merged,
            manager=manager,
            operation="Apply",
            subresource=sub,
            dry_run=dry_run,
        )
        return _json_response(updated, headers=warnings)

    def _delete(self, request: web.Request, target: Target, body: bytes) -> web.Response:
        options: Obj = {}
        if body:
            with contextlib.suppress(StatusError):
                decoded = decode_object(request.headers.get("Content-Type", ""), body)
                options = decoded if isinstance(decoded, dict) else {}
        dry_run = _dry_run(request.query) or options.get("dryRun") == ["All"]
        rt, name = target.rt, target.name or ""
        gone = self.store.delete(
            rt,
            target.namespace or "",
            name,
            preconditions=options.get("preconditions"),
            dry_run=dry_run,
        )
        if rt.returns_deleted_object:
            return _json_response(gone)
        details: Obj = {"name": name}
        if rt.group:
            details["group"] = rt.group
        details["kind"] = rt.plural
        details["uid"] = gone["metadata"].get("uid", "")
        return _json_response(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            }
        )

    def _delete_collection(self, request: web.Request, target: Target) -> web.Response:
        labels, fields = self._selectors(target, request.query)
        gone = self.store.delete_collection(
            target.rt, target.namespace, labels, fields, dry_run=_dry_run(request.query)
        )
        return _json_response(
            {
                "kind": target.rt.list_kind,
                "apiVersion": target.rt.api_version,
                "metadata": {"resourceVersion": self.store.resource_version},
                "items": [_list_item(g) for g in gone],
            }
        )

    # -- watch

    async def _watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        params = request.query
        labels, fields = self._selectors(target, params)
        if target.name is not None and not target.watch_path:
            fields = FieldSelector.parse(
                target.rt,
                ",".join(
                    f
                    for f in (params.get("fieldSelector", ""), f"metadata.name={target.name}")
                    if f
                ),
            )
        rv_text = params.get("resourceVersion", "")
        initial_events = _truthy(params.get("sendInitialEvents"))
        since: int | None = None
        if rv_text not in ("", "0") and not initial_events:
            try:
                since = int(rv_text)
            except ValueError as e:
                raise StatusError.bad_request(
                    f'resourceVersion: Invalid value: "{rv_text}": must be an integer'
                ) from e
        try:
            timeout = float(params.get("timeoutSeconds", "") or DEFAULT_WATCH_TIMEOUT)
        except ValueError as e:
            raise StatusError.bad_request("timeoutSeconds: must be an integer") from e
        output = negotiate(request.headers.get("Accept", ""))
        loop = asyncio.get_running_loop()
        response = web.StreamResponse(headers={"Content-Type": JSON_TYPE})
        response.enable_chunked_encoding()
        try:
            watch, initial = self.store.watch(
                target.rt, target.namespace, labels, fields, since, loop
            )
        except StatusError as e:
            await response.prepare(request)
            await response.write(_dumps({"type": "ERROR", "object": e.body}))
            await response.write_eof()
            return response
        first = [True]

        async def send(event: Event) -> None:
            await response.write(
                _dumps(
                    {"type": event.type, "object": self._watch_object(event, output, params, first)}
                )
            )

        deadline = loop.time() + max(timeout, 0.0)
        try:
            await response.prepare(request)
            for event in initial:
                await send(event)
            if initial_events:
                bookmark = {
                    "kind": target.rt.kind,
                    "apiVersion": target.rt.api_version,
                    "metadata": {
                        "resourceVersion": self.store.resource_version,
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                }
                await send(Event("BOOKMARK", target.rt, bookmark))
            while (remaining := deadline - loop.time()) > 0:
                try:
                    event_or_end = await asyncio.wait_for(watch.queue.get(), remaining)
                except TimeoutError:
                    break
                if event_or_end is None:
                    break
                await send(event_or_end)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.store.unwatch(watch)
        return response

    def _watch_object(
        self, event: Event, output: Output, params: MultiMapping[str], first: list[bool]
    ) -> Obj:
        if event.type == "BOOKMARK" or output.form == "object":
            return event.obj
        if output.form == "partial":
            return _partial(event.obj, output.version)
        table = self._table(
            event.rt,
            [event.obj],
            output.version,
            {"resourceVersion": event.obj["metadata"].get("resourceVersion", "")},
            params,
            columns=first[0],
        )
        first[0] = False
        return table

    # -- pods/log

    def _container(self, pod: Obj, requested: str | None) -> str:
        containers = [c.get("name", "") for c in pod.get("spec", {}).get("containers") or []]
        name = pod["metadata"]["name"]
        if requested:
            if requested not in containers:
                raise StatusError.bad_request(f"container {requested} is not valid for pod {name}")
            return requested
        default = (
            pod["metadata"].get("annotations", {}).get("kubectl.kubernetes.io/default-container")
        )
        if default in containers:
            return str(default)
        if len(containers) != 1:
            raise StatusError.bad_request(
                f"a container name must be specified for pod {name}, choose one of: [{' '.join(containers)}]"
            )
        return containers[0]

    async def _log(self, request: web.Request, target: Target) -> web.StreamResponse:
        params = request.query
        ns, name = target.namespace or "", target.name or ""
        pod = self.store.get(PODS, ns, name)
        container = self._container(pod, params.get("container"))
        lines = self.pod_log(ns, name, container)
        tail = params.get("tailLines")
        if tail and tail.isdigit():
            lines = lines[-int(tail) :] if int(tail) else []
        stamp = _truthy(params.get("timestamps"))

        def render(line: str) -> bytes:
            prefix = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z ") if stamp else ""
            return (prefix + line).encode()

        if not _truthy(params.get("follow")):
            return web.Response(
                body=b"".join(render(line) for line in lines),
                headers={"Content-Type": "text/plain"},
            )
        key = (ns, name, container)
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        with self._lock:
            self._log_followers.setdefault(key, set()).add(queue)
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            for line in lines:
                await response.write(render(line))
            while (line_or_end := await queue.get()) is not None:
                await response.write(render(line_or_end))
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            with self._lock:
                self._log_followers.get(key, set()).discard(queue)
        return response

    # -- pods/exec

    async def _exec(self, request: web.Request, target: Target) -> web.StreamResponse:
        params = request.query
        ns, name = target.namespace or "", target.name or ""
        pod = self.store.get(PODS, ns, name)
        command = tuple(params.getall("command", []))
        if not command:
            raise StatusError.bad_request("you must specify at least 1 command")
        container = self._container(pod, params.get("container"))
        exec_request = ExecRequest(
            namespace=ns,
            pod=name,
            container=container,
            command=command,
            stdin=_truthy(params.get("stdin")),
            stdout=_truthy(params.get("stdout")),
            stderr=_truthy(params.get("stderr")),
            tty=_truthy(params.get("tty")),
        )
        if not (exec_request.stdin or exec_request.stdout or exec_request.stderr):
            raise StatusError.bad_request("you must specify at least one of stdin, stdout, stderr")
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            raise StatusError.bad_request(
                f"cannot exec into a container in a completed pod; current phase is {pod['status']['phase']}"
            )
        ws = web.WebSocketResponse(
            protocols=PROTOCOLS, autoping=True, max_msg_size=16 * 1024 * 1024
        )
        if not ws.can_prepare(request).ok:
            raise StatusError.bad_request("Upgrade request required")
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            self.execs.append(await serve_exec(ws, exec_request))
        finally:
            self._sockets.discard(ws)
        return ws


def _joined_headers(request: web.Request) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in request.headers.items():
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


# ---------------------------------------------------------------- synchronous use and CLI


@contextlib.contextmanager
def running_simulator(
    token: str,
    cert_dir: pathlib.Path | str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: bool = True,
) -> Iterator[KubeSimulator]:
    """Run a simulator on its own event loop in a daemon thread; stopped on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="kube-sim", daemon=True)
    thread.start()
    sim = KubeSimulator(
        token=token, cert_dir=pathlib.Path(cert_dir), host=host, port=port, seed=seed
    )
    try:
        asyncio.run_coroutine_threadsafe(sim.start(), loop).result(timeout=30)
        yield sim
    finally:
        try:
            asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()


async def _serve(args: argparse.Namespace) -> None:
    sim = KubeSimulator(
        token=args.token, cert_dir=pathlib.Path(args.cert_dir), host=args.host, port=args.port
    )
    await sim.start()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, done.set)
    if args.kubeconfig:
        path = pathlib.Path(args.kubeconfig)
        path.write_text(sim.kubeconfig())
        path.chmod(0o600)
    print(f"kube-sim listening on {sim.url} (CA {sim.ca_path})", flush=True)
    try:
        await done.wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m holdgate.sandbox.kube_sim --port 6443 --token T --cert-dir DIR`."""
    parser = argparse.ArgumentParser(
        prog="python -m holdgate.sandbox.kube_sim", description="Simulated Kubernetes API server."
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=6443, help="port (0 picks a free one; default 6443)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("KUBE_SIM_TOKEN"),
        help="bearer token clients must send (or $KUBE_SIM_TOKEN)",
    )
    parser.add_argument(
        "--cert-dir",
        required=True,
        help="where the CA and server certificate live (created if missing)",
    )
    parser.add_argument("--kubeconfig", help="also write a kubeconfig for the simulator here")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token (or $KUBE_SIM_TOKEN) is required")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
