"""One authority per request: the names a request carries for its destination must agree.

An agent names where a request goes up to four times: the CONNECT authority (or, for a plain
proxied request, the absolute-form URI), the TLS SNI, the Host header and HTTP/2's
`:authority` (or an absolute-form URI inside a tunnel). The gateway chooses the target, its
rules and its credential from that one name, and connects only there (or to the target's
declared upstream). When the names disagree the request is refused: choosing by one and
connecting by another would let a permissive target's rules, or its credential, reach a
host they were never meant for. Pure: values in, values out.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

DEFAULT_PORTS = {"https": 443, "http": 80}
# A DNS name as clients send it (RFC 1123 labels; '_' appears in some internal names).
_NAME = re.compile(
    r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)
_MAX_NAME = 253


class AuthorityMismatch(ValueError):
    """The request's names for its destination disagree, or one of them is malformed."""


@dataclass(frozen=True, slots=True)
class Authority:
    """host:port where a request goes, host normalized (lower case, no trailing dot)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def normalize_host(host: str) -> str:
    """Lower case, one trailing dot and IPv6 brackets removed; AuthorityMismatch if malformed."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.lower()
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1]
    if not text:
        raise AuthorityMismatch("empty host name")
    if ":" in text:
        try:
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            raise AuthorityMismatch(f"malformed host {host!r}") from None
    if len(text) > _MAX_NAME or not _NAME.match(text):
        raise AuthorityMismatch(f"malformed host {host!r}")
    return text


def parse_authority(text: str, default_port: int) -> Authority:
    """`host[:port]` or `[v6][:port]` as a Host header or URI authority carries it."""
    if "@" in text:
        raise AuthorityMismatch(f"user information in the authority {text!r}")
    if text.startswith("["):
        host, sep, rest = text.partition("]")
        if not sep:
            raise AuthorityMismatch(f"malformed authority {text!r}")
        host += "]"
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and port_text is None:
            raise AuthorityMismatch(f"malformed authority {text!r}")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, None
    return Authority(normalize_host(host), _port(port_text, default_port, text))


def _port(text: str | None, default: int, whole: str) -> int:
    if text is None or text == "":
        return default
    if not text.isdigit() or len(text) > 5 or not 0 < int(text) < 65536:
        raise AuthorityMismatch(f"malformed port in {whole!r}")
    return int(text)


def agreed_authority(
    *,
    scheme: str,
    connect_host: str,
    connect_port: int,
    sni: str | None,
    host_header: str | None,
    uri_authority: str | None,
) -> Authority:
    """The one authority of a request; AuthorityMismatch when its names disagree.

    `connect_*`: the CONNECT authority (or a plain proxied request's URI host and port): where
    mitmproxy would connect. `sni`: the TLS server name, if any. `host_header`: the Host
    header. `uri_authority`: HTTP/2's `:authority` or an absolute-form URI's authority.
    """
    default_port = DEFAULT_PORTS.get(scheme.lower(), 443)
    chosen = Authority(normalize_host(connect_host), connect_port)
    if sni:
        named = normalize_host(sni)
        if named != chosen.host:
            raise AuthorityMismatch(
                f"TLS server name {named!r} differs from the tunnel's host {chosen.host!r}"
            )
    for what, text in (("Host header", host_header), ("request authority", uri_authority)):
        if not text:
            continue
        named_authority = parse_authority(text, default_port)
        if named_authority != chosen:
            raise AuthorityMismatch(
                f"{what} {named_authority} differs from the connection's {chosen}"
            )
    return chosen
