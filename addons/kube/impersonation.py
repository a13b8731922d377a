"""Impersonation headers as the apiserver authorizes them: one `impersonate` request each.

k8s.io/apiserver/pkg/endpoints/filters/impersonation.go checks every header separately:
`Impersonate-User` is verb `impersonate` on `users` (or on `serviceaccounts` in the account's
namespace for `system:serviceaccount:NS:NAME`), each `Impersonate-Group` on `groups`,
`Impersonate-Uid` on `uids` and each `Impersonate-Extra-KEY` value on `userextras/KEY` (both
in API group `authentication.k8s.io`), the header value being the name. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote

from holdgate.kube.request_info import KubeRequest, UnsafePath

HEADER_PREFIX = "impersonate-"
_SERVICE_ACCOUNT = "system:serviceaccount:"
_AUTHENTICATION = "authentication.k8s.io"


def is_impersonation_header(name: str) -> bool:
    """Whether a header asks the apiserver to act as someone else."""
    return name.lower().startswith(HEADER_PREFIX)


def impersonation_requests(headers: Iterable[tuple[str, str]]) -> tuple[KubeRequest, ...]:
    """The `impersonate` requests the headers make; UnsafePath for one the gateway cannot read."""
    out: list[KubeRequest] = []
    for raw_name, value in headers:
        name = raw_name.lower()
        if not name.startswith(HEADER_PREFIX):
            continue
        kind = name[len(HEADER_PREFIX) :]
        if kind == "user":
            out.append(_user(value))
        elif kind == "group":
            out.append(_request("groups", value))
        elif kind == "uid":
            out.append(_request("uids", value, api_group=_AUTHENTICATION))
        elif kind.startswith("extra-") and len(kind) > len("extra-"):
            # The apiserver unescapes the key (keys may hold characters headers cannot).
            key = unquote(kind[len("extra-") :])
            out.append(_request("userextras", value, api_group=_AUTHENTICATION, subresource=key))
        else:
            raise UnsafePath(f"unknown impersonation header {raw_name!r}")
    return tuple(out)


def _user(value: str) -> KubeRequest:
    if value.startswith(_SERVICE_ACCOUNT):
        namespace, sep, account = value[len(_SERVICE_ACCOUNT) :].partition(":")
        if sep and namespace and account and ":" not in account:
            return _request("serviceaccounts", account, namespace=namespace)
    return _request("users", value)


def _request(
    resource: str, name: str, *, api_group: str = "", namespace: str = "", subresource: str = ""
) -> KubeRequest:
    if not name:
        raise UnsafePath(f"empty impersonation value for {resource}")
    return KubeRequest(
        resource_request=True,
        path="",
        verb="impersonate",
        api_prefix="apis" if api_group else "api",
        api_group=api_group,
        api_version="v1",
        namespace=namespace,
        resource=resource,
        subresource=subresource,
        name=name,
    )


def describe(request: KubeRequest) -> str:
    """`users "alice"`, `serviceaccounts "ci" in "prod"`, `userextras/scopes "view"`."""
    resource = request.resource + (f"/{request.subresource}" if request.subresource else "")
    where = f' in "{request.namespace}"' if request.namespace else ""
    return f'{resource} "{request.name}"{where}'
