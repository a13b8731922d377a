"""One archived request as rollout reads it: an archive index line, old or new, made typed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

READ_VERBS = frozenset({"get", "list", "watch"})
# Subresources that start a process, open a tunnel or act as someone: named, never implied.
POWER_SUBRESOURCES = frozenset({"exec", "attach", "portforward", "proxy", "ephemeralcontainers"})


class Kind(StrEnum):
    """What a request does, as rules are grouped."""

    READ = "read"
    WRITE = "write"
    POWER = "power"  # exec, attach, portforward, proxies, ephemeral containers, tokens
    NONRESOURCE = "nonresource"  # /api, /version, /openapi/... on a Kubernetes target
    HTTP = "http"  # a plain HTTP target: method and path


@dataclass(frozen=True, slots=True)
class Verdict:
    """An action and the rule that took it (None: no rule)."""

    action: str
    rule: str | None
    by_default: bool = False

    @classmethod
    def of(cls, raw: Any) -> Verdict | None:
        """From an index line's `{action, rule, default}` (None when absent)."""
        if not isinstance(raw, Mapping) or not raw.get("action"):
            return None
        return cls(str(raw["action"]), raw.get("rule"), bool(raw.get("default")))


@dataclass(frozen=True, slots=True)
class Review:
    """One reviewer's answer to a hold."""

    reviewer: str
    name: str
    approve: bool
    at: float | None


@dataclass(frozen=True, slots=True)
class HoldRecord:
    """What the index keeps of a hold."""

    id: str
    created_at: float | None
    decided_at: float | None
    expires_at: float | None
    window_of: str | None
    reviews: tuple[Review, ...]

    @classmethod
    def of(cls, raw: Any) -> HoldRecord | None:
        """From an index line's `hold` (None when the line has none)."""
        if not isinstance(raw, Mapping):
            return None
        reviews = tuple(
            Review(str(r.get("reviewer") or ""), str(r.get("name") or ""), bool(r.get("approve")),
                   _number(r.get("at")))
            for r in raw.get("reviews") or ()
            if isinstance(r, Mapping)
        )  # fmt: skip
        return cls(
            id=str(raw.get("id") or ""),
            created_at=_number(raw.get("created_at")),
            decided_at=_number(raw.get("decided_at")),
            expires_at=_number(raw.get("expires_at")),
            window_of=raw.get("window_of"),
            reviews=reviews,
        )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class Observed:
    """One request an agent made (or the gateway made for it), from its index line."""

    id: str
    time: str
    ts: float
    agent: str | None
    target: str | None
    method: str
    url: str
    path: str
    verb: str | None
    group: str | None
    resource: str | None
    subresource: str | None
    namespace: str | None
    name: str | None
    nonresource: bool
    command: tuple[str, ...]
    decision: Verdict | None
    # In audit mode: what the rules decided (the request passed as allowed).
    would: Verdict | None
    # The gateway refused what the rules decided (the archive could not record it).
    rules_decided: Verdict | None
    outcome: str | None
    hold: HoldRecord | None
    followup_of: str | None
    problem: bool
    impersonates: bool
    review: bool  # a self-review (`kubectl auth can-i`): the gateway answers it, not a rule
    unindexed: bool

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> Observed:
        """From an index line; fields older lines lack are inferred where they can be."""
        url = str(entry.get("url") or "")
        verb, resource = entry.get("verb"), entry.get("resource")
        return cls(
            id=str(entry.get("id") or ""),
            time=str(entry.get("time") or ""),
            ts=_number(entry.get("ts")) or 0.0,
            agent=entry.get("agent"),
            target=entry.get("target"),
            method=str(entry.get("method") or ""),
            url=url,
            path=unquote(urlsplit(url).path) or "/",
            verb=verb,
            group=entry.get("group"),
            resource=resource,
            subresource=entry.get("subresource"),
            namespace=entry.get("namespace"),
            name=entry.get("name"),
            nonresource=bool(entry.get("nonresource")) or (bool(verb) and not resource),
            command=tuple(str(w) for w in entry.get("exec") or ()),
            decision=Verdict.of(
                {
                    "action": entry.get("decision"),
                    "rule": entry.get("rule"),
                    "default": entry.get("default"),
                }
            ),  # fmt: skip
            would=Verdict.of(entry.get("would")),
            rules_decided=Verdict.of(entry.get("rules_decided")),
            outcome=entry.get("outcome"),
            hold=HoldRecord.of(entry.get("hold")),
            followup_of=entry.get("followup_of"),
            problem=bool(entry.get("problem")),
            impersonates=bool(entry.get("impersonates")),
            review=bool(entry.get("review")),
            unindexed="error" in entry and "url" not in entry,
        )

    @property
    def kube(self) -> bool:
        """Whether the request was classified as a Kubernetes request."""
        return self.verb is not None

    @property
    def decided(self) -> Verdict | None:
        """What the rules decided: in audit mode what would have happened, else what did."""
        return self.rules_decided or self.would or self.decision

    @property
    def rule(self) -> str | None:
        """The rule that decided, enforced or not."""
        decided = self.decided
        return decided.rule if decided is not None else None

    @property
    def fell_to_default(self) -> bool:
        """No rule matched: the target's default decided (inferred for older index lines)."""
        decided = self.decided
        if decided is None or decided.rule is not None or self.target is None:
            return False
        if decided.by_default:
            return True
        # Older lines do not say; a rule-less decision that no refusal explains is the default.
        return not (
            self.problem
            or self.impersonates
            or self.followup_of
            or self.rules_decided
            or self.review
        )

    @property
    def kind(self) -> Kind:
        """Read, write, privileged, non-resource, or plain HTTP."""
        if not self.kube:
            return Kind.HTTP
        if self.nonresource:
            return Kind.NONRESOURCE
        if self.verb == "proxy" or (self.subresource or "") in POWER_SUBRESOURCES:
            return Kind.POWER
        if self.resource == "serviceaccounts" and self.subresource == "token":
            return Kind.POWER
        return Kind.READ if self.verb in READ_VERBS else Kind.WRITE

    @property
    def full_resource(self) -> str:
        """`resource/subresource` as rules name it."""
        if self.subresource:
            return f"{self.resource}/{self.subresource}"
        return str(self.resource or "")

    @property
    def bare_url(self) -> str:
        """The URL without its query: what plain HTTP rules match (a query can carry keys)."""
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))

    @property
    def what(self) -> str:
        """The request in a few words: `list pods -n sandbox`, or `GET https://...`."""
        if not self.kube:
            return f"{self.method} {self.bare_url}"
        if self.nonresource:
            return f"{self.method} {self.url}"
        text = f"{self.verb} {self.full_resource}" + (f" {self.name}" if self.name else "")
        text += f" -n {self.namespace}" if self.namespace else ""
        if self.command:
            text += " -- " + " ".join(self.command)
        return text


def observed(entries: Iterable[Mapping[str, Any]]) -> list[Observed]:
    """The index lines as typed requests, in time order."""
    return sorted((Observed.of(e) for e in entries), key=lambda o: o.ts)
