"""Report and delete what agents left behind, through the gateway itself (policy applies).

Requests go to the running gateway's proxy port as the built-in agent `holdgate-reaper`,
authenticated with the admin token: rules decide them (a rule may hold a deletion for
approval), the archive records them, and the gateway's ledger notes the deletions.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import quote

import httpx

from holdgate.config.gateway_ca import ca_cert_path
from holdgate.config.gateway_config import Config
from holdgate.identity.agents import REAPER_AGENT, RUN_SEPARATOR
from holdgate.ledger.shared import LedgerStore, open_ledger
from holdgate.ledger.store import Created

REASON_HEADER = "X-Holdgate-Reason"


def proxy_url_file(state_dir: Path) -> Path:
    """Where a running gateway writes the proxy URL it really listens on."""
    return state_dir / "proxy-url"


def gateway_proxy_url(config: Config) -> str:
    """The running gateway's proxy URL (from its state file, else the config)."""
    path = proxy_url_file(config.state_dir)
    if path.exists():
        return path.read_text().strip()
    return f"http://{config.listen_host}:{config.listen_port}"


class Existence(StrEnum):
    """What the gateway's upstream says about a ledger object."""

    EXISTS = "exists"
    GONE = "gone"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Presence:
    """Whether a ledger object still exists upstream, and why we think so."""

    state: Existence
    detail: str


class Result(StrEnum):
    """How one deletion ended."""

    DELETED = "deleted"
    ALREADY_GONE = "already gone"
    REFUSED = "refused"  # by policy, a reviewer, or the apiserver
    FAILED = "failed"  # the gateway could not be reached, or the target is not configured


@dataclass(frozen=True, slots=True)
class Outcome:
    """One deletion's result, with the gateway's or apiserver's message."""

    result: Result
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.result}: {self.detail}" if self.detail else str(self.result)


def _client(
    config: Config, proxy_url: str, token: str, timeout: float | None, run_id: str = ""
) -> httpx.Client:
    scheme, _, address = proxy_url.partition("://")
    user = REAPER_AGENT + (RUN_SEPARATOR + run_id if run_id else "")
    context = ssl.create_default_context(cafile=str(ca_cert_path(config.certs_dir)))
    return httpx.Client(
        proxy=f"{scheme}://{quote(user, safe='')}:{quote(token, safe='')}@{address}",
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
    config: Config, proxy_url: str, token: str, entries: list[Created], ledger: LedgerStore
) -> list[Presence]:
    """GET each object through the gateway; a 404 (or another uid under the name) marks it gone."""
    out = []
    with _client(config, proxy_url, token, 30.0) as client:
        for entry in entries:
            url = object_url(config, entry)
            if url is None:
                out.append(Presence(Existence.UNKNOWN, f"target {entry.target} is not configured"))
                continue
            try:
                r = client.get(url, headers={"Accept": "application/json"})
            except httpx.HTTPError as e:
                out.append(Presence(Existence.UNKNOWN, f"gateway unreachable: {e}"))
                continue
            if r.status_code == 200:
                uid = _uid(r)
                if uid and uid != entry.uid:
                    ledger.mark_deleted(entry.uid, "replaced by another object")
                    out.append(Presence(Existence.GONE, "a different object has the name now"))
                else:
                    out.append(Presence(Existence.EXISTS, ""))
            elif r.status_code == 404:
                ledger.mark_deleted(entry.uid, "found missing")
                out.append(Presence(Existence.GONE, ""))
            else:
                out.append(Presence(Existence.UNKNOWN, f"HTTP {r.status_code} {_message(r)}"))
    return out


def delete_through_gateway(
    config: Config, proxy_url: str, token: str, entry: Created, ledger: LedgerStore | None = None
) -> Outcome:
    """DELETE one object through the gateway (a rule may hold it for approval: this waits)."""
    url = object_url(config, entry)
    if url is None:
        return Outcome(Result.FAILED, f"target {entry.target} is not configured")
    ledger = ledger or open_ledger(config)
    # The uid precondition: never delete a newer object that took the recorded one's name.
    options = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": entry.uid}}
    with _client(config, proxy_url, token, None, entry.run_id) as client:
        try:
            r = client.request(
                "DELETE",
                url,
                content=json.dumps(options).encode(),
                headers={
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                    REASON_HEADER: f"reaping what {entry.agent or 'an agent'} left behind"
                    + (f" (run {entry.run_id})" if entry.run_id else ""),
                },
            )
        except httpx.HTTPError as e:
            return Outcome(Result.FAILED, f"gateway unreachable: {e}")
    if r.status_code in (200, 202):
        ledger.mark_deleted(entry.uid, REAPER_AGENT)
        return Outcome(Result.DELETED)
    if r.status_code == 404:
        ledger.mark_deleted(entry.uid, "found missing")
        return Outcome(Result.ALREADY_GONE)
    if r.status_code == 409 and _reason(r) == "Conflict" and "UID in precondition" in _message(r):
        ledger.mark_deleted(entry.uid, "replaced by another object")
        return Outcome(Result.ALREADY_GONE, "a different object has the name now")
    return Outcome(Result.REFUSED, f"HTTP {r.status_code} {_message(r)}".strip())


def _json(r: httpx.Response) -> dict[str, object]:
    try:
        data = r.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _uid(r: httpx.Response) -> str:
    meta = _json(r).get("metadata")
    return str(meta.get("uid", "")) if isinstance(meta, dict) else ""


def _reason(r: httpx.Response) -> str:
    return str(_json(r).get("reason", ""))


def _message(r: httpx.Response) -> str:
    return str(_json(r).get("message", "")) or r.text[:200]
