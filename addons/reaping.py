"""Report and delete what agents left behind, through the gateway itself (policy applies)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

from addons.config import Config
from addons.gateway_ca import ca_cert_path
from addons.identity import REAPER_AGENT
from addons.ledger import Created, Ledger


def proxy_url_file(state_dir: Path) -> Path:
    """Where a running gateway writes the proxy URL it really listens on."""
    return state_dir / "proxy-url"


def gateway_proxy_url(config: Config) -> str:
    """The running gateway's proxy URL (from its state file, else the config)."""
    path = proxy_url_file(config.state_dir)
    if path.exists():
        return path.read_text().strip()
    return f"http://{config.listen_host}:{config.listen_port}"


@dataclass(frozen=True, slots=True)
class Presence:
    """Whether a ledger object still exists upstream."""

    exists: bool | None
    detail: str


def _client(config: Config, proxy_url: str, token: str, timeout: float | None) -> httpx.Client:
    scheme, _, address = proxy_url.partition("://")
    context = ssl.create_default_context(cafile=str(ca_cert_path(config.certs_dir)))
    return httpx.Client(
        proxy=f"{scheme}://{REAPER_AGENT}:{token}@{address}",
        verify=context,
        timeout=httpx.Timeout(30.0, read=timeout),
        trust_env=False,
    )


def object_url(config: Config, entry: Created) -> str | None:
    """The URL agents use for the object (the target's first plain host name)."""
    target = config.target_named(entry.target)
    if target is None:
        return None
    host = next((h for h in target.hosts if not any(c in h for c in "*?[")), None)
    return f"https://{host}{entry.path}" if host else None


def check_presence(
    config: Config, proxy_url: str, token: str, entries: list[Created], ledger: Ledger
) -> list[Presence]:
    """GET each object through the gateway; a 404 marks it gone in the ledger."""
    out = []
    with _client(config, proxy_url, token, 30.0) as client:
        for entry in entries:
            url = object_url(config, entry)
            if url is None:
                out.append(Presence(None, f"target {entry.target} is not configured"))
                continue
            try:
                r = client.get(url)
            except httpx.HTTPError as e:
                out.append(Presence(None, f"gateway unreachable: {e}"))
                continue
            if r.status_code == 200:
                uid = _uid(r)
                if uid and uid != entry.uid:
                    ledger.mark_deleted(entry.uid, "replaced by another object")
                    out.append(Presence(False, "gone (a different object has the name now)"))
                else:
                    out.append(Presence(True, "exists"))
            elif r.status_code == 404:
                ledger.mark_deleted(entry.uid, "found missing")
                out.append(Presence(False, "gone"))
            else:
                out.append(Presence(None, f"unknown: HTTP {r.status_code} {_message(r)}"))
    return out


def delete_through_gateway(
    config: Config, proxy_url: str, token: str, entry: Created, ledger: Ledger | None = None
) -> str:
    """DELETE one object through the gateway (it may be held for approval: this waits)."""
    url = object_url(config, entry)
    if url is None:
        return f"skipped: target {entry.target} is not configured"
    ledger = ledger or Ledger(config.state_dir / "ledger.sqlite")
    with _client(config, proxy_url, token, None) as client:
        try:
            r = client.delete(
                url,
                headers={
                    "X-Holdgate-Reason": f"reaping what {entry.agent or 'an agent'} left behind"
                },
            )
        except httpx.HTTPError as e:
            return f"failed: gateway unreachable: {e}"
    if r.status_code in (200, 202):
        ledger.mark_deleted(entry.uid, REAPER_AGENT)
        return "deleted"
    if r.status_code == 404:
        ledger.mark_deleted(entry.uid, "found missing")
        return "already gone"
    return f"refused: HTTP {r.status_code} {_message(r)}"


def _uid(r: httpx.Response) -> str:
    try:
        return str(r.json().get("metadata", {}).get("uid", ""))
    except ValueError:
        return ""


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json().get("message", ""))
    except ValueError:
        return r.text[:200]
