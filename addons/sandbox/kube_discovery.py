"""Discovery documents: `/version`, legacy `/api`, `/apis`, `/api/v1`, `/apis/apps/v1`, and
aggregated discovery (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`) on `/api` and `/apis`."""

from __future__ import annotations

from typing import Any

from holdgate.sandbox.kube_resources import GROUP_VERSIONS, ResourceType, resources_in

Obj = dict[str, Any]

AGGREGATED_GROUP = "apidiscovery.k8s.io"
AGGREGATED_KIND = "APIGroupDiscoveryList"
AGGREGATED_VERSIONS = ("v2", "v2beta1")


def aggregated_content_type(version: str) -> str:
    """The Content-Type of an aggregated discovery answer (client-go matches on g, v, as)."""
    return f"application/json;g={AGGREGATED_GROUP};v={version};as={AGGREGATED_KIND}"


def version_info() -> Obj:
    """`/version` of a v1.37.1 apiserver."""
    return {
        "major": "1",
        "minor": "37",
        "emulationMajor": "1",
        "emulationMinor": "37",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "36",
        "gitVersion": "v1.37.1",
        "gitCommit": "5b1ed3c8d1b2a1a0b0c0e0f0a0b0c0d0e0f0a0b0",
        "gitTreeState": "clean",
        "buildDate": "2026-01-15T00:00:00Z",
        "goVersion": "go1.25.5",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_versions(server_address: str) -> Obj:
    """Legacy `/api`."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _group(name: str) -> Obj:
    versions = [
        {"groupVersion": f"{name}/{v}", "version": v} for g, v in GROUP_VERSIONS if g == name
    ]
    return {"name": name, "versions": versions, "preferredVersion": versions[0]}


def api_group_list() -> Obj:
    """Legacy `/apis`."""
    names = sorted({g for g, _ in GROUP_VERSIONS if g})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group(n) for n in names]}


def api_group(name: str) -> Obj | None:
    """Legacy `/apis/<group>`."""
    if name not in {g for g, _ in GROUP_VERSIONS if g}:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name)}


def api_resource_list(group: str, version: str) -> Obj | None:
    """Legacy `/api/v1` or `/apis/<group>/<version>`."""
    if (group, version) not in GROUP_VERSIONS:
        return None
    resources: list[Obj] = []
    for rt in sorted(resources_in(group, version), key=lambda r: r.plural):
        entry: Obj = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": list(rt.verbs),
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        entry["storageVersionHash"] = rt.storage_hash
        resources.append(entry)
        for sub in rt.subresources:
            sub_entry: Obj = {
                "name": f"{rt.plural}/{sub.name}",
                "singularName": "",
                "namespaced": rt.namespaced,
            }
            if (sub.group, sub.version) != (rt.group, rt.version):
                sub_entry["group"] = sub.group
                sub_entry["version"] = sub.version
            sub_entry["kind"] = sub.kind
            sub_entry["verbs"] = list(sub.verbs)
            resources.append(sub_entry)
    body: Obj = {"kind": "APIResourceList"}
    if group:
        body["apiVersion"] = "v1"
    body["groupVersion"] = f"{group}/{version}" if group else version
    body["resources"] = resources
    return body


def _resource_discovery(rt: ResourceType) -> Obj:
    entry: Obj = {
        "resource": rt.plural,
        "responseKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "scope": "Namespaced" if rt.namespaced else "Cluster",
        "singularResource": rt.singular,
        "verbs": list(rt.verbs),
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    if rt.subresources:
        entry["subresources"] = [
            {
                "subresource": sub.name,
                "responseKind": {"group": sub.group, "version": sub.version, "kind": sub.kind},
                "verbs": list(sub.verbs),
            }
            for sub in rt.subresources
        ]
    return entry


def aggregated_discovery(legacy: bool, version: str = "v2") -> Obj:
    """`APIGroupDiscoveryList` for `/api` (legacy=True, the core group) or `/apis`."""
    items: list[Obj] = []
    names = [""] if legacy else sorted({g for g, _ in GROUP_VERSIONS if g})
    for name in names:
        versions = [
            {
                "version": v,
                "resources": [
                    _resource_discovery(rt)
                    for rt in sorted(resources_in(name, v), key=lambda r: r.plural)
                ],
                "freshness": "Current",
            }
            for g, v in GROUP_VERSIONS
            if g == name
        ]
        meta: Obj = (
            {"name": name, "creationTimestamp": None} if name else {"creationTimestamp": None}
        )
        items.append({"metadata": meta, "versions": versions})
    return {
        "kind": AGGREGATED_KIND,
        "apiVersion": f"{AGGREGATED_GROUP}/{version}",
        "metadata": {},
        "items": items,
    }
