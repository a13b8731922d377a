"""mitmproxy options that would switch enforcement off: refused by name, or held at a safe value.

Every option of mitmproxy 12.2 was reviewed (`holdgate run -- --options`, `mitmdump
--options`). Those below let traffic skip the addons, stream bodies past the masker, weaken
upstream verification, write flows outside the audit archive, or copy one request's
credentials onto another. The gateway refuses them at start (and at any later change) with
the option's name and the reason; the two in `FORCED` are held at their safe value instead,
since mitmproxy's defaults are the unsafe ones. The rest (TLS versions, timeouts, listen
address, `block_*`, `anticache`, ...) cannot take a request around a decision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Unsafe:
    """An option and the values the gateway accepts for it."""

    accepts: Callable[[Any], bool]
    safe: str
    why: str


def _empty(value: Any) -> bool:
    return not value


def _modes(value: Any) -> bool:
    return all(m == "regular" or str(m).startswith("upstream:") for m in value or ["regular"])


UNSAFE: Mapping[str, Unsafe] = {
    "ignore_hosts": Unsafe(
        _empty, "empty", "matching connections would pass uninspected: no decision, no archive"
    ),
    "allow_hosts": Unsafe(
        _empty, "empty", "other hosts' connections would pass uninspected: no decision, no archive"
    ),
    "tcp_hosts": Unsafe(
        _empty, "empty", "matching connections would be relayed as raw TCP, never decided"
    ),
    "udp_hosts": Unsafe(
        _empty, "empty", "matching connections would be relayed as raw UDP, never decided"
    ),
    "ssl_insecure": Unsafe(
        lambda v: v is False,
        "false",
        "upstream certificates would not be verified: an injected credential could reach an "
        "impostor",
    ),
    "stream_large_bodies": Unsafe(
        lambda v: v is None,
        "unset",
        "large bodies would stream past the masker to the agent and into the archive unmasked",
    ),
    "websocket": Unsafe(
        lambda v: v is True,
        "true",
        "WebSocket messages would be relayed without masking or archiving",
    ),
    "validate_inbound_headers": Unsafe(
        lambda v: v is True,
        "true",
        "malformed headers would be accepted (request smuggling past the decision)",
    ),
    "mode": Unsafe(
        _modes,
        "regular (or upstream:URL)",
        "other modes choose the destination differently from what the gateway decides on",
    ),
    "proxyauth": Unsafe(
        lambda v: v is None,
        "unset",
        "holdgate authenticates agents itself (config `identity:`); mitmproxy's proxyauth "
        "would take the credentials first",
    ),
    "server_replay": Unsafe(_empty, "empty", "answers from a file would bypass the upstream"),
    "client_replay": Unsafe(
        _empty, "empty", "requests from a file would be sent without an agent's identity"
    ),
    "save_stream_file": Unsafe(
        lambda v: v is None,
        "unset",
        "flows would be written unmasked (with injected credentials) outside the audit archive",
    ),
    "hardump": Unsafe(
        _empty,
        "empty",
        "flows would be written unmasked (with injected credentials) outside the audit archive",
    ),
    "flow_detail": Unsafe(
        lambda v: v <= 1,
        "0 or 1",
        "higher levels print headers and bodies (injected credentials, unmasked request "
        "bodies) to the log",
    ),
    "stickyauth": Unsafe(
        lambda v: v is None, "unset", "one request's Authorization header would be sent on others"
    ),
    "stickycookie": Unsafe(
        lambda v: v is None, "unset", "one request's cookies would be sent on others"
    ),
}

# mitmproxy's defaults here are unsafe for a gateway: held at these values.
FORCED: Mapping[str, Any] = {
    # Connect only once a request is decided and routed (virtual target names do not resolve,
    # and an undecided tunnel must not open a connection anywhere).
    "connection_strategy": "lazy",
    # A tunnel that speaks neither TLS nor HTTP, or a non-WebSocket 101 upgrade (SPDY), would
    # be relayed as raw bytes: nothing to decide on, mask or archive. Refused instead.
    "rawtcp": False,
}


class UnsafeOption(ValueError):
    """An option set to a value that would switch enforcement off."""


def check(values: Mapping[str, Any]) -> None:
    """Raise UnsafeOption for the first option in `values` whose value is unsafe."""
    for name in sorted(values.keys() & UNSAFE.keys()):
        rule = UNSAFE[name]
        value = values[name]
        if not rule.accepts(value):
            raise UnsafeOption(
                f"holdgate refuses mitmproxy option {name}={value!r}: {rule.why} "
                f"(safe: {rule.safe})"
            )


def forced_updates(values: Mapping[str, Any]) -> dict[str, Any]:
    """The forced options whose current value differs from the safe one."""
    return {name: safe for name, safe in FORCED.items() if name in values and values[name] != safe}
