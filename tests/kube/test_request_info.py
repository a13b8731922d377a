"""holdgate.kube.request_info: one table in the style of the apiserver's requestinfo_test.go, then bodies."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from holdgate.kube.protobuf import (
    MAGIC,
    _encode_varint,
    _field,
    encode_object,
)
from holdgate.kube.request_info import (
    BodyObject,
    ExecCommand,
    KubeRequest,
    UnsafePath,
    classify,
    exec_command,
    read_body,
    with_body,
)

PROTOBUF = "application/vnd.kubernetes.protobuf"


def res(
    method: str,
    url: str,
    verb: str,
    prefix: str,
    group: str,
    version: str,
    namespace: str,
    resource: str,
    subresource: str,
    name: str,
    parts: list[str],
    path: str | None = None,
) -> Any:
    """A resource request, with requestinfo_test.go's columns."""
    expected = KubeRequest(
        resource_request=True,
        path=path if path is not None else url.partition("?")[0],
        verb=verb,
        api_prefix=prefix,
        api_group=group,
        api_version=version,
        namespace=namespace,
        resource=resource,
        subresource=subresource,
        name=name,
        parts=tuple(parts),
    )
    return pytest.param(method, url, expected, id=f"{method} {url}")


def nonres(method: str, url: str, verb: str, prefix: str = "") -> Any:
    """A non-resource request: the verb is the lowercase HTTP method."""
    expected = KubeRequest(
        resource_request=False, path=url.partition("?")[0], verb=verb, api_prefix=prefix
    )
    return pytest.param(method, url, expected, id=f"{method} {url}")


def named(url: str, name: str, verb: str = "list") -> Any:
    """A list or watch of /apis/group/version/resource whose name comes from the query."""
    return res("GET", url, verb, "apis", "group", "version", "", "resource", "", name, ["resource"])


