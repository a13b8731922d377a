"""The mitmproxy side of masking: ask upstream for JSON, mask buffered bodies and live streams."""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import http

from holdgate.masking.masks import (
    Masking,
    MaskSet,
    WatchMasker,
    mask_headers,
    mask_json_body,
    withheld_body,
)
from holdgate.request.facts import RequestFacts

log = logging.getLogger("holdgate")

MASKED_HEADER = "X-Holdgate-Masked"
JSON = "application/json"
_KINDS = {"secrets": "Secret", "configmaps": "ConfigMap"}


def kind_hint(facts: RequestFacts) -> str | None:
    """The kind a Kubernetes request is about, for bodies that do not say (patches)."""
    if facts.kube is None or not facts.kube.resource_request:
        return None
    return _KINDS.get(facts.kube.resource)


def json_accept(accept: str) -> str:
    """The Accept header without protobuf: kubectl asks for protobuf first, masks need JSON."""
    ranges = [r.strip() for r in accept.split(",") if r.strip()]
    kept = [r for r in ranges if "protobuf" not in r and not r.startswith("application/yaml")]
    if not any(r.split(";")[0] in (JSON, "*/*", "application/*") for r in kept):
        kept.append(JSON)
    return ",".join(kept)


class _WithheldStream:
    """A stream that cannot be masked line by line (not JSON): one notice, nothing else."""

    def __init__(self, reason: str) -> None:
        self.notice: bytes | None = withheld_body(reason) + b"\n"

    def __call__(self, chunk: bytes) -> list[bytes]:
        # Never return b"" mid-stream: mitmproxy would end the chunked body there.
        out, self.notice = self.notice, None
        return [out] if out else []


class ResponseMasking:
    """Per-flow masking state: what to mask, decided when the request was allowed."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[Masking, str | None]] = {}

    def prepare(self, flow: http.HTTPFlow, facts: RequestFacts, masking: Masking) -> None:
        """Remember the masks of an allowed request and ask upstream for plain JSON."""
        if not masking.active:
            return
        self._pending[flow.id] = (masking, kind_hint(facts))
        request = flow.request
        accept = request.headers.get("Accept", JSON)
        request.headers["Accept"] = json_accept(accept)
        if "as=Table" in accept and request.query.get("includeObject") != "Object":
            # With each row's object, cells are checked against the masked values; without,
            # every cell that could show a masked field would have to be blanked.
            request.query["includeObject"] = "Object"
        # Compressed answers cannot be masked on the fly; ask for identity.
        request.headers.pop("Accept-Encoding", None)

    def masks_for(self, flow: http.HTTPFlow) -> MaskSet | None:
        """The masks of a flow, if any."""
        entry = self._pending.get(flow.id)
        return entry[0].masks if entry else None

    def responseheaders(self, flow: http.HTTPFlow, streaming: bool) -> None:
        """Streams are masked event by event as they pass."""
        entry = self._pending.get(flow.id)
        response = flow.response
        if entry is None or response is None or not streaming:
            return
        masking, kind = entry
        content_type = response.headers.get("content-type", "")
        encoded = response.headers.get("content-encoding", "identity") not in ("", "identity")
        if content_type.startswith(JSON) and not encoded:
            response.stream = WatchMasker(masking.masks, kind=kind)
        else:
            reason = "stream is encoded" if encoded else f"{content_type or 'untyped'} stream"
            response.stream = _WithheldStream(f"cannot mask a {reason}")
            response.headers["content-type"] = JSON
            response.headers.pop("content-encoding", None)
            response.headers[MASKED_HEADER] = f"withheld; {reason}"
        self._mask_headers(response, masking.masks)

    def response(self, flow: http.HTTPFlow) -> dict[str, Any] | None:
        """Mask a buffered body (and headers); what was done goes to the flow's record."""
        entry = self._pending.pop(flow.id, None)
        response = flow.response
        if entry is None or response is None:
            return None
        masking, kind = entry
        self._mask_headers(response, masking.masks)
        if response.stream:
            return {
                "rules": list(masking.rules),
                "secret_builtins": masking.secret_builtins,
                "stream": True,
            }
        raw = response.get_content(strict=False) or b""
        if not raw:
            return {"rules": list(masking.rules), "masked": 0}
        result = mask_json_body(raw, masking.masks, kind=kind)
        response.headers.pop("content-encoding", None)
        response.content = result.body
        if result.replaced_whole:
            response.headers["content-type"] = JSON
            response.headers[MASKED_HEADER] = f"withheld; {result.reason}"
            log.info(
                "masking: %s %s: body withheld (%s)",
                flow.request.method,
                flow.request.pretty_url,
                result.reason,
            )
        elif result.masked:
            response.headers[MASKED_HEADER] = f"{result.masked} values"
        return {
            "rules": list(masking.rules),
            "secret_builtins": masking.secret_builtins,
            "masked": result.masked,
            "withheld": result.reason if result.replaced_whole else "",
        }

    def forget(self, flow: http.HTTPFlow) -> None:
        """Drop the state of a flow that ended without a response."""
        self._pending.pop(flow.id, None)

    @staticmethod
    def _mask_headers(response: http.Response, masks: MaskSet) -> None:
        if not masks.headers:
            return
        masked = mask_headers(list(response.headers.items(multi=True)), masks)
        response.headers = http.Headers([(k.encode(), v.encode()) for k, v in masked])
