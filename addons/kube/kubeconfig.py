"""Agent kubeconfigs: the cluster reached through the gateway, trusting the gateway's CA."""

from __future__ import annotations

import base64
import copy
from typing import Any

# What an agent's kubeconfig holds when the gateway injects the real credential.
INJECTED_PLACEHOLDER = "injected-by-holdgate"


class KubeconfigError(ValueError):
    """The input kubeconfig cannot be turned into an agent kubeconfig."""


def _named(items: list[dict[str, Any]], name: str, what: str) -> dict[str, Any]:
    for item in items or []:
        if item.get("name") == name:
            return item
    raise KubeconfigError(f"kubeconfig has no {what} named {name!r}")


def agent_kubeconfig(
    source: dict[str, Any],
    *,
    proxy_url: str,
    gateway_ca_pem: bytes,
    context: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """A kubeconfig with one context whose cluster goes through the gateway at `proxy_url`."""
    if not isinstance(source, dict) or source.get("kind", "Config") != "Config":
        raise KubeconfigError("input is not a kubeconfig (kind: Config)")
    context_name = context or source.get("current-context")
    if not context_name:
        raise KubeconfigError("no --context given and the kubeconfig has no current-context")
    ctx = copy.deepcopy(_named(source.get("contexts", []), context_name, "context"))
    cluster = copy.deepcopy(
        _named(source.get("clusters", []), ctx["context"]["cluster"], "cluster")
    )
    user = copy.deepcopy(_named(source.get("users", []), ctx["context"]["user"], "user"))
    settings = cluster["cluster"]
    # The agent sees the gateway's certificate, so trust its CA (beside the cluster's own, harmless).
    existing = b""
    if settings.get("certificate-authority-data"):
        existing = base64.b64decode(settings["certificate-authority-data"])
    bundle = gateway_ca_pem if not existing else existing.rstrip(b"\n") + b"\n" + gateway_ca_pem
    settings.pop("certificate-authority", None)
    settings.pop("insecure-skip-tls-verify", None)
    settings["certificate-authority-data"] = base64.b64encode(bundle).decode("ascii")
    settings["proxy-url"] = proxy_url
    if token is not None:
        user["user"] = {"token": token}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [cluster],
        "users": [user],
        "contexts": [ctx],
        "current-context": context_name,
    }


def simple_kubeconfig(
    *, server: str, ca_pem: bytes, token: str, name: str = "holdgate"
) -> dict[str, Any]:
    """A single-context kubeconfig with a bearer token."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode("ascii"),
                },
            }
        ],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
