"""Archive records: one flow state made fit for the archive, serialized and described.

Credentials are masked, metadata other than holdgate's dropped, streams bounded; each flow
becomes a record in mitmproxy's native format, an index line and Kubernetes audit events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mitmproxy.net import encoding

from holdgate.archive import audit_events
from holdgate.archive.flow_format import connection_state, dumps
from holdgate.config.archive_settings import MIB

log = logging.getLogger("holdgate.archive")


MASK = b"<masked>"
# Audit events carry request and response objects up to this size; larger ones are noted.
AUDIT_OBJECT_LIMIT = 256 * 1024


def _json_line(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode() + b"\n"


def iso_time(timestamp: float | None) -> str | None:
    """UTC ISO 8601 with milliseconds, or None."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


@dataclass(slots=True)
class Captured:
    """The (already masked) body chunks of a streamed response, bounded."""

    limit: int
    data: bytearray = field(default_factory=bytearray)
    total: int = 0

    def add(self, chunk: bytes) -> None:
        """Keep what fits under the limit; count everything."""
        self.total += len(chunk)
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def truncated(self) -> bool:
        """Whether more passed than was kept."""
        return self.total > len(self.data)


@dataclass(slots=True)
class Submission:
    """One flow handed to the writer: its state snapshot and what the addon knows beside it."""

    state: dict[str, Any]
    captured: Captured | None = None
    # (body, content type) as the gateway's request masker rendered it for storage.
    request_body: tuple[bytes, str] | None = None
    waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[bool]] | None = None
    # The built-in Secret mask, for when the gateway installed no request masker.
    builtin_mask: bool = True
    # The gateway's handle for this flow when the store runs in the writer process, and
    # whether a response waits for it (acknowledged at once, others in batches).
    token: int | None = None
    urgent: bool = False
    encoded: EncodedRecord | None = None
    acked: bool = False
    failure_reported: bool = False


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """One flow as written to a segment: flow record, index line, audit event lines."""

    flow_id: str
    time: float
    flow: bytes
    index: bytes
    audit: bytes


@dataclass(frozen=True, slots=True)
class RecordOptions:
    """How flows are sanitized and described."""

    gateway: str
    mask_headers: frozenset[bytes] = frozenset()
    capture_bytes: int = MIB


