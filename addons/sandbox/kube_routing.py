"""What a request asks for: the resource path (like the apiserver's RequestInfo resolver) and the
representation negotiated from `Accept` (object, `Table`, `PartialObjectMetadata`, aggregated
discovery). The simulator answers JSON only; protobuf media ranges are skipped."""

from __future__ import annotations

from dataclasses import dataclass

from holdgate.sandbox import kube_discovery
from holdgate.sandbox.kube_resources import NAMESPACES, ResourceType, find_resource


@dataclass(frozen=True, slots=True)
class Target:
    """A resource request path, resolved like the apiserver's RequestInfo."""

    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    watch_path: bool


@dataclass(frozen=True, slots=True)
class Output:
    """The negotiated representation of a read: object, Table or PartialObjectMetadata."""

    form: str = "object"
    version: str = "v1"


def _media_ranges(accept: str) -> list[tuple[str, dict[str, str]]]:
    ranges = []
    for item in accept.split(","):
        parts = [p.strip() for p in item.split(";") if p.strip()]
        if not parts:
            continue
        params = {}
        for p in parts[1:]:
            key, _, value = p.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        ranges.append((parts[0].lower(), params))
    return ranges


def negotiate(accept: str) -> Output:
    """The first representation in the Accept list that the simulator serves (JSON only)."""
    for base, params in _media_ranges(accept or "*/*"):
        if base not in ("application/json", "application/yaml", "*/*", "application/*"):
            continue
        as_kind, group, version = params.get("as"), params.get("g"), params.get("v", "v1")
        if as_kind is None:
            return Output()
        if group == "meta.k8s.io" and version in ("v1", "v1beta1"):
            if as_kind == "Table":
                return Output("table", version)
            if as_kind in ("PartialObjectMetadata", "PartialObjectMetadataList"):
                return Output("partial", version)
    return Output()


def aggregated_version(accept: str) -> str | None:
    """The apidiscovery version the client asks for in JSON, if any."""
    for base, params in _media_ranges(accept):
        if base != "application/json":
            continue
        if params.get("as") is None:
            return None
        if (
            params.get("g") == kube_discovery.AGGREGATED_GROUP
            and params.get("as") == kube_discovery.AGGREGATED_KIND
            and params.get("v") in kube_discovery.AGGREGATED_VERSIONS
        ):
            return params["v"]
    return None


def parse_target(path: str) -> Target | None:
    """Resolve a resource path; None for anything that is not one (discovery, unknown)."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    watch_path = bool(rest) and rest[0] == "watch"
    if watch_path:
        rest = rest[1:]
    if not rest:
        return None
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in ("status", "finalize"):
            rest = rest[2:]
    if len(rest) > 3:
        return None
    rt = find_resource(group, version, rest[0])
    if rt is None:
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if not rt.namespaced:
        namespace = None
    elif name is not None and namespace is None:
        return None
    if (
        sub is not None
        and rt.subresource(sub) is None
        and not (rt is NAMESPACES and sub == "finalize")
    ):
        return None
    if watch_path and sub is not None:
        return None
    return Target(rt, namespace, name, sub, watch_path)
