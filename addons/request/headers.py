"""Headers that change who acts or what is done, and are never forwarded undecided.

Front-proxy identity headers (`X-Remote-User`, `X-Remote-Group`, `X-Remote-Extra-*`) would
let a request claim any identity to an apiserver or service that trusts its proxy: always
dropped. Method overrides (`X-HTTP-Method-Override` and its variants) would turn an allowed
GET into a DELETE at a service that honours them: dropped, so the method decided on is the
method done. `Impersonate-*` headers are decided by rules on Kubernetes targets (see
`holdgate.kube.impersonation`) and dropped for other targets, which have no such notion.
"""

from __future__ import annotations

from mitmproxy.http import Headers

from holdgate.kube.impersonation import is_impersonation_header

FRONT_PROXY_PREFIXES = ("x-remote-user", "x-remote-group", "x-remote-extra-")
METHOD_OVERRIDES = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})


def dropped(name: str, *, kubernetes: bool) -> bool:
    """Whether the gateway drops this request header before deciding."""
    lowered = name.lower()
    return (
        lowered.startswith(FRONT_PROXY_PREFIXES)
        or lowered in METHOD_OVERRIDES
        or (not kubernetes and is_impersonation_header(lowered))
    )


def strip_headers(headers: Headers, *, kubernetes: bool) -> list[str]:
    """Remove the headers `dropped` names; returns their names, for the record."""
    names = [name for name in headers if dropped(name, kubernetes=kubernetes)]
    for name in names:
        headers.pop(name, None)
    return names