# fmt: off
CASES = [
    # requestinfo_test.go TestGetAPIRequestInfo: resource paths
    res("GET", "/api/v1/namespaces", "list", "api", "", "v1", "", "namespaces", "", "", ["namespaces"]),
    res("GET", "/api/v1/namespaces/other", "get", "api", "", "v1", "other", "namespaces", "", "other", ["namespaces", "other"]),
    res("GET", "/api/v1/namespaces/other/pods", "list", "api", "", "v1", "other", "pods", "", "", ["pods"]),
    res("GET", "/api/v1/namespaces/other/pods/foo", "get", "api", "", "v1", "other", "pods", "", "foo", ["pods", "foo"]),
    res("HEAD", "/api/v1/namespaces/other/pods/foo", "get", "api", "", "v1", "other", "pods", "", "foo", ["pods", "foo"]),
    res("GET", "/api/v1/pods", "list", "api", "", "v1", "", "pods", "", "", ["pods"]),
    res("HEAD", "/api/v1/pods", "list", "api", "", "v1", "", "pods", "", "", ["pods"]),
    res("PATCH", "/api/v1/namespaces/new-namespace", "patch", "api", "", "v1", "new-namespace", "namespaces", "", "new-namespace", ["namespaces", "new-namespace"]),
    # special verbs
    res("GET", "/api/v1/proxy/namespaces/other/pods/foo", "proxy", "api", "", "v1", "other", "pods", "", "foo", ["pods", "foo"]),
    res("GET", "/api/v1/proxy/namespaces/other/pods/foo/subpath/not/a/subresource", "proxy", "api", "", "v1", "other", "pods", "", "foo", ["pods", "foo", "subpath", "not", "a", "subresource"]),
    res("GET", "/api/v1/watch/pods", "watch", "api", "", "v1", "", "pods", "", "", ["pods"]),
    res("GET", "/api/v1/pods?watch=true", "watch", "api", "", "v1", "", "pods", "", "", ["pods"]),
    res("GET", "/api/v1/pods?watch=false", "list", "api", "", "v1", "", "pods", "", "", ["pods"]),
    res("GET", "/api/v1/watch/namespaces/other/pods", "watch", "api", "", "v1", "other", "pods", "", "", ["pods"]),
    res("GET", "/api/v1/namespaces/other/pods?watch=1", "watch", "api", "", "v1", "other", "pods", "", "", ["pods"]),
    res("GET", "/api/v1/namespaces/other/pods?watch=0", "list", "api", "", "v1", "other", "pods", "", "", ["pods"]),
    # subresource identification
    res("GET", "/api/v1/namespaces/other/pods/foo/status", "get", "api", "", "v1", "other", "pods", "status", "foo", ["pods", "foo", "status"]),
    res("GET", "/api/v1/namespaces/other/pods/foo/proxy/subpath", "get", "api", "", "v1", "other", "pods", "proxy", "foo", ["pods", "foo", "proxy", "subpath"]),
    res("PUT", "/api/v1/namespaces/other/finalize", "update", "api", "", "v1", "other", "namespaces", "finalize", "other", ["namespaces", "other", "finalize"]),
    res("PUT", "/api/v1/namespaces/other/status", "update", "api", "", "v1", "other", "namespaces", "status", "other", ["namespaces", "other", "status"]),
    # verb identification
    res("PATCH", "/api/v1/namespaces/other/pods/foo", "patch", "api", "", "v1", "other", "pods", "", "foo", ["pods", "foo"]),
    res("DELETE", "/api/v1/namespaces/other/pods/foo", "delete", "api", "", "v1", "other", "pods", "", "foo", ["pods", "foo"]),
    res("POST", "/api/v1/namespaces/other/pods", "create", "api", "", "v1", "other", "pods", "", "", ["pods"]),
    # deletecollection verb identification
    res("DELETE", "/api/v1/nodes", "deletecollection", "api", "", "v1", "", "nodes", "", "", ["nodes"]),
    res("DELETE", "/api/v1/namespaces", "deletecollection", "api", "", "v1", "", "namespaces", "", "", ["namespaces"]),
    res("DELETE", "/api/v1/namespaces/other/pods", "deletecollection", "api", "", "v1", "other", "pods", "", "", ["pods"]),
    res("DELETE", "/apis/extensions/v1/namespaces/other/pods", "deletecollection", "apis", "extensions", "v1", "other", "pods", "", "", ["pods"]),
    # api group and version identification
    res("POST", "/apis/extensions/v1/namespaces/other/pods", "create", "apis", "extensions", "v1", "other", "pods", "", "", ["pods"]),
    res("POST", "/apis/extensions/v1beta3/namespaces/other/pods", "create", "apis", "extensions", "v1beta3", "other", "pods", "", "", ["pods"]),
    # requestinfo_test.go error cases: not resource requests
    nonres("GET", "/", "get"),
    nonres("GET", "/api/version/", "get"),
    nonres("GET", "/apis/group/version/", "get", "apis"),
    nonres("GET", "/badprefix/version/resource", "get"),
    nonres("GET", "/apis/version/resource", "get", "apis"),
    # requestinfo_test.go TestGetNonAPIRequestInfo
    res("GET", "/api/version/resource", "list", "api", "", "version", "", "resource", "", "", ["resource"]),
    res("GET", "/apis/group/version/resource/name/subresource", "get", "apis", "group", "version", "", "resource", "subresource", "name", ["resource", "name", "subresource"]),
    res("GET", "/api/version/resource/name/subresource", "get", "api", "", "version", "", "resource", "subresource", "name", ["resource", "name", "subresource"]),
    res("GET", "/apis/batch/v1/job", "list", "apis", "batch", "v1", "", "job", "", "", ["job"]),
    res("GET", "/apis/batch/v1/job/foo", "get", "apis", "batch", "v1", "", "job", "", "foo", ["job", "foo"]),
    res("GET", "/apis/batch/v1/job/foo/scale", "get", "apis", "batch", "v1", "", "job", "scale", "foo", ["job", "foo", "scale"]),
    nonres("GET", "/not-api/version/resource", "get"),
    nonres("GET", "/apis/extensions/v1beta1", "get", "apis"),
    nonres("GET", "/apis/extensions/v1beta1/", "get", "apis"),
    nonres("GET", "/api/version", "get"),
    nonres("GET", "/api", "get"),
    nonres("GET", "", "get"),
    # requestinfo_test.go TestFieldSelectorParsing
    named("/apis/group/version/resource", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name=name1", "name1"),
    named("/apis/group/version/resource?watch=true&fieldSelector=metadata.name=name1", "name1", "watch"),
    named("/apis/group/version/resource?fieldSelector=foo=bar", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name=name1,foo", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name=name1,foo&watch=true", "", "watch"),
    named("/apis/group/version/resource?fieldSelector=metadata.name=name1,foo&watch=false", ""),
    # non-resource paths: the verb is the lowercase HTTP method
    nonres("GET", "/apis", "get"),
    nonres("GET", "/apis/apps", "get"),
    nonres("GET", "/apis/apps/v1", "get", "apis"),
    nonres("GET", "/api/v1", "get"),
    nonres("GET", "/version", "get"),
    nonres("GET", "/version?timeout=32s", "get"),
    nonres("GET", "/openapi/v3", "get"),
    nonres("GET", "/openapi/v3/apis/apps/v1?hash=ABC", "get"),
    nonres("GET", "/openapi/v2", "get"),
    nonres("GET", "/healthz", "get"),
    nonres("GET", "/livez/ping", "get"),
    nonres("HEAD", "/readyz", "head"),
    nonres("POST", "/healthz", "post"),
    nonres("PUT", "/metrics", "put"),
    nonres("PATCH", "/logs", "patch"),
    nonres("DELETE", "/debug/pprof", "delete"),
    nonres("OPTIONS", "/version", "options"),
    nonres("get", "/version", "get"),
    # methods the apiserver has no verb for
    res("OPTIONS", "/api/v1/pods", "", "api", "", "v1", "", "pods", "", "", ["pods"]),
    res("get", "/api/v1/pods", "", "api", "", "v1", "", "pods", "", "", ["pods"]),
    res("CONNECT", "/api/v1/namespaces/ns/pods/p/exec", "", "api", "", "v1", "ns", "pods", "exec", "p", ["pods", "p", "exec"]),
    # exec, attach, portforward, proxies
    res("GET", "/api/v1/namespaces/ns/pods/web/exec?command=sh&stdin=true&tty=true", "get", "api", "", "v1", "ns", "pods", "exec", "web", ["pods", "web", "exec"]),
    res("POST", "/api/v1/namespaces/ns/pods/web/exec?command=ls", "create", "api", "", "v1", "ns", "pods", "exec", "web", ["pods", "web", "exec"]),
    res("POST", "/api/v1/namespaces/ns/pods/web/attach?stdin=true", "create", "api", "", "v1", "ns", "pods", "attach", "web", ["pods", "web", "attach"]),
    res("GET", "/api/v1/namespaces/ns/pods/web/portforward?ports=8080", "get", "api", "", "v1", "ns", "pods", "portforward", "web", ["pods", "web", "portforward"]),
    res("PATCH", "/api/v1/namespaces/ns/pods/web/ephemeralcontainers", "patch", "api", "", "v1", "ns", "pods", "ephemeralcontainers", "web", ["pods", "web", "ephemeralcontainers"]),
    res("GET", "/api/v1/namespaces/ns/services/https:web:443/proxy/admin", "get", "api", "", "v1", "ns", "services", "proxy", "https:web:443", ["services", "https:web:443", "proxy", "admin"]),
    res("GET", "/api/v1/nodes/n1/proxy/metrics", "get", "api", "", "v1", "", "nodes", "proxy", "n1", ["nodes", "n1", "proxy", "metrics"]),
    res("POST", "/api/v1/proxy/nodes/n1/exec/ns/pod/ctr", "proxy", "api", "", "v1", "", "nodes", "", "n1", ["nodes", "n1", "exec", "ns", "pod", "ctr"]),
    res("GET", "/api/v1/namespaces/ns/pods/web/log?container=app", "get", "api", "", "v1", "ns", "pods", "log", "web", ["pods", "web", "log"]),
    # deletecollection; a field selector never names it
    res("DELETE", "/apis/apps/v1/namespaces/ns/deployments?labelSelector=app%3Dweb", "deletecollection", "apis", "apps", "v1", "ns", "deployments", "", "", ["deployments"]),
    res("DELETE", "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name%3Dx", "deletecollection", "api", "", "v1", "ns", "secrets", "", "", ["secrets"]),
    res("DELETE", "/api/v1/namespaces/ns/secrets/x", "delete", "api", "", "v1", "ns", "secrets", "", "x", ["secrets", "x"]),
    res("PUT", "/api/v1/namespaces/ns/secrets/x", "update", "api", "", "v1", "ns", "secrets", "", "x", ["secrets", "x"]),
    res("POST", "/api/v1/namespaces/ns/serviceaccounts/sa/token", "create", "api", "", "v1", "ns", "serviceaccounts", "token", "sa", ["serviceaccounts", "sa", "token"]),
    res("POST", "/api/v1/namespaces/ns/pods/p/eviction", "create", "api", "", "v1", "ns", "pods", "eviction", "p", ["pods", "p", "eviction"]),
    res("PATCH", "/apis/apps/v1/namespaces/ns/deployments/web/scale", "patch", "apis", "apps", "v1", "ns", "deployments", "scale", "web", ["deployments", "web", "scale"]),
    # watch: in the path, or from ?watch= when there is no name
    res("GET", "/api/v1/watch/namespaces/ns/pods/foo", "watch", "api", "", "v1", "ns", "pods", "", "foo", ["pods", "foo"]),
    res("GET", "/api/v1/watch/namespaces/ns/pods/foo/status", "watch", "api", "", "v1", "ns", "pods", "status", "foo", ["pods", "foo", "status"]),
    res("GET", "/apis/apps/v1/watch/deployments?fieldSelector=metadata.name%3Dweb", "watch", "apis", "apps", "v1", "", "deployments", "", "", ["deployments"]),
    res("GET", "/api/v1/namespaces/ns/pods/foo?watch=true", "get", "api", "", "v1", "ns", "pods", "", "foo", ["pods", "foo"]),
    res("GET", "/api/v1/namespaces/ns/pods?watch=true&fieldSelector=metadata.name%3Dfoo", "watch", "api", "", "v1", "ns", "pods", "", "foo", ["pods"]),
    res("GET", "/api/v1/namespaces/ns/pods?watch=1&resourceVersion=0&allowWatchBookmarks=true&timeoutSeconds=300", "watch", "api", "", "v1", "ns", "pods", "", "", ["pods"]),
    named("/apis/group/version/resource?watch=", "", "watch"),
    named("/apis/group/version/resource?watch", "", "watch"),
    named("/apis/group/version/resource?watch=+", "", "watch"),
    named("/apis/group/version/resource?watch=yes", "", "watch"),
    named("/apis/group/version/resource?watch=FALSE", ""),
    named("/apis/group/version/resource?watch=False", ""),
    named("/apis/group/version/resource?watch=%66alse", ""),
    named("/apis/group/version/resource?wat%63h=1", "", "watch"),
    named("/apis/group/version/resource?watch=0&watch=1", ""),
    named("/apis/group/version/resource?watch=1&watch=0", "", "watch"),
    named("/apis/group/version/resource?Watch=true", ""),
    # strings.EqualFold folds U+017F (ſ) to s; the fallback's strings.ToLower does not
    named("/apis/group/version/resource?watch=fal%C5%BFe", ""),
    named("/apis/group/version/resource?watch=fal%C5%BFe&limit=x", "", "watch"),
    named("/apis/group/version/resource?watch=FALSE&limit=x", ""),
    # Go's url.Query drops pairs with a ';' or a bad escape
    named("/apis/group/version/resource?watch=true;x=1", ""),
    named("/apis/group/version/resource?watch=%zz", ""),
    named("/apis/group/version/resource?watch=1%", ""),
    named("/apis/group/version/resource?a=%zz&watch=1", "", "watch"),
    named("/apis/group/version/resource?&&watch=1&&", "", "watch"),
    # fieldSelector=metadata.name=X names a list or a watch
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dfoo", "foo"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3D%3Dfoo", "foo"),
    named("/apis/group/version/resource?fieldSelector=metadata.name!%3Dfoo", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.namespace%3Dns,metadata.name%3Db", "b"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Db,metadata.name%3Da", "a"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dx&fieldSelector=metadata.name%3Dy", "x"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Da%5C,b", "a,b"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Da%5C%3Db", "a=b"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Da%5Cb", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Da%3Db", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Da%5C", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3D", ""),
    named("/apis/group/version/resource?fieldSelector=,,metadata.name%3Dz,", "z"),
    named("/apis/group/version/resource?fieldSelector=+metadata.name%3Dz", ""),
    named("/apis/group/version/resource?fieldSelector=spec.nodeName%3Dn1", ""),
    # ...only when the name is a valid path segment (IsValidPathSegmentName)
    named("/apis/group/version/resource?fieldSelector=metadata.name%3D..", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3D.", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Da%2Fb", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Da%25b", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3D...", "..."),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dcaf%C3%A9", "café"),
    # ...and only when the whole ListOptions decodes
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&limit=500", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&limit=%2B5", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&limit=-9223372036854775808", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&limit=0009223372036854775807", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&limit=9223372036854775808", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&limit=abc", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&limit=", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&limit=1_000", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&timeoutSeconds=1.5", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&timeoutSeconds=30", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&continue=x&resourceVersionMatch=y&sendInitialEvents=z", "n"),
    # ...including labelSelector, parsed as labels.Parse does (selector_test.go's strings)
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=x%3Da,y%3Db,z%3Dc", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=x!%3Da,y%3Db", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=x%3D", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=x%3D+,z%3D+", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=!x", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=x>1,z<5", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=%0Dx", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=this-is-a-dns.domain.com/key-with-dash+in+(so,what)", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=0.1.2.domain/99+notin+(10.10.100.1,+tick.tack.clock)", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=foo++in%09+(abc)", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=x+notin+(abc,def),bar,z+in+(),w", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=x+in+(abc)", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=x+notin+(,+a)", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=a+in+(x,y,notin,+z,in)", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=notin%3Din", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=a%00%3Db", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=%00(((", "n"),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=a%00%3D%3D%3Db", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=x%3Da||y%3Db", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=x%3D%3Da%3D%3Db", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=!x%3Da", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=x<a", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=x,y+in", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=,x,y", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=x+nott+in+(y)", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=a+in+(xyz),", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=a+in+(xyz)b+notin+()", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=a+in+(xyz+abc)", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=a+notin(", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=a+(", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=(", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=-x", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=x%3D-v", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=x>1.5", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=/x", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=a/b/c", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=Example.com/x", ""),
    named("/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=caf%C3%A9", ""),
    named(f"/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector={'a' * 63}%3D{'b' * 63}", "n"),
    named(f"/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector={'a' * 64}", ""),
    named(f"/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector=x%3D{'b' * 64}", ""),
    named(f"/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector={'a' * 253}/x", "n"),
    named(f"/apis/group/version/resource?fieldSelector=metadata.name%3Dn&labelSelector={'a' * 254}/x", ""),
    # namespaces and their status and finalize subresources
    res("GET", "/api/v1/namespaces/ns/status", "get", "api", "", "v1", "ns", "namespaces", "status", "ns", ["namespaces", "ns", "status"]),
    res("DELETE", "/api/v1/namespaces/ns", "delete", "api", "", "v1", "ns", "namespaces", "", "ns", ["namespaces", "ns"]),
    res("POST", "/api/v1/namespaces", "create", "api", "", "v1", "", "namespaces", "", "", ["namespaces"]),
    res("GET", "/api/v1/namespaces/ns/status/extra", "get", "api", "", "v1", "ns", "namespaces", "status", "ns", ["namespaces", "ns", "status", "extra"]),
    res("GET", "/api/v1/namespaces/status", "get", "api", "", "v1", "status", "namespaces", "", "status", ["namespaces", "status"]),
    res("GET", "/api/v1/namespaces/ns/pods/status", "get", "api", "", "v1", "ns", "pods", "", "status", ["pods", "status"]),
    res("GET", "/api/v1/namespaces/ns/namespaces/x", "get", "api", "", "v1", "ns", "namespaces", "", "x", ["namespaces", "x"]),
    res("GET", "/api/v1/namespaces?fieldSelector=metadata.name%3Dkube-system", "list", "api", "", "v1", "", "namespaces", "", "kube-system", ["namespaces"]),
    res("GET", "/apis/apps/v1/namespaces/ns/deployments/web/status", "get", "apis", "apps", "v1", "ns", "deployments", "status", "web", ["deployments", "web", "status"]),
    # the path the apiserver sees is percent-decoded; one trailing slash is trimmed
    res("GET", "/api/v1/namespaces/ns/pods/%66oo", "get", "api", "", "v1", "ns", "pods", "", "foo", ["pods", "foo"], path="/api/v1/namespaces/ns/pods/foo"),
    res("GET", "/api/v1/namespaces/n%20s/pods", "list", "api", "", "v1", "n s", "pods", "", "", ["pods"], path="/api/v1/namespaces/n s/pods"),
    res("GET", "/api/v1/namespaces/ns/pods/a+b", "get", "api", "", "v1", "ns", "pods", "", "a+b", ["pods", "a+b"]),
    res("GET", "/api/v1/namespaces/ns/configmaps/caf%C3%A9", "get", "api", "", "v1", "ns", "configmaps", "", "café", ["configmaps", "café"], path="/api/v1/namespaces/ns/configmaps/café"),
    res("GET", "/api/v1/namespaces/ns/configmaps/café", "get", "api", "", "v1", "ns", "configmaps", "", "café", ["configmaps", "café"]),
    res("GET", "/api/v1/namespaces/ns/secrets/a%25b", "get", "api", "", "v1", "ns", "secrets", "", "a%b", ["secrets", "a%b"], path="/api/v1/namespaces/ns/secrets/a%b"),
    res("GET", "/api/v1/namespaces/ns/pods/", "list", "api", "", "v1", "ns", "pods", "", "", ["pods"]),
    nonres("GET", "/API/v1/pods", "get"),
    res("GET", "/api/v1/namespaces/ns/pods/...", "get", "api", "", "v1", "ns", "pods", "", "...", ["pods", "..."]),
]
# fmt: on


@pytest.mark.parametrize(("method", "url", "expected"), CASES)
def test_classify(method: str, url: str, expected: KubeRequest) -> None:
    path, _, query = url.partition("?")
    assert classify(method, path, query) == expected
    assert classify(method, url) == expected


UNSAFE = [
    ("/api/v1/namespaces/ns/pods/../secrets", "dot segment"),
    ("/api/v1/./pods", "dot segment"),
    ("/api/v1/namespaces/ns/pods/%2e%2e", "dot segment"),
    ("/api/v1/namespaces/ns/pods/.", "dot segment"),
    ("//api/v1/pods", "empty path segment"),
    ("/api//v1/pods", "empty path segment"),
    ("/api/v1/pods//", "empty path segment"),
    ("/api/v1/namespaces/ns/pods/foo%2Fexec", "encoded slash"),
    ("/api/v1/namespaces/ns/pods/foo%2fexec", "encoded slash"),
    ("/api/v1/namespaces/ns/pods/foo\\exec", "backslash"),
    ("/api/v1/namespaces/ns/pods/foo%5cexec", "backslash"),
    ("/api/v1/namespaces/ns/pods/foo%00", "control character"),
    ("/api/v1/namespaces/ns/pods/foo\x00", "control character"),
    ("/api/v1/namespaces/ns/pods/foo\t", "control character"),
    ("/api/v1/namespaces/ns/pods/foo%0A", "control character"),
    ("/api/v1/namespaces/ns/pods/foo%7F", "control character"),
    ("/api/v1/namespaces/ns/pods/foo%C2%85", "control character"),
    ("/api/v1/namespaces/ns/secrets/%E2%80%AEterces", "control character"),
    ("/api/v1/namespaces/ns/secrets/a\u200bb", "control character"),
    ("/api/v1/namespaces/ns/pods/foo%C3%28", "not UTF-8"),
    ("/api/v1/namespaces/ns/pods/foo%FF", "not UTF-8"),
    ("/api/v1/namespaces/ns/pods/foo\udcff", "not UTF-8"),
    ("/api/v1/namespaces/ns/pods/foo\ud800", "not UTF-8"),
    ("/api/v1/namespaces/ns/pods/foo%zz", "invalid percent-encoding"),
    ("/api/v1/namespaces/ns/pods/foo%4", "invalid percent-encoding"),
    ("/api/v1/namespaces/ns/pods/foo%", "invalid percent-encoding"),
    ("api/v1/pods", "does not start with '/'"),
    ("*", "does not start with '/'"),
    ("/api/v1/pods#frag", "'#'"),
    ("/api/v1/pods?watch=1#frag", "'#'"),
    ("/api/v1/pods?watch=%FF", "not UTF-8"),
    ("/api/v1/pods?%C3%28=1", "not UTF-8"),
    ("/api/v1/pods?watch=\x01", "control character"),
    ("/api/v1/pods?" + "a&" * 10000 + "watch=1", "more than 10000 query parameters"),
    # NewRequestInfo errors on a bare special verb; the apiserver answers 500
    ("/api/v1/watch", "cannot resolve"),
    ("/api/v1/proxy/", "cannot resolve"),
    ("/apis/apps/v1/watch", "cannot resolve"),
]


@pytest.mark.parametrize(("url", "reason"), UNSAFE, ids=[url[:80] for url, _ in UNSAFE])
def test_classify_refuses_unsafe_paths(url: str, reason: str) -> None:
    with pytest.raises(UnsafePath, match=reason):
        classify("GET", url)


def test_classify_refuses_a_query_given_twice() -> None:
    with pytest.raises(UnsafePath, match="given both"):
        classify("GET", "/api/v1/pods?watch=1", "watch=0")


def test_classify_accepts_the_query_parameter_limit() -> None:
    request = classify("GET", "/api/v1/pods", "a&" * 9998 + "watch=1")
    assert request.verb == "watch"


PRIVILEGED = [
    ("GET", "/api/v1/namespaces/ns/pods/web/exec?command=sh", True),
    ("POST", "/api/v1/namespaces/ns/pods/web/exec?command=sh", True),
    ("GET", "/api/v1/namespaces/ns/pods/web/attach", True),
    ("POST", "/api/v1/namespaces/ns/pods/web/portforward", True),
    ("PATCH", "/api/v1/namespaces/ns/pods/web/ephemeralcontainers", True),
    ("GET", "/api/v1/namespaces/ns/pods/web/proxy/metrics", True),
    ("GET", "/api/v1/namespaces/ns/services/web:80/proxy/", True),
    ("DELETE", "/api/v1/nodes/n1/proxy/pods", True),
    ("GET", "/api/v1/proxy/namespaces/ns/services/web", True),
    ("GET", "/apis/example.com/v1/namespaces/ns/pods/web/exec", True),
    ("POST", "/api/v1/namespaces/ns/serviceaccounts/ci/token", True),
    ("GET", "/api/v1/namespaces/ns/serviceaccounts/ci", False),
    ("GET", "/api/v1/namespaces/ns/pods/web/log", False),
    ("GET", "/api/v1/namespaces/ns/pods/web/status", False),
    ("GET", "/api/v1/namespaces/ns/pods/web", False),
    ("GET", "/api/v1/namespaces/ns/services/web", False),
    ("GET", "/apis/example.com/v1/namespaces/ns/widgets/w/exec", False),
    ("GET", "/apis/example.com/v1/namespaces/ns/widgets/w/proxy", False),
    ("PROXY", "/healthz", False),
    ("GET", "/api/v1/namespaces/exec/pods", False),
]


@pytest.mark.parametrize(("method", "url", "privileged"), PRIVILEGED)
def test_privileged_subresource(method: str, url: str, privileged: bool) -> None:
    assert classify(method, url).privileged_subresource is privileged


def test_as_dict() -> None:
    request = classify("GET", "/apis/apps/v1/namespaces/ns/deployments/web/scale")
    assert request.as_dict() == {
        "resource_request": True,
        "verb": "get",
        "api_group": "apps",
        "api_version": "v1",
        "namespace": "ns",
        "resource": "deployments",
        "subresource": "scale",
        "name": "web",
        "path": "/apis/apps/v1/namespaces/ns/deployments/web/scale",
    }
    assert json.loads(json.dumps(request.as_dict())) == request.as_dict()


EXEC = "/api/v1/namespaces/ns/pods/web/exec"
EXEC_CASES = [
    pytest.param(
        EXEC,
        "command=sh&command=-c&command=echo+hello%20world&container=app&stdin=true&stdout=true&tty=true",
        ExecCommand(("sh", "-c", "echo hello world"), "app", True, True, False, True),
        id="kubectl exec -it",
    ),
    pytest.param(
        EXEC,
        "command=ls&command=-l&command=%2Fetc&stdout=true&stderr=true",
        ExecCommand(("ls", "-l", "/etc"), "", False, True, True, False),
        id="repeated command params in order",
    ),
    pytest.param(
        EXEC,
        "command=a&command=&command=b&command=a%2Bb&command=a+b&command=%3B%26%3D",
        ExecCommand(("a", "", "b", "a+b", "a b", ";&="), "", False, False, False, False),
        id="empty, plus and escaped separators",
    ),
    pytest.param(
        EXEC,
        "command=rm;x&command=ls&command=%zz&container=a&container=b",
        ExecCommand(("ls",), "a", False, False, False, False),
        id="pairs Go drops; first container",
    ),
    pytest.param(
        EXEC,
        "stdin=false&stdout=0&stderr=FALSE&tty=fal%C5%BFe",
        ExecCommand((), "", False, False, False, False),
        id="false flags",
    ),
    pytest.param(
        EXEC,
        "stdin=&stdout=1&stderr=yes&tty",
        ExecCommand((), "", True, True, True, True),
        id="any other flag value is true",
    ),
    pytest.param(
        EXEC,
        "command=printf&command=a%0Ab%09c",
        ExecCommand(("printf", "a\nb\tc"), "", False, False, False, False),
        id="control characters in arguments",
    ),
    pytest.param(
        "/api/v1/namespaces/ns/pods/web/attach",
        "command=ignored&container=app&stdin=1&tty=1",
        ExecCommand((), "app", True, False, False, True),
        id="attach has no command",
    ),
    pytest.param("/api/v1/namespaces/ns/pods/web/log", "command=ls", None, id="log"),
    pytest.param("/api/v1/namespaces/ns/pods/web", "command=ls", None, id="pod"),
    pytest.param(
        "/apis/example.com/v1/namespaces/ns/widgets/w/exec", "command=ls", None, id="not pods"
    ),
    pytest.param("/api/v1/namespaces/ns/pods/web/portforward", "ports=80", None, id="portforward"),
]


@pytest.mark.parametrize(("path", "query", "expected"), EXEC_CASES)
def test_exec_command(path: str, query: str, expected: ExecCommand | None) -> None:
    for method in ("GET", "POST"):
        assert exec_command(classify(method, path, query), query) == expected


def test_exec_command_line_and_dict() -> None:
    query = "command=sh&command=-c&command=echo+%27a+b%27%3B+rm+-rf+%2F&container=app"
    command = exec_command(classify("POST", EXEC, query), "?" + query)
    assert command is not None
    assert command.command_line == "sh -c 'echo '\"'\"'a b'\"'\"'; rm -rf /'"
    assert command.as_dict() == {
        "command": ["sh", "-c", "echo 'a b'; rm -rf /"],
        "container": "app",
        "stdin": False,
        "stdout": False,
        "stderr": False,
        "tty": False,
    }


def secret(name: str = "db", namespace: str = "", **extra: Any) -> dict[str, Any]:
    """A Secret the way kubectl create secret builds it."""
    metadata = {"name": name} | ({"namespace": namespace} if namespace else {})
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, **extra}


SECRET_DATA = {"password": base64.b64encode(b"hunter2").decode()}
SECRET_PROTOBUF = encode_object(secret("db", "prod", data=SECRET_DATA, type="Opaque"))


def typed(api_version: str, kind: str, name: str, namespace: str, document: Any) -> BodyObject:
    """A body read without error."""
    return BodyObject(api_version, kind, name, namespace, document, "")


def protobuf(*fields: bytes) -> bytes:
    """An envelope assembled field by field, for bodies encode_object cannot produce."""
    return MAGIC + b"".join(fields)


TYPE_META_SECRET = _field(1, _field(1, b"v1") + _field(2, b"Secret"))

BODIES = [
    pytest.param(
        "application/json",
        "",
        json.dumps(secret("db", "prod", data=SECRET_DATA)).encode(),
        typed("v1", "Secret", "db", "prod", secret("db", "prod", data=SECRET_DATA)),
        id="json",
    ),
    pytest.param(
        "application/json; charset=utf-8",
        "identity",
        b'{"kind":"ConfigMap","metadata":{"generateName":"cm-"}}',
        typed("", "ConfigMap", "", "", {"kind": "ConfigMap", "metadata": {"generateName": "cm-"}}),
        id="json with parameters, generateName",
    ),
    pytest.param(
        "application/merge-patch+json",
        "",
        b'{"metadata":{"labels":{"a":"b"}}}',
        typed("", "", "", "", {"metadata": {"labels": {"a": "b"}}}),
        id="merge patch",
    ),
    pytest.param(
        "application/strategic-merge-patch+json",
        "",
        b'{"spec":{"replicas":3}}',
        typed("", "", "", "", {"spec": {"replicas": 3}}),
        id="strategic merge patch",
    ),
    pytest.param(
        "application/json-patch+json",
        "",
        b'[{"op":"replace","path":"/data/password","value":"eA=="}]',
        "body is a list, not an object",
        id="json patch is not an object",
    ),
    pytest.param(
        "application/apply-patch+yaml",
        "",
        b"apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: prod\n"
        b"  annotations:\n    at: 2024-01-01\nstringData:\n  password: hunter2\n",
        typed(
            "v1",
            "Secret",
            "db",
            "prod",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": "db",
                    "namespace": "prod",
                    "annotations": {"at": "2024-01-01"},
                },
                "stringData": {"password": "hunter2"},
            },
        ),
        id="apply patch yaml keeps timestamps as strings",
    ),
    pytest.param(
        "application/yaml",
        "",
        b"kind: ConfigMap\nmetadata: {name: cm}\ndata: {1: yes}\n",
        typed(
            "",
            "ConfigMap",
            "cm",
            "",
            {"kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"1": True}},
        ),
        id="yaml",
    ),
    pytest.param(
        PROTOBUF,
        "",
        SECRET_PROTOBUF,
        typed(
            "v1",
            "Secret",
            "db",
            "prod",
            secret("db", "prod", data=SECRET_DATA, type="Opaque"),
        ),
        id="protobuf secret",
    ),
    pytest.param(
        PROTOBUF,
        "",
        encode_object(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "cm", "namespace": "ns"},
                "data": {"k": "v"},
            }
        ),
        typed(
            "v1",
            "ConfigMap",
            "cm",
            "ns",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "cm", "namespace": "ns"},
                "data": {"k": "v"},
            },
        ),
        id="protobuf configmap",
    ),
    pytest.param(
        PROTOBUF,
        "",
        encode_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}),
        typed(
            "v1",
            "Namespace",
            "prod",
            "",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}},
        ),
        id="protobuf namespace",
    ),
    pytest.param(
        PROTOBUF,
        "",
        encode_object(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "web", "namespace": "ns"},
            }
        ),
        typed("rbac.authorization.k8s.io/v1", "Role", "web", "ns", None),
        id="protobuf of another kind: metadata only",
    ),
    pytest.param(PROTOBUF, "", SECRET_PROTOBUF[:-9], "bad protobuf", id="truncated protobuf"),
    pytest.param(
        PROTOBUF,
        "",
        b"k8s\x01" + SECRET_PROTOBUF[4:],
        "bad protobuf: missing k8s protobuf magic",
        id="wrong magic",
    ),
    pytest.param(
        PROTOBUF, "", json.dumps(secret()).encode(), "bad protobuf", id="json sent as protobuf"
    ),
    pytest.param(
        PROTOBUF, "", protobuf(TYPE_META_SECRET), "no object", id="protobuf without an object"
    ),
    pytest.param(
        PROTOBUF,
        "",
        protobuf(TYPE_META_SECRET, _field(2, _field(1, _field(1, b"\xff")))),
        "bad protobuf: string field is not UTF-8",
        id="protobuf name not UTF-8",
    ),
    pytest.param(
        PROTOBUF,
        "",
        protobuf(TYPE_META_SECRET, _field(2, _encode_varint(2 << 3) + _encode_varint(1))),
        "bad protobuf",
        id="protobuf map entry with the wrong wire type",
    ),
    pytest.param(
        PROTOBUF,
        "",
        protobuf(
            TYPE_META_SECRET,
            _field(2, _field(1, _field(1, b"a"))),
            _field(2, _field(1, _field(1, b"b"))),
        ),
        "repeated TypeMeta or Raw",
        id="protobuf repeating the object (the apiserver keeps the last)",
    ),
    pytest.param(
        PROTOBUF,
        "",
        protobuf(_field(1, _field(2, b"ConfigMap")), TYPE_META_SECRET, _field(2, _field(1, b""))),
        "repeated TypeMeta or Raw",
        id="protobuf repeating TypeMeta (the apiserver merges)",
    ),
    pytest.param(
        PROTOBUF,
        "",
        protobuf(
            _field(1, _field(2, b"ConfigMap") + _field(2, b"Secret")), _field(2, _field(1, b""))
        ),
        "repeated field in the envelope's TypeMeta",
        id="protobuf repeating the kind",
    ),
    pytest.param(
        PROTOBUF,
        "",
        protobuf(
            TYPE_META_SECRET, _field(2, _field(1, _field(1, b"a")) + _field(1, _field(1, b"b")))
        ),
        "repeated ObjectMeta",
        id="protobuf repeating ObjectMeta (the apiserver merges)",
    ),
    pytest.param(
        PROTOBUF,
        "",
        protobuf(TYPE_META_SECRET, _field(2, _field(1, _field(1, b"a") + _field(1, b"b")))),
        typed("v1", "Secret", "b", "", secret("b")),
        id="protobuf repeating a name: the last wins, as in the apiserver",
    ),
    pytest.param(
        "application/json", "", b'{"metadata": {"name": "db"', "malformed body", id="malformed json"
    ),
    pytest.param(
        "application/json", "", b'{"a": NaN}', "malformed body: NaN is not JSON", id="json NaN"
    ),
    pytest.param("application/json", "", b"\xef\xbb\xbf{}", "malformed body", id="json with a BOM"),
    pytest.param("application/json", "", b'{"a": "\xff"}', "malformed body", id="json not UTF-8"),
    pytest.param("application/json", "", b"{}{}", "malformed body", id="json with trailing data"),
    pytest.param(
        "application/json", "", b"[" * 100000, "malformed body", id="json nested too deep"
    ),
    pytest.param(
        "application/json",
        "",
        b'{"metadata":{"name":"prod-creds"},"metadata":{"labels":{}}}',
        "malformed body: duplicate key 'metadata'",
        id="json with a duplicate key (Go merges it)",
    ),
    pytest.param(
        "application/json",
        "",
        b'{"metadata":{"name":5}}',
        "name is not a string",
        id="json name not a string",
    ),
    pytest.param(
        "application/json",
        "",
        b'{"metadata":[]}',
        "metadata is not an object",
        id="json metadata not an object",
    ),
    pytest.param(
        "application/json", "", b'{"kind":null}', "kind is not a string", id="json kind null"
    ),
    pytest.param(
        "application/json", "", b'"text"', "body is a str, not an object", id="json string"
    ),
    pytest.param(
        "application/apply-patch+yaml",
        "",
        b"a: 1\na: 2\n",
        "duplicate key 'a'",
        id="yaml duplicate key",
    ),
    pytest.param(
        "application/apply-patch+yaml", "", b"a: [1\n", "malformed body", id="malformed yaml"
    ),
    pytest.param(
        "application/apply-patch+yaml",
        "",
        b"a: 1\n---\nb: 2\n",
        "malformed body",
        id="yaml with two documents",
    ),
    pytest.param(
        "application/apply-patch+yaml",
        "",
        b"a: !!python/object:os.system ls\n",
        "malformed body",
        id="yaml python tag",
    ),
    pytest.param(
        "application/apply-patch+yaml",
        "",
        b"a: !!binary aGk=\n",
        "malformed body",
        id="yaml binary",
    ),
    pytest.param("application/apply-patch+yaml", "", b"a: .nan\n", "malformed body", id="yaml nan"),
    pytest.param(
        "application/apply-patch+yaml",
        "",
        b"a: &a [*a]\n",
        "aliases are not accepted",
        id="yaml recursive alias",
    ),
    pytest.param(
        "application/apply-patch+yaml",
        "",
        b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + b"".join(
            b"%c: &%c [%s]\n" % (98 + i, 98 + i, b", ".join([b"*%c" % (97 + i)] * 10))
            for i in range(9)
        ),
        "aliases are not accepted",
        id="yaml bomb",
    ),
    pytest.param(
        "application/json", "gzip", gzip.compress(b"{}"), "Content-Encoding 'gzip'", id="gzip"
    ),
    pytest.param(PROTOBUF, "br", SECRET_PROTOBUF, "Content-Encoding 'br'", id="brotli protobuf"),
    pytest.param("application/cbor", "", b"\xa0", "unsupported content type", id="cbor"),
    pytest.param("text/plain", "", b"{}", "unsupported content type", id="text"),
    pytest.param("", "", b"{}", "unsupported content type ''", id="no content type"),
]