CREDENTIAL_HEADERS = frozenset(
    {b"authorization", b"proxy-authorization", b"cookie", b"set-cookie", b"x-amz-security-token"}
)
_AUTH_SCHEME = re.compile(rb"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
_QUERY_SECRETS = re.compile(
    rb"(?i)([?&](?:x-amz-security-token|x-amz-signature|access_token)=)[^&#]*"
)
_WITHHELD = b'{"holdgate":"body withheld from the archive: a Secret that could not be masked"}'


def mask_header_value(name: bytes, value: bytes) -> bytes:
    """A credential header's value with the secret parts replaced (scheme and cookie names kept)."""
    lname = name.lower()
    if lname in (b"authorization", b"proxy-authorization"):
        scheme, sep, _rest = value.strip().partition(b" ")
        return scheme + b" " + MASK if sep and _AUTH_SCHEME.match(scheme) else MASK
    if lname == b"cookie":
        parts = [p.strip() for p in value.split(b";") if p.strip()]
        return b"; ".join(
            p.partition(b"=")[0].strip() + b"=" + MASK if b"=" in p else MASK for p in parts
        )
    if lname == b"set-cookie":
        first, sep, attributes = value.partition(b";")
        cookie = first.partition(b"=")[0].strip() + b"=" + MASK if b"=" in first else MASK
        return cookie + sep + attributes
    return MASK


def _mask_headers(headers: Any, extra: frozenset[bytes]) -> Any:
    if not headers:
        return headers
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname in CREDENTIAL_HEADERS:
            value = mask_header_value(name, value)
        elif lname in extra:
            value = MASK
        out.append((name, value))
    return tuple(out)


def plain(value: Any, depth: int = 0) -> Any:
    """Plain data only (what metadata promises): anything else becomes its text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if depth > 32:
        return "<too deep>"
    if isinstance(value, list | tuple):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    return str(value)


def _header(headers: Any, name: bytes) -> str | None:
    for key, value in headers or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _set_header(headers: Any, name: bytes, value: bytes) -> tuple[tuple[bytes, bytes], ...]:
    out = [(k, v) for k, v in headers or () if k.lower() != name]
    out.append((name, value))
    return tuple(out)


def _decoded(message: Mapping[str, Any] | None) -> bytes | None:
    if not message or message.get("content") is None:
        return None
    content: bytes = message["content"]
    enc = _header(message.get("headers"), b"content-encoding")
    if enc and enc.strip().lower() not in ("identity", "none"):
        try:
            decoded = encoding.decode(content, enc.strip().lower())
        except (ValueError, KeyError):
            return None
        return decoded if isinstance(decoded, bytes) else decoded.encode()
    return content


def _secret_mask(body: bytes) -> bytes:
    """Fail-closed built-in mask of Secret values in a JSON document or JSON lines."""
    if not body:
        return body
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        pass
    else:
        return json.dumps(audit_events.mask_secret_fields(doc), separators=(",", ":")).encode()
    lines = []
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            return _WITHHELD
        lines.append(json.dumps(audit_events.mask_secret_fields(obj), separators=(",", ":")))
    if not lines:
        return _WITHHELD
    return ("\n".join(lines) + "\n").encode()


def _is_secret(request: Mapping[str, Any]) -> bool:
    kube = request.get("kubernetes") or {}
    body = request.get("body") or {}
    return kube.get("resource") == "secrets" or body.get("kind") == "Secret"


def sanitize_state(
    state: dict[str, Any], options: RecordOptions, sub: Submission
) -> dict[str, Any]:
    """Make a flow state fit for the archive (in place: it is the writer's own copy).

    Credential headers and query parameters are masked, metadata other than holdgate's is
    dropped (it may hold mitmproxy's `proxyauth` password), `_backup` is dropped, streamed
    bodies and WebSocket messages are bounded, timings are added, held flows are marked.
    """
    state["backup"] = None
    metadata = state.get("metadata") or {}
    holdgate = plain(metadata.get("holdgate"))
    holdgate = holdgate if isinstance(holdgate, dict) else {}
    state["metadata"] = {"holdgate": holdgate}
    request = state.get("request")
    response = state.get("response")
    facts = holdgate.get("request") or {}
    archive_notes: dict[str, Any] = {"gateway": options.gateway}
    if request:
        request["headers"] = _mask_headers(request.get("headers"), options.mask_headers)
        request["trailers"] = _mask_headers(request.get("trailers"), options.mask_headers)
        if request.get("path"):
            request["path"] = _QUERY_SECRETS.sub(rb"\1" + MASK, request["path"])
        if sub.request_body is not None:
            body, content_type = sub.request_body
            if body != request.get("content"):
                request["content"] = body
                request["headers"] = _set_header(
                    request["headers"], b"content-type", content_type.encode("latin-1")
                )
                request["headers"] = tuple(
                    (k, v) for k, v in request["headers"] if k.lower() != b"content-encoding"
                )
                archive_notes["request_body"] = "masked"
        elif sub.builtin_mask and _is_secret(facts) and request.get("content"):
            decoded = _decoded(request)
            request["content"] = _secret_mask(decoded) if decoded is not None else _WITHHELD
            request["headers"] = tuple(
                (k, v) for k, v in request["headers"] if k.lower() != b"content-encoding"
            )
            archive_notes["request_body"] = "masked (built-in Secret mask)"
    if response:
        response["headers"] = _mask_headers(response.get("headers"), options.mask_headers)
        response["trailers"] = _mask_headers(response.get("trailers"), options.mask_headers)
        captured = sub.captured
        if captured is not None and response.get("content") is None:
            content = bytes(captured.data)
            if captured.truncated:
                content += (
                    f"\n[holdgate: stream truncated in the archive after {len(captured.data)} "
                    f"of {captured.total} bytes]\n"
                ).encode()
            response["content"] = content
            archive_notes["stream"] = {
                "captured_bytes": len(captured.data),
                "total_bytes": captured.total,
                "truncated": captured.truncated,
            }
        if sub.builtin_mask and _is_secret(facts) and response.get("content"):
            decoded = _decoded(response)
            response["content"] = _secret_mask(decoded) if decoded is not None else _WITHHELD
            response["headers"] = tuple(
                (k, v) for k, v in response["headers"] if k.lower() != b"content-encoding"
            )
    websocket = state.get("websocket")
    if websocket and websocket.get("messages"):
        kept, size = [], 0
        for message in websocket["messages"]:
            size += len(message[2])
            if size > options.capture_bytes:
                break
            kept.append(message)
        dropped = len(websocket["messages"]) - len(kept)
        if dropped:
            note = (
                f"[holdgate: {dropped} further WebSocket messages not archived "
                f"(over {options.capture_bytes} bytes)]"
            ).encode()
            last = websocket["messages"][-1]
            # (type, from_client, content, timestamp, dropped, injected): text, injected.
            kept.append((1, False, note, last[3], False, True))
            archive_notes["websocket"] = {"kept": len(kept) - 1, "dropped": dropped}
        websocket["messages"] = kept
    holdgate["timings"] = _timings(state, holdgate)
    holdgate["archive"] = archive_notes
    decision = holdgate.get("decision") or {}
    if (holdgate.get("hold") or decision.get("action") == "approve") and not state.get("marked"):
        state["marked"] = ":lock:"
    return state


def _timings(state: Mapping[str, Any], holdgate: Mapping[str, Any]) -> dict[str, Any]:
    request = state.get("request") or {}
    response = state.get("response") or {}
    websocket = state.get("websocket") or {}
    error = state.get("error") or {}
    start = request.get("timestamp_start") or state.get("timestamp_created")
    end = (
        websocket.get("timestamp_end")
        or response.get("timestamp_end")
        or error.get("timestamp")
        or request.get("timestamp_end")
    )
    timings: dict[str, Any] = {
        "request_start": start,
        "request_end": request.get("timestamp_end"),
        "response_start": response.get("timestamp_start"),
        "response_end": response.get("timestamp_end"),
    }
    if websocket:
        timings["websocket_end"] = websocket.get("timestamp_end")
    if start and end:
        timings["duration_ms"] = round((end - start) * 1000, 3)
    hold = holdgate.get("hold") or {}
    if isinstance(hold, Mapping) and hold.get("waited_seconds") is not None:
        timings["hold_seconds"] = hold["waited_seconds"]
    return timings


def _text_of(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _agent_url(request: Mapping[str, Any], facts: Mapping[str, Any]) -> str:
    scheme = _text_of(request.get("scheme")) or "https"
    host = facts.get("host") or _text_of(request.get("host"))
    port = facts.get("port") or request.get("port")
    default = 443 if scheme == "https" else 80
    where = f"{host}:{port}" if port and port != default else str(host)
    return f"{scheme}://{where}{_text_of(request.get('path'))}"


def index_entry(state: Mapping[str, Any], gateway: str) -> dict[str, Any]:
    """The index line of one archived flow: what replay filters on."""
    holdgate = (state.get("metadata") or {}).get("holdgate") or {}
    facts = holdgate.get("request") or {}
    decision = holdgate.get("decision") or {}
    hold = holdgate.get("hold") if isinstance(holdgate.get("hold"), Mapping) else None
    kube = facts.get("kubernetes") or {}
    identity = facts.get("identity") or {}
    request = state.get("request") or {}
    response = state.get("response")
    error = state.get("error")
    ts = request.get("timestamp_start") or state.get("timestamp_created")
    return {
        "id": state.get("id"),
        "time": iso_time(ts),
        "ts": ts,
        "gateway": gateway,
        "agent": identity.get("agent") or None,
        "target": facts.get("target"),
        "method": _text_of(request.get("method")),
        "url": _agent_url(request, facts),
        "status": response.get("status_code") if response else None,
        "verb": kube.get("verb"),
        "resource": kube.get("resource"),
        "subresource": kube.get("subresource") or None,
        "namespace": kube.get("namespace") or None,
        "name": kube.get("name") or None,
        "rule": decision.get("rule"),
        "decision": decision.get("action"),
        "outcome": audit_events.hold_outcome(decision, hold) or None,
        "reviewers": audit_events.reviewers_of(hold),
        "marked": state.get("marked") or "",
        "websocket": bool(state.get("websocket")),
        "error": error.get("msg") if error else None,
        "comment": state.get("comment") or "",
        **_policy_notes(holdgate, facts, kube, decision, hold),
    }


def _brief_decision(decision: Any) -> dict[str, Any] | None:
    if not isinstance(decision, Mapping):
        return None
    brief = {"action": decision.get("action"), "rule": decision.get("rule")}
    return {**brief, "default": True} if decision.get("default") else brief


def _policy_notes(
    holdgate: Mapping[str, Any],
    facts: Mapping[str, Any],
    kube: Mapping[str, Any],
    decision: Mapping[str, Any],
    hold: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """What `holdgate rules suggest` and `rules report` read beside the replay fields; only
    what a flow has, so that most lines stay short (older lines have none of it)."""
    notes: dict[str, Any] = {}
    if kube:
        notes["group"] = kube.get("api_group") or ""
        if not kube.get("resource_request", True):
            notes["nonresource"] = True
    command = (facts.get("exec") or {}).get("command")
    if command:
        notes["exec"] = [str(word) for word in command]
    if facts.get("problem"):
        notes["problem"] = True
    if facts.get("impersonates"):
        notes["impersonates"] = len(facts["impersonates"])
    if decision.get("default"):
        notes["default"] = True
    if decision.get("mode") == "audit":
        notes["mode"] = "audit"
        notes["would"] = _brief_decision(decision.get("would"))
    if "rules_decided" in decision:  # the gateway refused what the rules decided (no audit)
        notes["rules_decided"] = _brief_decision(decision["rules_decided"])
    if holdgate.get("followup_of"):
        notes["followup_of"] = holdgate["followup_of"]
    if review := (holdgate.get("access_review") or {}).get("kind"):
        notes["review"] = review  # `kubectl auth can-i`: answered by the gateway, never a rule's
    if hold:
        notes["hold"] = {
            key: hold[key]
            for key in ("id", "created_at", "expires_at", "decided_at", "window_of")
            if hold.get(key) is not None
        }
        reviews = [
            {k: r.get(k) for k in ("reviewer", "name", "approve", "at")}
            for r in hold.get("reviews") or ()
            if isinstance(r, Mapping)
        ]
        if reviews:
            notes["hold"]["reviews"] = reviews
    return notes


def _json_object(
    body: bytes | None, content_type: str | None, name: str, notes: dict[str, str]
) -> Any:
    if not body:
        return None
    if len(body) > AUDIT_OBJECT_LIMIT:
        notes[f"{name}-omitted"] = f"{len(body)} bytes, over {AUDIT_OBJECT_LIMIT}"
        return None
    if "json" not in (content_type or "") and body.lstrip()[:1] not in (b"{", b"["):
        notes[f"{name}-omitted"] = f"{content_type or 'unknown type'}, {len(body)} bytes"
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        notes[f"{name}-omitted"] = f"not JSON, {len(body)} bytes"
        return None


def audit_input(state: Mapping[str, Any], gateway: str) -> audit_events.AuditInput | None:
    """The audit-event facts of an archived flow to a kubernetes target; None for others."""
    holdgate = (state.get("metadata") or {}).get("holdgate") or {}
    facts = holdgate.get("request") or {}
    kube = facts.get("kubernetes")
    if not isinstance(kube, Mapping):
        return None
    request = state.get("request") or {}
    response = state.get("response")
    websocket = state.get("websocket")
    error = state.get("error")
    path = _text_of(request.get("path"))
    notes: dict[str, str] = {}
    streaming = audit_events.is_long_running(kube, path.partition("?")[2]) or bool(websocket)
    request_object = _json_object(
        _decoded(request), _header(request.get("headers"), b"content-type"), "request-object", notes
    )
    response_object = None
    if response and not streaming:
        response_object = _json_object(
            _decoded(response),
            _header(response.get("headers"), b"content-type"),
            "response-object",
            notes,
        )
    completed = None
    if websocket:
        completed = websocket.get("timestamp_end")
    elif response:
        completed = response.get("timestamp_end")
    if completed is None and error:
        completed = error.get("timestamp")
    peer = connection_state(state, "client_conn").get("peername")
    hold = holdgate.get("hold")
    exec_facts = facts.get("exec") or {}
    return audit_events.AuditInput(
        audit_id=str(state.get("id")),
        gateway=gateway,
        target=facts.get("target"),
        method=_text_of(request.get("method")),
        request_uri=path,
        kubernetes=kube,
        decision=holdgate.get("decision") or {},
        received=request.get("timestamp_start") or state.get("timestamp_created") or 0.0,
        hold=hold if isinstance(hold, Mapping) else None,
        identity=facts.get("identity"),
        source_ip=str(peer[0]) if peer else None,
        user_agent=_header(request.get("headers"), b"user-agent"),
        response_started=response.get("timestamp_start") if response else None,
        completed=completed,
        status_code=response.get("status_code") if response else None,
        request_object=request_object,
        response_object=response_object,
        notes=notes,
        exec_command=tuple(exec_facts.get("command") or ()),
        error=error.get("msg") if error else None,
        streaming=streaming,
    )


def describe(state: Mapping[str, Any], gateway: str) -> tuple[bytes, bytes]:
    """The index line and audit event lines of an archived flow state."""
    try:
        index = _json_line(index_entry(state, gateway))
    except Exception:
        log.exception("archive: cannot index flow %s", state.get("id"))
        index = _json_line({"id": state.get("id"), "gateway": gateway, "error": "unindexable"})
    try:
        facts = audit_input(state, gateway)
        events = audit_events.build_events(facts) if facts is not None else []
    except Exception:
        log.exception("archive: cannot build audit events for flow %s", state.get("id"))
        events = []
    return index, b"".join(_json_line(e) for e in events)


def encode(sub: Submission, options: RecordOptions) -> EncodedRecord:
    """Sanitize and serialize one submitted flow."""
    state = sanitize_state(sub.state, options, sub)
    flow = dumps(state)
    index, audit = describe(state, options.gateway)
    request = state.get("request") or {}
    ts = request.get("timestamp_start") or state.get("timestamp_created") or time.time()
    return EncodedRecord(str(state.get("id")), ts, flow, index, audit)


def fallback_record(state: Mapping[str, Any], gateway: str) -> EncodedRecord:
    """A minimal record for a flow that could not be encoded: never lose that it happened."""
    request = state.get("request") or {}
    entry = {"id": state.get("id"), "gateway": gateway, "error": "flow could not be archived"}
    for key in ("method", "host", "path"):
        entry[key] = _text_of(request.get(key))
    ts = request.get("timestamp_start") or time.time()
    return EncodedRecord(str(state.get("id")), ts, b"", _json_line(entry), b"")
