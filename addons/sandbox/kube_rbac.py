"""What the simulator's one credential may do: RBAC policy rules, as the apiserver's RBAC
authorizer matches them, answering requests (403 outside them) and the self-reviews
`kubectl auth can-i` sends (SelfSubjectAccessReview, SelfSubjectRulesReview).

By default the credential is a cluster admin (`FULL_ACCESS`); tests narrow it with
`KubeSimulator.access` to check what the upstream's own answer adds to the gateway's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from holdgate.kube.request_info import KubeRequest

USER = "system:serviceaccount:holdgate:gateway"
BINDING = 'ClusterRoleBinding "holdgate-gateway" of ClusterRole "{role}" to User "' + USER + '"'


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One RBAC rule: resource rules (verbs, apiGroups, resources, resourceNames) or
    non-resource rules (verbs, nonResourceURLs)."""

    verbs: tuple[str, ...]
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()
    role: str = "cluster-admin"

    def allows(self, request: KubeRequest) -> bool:
        """RBAC's RuleAllows for one request."""
        if not _has(self.verbs, request.verb):
            return False
        if not request.resource_request:
            return any(
                url == request.path or (url.endswith("*") and request.path.startswith(url[:-1]))
                for url in self.non_resource_urls
            )
        if not _has(self.api_groups, request.api_group):
            return False
        combined = f"{request.resource}/{request.subresource}".rstrip("/")
        if not any(
            r in ("*", combined)
            or (request.subresource and r.startswith("*/") and r[2:] == request.subresource)
            for r in self.resources
        ):
            return False
        return not self.resource_names or request.name in self.resource_names

    def as_resource_rule(self) -> dict[str, Any]:
        """The rule as a SelfSubjectRulesReview lists it."""
        out: dict[str, Any] = {
            "verbs": list(self.verbs),
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
        }
        if self.resource_names:
            out["resourceNames"] = list(self.resource_names)
        return out


def _has(values: tuple[str, ...], value: str) -> bool:
    return "*" in values or value in values


FULL_ACCESS = (
    PolicyRule(verbs=("*",), api_groups=("*",), resources=("*",)),
    PolicyRule(verbs=("*",), non_resource_urls=("*",)),
)
# What every authenticated user may do (ClusterRoles system:basic-user and system:discovery).
BASIC_USER = (
    PolicyRule(
        verbs=("create",),
        api_groups=("authorization.k8s.io",),
        resources=("selfsubjectaccessreviews", "selfsubjectrulesreviews"),
        role="system:basic-user",
    ),
    PolicyRule(
        verbs=("get",),
        non_resource_urls=(
            "/api",
            "/api/*",
            "/apis",
            "/apis/*",
            "/healthz",
            "/livez",
            "/openapi",
            "/openapi/*",
            "/readyz",
            "/version",
            "/version/",
        ),
        role="system:discovery",
    ),
)


def rule_from(raw: Mapping[str, Any]) -> PolicyRule:
    """A PolicyRule from its Kubernetes form (`verbs`, `apiGroups`, `resources`, ...)."""
    return PolicyRule(
        verbs=tuple(raw.get("verbs") or ()),
        api_groups=tuple(raw.get("apiGroups") or ()),
        resources=tuple(raw.get("resources") or ()),
        resource_names=tuple(raw.get("resourceNames") or ()),
        non_resource_urls=tuple(raw.get("nonResourceURLs") or ()),
        role=str(raw.get("role") or "holdgate-sim"),
    )


def allowing_rule(rules: Iterable[PolicyRule], request: KubeRequest) -> PolicyRule | None:
    """The first rule (or built-in basic-user rule) that allows the request."""
    return next((r for r in (*rules, *BASIC_USER) if r.allows(request)), None)


def forbidden_message(request: KubeRequest) -> str:
    """The apiserver's 403 message for a request RBAC does not allow."""
    if not request.resource_request:
        return f'forbidden: User "{USER}" cannot {request.verb} path "{request.path}"'
    what = request.resource + (f"/{request.subresource}" if request.subresource else "")
    named = f' "{request.name}"' if request.name else ""
    where = f' in the namespace "{request.namespace}"' if request.namespace else ""
    scope = "" if request.namespace else " at the cluster scope"
    return (
        f'{what}{named} is forbidden: User "{USER}" cannot {request.verb} resource "{what}" in '
        f'API group "{request.api_group}"{where}{scope}'
    )


def asked(spec: Mapping[str, Any]) -> KubeRequest:
    """The request a SelfSubjectAccessReview's spec asks about."""
    attributes = spec.get("resourceAttributes")
    if isinstance(attributes, Mapping):
        return KubeRequest(
            resource_request=True,
            path="",
            verb=str(attributes.get("verb") or ""),
            api_group=str(attributes.get("group") or ""),
            api_version=str(attributes.get("version") or ""),
            namespace=str(attributes.get("namespace") or ""),
            resource=str(attributes.get("resource") or ""),
            subresource=str(attributes.get("subresource") or ""),
            name=str(attributes.get("name") or ""),
        )
    other = spec.get("nonResourceAttributes") or {}
    return KubeRequest(
        resource_request=False, path=str(other.get("path") or ""), verb=str(other.get("verb") or "")
    )


def access_review_status(rules: Iterable[PolicyRule], spec: Mapping[str, Any]) -> dict[str, Any]:
    """The status of a SelfSubjectAccessReview, as the RBAC authorizer answers it."""
    rule = allowing_rule(rules, asked(spec))
    if rule is None:
        return {"allowed": False}
    return {"allowed": True, "reason": f"RBAC: allowed by {BINDING.format(role=rule.role)}"}


def rules_review_status(rules: Iterable[PolicyRule]) -> dict[str, Any]:
    """The status of a SelfSubjectRulesReview: every rule that applies, basic-user's too."""
    every = (*rules, *BASIC_USER)
    return {
        "resourceRules": [r.as_resource_rule() for r in every if r.resources],
        "nonResourceRules": [
            {"verbs": list(r.verbs), "nonResourceURLs": list(r.non_resource_urls)}
            for r in every
            if r.non_resource_urls
        ],
        "incomplete": False,
    }
