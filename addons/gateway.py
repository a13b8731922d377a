"""The holdgate mitmproxy addon: route, classify, decide, refuse or pass, stream.

Load it with `holdgate run`, or with plain mitmproxy tools:
`mitmdump -s addons/gateway.py --set holdgate_config=FILE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.addons.termlog import TermLogHandler
from mitmproxy.log import MitmFormatter

from holdgate import request_limits, unsafe_options, workers
from holdgate.approvals.addon import APPROVALS_PAGE, REASON_HEADER, Approvals, hold_record
from holdgate.approvals.hold import HoldState
from holdgate.archive.addon import Archive
from holdgate.config.archive_settings import ArchiveSettings, ArchiveSettingsError
from holdgate.config.gateway_ca import ensure_ca
from holdgate.config.gateway_config import (
    Config,
    TargetKind,
    Upstream,
    embedded_default,
    load_config,
)
from holdgate.config.state_files import admin_token, secret_file, write_private
from holdgate.config.yaml_source import SourceError, SourceErrors
from holdgate.identity.agents import Identity
from holdgate.identity.proxy_auth import ProxyAuth
from holdgate.identity.upstream_credentials import CredentialUnavailable
from holdgate.json_logs import use_json
from holdgate.ledger.ownership import Ownership
from holdgate.ledger.reaping import proxy_url_file
from holdgate.listening import busy_listener
from holdgate.masking.masks import KUBERNETES_SECRET_MASKS, MaskSet, mask_request_body
from holdgate.masking.responses import ResponseMasking, kind_hint
from holdgate.metrics import GatewayMetrics
from holdgate.operations import (
    OPERATIONS_ENDPOINTS,
    OperationsServer,
    operations_settings,
    operations_url_file,
)
from holdgate.policy.access_review import (
    RULES_REVIEWS,
    decide_review,
    filter_rules,
    self_review,
    with_note,
)
from holdgate.policy.rule_tests import load_tested_policy
from holdgate.policy.rules import Action, Decision, LoadedPolicy, Rule
from holdgate.printable import printable
from holdgate.request.authority import Authority, AuthorityMismatch, agreed_authority
from holdgate.request.facts import RequestFacts, build_facts
from holdgate.request.flow_filter import compile_filter
from holdgate.request.headers import strip_headers
from holdgate.request.refusal import refusal
from holdgate.state.postgres import StateStore, StateStoreSettings

log = logging.getLogger("holdgate")

METADATA_KEY = "holdgate"
NO_APPROVAL_CHANNEL = "approval required; no approval channel configured"
# Seconds a client is told to wait when it has too many requests held.
HOLD_RETRY_AFTER = 30


def _fingerprint(paths: list[Path]) -> tuple[tuple[str, float, int], ...]:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime, st.st_size))
        except OSError:
            out.append((str(p), -1.0, -1))
    return tuple(out)


class Gateway:
    """Decides every request from the YAML policy; refuses with a 403 the client understands."""

    def __init__(self) -> None:
        self.config: Config | None = None
        self.loaded: LoadedPolicy | None = None
        # Upstreams known only at run time (the sandbox binds a free port).
        self.upstream_overrides: dict[str, Upstream] = {}
        self.extra_upstream_cas: list[Path] = []
        self._fingerprint: tuple[tuple[str, float, int], ...] = ()
        self._reload_task: asyncio.Task[None] | None = None
        self.reload_interval = 1.0
        self.metrics = GatewayMetrics()
        self.approvals = Approvals(self.metrics)
        self.auth = ProxyAuth()
        self.ownership = Ownership()
        self.masking = ResponseMasking()
        self.archive = Archive()
        self.operations: OperationsServer | None = None
        self.ownership.on_followup = self.archive.record_extra
        self.metrics.watch_archive(
            lambda: self.archive.writer.health if self.archive.writer is not None else {}
        )
        self.mask_key: bytes | None = None
        self._prepared: tuple[Config, LoadedPolicy] | None = None
        self._running = False
        self.log_allowed = False
        # Self-reviews gone upstream, by flow id: their answers are amended on the way back.
        self._reviews: dict[str, RequestFacts] = {}

    def load(self, loader: Any) -> None:
        request_limits.limit_request_heads()
        loader.add_option(
            "holdgate_config",
            str,
            "",
            "holdgate configuration file (YAML). Empty: the embedded default, "
            "rules/config/sandbox.yaml (example rules and the sandbox Kubernetes API).",
        )
        loader.add_option(
            "holdgate_reload_interval",
            str,
            "1",
            "Seconds between checks of the rule files for changes (0 disables hot reload).",
        )

        loader.add_option(
            "holdgate_approvals_port",
            int,
            -1,
            "Port of the approvals page (-1: from the configuration; 0: any free port).",
        )
        loader.add_option(
            "holdgate_log_format",
            str,
            "text",
            "Log lines as text, or as one JSON object per line (with the agent, run id, target, "
            "verb, resource, namespace, name, decision, rule and hold of decision lines).",
            choices=("text", "json"),
        )
        loader.add_option(
            "holdgate_operations_port",
            int,
            -1,
            "Port of /healthz, /readyz and /metrics (-1: from the configuration; 0: any free "
            "port).",
        )

    def configure(self, updated: set[str]) -> None:
        if "holdgate_log_format" in updated:  # first: the lines below are logged in it
            terminal = [h for h in logging.getLogger().handlers if isinstance(h, TermLogHandler)]
            for handler in terminal:
                text = MitmFormatter(handler.has_vt_codes)
                use_json([handler], ctx.options.holdgate_log_format == "json", text)
        known = set(ctx.options.keys())
        values = {name: getattr(ctx.options, name) for name in updated & known}
        try:
            unsafe_options.check(values)
        except unsafe_options.UnsafeOption as e:
            raise exceptions.OptionsError(str(e)) from e
        if forced := unsafe_options.forced_updates(values):
            ctx.options.update(**forced)
        if "holdgate_config" in updated and not ctx.options.holdgate_config and not self._running:
            # mitmproxy configures an addon with every default before the command line is
            # applied, and rolls a refused value back to the previous one: the embedded
            # default is loaded only if nothing else is by the time the proxy runs.
            updated = updated - {"holdgate_config"}
        if "holdgate_config" in updated:
            path = Path(ctx.options.holdgate_config) if ctx.options.holdgate_config else None
            prepared, self._prepared = self._prepared, None
            if prepared is not None and path == prepared[0].path:
                config, loaded = prepared
            else:
                try:
                    config = load_config(path)
                    loaded = self._load_policy(config)
                except (SourceError, SourceErrors) as e:
                    raise exceptions.OptionsError(f"holdgate configuration is invalid:\n{e}") from e
            try:
                archive = ArchiveSettings.from_dict(
                    config.raw.get("archive"), config.path.parent, config.state_dir
                )
            except ArchiveSettingsError as e:
                raise exceptions.OptionsError(f"holdgate configuration is invalid: {e}") from e
            # A listener that cannot start stops the start here, before anything is written.
            listeners = fixed_listeners(
                config, ctx.options.holdgate_operations_port, ctx.options.holdgate_approvals_port
            )
            worker = workers.current()
            # Workers share their ports (the parent checked them before starting any).
            if not self._running and worker is None and (busy := busy_listener(listeners)):
                raise exceptions.OptionsError(busy)
            name = worker.name(config.name) if worker is not None else config.name
            if worker is not None:  # one archive chain and one spool per worker
                archive = dataclasses.replace(
                    archive, spool=archive.spool / f"worker-{worker.index}"
                )
            try:
                state_store = StateStoreSettings.from_config(
                    config.raw.get("state_store"), os.environ, config.path.parent
                )
            except ValueError as e:
                raise exceptions.OptionsError(f"holdgate configuration is invalid: {e}") from e
            if state_store is not None and self.approvals.state is None:
                self.approvals.state = StateStore(state_store, name)
            self.approvals.serve_page = worker is None or worker.first
            self.config, self.loaded = config, loaded
            # Responses reach the archive masked; request bodies are noted masked (below).
            self.archive.masked_by_gateway = True
            self.archive.configure_settings(archive, name)
            try:
                self.approvals.configure_from(config, ctx.options.holdgate_approvals_port)
            except ValueError as e:
                raise exceptions.OptionsError(f"holdgate configuration is invalid: {e}") from e
            token = admin_token(config.state_dir)
            self.auth.directory = config.agents.with_reaper(token)
            self.ownership.configure_from(config, token)
            ensure_ca(config.certs_dir)
            self._apply_mitmproxy_options()
            for warning in loaded.warnings:
                log.warning("holdgate: %s", warning)
            log.info(
                "holdgate: %d rules from %d files, %d targets (config %s)",
                len(loaded.policy.rules),
                len(loaded.files),
                len(config.targets),
                config.path,
            )
        if "termlog_verbosity" in updated:
            # A line per allowed request costs about a tenth of the gateway's time per request
            # (a log record and a terminal write): written only at debug verbosity.
            self.log_allowed = ctx.options.termlog_verbosity == "debug"
        if "holdgate_reload_interval" in updated:
            try:
                self.reload_interval = float(ctx.options.holdgate_reload_interval)
            except ValueError:
                self.reload_interval = -1.0
            if not 0 <= self.reload_interval < 86400:
                raise exceptions.OptionsError(
                    f"holdgate_reload_interval: {ctx.options.holdgate_reload_interval!r} is not "
                    "a number of seconds >= 0"
                )

    def prepare(self, config: Config) -> None:
        """Load the policy before mitmproxy starts (`holdgate run`), so it is read only once.

        Raises SourceError(s) as `load_policy` does; the `holdgate_config` option naming the
        same file then uses this result.
        """
        self._prepared = (config, self._load_policy(config))

    def _load_policy(self, config: Config) -> LoadedPolicy:
        files = config.rule_files()
        self.mask_key = mask_key(config.state_dir)
        loaded = load_tested_policy(files, config, compile_filter, self.mask_key)
        self._fingerprint = _fingerprint([*files, *config.rule_paths])
        return loaded

    def _apply_mitmproxy_options(self) -> None:
        assert self.config is not None
        # Held safe here too: the forced options may not be set yet when configure first runs.
        updates: dict[str, Any] = dict(unsafe_options.FORCED)
        if not ctx.options.body_size_limit:
            # Nothing unbounded: what one flow may make the gateway buffer.
            updates["body_size_limit"] = request_limits.DEFAULT_BODY_SIZE_LIMIT
        if ctx.options.confdir == "~/.mitmproxy":
            updates["confdir"] = str(self.config.certs_dir)
        client_certs = self._client_cert_dir()
        if client_certs is not None:
            updates["client_certs"] = str(client_certs)
        bundle = self._upstream_ca_bundle()
        if bundle is not None:
            updates["ssl_verify_upstream_trusted_ca"] = str(bundle)
        ctx.options.update(**updates)

    def _client_cert_dir(self) -> Path | None:
        """Upstream mTLS: mitmproxy picks `<server name>.pem` (certificate and key) from a directory."""
        assert self.config is not None
        targets = [t for t in self.config.targets if t.credential and t.credential.client_cert]
        if not targets:
            return None
        directory = self.config.state_dir / "client-certs"
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        for t in targets:
            assert t.credential is not None and t.credential.client_cert is not None
            pem = t.credential.client_cert.read_bytes()
            if t.credential.client_key is not None:
                pem = pem.rstrip(b"\n") + b"\n" + t.credential.client_key.read_bytes()
            hosts = [t.upstream.host] if t.upstream else [h.split(":")[0] for h in t.hosts]
            for host in hosts:
                write_private(directory / f"{host}.pem", pem)
        return directory

    def _upstream_ca_bundle(self) -> Path | None:
        """One PEM bundle of every target's upstream CA (mitmproxy verifies with one bundle)."""
        assert self.config is not None
        cas = [t.ca for t in self.config.targets if t.ca is not None] + self.extra_upstream_cas
        if not cas:
            return None
        if any(
            t.ca is None and t.upstream
            for t in self.config.targets
            if t.name not in self.upstream_overrides
        ):
            with contextlib.suppress(ImportError):
                import certifi

                cas.append(Path(certifi.where()))
        state = self.config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        data = b"".join(p.read_bytes().rstrip(b"\n") + b"\n" for p in cas)
        fd, tmp = tempfile.mkstemp(dir=state, prefix=".upstream-ca-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        target = state / "upstream-ca.pem"
        os.replace(tmp, target)
        return target

    def proxy_address(self) -> str:
        """host:port where agents reach this gateway."""
        return proxy_address()

    def set_upstream(self, target: str, upstream: Upstream, ca: Path | None) -> None:
        """Route a target to an upstream known only at run time (the sandbox)."""
        self.upstream_overrides[target] = upstream
        if ca is not None:
            self.extra_upstream_cas.append(ca)
            self._apply_mitmproxy_options()

    async def running(self) -> None:
        self._running = True
        if self.config is None:
            ctx.options.update(holdgate_config=str(embedded_default()))
        if self.reload_interval > 0 and self._reload_task is None:
            self._reload_task = asyncio.create_task(self._watch_rules())
        if self.config is not None:
            await self._start_operations(self.config)
            proxy_url = f"http://{proxy_address()}"
            path = proxy_url_file(self.config.state_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(proxy_url + "\n")
            self.ownership.start_reaper(proxy_url)

    async def _start_operations(self, config: Config) -> None:
        """/healthz, /readyz and /metrics, whatever else is configured."""
        if self.operations is not None:
            return
        host, port = operations_settings(
            config.raw.get("operations"), ctx.options.holdgate_operations_port
        )
        worker = workers.current()
        if worker is not None and port > 0:
            port += worker.index  # each worker its own /metrics: one port each
        server = OperationsServer(
            self.metrics.registry,
            {
                "policy": self._policy_problem,
                "archive": self._archive_problem,
                "approvals": self.approvals.channel_problems,
                "state_store": self.approvals.state_store_problem,
            },
        )
        url = await server.listen(host, port, OPERATIONS_ENDPOINTS)
        if not url:
            return
        self.operations = server
        if worker is None or worker.first:
            operations_url_file(config.state_dir).write_text(url + "\n")
        log.info("holdgate operations listening at %s (/healthz, /readyz, /metrics)", url)

    async def _policy_problem(self) -> str:
        return "" if self.loaded is not None else "no policy loaded"

    async def _archive_problem(self) -> str:
        if self.archive.can_record():
            return ""
        writer = self.archive.writer
        return writer.last_error if writer is not None else "the archive is not running"

    async def done(self) -> None:
        if self.operations is not None:
            await self.operations.stop()
            self.operations = None
        self.ownership.stop_reaper()
        if self._reload_task is not None:
            self._reload_task.cancel()
            self._reload_task = None

    async def _watch_rules(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval)
            await self.reload_if_changed()

    async def reload_if_changed(self) -> bool:
        """Re-read the rules if any file changed; keep the last good policy on error."""
        if self.config is None:
            return False
        files = self.config.rule_files()
        fingerprint = _fingerprint([*files, *self.config.rule_paths])
        if fingerprint == self._fingerprint:
            return False
        self._fingerprint = fingerprint
        try:
            # Off the event loop: a large rule set takes seconds to validate and compile.
            loaded = await asyncio.to_thread(
                load_tested_policy, files, self.config, compile_filter, self.mask_key
            )
        except (SourceError, SourceErrors) as e:
            self.metrics.rule_reloads.labels("refused").inc()
            log.error("holdgate: rule change refused, the last good policy stays in force:\n%s", e)
            return False
        self.metrics.rule_reloads.labels("applied").inc()
        self.loaded = loaded
        log.info(
            "holdgate: rules reloaded: %d rules from %d files", len(loaded.policy.rules), len(files)
        )
        return True

    # --- hooks -------------------------------------------------------------------------------

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        """Authenticate the agent, and refuse tunnels to undeclared hosts when the default is deny."""
        if flow.response:
            return
        if self.config is None:
            _unconfigured(flow)
            return
        if not await self.auth.check_connect(flow):
            return
        host, port = flow.request.host, flow.request.port
        if self.config.target_for(host, port) is None and self.config.default == "deny":
            message = f"holdgate: {host}:{port} is not a declared target; default deny"
            flow.response = http.Response.make(
                403, message.encode(), {"Content-Type": "text/plain"}
            )
            identity = self.auth.connection_identity(flow)
            flow.metadata[METADATA_KEY] = {
                "request": {
                    "method": "CONNECT",
                    "host": host,
                    "port": port,
                    "path": "",
                    "target": None,
                    "identity": identity.as_dict() if identity else None,
                },
                "decision": {"action": "deny", "rule": None, "reason": message},
            }
            flow.comment = printable(
                f"deny · default · {identity.agent if identity else 'anonymous'}: "
                f"CONNECT {host}:{port} (not a declared target)"
            )
            log.info("deny CONNECT %s:%d: not a declared target", printable(host, 300), port)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if self.config is None or self.loaded is None:
            _unconfigured(flow)  # no policy is no permission
            return
        identity = await self.auth.identity_for(flow)
        if flow.response:  # 407: no or bad agent credentials; nothing goes upstream
            return  # ProxyAuth recorded what was asked, by whom it claimed to be, and why
        facts = self.facts_for(flow, identity)
        if too_large := _too_large(flow.request, facts):
            facts = dataclasses.replace(facts, problem=too_large)
            decision = Decision(Action.DENY, None, f"refused: {too_large}")
            self._record(flow, facts, decision)
            self._refuse(flow, facts, decision.reason, decision, code=413)
            return
        if facts.kube is not None and flow.request.raw_content:
            # The gateway owns holdgate.dev/* metadata: what an agent sent is dropped (or the
            # request refused when it cannot be), before the decision and any hold.
            sent = flow.request.raw_content
            if foreign := self.ownership.drop_foreign_metadata(flow.request, facts):
                facts = dataclasses.replace(facts, problem=foreign)
            elif flow.request.raw_content is not sent:
                facts = self.facts_for(flow, identity)
        review = self_review(facts) if facts.target is not None and not facts.problem else ""
        if review:
            decision, answer = self._review_decision(facts, review)
        else:
            decision = self.loaded.policy.decide(facts, self.config)
        if decision.action is not Action.DENY and (
            upgrade := self._unmaskable_upgrade(flow, facts)
        ):
            decision = Decision(Action.DENY, None, upgrade)
        self._record(flow, facts, decision)
        if review:
            flow.metadata[METADATA_KEY]["access_review"] = answer
        if decision.action is not Action.DENY and (
            why := self.archive.refusal_reason(
                flow.metadata[METADATA_KEY]["request"], str(decision.action)
            )
        ):
            # No audit, no action: privileged requests wait until the archive can record them.
            log.error("refusing %s: %s", _describe(facts), printable(why))
            refused = Decision(Action.DENY, None, why)
            # The record says what happened (refused), and what the rules had decided.
            flow.metadata[METADATA_KEY]["decision"] = {
                **refused.as_dict(),
                "rules_decided": decision.as_dict(),
            }
            self.metrics.requests.labels(str(Action.DENY), "", "enforce").inc()
            self.metrics.archive_refusals.inc()
            self._refuse(flow, facts, why, decision)
            return
        counted = decision.would or decision
        self.metrics.requests.labels(
            str(counted.action),
            counted.rule.id if counted.rule else "",
            "audit" if decision.would is not None else "enforce",
        ).inc()
        if decision.action is Action.ALLOW:
            if review and self._answer_review(flow, facts, answer):
                return
            self._route(flow, facts, decision.rule)
        elif decision.action is Action.DENY:
            self._refuse(flow, facts, decision.reason, decision)
        else:
            await self._hold(flow, facts, decision)

    def _review_decision(self, facts: RequestFacts, review: str) -> tuple[Decision, dict[str, Any]]:
        """A self-review (`kubectl auth can-i`), answered from the policy for the agent."""
        assert self.loaded is not None and self.config is not None
        return decide_review(self.loaded.policy, self.config, facts, review)

    def _answer_review(
        self, flow: http.HTTPFlow, facts: RequestFacts, answer: dict[str, Any]
    ) -> bool:
        """Answer a self-review the gateway decides alone; else ask the upstream for JSON (the
        gateway reads and amends its answer) and remember the facts for the response."""
        status = answer.get("status")
        if status is None:
            flow.request.headers["Accept"] = "application/json"
            self._reviews[flow.id] = facts
            return False
        review = {
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": answer["spec"],
            "status": status,
        }
        flow.response = http.Response.make(
            201, json.dumps(review).encode(), {"Content-Type": "application/json"}
        )
        return True

    def _amend_review(self, flow: http.HTTPFlow, meta: dict[str, Any]) -> None:
        """The upstream's answer to a self-review, with the gateway's part (fails closed)."""
        facts = self._reviews.pop(flow.id, None)
        answer = meta.get("access_review") or {}
        response = flow.response
        if facts is None or response is None or response.status_code not in (200, 201):
            return
        if self.loaded is None or self.config is None:
            return
        try:
            review = json.loads(response.get_content(strict=False) or b"")
            status = review["status"] if isinstance(review, dict) else None
            if not isinstance(status, dict):
                raise ValueError("no status")
        except (ValueError, KeyError, TypeError):
            status = None
            review = {"kind": answer.get("kind"), "spec": answer.get("spec")}
        if answer.get("kind") == RULES_REVIEWS:
            if status is None:  # a rules list the gateway cannot read is not passed on
                status = {
                    "incomplete": True,
                    "evaluationError": "holdgate: unreadable upstream answer",
                }
            namespace = str((answer.get("spec") or {}).get("namespace") or "")
            status = filter_rules(self.loaded.policy, self.config, facts, namespace, status)
        elif status is None:
            return  # the upstream's answer stands: the gateway already allows the asked request
        else:
            status = with_note(status, str(answer.get("note") or ""))
        review["status"] = status
        response.headers["Content-Type"] = "application/json"
        response.headers.pop("Content-Encoding", None)
        response.content = json.dumps(review).encode()

    async def _hold(self, flow: http.HTTPFlow, facts: RequestFacts, decision: Decision) -> None:
        rule = decision.rule.id if decision.rule else "default"
        if not self.approvals.enabled or decision.rule is None:
            self._refuse(flow, facts, f"{NO_APPROVAL_CHANNEL} (rule {rule})", decision)
            return
        meta = flow.metadata[METADATA_KEY]
        covering = await self.approvals.window_covers(flow, facts)
        if covering is not None:
            meta["hold"] = {"state": "approved", "window_of": covering}
            flow.comment += f"; covered by the approval window of hold {covering}"
            log.info(
                "allow %s: covered by the approval window of hold %s", _describe(facts), covering
            )
            self._route(flow, facts, decision.rule, exact=True)
            return
        if decision.rule.require_reason and not flow.request.headers.get(REASON_HEADER, "").strip():
            message = (
                f"rule {rule} needs a reason before anyone is asked: send the header "
                f"{REASON_HEADER}: <why this request> (e.g. curl -H '{REASON_HEADER}: ticket "
                "OPS-42', or a client's default headers) and try again"
            )
            meta["hold"] = {"state": "refused", "reason": "no reason given"}
            log.info("refusing to hold %s: no %s", _describe(facts), REASON_HEADER)
            self._refuse(flow, facts, message, decision)
            return
        if too_many := self.approvals.over_limit(facts.identity.agent if facts.identity else ""):
            # Every hold notifies reviewers: an agent cannot flood them. 429 says "later".
            meta["hold"] = {"state": "refused", "reason": too_many}
            log.info("refusing to hold %s: %s", _describe(facts), too_many)
            self._refuse(flow, facts, too_many, decision, code=429)
            if flow.response is not None:
                flow.response.headers["Retry-After"] = str(HOLD_RETRY_AFTER)
            return
        followup = self.ownership.followup_for(facts, flow.request, decision.rule)
        hold = await self.approvals.hold(
            flow, facts, decision, self._shown_masks(facts), followup=followup
        )
        meta["hold"] = hold_record(hold)
        flow.comment = (
            f"{_headline(str(hold.state), decision, facts)} · hold {hold.id}: {_describe(facts)}"
            f" ({hold.reason})"
        )
        log.info(
            "hold %s %s: %s: %s",
            hold.id,
            hold.state,
            _describe(facts),
            printable(hold.reason),
            extra={"holdgate": _log_fields(facts, str(hold.state), decision, hold.id)},
        )
        if hold.state is HoldState.APPROVED:
            self._route(flow, facts, decision.rule, exact=True)
            return
        message = f"{hold.reason} (rule {rule}, hold {hold.id})"
        self._refuse(flow, facts, message, decision)

    async def response(self, flow: http.HTTPFlow) -> None:
        """Record what agents created (and deleted) in the ledger, then mask what goes back."""
        meta = flow.metadata.get(METADATA_KEY, {})
        if flow.id in self._reviews:
            self._amend_review(flow, meta)
        request_facts = meta.get("request") or {}
        kube = request_facts.get("kubernetes")
        if kube and request_facts.get("target"):
            await self.ownership.after_response(flow, request_facts["target"], kube)
        masked = self.masking.response(flow)
        if masked is not None:
            meta["masking"] = masked

    def error(self, flow: http.HTTPFlow) -> None:
        self.masking.forget(flow)
        self._reviews.pop(flow.id, None)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Let watches and followed logs stream through live instead of being buffered."""
        if flow.response is None or flow.response.stream:
            return
        facts = flow.metadata.get(METADATA_KEY, {}).get("request", {})
        kube = facts.get("kubernetes") or {}
        query = flow.request.query if "?" in flow.request.path else {}
        content_type = flow.response.headers.get("content-type", "")
        streaming = (
            kube.get("verb") == "watch"
            or query.get("follow") in ("true", "1")
            or query.get("watch") in ("true", "1")
            or content_type.startswith("text/event-stream")
        )
        if streaming:
            flow.response.stream = True
        self.masking.responseheaders(flow, streaming)

    # --- helpers -----------------------------------------------------------------------------

    def facts_for(self, flow: http.HTTPFlow, identity: Identity | None = None) -> RequestFacts:
        """Classify a flow's request, by the one authority its names agree on (else refused)."""
        assert self.config is not None
        request = flow.request
        problem = ""
        try:
            authority = request_authority(flow)
        except AuthorityMismatch as e:
            problem = f"the request's destination is ambiguous: {e}"
            authority = Authority(request.host.lower(), request.port)
        facts = build_facts(
            self.config,
            method=request.method,
            host=authority.host,
            port=authority.port,
            path_and_query=request.path,
            content_type=request.headers.get("content-type", ""),
            content_encoding=request.headers.get("content-encoding", ""),
            body=request.raw_content or b"",
            identity=identity,
            headers=request.headers.items(multi=True),
            problem=problem,
            flow=flow,
        )
        target = facts.target
        strip_headers(
            request.headers, kubernetes=target is not None and target.kind is TargetKind.KUBERNETES
        )
        return facts

    def _route(
        self,
        flow: http.HTTPFlow,
        facts: RequestFacts,
        rule: Rule | None = None,
        exact: bool = False,
    ) -> None:
        """Send an allowed request to its target's upstream, with the target's credential;
        `exact`: an approved request, whose body goes exactly as the reviewers saw it."""
        target = facts.target
        if target is None:
            return
        if target.kind is TargetKind.KUBERNETES:
            self.ownership.before_upstream(flow, facts, rule, exact=exact)
        if self.loaded is not None:
            self.masking.prepare(flow, facts, self.loaded.masking.for_request(facts))
        if target.credential is not None:
            try:
                authorization = target.credential.authorization()
            except CredentialUnavailable as e:
                log.error("target %s: upstream credential unavailable: %s", target.name, e)
                decision = Decision(Action.DENY, None, "upstream credential unavailable")
                self._refuse(
                    flow, facts, "the gateway's upstream credential is unavailable", decision
                )
                return
            # The agent's own credential never goes upstream.
            flow.request.headers.pop("Authorization", None)
            if authorization is not None:
                flow.request.headers["Authorization"] = authorization
        upstream = self.upstream_overrides.get(target.name) or target.upstream
        if upstream is None:
            return
        # The record shows what the agent asked for; where it really went is in the metadata.
        meta = flow.metadata.setdefault(METADATA_KEY, {})
        meta["asked"] = {
            "scheme": flow.request.scheme,
            "host": flow.request.host,
            "port": flow.request.port,
        }
        meta["upstream"] = f"{upstream.scheme}://{upstream.host}:{upstream.port}"
        flow.request.scheme = upstream.scheme
        flow.request.host = upstream.host
        flow.request.port = upstream.port

    def _unmaskable_upgrade(self, flow: http.HTTPFlow, facts: RequestFacts) -> str:
        """Why a WebSocket upgrade must be refused: its messages would have to be masked.

        exec, attach and portforward carry a process's streams, not API objects; any other
        WebSocket (a watch, a proxied service) under a masking rule or the Secret built-ins
        would pass messages the gateway cannot mask, so it is refused before it opens.
        """
        if flow.request.headers.get("upgrade", "").lower() != "websocket":
            return ""
        if facts.kube is not None and facts.kube.connects:
            return ""
        assert self.loaded is not None
        if not self.loaded.masking.for_request(facts).active:
            return ""
        return (
            "WebSocket refused: responses to this request are masked, and WebSocket messages "
            "cannot be; use a plain HTTP request (a watch streams as chunked JSON)"
        )

    def _shown_masks(self, facts: RequestFacts) -> MaskSet:
        """Masks for what reviewers see of a request body: the Secret built-ins always apply."""
        assert self.loaded is not None
        masks = self.loaded.masking.for_request(facts).masks
        return masks.merge([KUBERNETES_SECRET_MASKS])

    def _refuse(
        self,
        flow: http.HTTPFlow,
        facts: RequestFacts,
        message: str,
        decision: Decision,
        code: int = 403,
    ) -> None:
        kubernetes = facts.target is not None and facts.target.kind is TargetKind.KUBERNETES
        answer = refusal(
            message,
            kubernetes=kubernetes,
            code=code,
            kube=facts.kube,
            rule=decision.rule.id if decision.rule else None,
        )
        flow.response = http.Response.make(answer.status, answer.body, answer.headers)

    def _record(self, flow: http.HTTPFlow, facts: RequestFacts, decision: Decision) -> None:
        flow.metadata[METADATA_KEY] = {"request": facts.as_dict(), "decision": decision.as_dict()}
        if flow.request.raw_content and self.loaded is not None:
            # The archive stores request bodies only as the gateway's masks render them.
            masked = mask_request_body(
                flow.request.headers.get("content-type", ""),
                flow.request.raw_content,
                self._shown_masks(facts),
                kind=kind_hint(facts),
            )
            self.archive.note_request_body(flow, masked.body, masked.content_type)
        what = _describe(facts)
        if decision.would is not None:  # audit mode: what would have happened, and it passes
            outcome = f"would {decision.would.action}"
            flow.comment = f"{_headline(outcome, decision.would, facts)}: {what} (audit mode)"
            log.info(
                "audit: %s %s %s%s: %s",
                outcome,
                facts.method,
                facts.target.name + " " if facts.target else "",
                what,
                printable(decision.would.reason),
                extra={"holdgate": _log_fields(facts, outcome, decision.would)},
            )
            return
        flow.comment = f"{_headline(str(decision.action), decision, facts)}: {what}"
        if decision.action is Action.ALLOW and not self.log_allowed:
            return  # counted in the metrics and recorded in the archive
        log.log(
            logging.DEBUG if decision.action is Action.ALLOW else logging.INFO,
            "%s %s %s%s: %s",
            decision.action,
            facts.method,
            facts.target.name + " " if facts.target else "",
            what,
            printable(decision.reason),
            extra={"holdgate": _log_fields(facts, str(decision.action), decision)},
        )


def mask_key(state_dir: Path) -> bytes:
    """The gateway's secret for keyed-hash masks: $HOLDGATE_MASK_KEY, else a 0600 file."""
    if os.environ.get("HOLDGATE_MASK_KEY"):
        return os.environ["HOLDGATE_MASK_KEY"].encode()
    return secret_file(state_dir / "mask-key", lambda: secrets.token_hex(32)).encode()


def _unconfigured(flow: http.HTTPFlow) -> None:
    flow.response = http.Response.make(
        403,
        b"holdgate: no configuration is loaded; nothing is allowed\n",
        {"Content-Type": "text/plain"},
    )


def _too_large(request: http.Request, facts: RequestFacts) -> str:
    """Why a request body is over its target's limit ("" when it is not)."""
    body = request.raw_content
    if not body or facts.target is None:
        return ""
    target = facts.target
    limit = target.max_request_body
    if limit is None:
        limit = request_limits.MAX_REQUEST_BODY[str(target.kind)]
    if len(body) <= limit:
        return ""
    return f"request body of {len(body)} bytes is over target {target.name}'s limit of {limit}"


def request_authority(flow: http.HTTPFlow) -> Authority:
    """The one host:port a flow's names (CONNECT, SNI, Host, :authority) agree on."""
    request = flow.request
    hosts = request.headers.get_all("host")
    if len(hosts) > 1:
        raise AuthorityMismatch("more than one Host header")
    return agreed_authority(
        scheme=request.scheme,
        connect_host=request.host,
        connect_port=request.port,
        sni=flow.client_conn.sni if flow.client_conn.tls else None,
        host_header=hosts[0] if hosts else None,
        uri_authority=request.authority or None,
    )


def proxy_address() -> str:
    """host:port where agents reach the running proxy (listen_port may be 0; 0.0.0.0 shown as loopback)."""
    host = ctx.options.listen_host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    server = ctx.master.addons.get("proxyserver")
    addrs = server.listen_addrs() if server is not None else []
    port = addrs[0][1] if addrs else ctx.options.listen_port or 8080
    return f"{host}:{port}"


def fixed_listeners(
    config: Config, operations_port: int = -1, approvals_port: int = -1
) -> list[tuple[str, str, int]]:
    """(what, host, port) of the fixed ports holdgate itself listens on (the `--set` overrides
    of `holdgate_operations_port` and `holdgate_approvals_port` applied; port 0 is any)."""
    host, port = operations_settings(config.raw.get("operations"), operations_port)
    out = [(OPERATIONS_ENDPOINTS, host, port)]
    approvals = config.approvals
    if approvals is not None and approvals.page_host is not None:
        page_port = approvals.page_port_or(approvals_port)
        out.append((APPROVALS_PAGE, approvals.page_host, page_port))
    return [entry for entry in out if entry[2]]


def _log_fields(
    facts: RequestFacts, outcome: str, decision: Decision, hold: str = ""
) -> dict[str, Any]:
    """The structured fields of a decision's log line (`--log-format json`)."""
    kube = facts.kube
    identity = facts.identity
    resource = ""
    if kube is not None and kube.resource_request:
        resource = kube.resource + (f"/{kube.subresource}" if kube.subresource else "")
    return {
        "agent": identity.agent if identity else "",
        "run_id": identity.run_id if identity else "",
        "target": facts.target.name if facts.target else "",
        "verb": kube.verb if kube is not None else facts.method,
        "resource": resource,
        "namespace": kube.namespace if kube is not None else "",
        "name": kube.name if kube is not None else "",
        "decision": outcome,
        "rule": decision.rule.id if decision.rule else "",
        "hold": hold,
    }


def _headline(outcome: str, decision: Decision, facts: RequestFacts) -> str:
    """What an auditor scans a flow list for: outcome · rule · agent (the comment's start)."""
    rule = decision.rule.id if decision.rule else "default"
    agent = facts.identity.agent if facts.identity else "anonymous"
    return printable(f"{outcome} · {rule} · {agent}", 300)


def _describe(facts: RequestFacts) -> str:
    """One line for the log and the flow's comment: outside text escaped, length bounded."""
    kube = facts.kube
    if kube is None:
        return printable(f"{facts.method} {facts.host}{facts.path}")
    if not kube.resource_request:
        return printable(f"{kube.verb} {kube.path}")
    resource = kube.resource + (f"/{kube.subresource}" if kube.subresource else "")
    where = f" -n {kube.namespace}" if kube.namespace else ""
    name = f" {kube.name}" if kube.name else ""
    command = f" -- {' '.join(facts.exec.command)}" if facts.exec and facts.exec.command else ""
    return printable(f"{kube.verb} {resource}{name}{where}{command}")


def _addons() -> list[Any]:
    from holdgate.sandbox.addon import Sandbox

    gateway = Gateway()
    # The archive comes last: it records flows after masking, streaming and holds.
    return [gateway, gateway.approvals, Sandbox(gateway), gateway.archive]


addons = _addons()
