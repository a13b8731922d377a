"""Canary flows, the settings for a test archive, and reading back what an archive holds."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy import io as mitmio
from mitmproxy.test import tflow

from holdgate.config.archive_settings import ArchiveSettings

# Canary credentials: none of these (nor their base64 forms) may reach an archived byte.
CANARY_BEARER = "CANARY-bearer-3f9a1c"
CANARY_PROXY_PW = "CANARY-proxy-pw-77c1e0"
CANARY_COOKIE = "CANARY-cookie-0b2e4d"
CANARY_SET_COOKIE = "CANARY-setcookie-55d0aa"
CANARY_AMZ = "CANARY-amz-token-91e4f2"
CANARY_SIGNATURE = "CANARY-amz-signature-6a2b"
CANARIES = [
    CANARY_BEARER,
    CANARY_PROXY_PW,
    CANARY_COOKIE,
    CANARY_SET_COOKIE,
    CANARY_AMZ,
    CANARY_SIGNATURE,
]
PROXY_AUTH = "Basic " + base64.b64encode(f"ci-bot:{CANARY_PROXY_PW}".encode()).decode()


def canary_needles() -> list[bytes]:
    """Every form a canary could take in archived bytes."""
    needles = []
    for canary in [*CANARIES, f"ci-bot:{CANARY_PROXY_PW}"]:
        needles.append(canary.encode())
        needles.append(base64.b64encode(canary.encode()))
    needles.append(PROXY_AUTH.split(" ")[1].encode())
    return needles


def assert_no_canary(blob: bytes, where: str) -> None:
    """Fail when any canary form is in `blob`."""
    for needle in canary_needles():
        assert needle not in blob, f"canary {needle!r} found in {where}"


KUBE_GET = {
    "resource_request": True,
    "verb": "get",
    "api_group": "",
    "api_version": "v1",
    "namespace": "sandbox",
    "resource": "pods",
    "subresource": "",
    "name": "web",
    "path": "/api/v1/namespaces/sandbox/pods/web",
}


def holdgate_meta(
    action: str = "allow",
    rule: str | None = "allow-reads",
    kube: dict[str, Any] | None = None,
    agent: str = "ci-bot",
    target: str = "sandbox",
    hold: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """flow.metadata["holdgate"] as the gateway writes it."""
    request: dict[str, Any] = {
        "target": target,
        "method": "GET",
        "host": "kubernetes.default.svc",
        "port": 443,
        "path": "/api/v1/namespaces/sandbox/pods/web",
        "identity": {"agent": agent, "owner": "alice", "groups": ["ci"], "run_id": "run-1"},
    }
    if kube is not None:
        request["kubernetes"] = kube
    meta: dict[str, Any] = {
        "request": request,
        "decision": {"action": action, "rule": rule, "reason": f"{action} by {rule}"},
    }
    if hold is not None:
        meta["hold"] = hold
    return meta


def canary_flow(
    n: int = 0, *, kube: dict[str, Any] | None = KUBE_GET, **meta: Any
) -> http.HTTPFlow:
    """A finished flow carrying every canary credential, an unmasked backup and proxyauth."""
    flow = tflow.tflow(resp=True)
    flow.request.path = (
        f"/api/v1/namespaces/sandbox/pods/web-{n}?X-Amz-Signature={CANARY_SIGNATURE}&a=1"
    )
    flow.request.headers["Authorization"] = f"Bearer {CANARY_BEARER}"
    flow.request.headers["Proxy-Authorization"] = PROXY_AUTH
    flow.request.headers["Cookie"] = f"session={CANARY_COOKIE}; theme=dark"
    flow.request.headers["X-Amz-Security-Token"] = CANARY_AMZ
    response = flow.response
    assert response is not None
    response.headers["Set-Cookie"] = f"sid={CANARY_SET_COOKIE}; Path=/; HttpOnly"
    response.headers["Content-Type"] = "application/json"
    response.content = json.dumps({"kind": "Pod", "metadata": {"name": f"web-{n}"}}).encode()
    flow.metadata["proxyauth"] = ("ci-bot", CANARY_PROXY_PW)
    flow.metadata["holdgate"] = holdgate_meta(kube=kube, **meta)
    flow.comment = f"allow: get pods web-{n} -n sandbox (allow-reads)"
    flow.backup()  # the unmasked original, as an edit in mitmweb would keep it
    flow.request.headers["X-Edited"] = "1"
    return flow


def settings_for(tmp_path: Path, **archive: Any) -> ArchiveSettings:
    """Archive settings under tmp_path, with fast retries."""
    data: dict[str, Any] = {"upload_retry": {"initial_seconds": 0.05, "max_seconds": 0.2}}
    data.update(archive)
    return ArchiveSettings.from_dict(data, tmp_path, tmp_path / "state")


def archived_files(root: Path) -> dict[str, bytes]:
    """Every file under an archive directory, by key."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_flows(blob: bytes) -> list[http.HTTPFlow]:
    """Flows from mitmproxy's native format."""
    flows = list(mitmio.FlowReader(io.BytesIO(blob)).stream())  # type: ignore[arg-type]
    assert all(isinstance(f, http.HTTPFlow) for f in flows)
    return flows  # type: ignore[return-value]


def make_writable(root: Path) -> None:
    """Archived files are read-only; a test that tampers needs them writable."""
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def archived_paths(root: Path, suffix: str) -> list[Path]:
    """The archived files ending in `suffix`, without the audit files of the same suffix."""
    return sorted(p for p in root.rglob(f"*{suffix}") if not p.name.endswith(".audit" + suffix))