@pytest.mark.parametrize(("content_type", "encoding", "body", "expected"), BODIES)
def test_read_body(
    content_type: str, encoding: str, body: bytes, expected: BodyObject | str
) -> None:
    read = read_body(content_type, encoding, body)
    assert read is not None
    if isinstance(expected, str):
        assert expected in read.error
        assert (read.name, read.namespace, read.document) == ("", "", None)
    else:
        assert read == expected


@pytest.mark.parametrize("content_type", ["application/json", PROTOBUF, "text/plain", ""])
def test_read_body_empty(content_type: str) -> None:
    assert read_body(content_type, "gzip", b"") is None


@given(
    content_type=st.sampled_from(
        [
            "application/json",
            "application/merge-patch+json",
            "application/apply-patch+yaml",
            PROTOBUF,
            "x/y",
        ]
    ),
    body=st.one_of(
        st.binary(),
        st.binary().map(lambda tail: MAGIC + tail),
        st.binary().map(lambda tail: SECRET_PROTOBUF[: len(SECRET_PROTOBUF) // 2] + tail),
        st.text().map(str.encode),
    ),
)
def test_read_body_never_raises(content_type: str, body: bytes) -> None:
    read = read_body(content_type, "", body)
    assert read is None or isinstance(read, BodyObject)
    if read is not None and read.error:
        assert read.document is None


@given(method=st.sampled_from(["GET", "POST", "DELETE", "x"]), path=st.text(), query=st.text())
def test_classify_raises_only_unsafe_path(method: str, path: str, query: str) -> None:
    try:
        request = classify(method, "/" + path.replace("?", ""), query)
    except UnsafePath:
        return
    assert isinstance(request, KubeRequest)


CREATE = classify("POST", "/api/v1/namespaces/prod/secrets")
WITH_BODY = [
    pytest.param(
        CREATE, typed("v1", "Secret", "db", "", None), "db", "prod", id="create named from the body"
    ),
    pytest.param(
        CREATE,
        typed("v1", "Secret", "db", "other", None),
        "db",
        "prod",
        id="body never overrides the path namespace",
    ),
    pytest.param(
        classify("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"),
        typed("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "admin", "dev", None),
        "admin",
        "",
        id="body never gives a namespace",
    ),
    pytest.param(
        classify("POST", "/api/v1/namespaces"),
        typed("v1", "Namespace", "prod", "", None),
        "prod",
        "",
        id="create a namespace",
    ),
    pytest.param(
        CREATE, BodyObject("", "", "", "", None, "bad protobuf"), "", "prod", id="unreadable body"
    ),
    pytest.param(
        CREATE,
        BodyObject("v1", "Secret", "db", "", None, "oops"),
        "",
        "prod",
        id="body with an error",
    ),
    pytest.param(
        CREATE,
        typed("v1", "Secret", "", "", {"metadata": {"generateName": "db-"}}),
        "",
        "prod",
        id="generateName",
    ),
    pytest.param(CREATE, None, "", "prod", id="no body"),
    pytest.param(
        classify("PUT", "/api/v1/namespaces/prod/secrets/db"),
        typed("v1", "Secret", "x", "", None),
        "db",
        "prod",
        id="update keeps the path name",
    ),
    pytest.param(
        classify("POST", "/api/v1/namespaces/prod/pods/p/eviction"),
        typed("policy/v1", "Eviction", "q", "", None),
        "p",
        "prod",
        id="create on a subresource",
    ),
    pytest.param(
        classify("PATCH", "/api/v1/namespaces/prod/secrets/db"),
        typed("v1", "Secret", "x", "", None),
        "db",
        "prod",
        id="patch",
    ),
    pytest.param(
        classify("POST", "/api/v1/namespaces/prod/secrets?fieldSelector=x"),
        typed("v1", "Secret", "db", "", None),
        "db",
        "prod",
        id="create with a query",
    ),
    pytest.param(
        classify("POST", "/healthz"),
        typed("v1", "Secret", "db", "", None),
        "",
        "",
        id="non-resource",
    ),
]


@pytest.mark.parametrize(("request_", "body", "name", "namespace"), WITH_BODY)
def test_with_body(
    request_: KubeRequest, body: BodyObject | None, name: str, namespace: str
) -> None:
    named_request = with_body(request_, body)
    assert (named_request.name, named_request.namespace) == (name, namespace)
    assert named_request.verb == request_.verb
    assert named_request.parts == request_.parts


def test_with_body_from_a_protobuf_create() -> None:
    body = read_body(PROTOBUF, "", SECRET_PROTOBUF)
    assert with_body(CREATE, body).name == "db"


selector_text = st.text(alphabet="ab1-./=!(),<> \t\x00\\", max_size=30) | st.sampled_from(
    ["in", "notin", "a in (b)", "a notin (,)", "!a", "a>1", "a<-1", "x in (a,,b)"]
)


@given(labels=selector_text, fields=selector_text)
def test_selectors_never_break_classification(labels: str, fields: str) -> None:
    query = urlencode({"labelSelector": labels, "fieldSelector": fields, "limit": "1"})
    request = classify("GET", "/api/v1/namespaces/ns/pods", query)
    assert request.verb == "list"
    named_request = classify(
        "GET",
        "/api/v1/pods",
        urlencode({"labelSelector": labels, "fieldSelector": "metadata.name=n"}),
    )
    assert named_request.name in ("", "n")
