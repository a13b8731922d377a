"""What agents create: label it (agent, run, expiry), record it in the ledger, reap it when asked.

The mitmproxy side of `addons/ledger/store.py`. Deletions by the reaper go through the gateway's
own proxy port as the agent `holdgate-reaper`, so policy, approvals and the archive apply to
them like to any agent's request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from mitmproxy import http
from mitmproxy.flow import Error as FlowError

from holdgate.config.gateway_config import Config
from holdgate.identity.upstream_credentials import CredentialUnavailable
from holdgate.kube.request_info import REVIEWS, classify
from holdgate.ledger.reaping import Result, delete_through_gateway
from holdgate.ledger.shared import LedgerStore, open_ledger
from holdgate.ledger.store import (
    OWNED_PREFIX,
    Created,
    Filter,
    ForeignMetadata,
    created_from_response,
    label_body,
    ownership_metadata,
    strip_owned_metadata,
)
from holdgate.policy.rules import Rule
from holdgate.printable import printable
from holdgate.request.facts import RequestFacts
from holdgate.state.postgres import StateUnavailable

log = logging.getLogger("holdgate")

KEY = "ownership"
JSON = "application/json"
# A deletion the reaper loop could not make is retried after this many intervals.
RETRY_AFTER_INTERVALS = 60


_WRITE_VERBS = frozenset({"create", "update", "patch"})


def _patch_of(request: dict[str, Any], entry: Created) -> dict[str, Any]:
    """The classification of the follow-up PATCH of a created object."""
    kube = dict(request.get("kubernetes") or {})
    kube.update(verb="patch", name=entry.name, path=entry.path)
    if entry.namespace:
        kube["namespace"] = entry.namespace
    return kube


def _is_create(facts: RequestFacts) -> bool:
    kube = facts.kube
    return (
        kube is not None
        and kube.resource_request
        and kube.verb == "create"
        and not kube.subresource
        and facts.method == "POST"
        and (kube.api_group, kube.resource) not in REVIEWS  # answered, never stored
    )


def _is_apply(facts: RequestFacts, request: http.Request) -> bool:
    kube = facts.kube
    return (
        kube is not None
        and kube.verb == "patch"
        and not kube.subresource
        and request.headers.get("content-type", "").startswith("application/apply-patch")
    )


def _is_dry_run(request: http.Request) -> bool:
    return bool(request.query.get_all("dryRun"))


def _is_json(request: http.Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    return content_type == JSON or content_type.endswith("+json")


class Ownership:
    """Labels creates, records them in the ledger on success, and runs the reaper loop."""

    def __init__(self) -> None:
        self.ledger: LedgerStore | None = None
        self.config: Config | None = None
        self.reap_interval: float = 0.0
        self.proxy_url = ""
        self.reaper_token = ""
        self._task: asyncio.Task[None] | None = None
        self._retry_at: dict[str, float] = {}  # uid -> when the loop may try again
        # Receives the follow-up PATCH of a create as a flow of its own (the archive).
        self.on_followup: Callable[[http.HTTPFlow], None] | None = None

    def configure_from(self, config: Config, reaper_token: str) -> None:
        """Open the ledger of a loaded configuration."""
        self.config = config
        self.ledger = open_ledger(config)
        section = config.raw.get("ledger") or {}
        self.reap_interval = (
            float(section.get("reap_interval_seconds", 60)) if section.get("reap_expired") else 0.0
        )
        self.reaper_token = reaper_token

    # --- request side ------------------------------------------------------------------

    @staticmethod
    def drop_foreign_metadata(request: http.Request, facts: RequestFacts) -> str:
        """Take the holdgate.dev/* labels and annotations an agent sent out of a write's body.

        Returns "" when the body is (now) clean, else why it must be refused.
        """
        kube = facts.kube
        if kube is None or kube.verb not in _WRITE_VERBS or not request.raw_content:
            return ""
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            if OWNED_PREFIX.encode() in request.raw_content.lower():
                return "holdgate.dev/ metadata in a compressed body cannot be removed"
            return ""  # the apiserver refuses encoded bodies; nothing of ours can be in one
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            body, dropped = strip_owned_metadata(request.raw_content, media_type)
        except ForeignMetadata as e:
            return f"holdgate.dev/ labels and annotations are the gateway's: {e}"
        if dropped:
            request.content = body
            log.info(
                "ownership: dropped the agent's own %s from a %s of %s",
                printable(", ".join(sorted(set(dropped)))),
                kube.verb,
                kube.resource,
            )
        return ""

    @staticmethod
    def labels_create(facts: RequestFacts, request: http.Request) -> bool:
        """Whether the gateway labels what this request creates (a create or an apply)."""
        if facts.target is None or not (_is_create(facts) or _is_apply(facts, request)):
            return False
        return not _is_dry_run(request)  # parses the query: only for creates

    def followup_for(self, facts: RequestFacts, request: http.Request, rule: Rule | None) -> str:
        """What a held create is followed by once approved, for reviewers ("" when nothing)."""
        if not self.labels_create(facts, request):
            return ""
        metadata = self._metadata(facts, rule)
        pairs = [f"{k}={v}" for part in metadata.values() for k, v in sorted(part.items())]
        return (
            "if approved and created, the gateway then labels the new object with a merge "
            f"PATCH of its metadata ({', '.join(pairs)}); the request itself goes unchanged"
        )

    @staticmethod
    def _metadata(facts: RequestFacts, rule: Rule | None) -> dict[str, dict[str, str]]:
        identity = facts.identity
        ttl = rule.ttl if rule is not None else None
        return ownership_metadata(
            identity.agent if identity else "",
            identity.run_id if identity else "",
            time.time() + ttl if ttl else None,
        )

    def before_upstream(
        self, flow: http.HTTPFlow, facts: RequestFacts, rule: Rule | None, exact: bool = False
    ) -> None:
        """Put the agent, run and expiry on what a create makes: in the body when possible,
        else (and always when `exact`: an approved request goes as the reviewers saw it) by a
        follow-up PATCH once it exists."""
        request = flow.request
        if not self.labels_create(facts, request):
            return
        identity = facts.identity
        ttl = rule.ttl if rule is not None else None
        metadata = self._metadata(facts, rule)
        record: dict[str, Any] = {
            "agent": identity.agent if identity else "",
            "run_id": identity.run_id if identity else "",
            "ttl": ttl,
            "labelled": False,
        }
        flow.metadata.setdefault("holdgate", {})[KEY] = record
        # An apply's body is the agent's declared intent: labelled after it creates, never edited.
        labelled = None
        plain = request.headers.get("content-encoding", "identity") in ("", "identity")
        if _is_create(facts) and _is_json(request) and plain and not exact:
            labelled = label_body(request.raw_content or b"", metadata)
        if labelled is None:
            # Approved, protobuf (kubectl's create), YAML, compressed: sent as is, labelled after.
            record["patch"] = metadata
            return
        request.content = labelled
        record["labelled"] = "request body"

    # --- response side -----------------------------------------------------------------

    async def after_response(
        self, flow: http.HTTPFlow, facts_target: str, kube: dict[str, Any]
    ) -> None:
        """Record a successful create (labelling it now if its body could not be), or a delete."""
        meta = flow.metadata.get("holdgate", {})
        record = meta.get(KEY)
        response = flow.response
        if self.ledger is None or response is None:
            return
        if record is not None and response.status_code == 201:
            entry = self._created(flow, facts_target, kube, record)
            if entry is None:
                log.error("ledger: a create by %s was not understood", record["agent"] or "-")
                return
            meta["ledger"] = entry.as_dict()  # on the flow: archived even if the ledger fails
            try:
                self.ledger.record(entry)
            except StateUnavailable as e:
                log.error("ledger: %s not recorded (the archive has it): %s", entry.where, e)
            log.info(
                "ledger: %s (run %s) created %s (uid %s)",
                entry.agent or "-",
                entry.run_id or "-",
                entry.where,
                entry.uid,
            )
            if "patch" in record:
                await self._label_later(flow, entry, record)
        elif (
            kube.get("verb") == "delete"
            and response.status_code in (200, 202)
            and kube.get("name")
            and not _is_dry_run(flow.request)
        ):
            identity = meta.get("request", {}).get("identity") or {}
            by = identity.get("agent", "") or "unknown agent"
            request = classify(flow.request.method, kube.get("path", ""), "")
            try:
                closed = self.ledger.mark_deleted_object(facts_target, request, by)
            except StateUnavailable as e:
                log.error("ledger: a delete by %s not recorded: %s", by, e)
                return
            for entry in closed:
                meta.setdefault("ledger_deleted", []).append(entry.uid)
                log.info("ledger: %s deleted %s (uid %s)", by, entry.where, entry.uid)

    def _created(
        self, flow: http.HTTPFlow, target: str, kube: dict[str, Any], record: dict[str, Any]
    ) -> Created | None:
        assert flow.response is not None
        # Classified from the URL alone: the entry names what the apiserver made, not the body.
        request = classify(flow.request.method, kube.get("path", ""), "")
        return created_from_response(
            request,
            target,
            record["agent"],
            record["run_id"],
            flow.response.get_content(strict=False) or b"",
            record["ttl"],
            time.time(),
        )

    async def _label_later(
        self, flow: http.HTTPFlow, entry: Created, record: dict[str, Any]
    ) -> None:
        """A follow-up merge PATCH straight upstream with the gateway's credential."""
        assert self.config is not None
        target = self.config.target_named(entry.target)
        if target is None:
            return
        headers = {"Content-Type": "application/merge-patch+json", "Accept": JSON}
        context = ssl.create_default_context()
        bundle = self.config.state_dir / "upstream-ca.pem"
        if bundle.exists():
            context = ssl.create_default_context(cafile=str(bundle))
        credential = target.credential
        try:
            if credential is not None:
                value = credential.authorization()
                if value:
                    headers["Authorization"] = value
                if credential.client_cert is not None:
                    context.load_cert_chain(credential.client_cert, credential.client_key)
            elif "authorization" in flow.request.headers:
                headers["Authorization"] = flow.request.headers["authorization"]
        except (CredentialUnavailable, OSError, ssl.SSLError) as e:
            log.error("ledger: labelling %s failed: credential: %s", entry.where, e)
            return
        # After routing, the flow's request points at the upstream.
        url = f"{flow.request.scheme}://{flow.request.host}:{flow.request.port}{entry.path}"
        body = json.dumps({"metadata": record["patch"]}).encode()
        followup = http.HTTPFlow(flow.client_conn, flow.server_conn)
        followup.request = http.Request.make(
            "PATCH", url, body, http.Headers([(k.encode(), v.encode()) for k, v in headers.items()])
        )
        followup.request.timestamp_start = followup.request.timestamp_end = time.time()
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
                session.patch(url, data=body, headers=headers, ssl=context) as r,
            ):
                # The answer repeats the object (a Secret's data too): its status is kept, not it.
                followup.response = http.Response.make(
                    r.status,
                    b"",
                    {"X-Holdgate-Archived": "the object the PATCH returned is not kept"},
                )
                followup.response.timestamp_start = followup.response.timestamp_end = time.time()
                if r.status >= 300:
                    log.error("ledger: labelling %s failed: HTTP %d", entry.where, r.status)
                    return
        except (aiohttp.ClientError, TimeoutError) as e:
            log.error("ledger: labelling %s failed: %s", entry.where, e)
            followup.error = FlowError(f"the follow-up PATCH failed: {e}")
            return
        finally:
            self._record_followup(flow, followup, entry, record)
        record["labelled"] = "follow-up patch"

    def _record_followup(
        self, flow: http.HTTPFlow, followup: http.HTTPFlow, entry: Created, record: dict[str, Any]
    ) -> None:
        """The follow-up PATCH as a flow of its own, for the archive (and its audit event)."""
        if self.on_followup is None:
            return
        meta = flow.metadata.get("holdgate", {})
        request = dict(meta.get("request") or {})
        request.update(method="PATCH", path=entry.path, kubernetes=_patch_of(request, entry))
        followup.request.headers.pop("Authorization", None)  # the gateway's credential
        followup.metadata["holdgate"] = {
            "request": request,
            "decision": {
                "action": "allow",
                "rule": None,
                "reason": f"the gateway labels what flow {flow.id} created (ownership)",
            },
            "followup_of": flow.id,
            KEY: {**record, "labelled": "follow-up patch" if followup.response else False},
        }
        followup.comment = f"allow: ownership labels for {entry.where} (after flow {flow.id})"
        self.on_followup(followup)

    # --- the reaper loop ---------------------------------------------------------------

    def start_reaper(self, proxy_url: str) -> None:
        """Delete expired objects every `reap_interval_seconds` (when `ledger.reap_expired`)."""
        self.proxy_url = proxy_url
        if self.reap_interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._reap_forever())
            log.info("reaper: deleting expired objects every %gs", self.reap_interval)

    def stop_reaper(self) -> None:
        """Stop the reaper loop."""
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
        """Delete every expired object through the gateway itself (policy applies)."""
        assert self.ledger is not None and self.config is not None
        now = time.time()
        entries = [
            e
            for e in self.ledger.find(Filter(expired=True), now)
            if self._retry_at.get(e.uid, 0.0) <= now
        ]
        for entry in sorted(entries, key=lambda e: e.reap_rank):
            outcome = await asyncio.to_thread(
                delete_through_gateway,
                self.config,
                self.proxy_url,
                self.reaper_token,
                entry,
                self.ledger,
            )
            log.info("reaper: expired %s (run %s): %s", entry.where, entry.run_id or "-", outcome)
            if outcome.result in (Result.REFUSED, Result.FAILED):
                # Not every round: a refusing rule or a held deletion would repeat forever.
                self._retry_at[entry.uid] = time.time() + RETRY_AFTER_INTERVALS * self.reap_interval
            else:
                self._retry_at.pop(entry.uid, None)
