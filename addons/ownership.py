"""What agents create: label it (agent, run, expiry), record it in the ledger, reap it when asked.

The mitmproxy side of `addons/ledger.py`. Deletions by the reaper go through the gateway's
own proxy port as the agent `holdgate-reaper`, so policy, approvals and the archive apply to
them like to any agent's request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
from mitmproxy import http

from addons.config import Config, TargetKind, Upstream
from addons.identity import REAPER_AGENT
from addons.ledger import (
    Created,
    Filter,
    Ledger,
    created_from_response,
    label_body,
    ownership_metadata,
)
from addons.policy import Rule
from addons.request_facts import RequestFacts

log = logging.getLogger("holdgate")

KEY = "ownership"
JSON = "application/json"


def ledger_path(state_dir: Path) -> Path:
    """Where the embedded default keeps the ledger (beside the local archive)."""
    return state_dir / "ledger.sqlite"


def _is_create(facts: RequestFacts) -> bool:
    kube = facts.kube
    return (
        kube is not None
        and kube.resource_request
        and kube.verb == "create"
        and not kube.subresource
        and facts.method == "POST"
    )


def _is_apply_create(facts: RequestFacts, request: http.Request) -> bool:
    kube = facts.kube
    return (
        kube is not None
        and kube.verb == "patch"
        and not kube.subresource
        and request.headers.get("content-type", "").startswith("application/apply-patch")
    )


class Ownership:
    """Labels creates, records them in the ledger on success, and runs the reaper loop."""

    def __init__(self) -> None:
        self.ledger: Ledger | None = None
        self.config: Config | None = None
        self.reap_interval: float = 0.0
        self.proxy_url = ""
        self.reaper_token = ""
        self._task: asyncio.Task[None] | None = None

    def configure_from(self, config: Config, reaper_token: str) -> None:
        """Open the ledger of a loaded configuration."""
        self.config = config
        self.ledger = Ledger(ledger_path(config.state_dir))
        section = config.raw.get("ledger") or {}
        self.reap_interval = (
            float(section.get("reap_interval_seconds", 0)) if section.get("reap_expired") else 0.0
        )
        self.reaper_token = reaper_token

    # --- request side ------------------------------------------------------------------

    def before_upstream(self, flow: http.HTTPFlow, facts: RequestFacts, rule: Rule | None) -> None:
        """Put the agent, run and expiry on what a create makes (in the body when possible)."""
        if not (_is_create(facts) or _is_apply_create(facts, flow.request)) or facts.target is None:
            return
        identity = facts.identity
        agent = identity.agent if identity else ""
        run_id = identity.run_id if identity else ""
        ttl = rule.ttl if rule is not None else None
        record: dict[str, Any] = {"agent": agent, "run_id": run_id, "ttl": ttl, "labelled": False}
        flow.metadata.setdefault("holdgate", {})[KEY] = record
        if not _is_create(facts):
            return  # server-side apply: recorded on 201, not relabelled (the agent owns its fields)
        expires = time.time() + ttl if ttl else None
        metadata = ownership_metadata(agent, run_id, expires)
        request = flow.request
        body = request.raw_content or b""
        content_type = request.headers.get("content-type", "")
        if request.headers.get("content-encoding", "identity") not in ("", "identity"):
            record["patch"] = metadata
            return
        if not (content_type.startswith(JSON) or content_type.endswith("+json")):
            # Protobuf (kubectl's create) or YAML: sent as is, labelled right after the create.
            record["patch"] = metadata
            return
        labelled = label_body(body, metadata)
        if labelled is None:
            record["patch"] = metadata
            return
        request.content = labelled
        record["labelled"] = True

    # --- response side -----------------------------------------------------------------

    async def after_response(
        self, flow: http.HTTPFlow, facts_target: str, kube: dict[str, Any]
    ) -> None:
        """Record a successful create in the ledger; label it now if its body could not be."""
        meta = flow.metadata.get("holdgate", {})
        record = meta.get(KEY)
        response = flow.response
        if self.ledger is None or response is None:
            return
        if record is not None and response.status_code == 201:
            entry = self._created(flow, facts_target, kube, record)
            if entry is None:
                return
            self.ledger.record(entry)
            meta["ledger"] = entry.as_dict()
            log.info("ledger: %s created %s (uid %s)", entry.agent or "-", entry.where, entry.uid)
            if "patch" in record:
                await self._label_later(flow, entry, record["patch"])
        elif (
            kube.get("verb") == "delete" and response.status_code in (200, 202) and kube.get("name")
        ):
            for entry in self.ledger.find(Filter(target=facts_target)):
                if (entry.resource, entry.namespace, entry.name) == (
                    kube.get("resource"),
                    kube.get("namespace", ""),
                    kube.get("name"),
                ):
                    agent = meta.get("request", {}).get("identity") or {}
                    self.ledger.mark_deleted(entry.uid, agent.get("agent", "") or "unknown agent")

    def _created(
        self, flow: http.HTTPFlow, target: str, kube: dict[str, Any], record: dict[str, Any]
    ) -> Created | None:
        from addons.kube_request import classify

        assert flow.response is not None
        request = classify(flow.request.method, kube.get("path", flow.request.path), "")
        return created_from_response(
            request,
            target,
            record["agent"],
            record["run_id"],
            flow.response.raw_content or b"",
            record["ttl"],
            time.time(),
        )

    async def _label_later(
        self, flow: http.HTTPFlow, entry: Created, metadata: dict[str, Any]
    ) -> None:
        """A follow-up merge PATCH with the gateway's upstream access (protobuf bodies, say)."""
        assert self.config is not None
        target = self.config.target_named(entry.target)
        if target is None:
            return
        headers = {"Content-Type": "application/merge-patch+json", "Accept": JSON}
        if target.credential is not None:
            with contextlib.suppress(Exception):
                value = target.credential.authorization()
                if value:
                    headers["Authorization"] = value
        elif "authorization" in flow.request.headers:
            headers["Authorization"] = flow.request.headers["authorization"]
        url = f"{flow.request.scheme}://{flow.request.host}:{flow.request.port}{entry.path}"
        context = ssl.create_default_context()
        bundle = self.config.state_dir / "upstream-ca.pem"
        if bundle.exists():
            context = ssl.create_default_context(cafile=str(bundle))
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
                session.patch(
                    url, data=json.dumps({"metadata": metadata}), headers=headers, ssl=context
                ) as r,
            ):
                if r.status >= 300:
                    log.error("ledger: labelling %s failed: HTTP %d", entry.where, r.status)
                else:
                    flow.metadata["holdgate"][KEY]["labelled"] = "follow-up patch"
        except (aiohttp.ClientError, TimeoutError) as e:
            log.error("ledger: labelling %s failed: %s", entry.where, e)

    # --- the reaper loop ---------------------------------------------------------------

    def start_reaper(self, proxy_url: str) -> None:
        """Delete expired objects every `reap_interval_seconds` (when `ledger.reap_expired`)."""
        self.proxy_url = proxy_url
        if self.reap_interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._reap_forever())

    def stop_reaper(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            try:
                await self.reap_expired()
            except Exception as e:  # the loop must outlive one bad round
                log.error("reaper: %s", e)

    async def reap_expired(self) -> None:
        """Delete every expired object through the gateway itself."""
        assert self.ledger is not None and self.config is not None
        entries = self.ledger.find(Filter(expired=True))
        if not entries:
            return
        from addons.reaping import delete_through_gateway

        for entry in entries:
            outcome = await asyncio.to_thread(
                delete_through_gateway, self.config, self.proxy_url, self.reaper_token, entry
            )
            log.info("reaper: %s: %s", entry.where, outcome)


def upstream_url(upstream: Upstream) -> str:
    """scheme://host:port of an upstream."""
    return f"{upstream.scheme}://{upstream.host}:{upstream.port}"


__all__ = ["Ownership", "REAPER_AGENT", "TargetKind", "ledger_path"]
