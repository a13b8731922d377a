"""Agent authentication at the proxy: 407 without valid credentials, checked on every request.

A CONNECT proves the agent once for the tunnel, but credentials are checked again for each
request inside it: a static token whose digest file changed stops working on connections
opened before (keep-alive), and a JWT stops at its expiry.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import weakref

from mitmproxy import connection, http

from holdgate.identity.agents import AgentDirectory, AuthError, Identity
from holdgate.printable import printable

log = logging.getLogger("holdgate")

PROXY_AUTHORIZATION = "Proxy-Authorization"


def claimed_agent(header: str | None) -> str:
    """The user name a Basic Proxy-Authorization claims (never its password), else ""."""
    if not header:
        return ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return f"({scheme.lower()[:20]} credentials)"
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return "(unreadable credentials)"
    return printable(decoded.partition(":")[0], 100)


def proxy_auth_required(message: str) -> http.Response:
    """The 407 an HTTP client understands (it may retry with credentials)."""
    return http.Response.make(
        407,
        f"holdgate: {message}\n".encode(),
        {"Proxy-Authenticate": 'Basic realm="holdgate"', "Content-Type": "text/plain"},
    )


class ProxyAuth:
    """Checks Proxy-Authorization on CONNECT and on plain proxied requests; strips it."""

    def __init__(self) -> None:
        self.directory = AgentDirectory((), ())
        # Proofs given on a connection (CONNECT): identity, expiry (JWTs) and, for static
        # tokens, the header, checked again per request (cheap: a hash and a stat).
        self._by_client: weakref.WeakKeyDictionary[
            connection.Client, tuple[Identity, float | None, str | None]
        ] = weakref.WeakKeyDictionary()

    @property
    def enabled(self) -> bool:
        return self.directory.enabled

    async def _authenticate(self, header: str | None) -> tuple[Identity, float | None]:
        if self.directory.issuers:
            # JWKS may have to be fetched: keep blocking I/O off the event loop.
            return await asyncio.to_thread(self.directory.authenticate, header)
        return self.directory.authenticate(header)

    async def check_connect(self, flow: http.HTTPFlow) -> bool:
        """Authenticate a CONNECT; on failure set a 407 and return False."""
        header = flow.request.headers.get(PROXY_AUTHORIZATION)
        flow.request.headers.pop(PROXY_AUTHORIZATION, None)
        if not self.enabled and header is None:
            return True  # anonymous mode: no agents declared
        try:
            identity, expires = await self._authenticate(header)
        except AuthError as e:
            self._refuse(flow, str(e), header)
            return False
        # A JWT (it has an expiry) is verified once; a static token is re-checked per request.
        self._by_client[flow.client_conn] = (identity, expires, header if expires is None else None)
        return True

    async def identity_for(self, flow: http.HTTPFlow) -> Identity | None:
        """The request's agent; sets a 407 and returns None when it has none. Strips the header."""
        header = flow.request.headers.get(PROXY_AUTHORIZATION)
        flow.request.headers.pop(PROXY_AUTHORIZATION, None)
        if not self.enabled and header is None and flow.client_conn not in self._by_client:
            return None  # anonymous mode: no agents declared
        try:
            if header is not None:  # a plain-HTTP proxied request carries its own credentials
                identity, expires = await self._authenticate(header)
            elif flow.client_conn in self._by_client:
                identity, expires, proof = self._by_client[flow.client_conn]
                if proof is not None:
                    try:
                        identity, expires = self.directory.authenticate(proof)
                    except AuthError as e:
                        del self._by_client[flow.client_conn]
                        raise AuthError(
                            f"the connection's credentials are no longer valid: {e}"
                        ) from e
            else:
                raise AuthError(
                    "proxy authentication required: set agent credentials in the proxy URL"
                )
            if expires is not None and time.time() > expires:
                raise AuthError("the token has expired; reconnect with a fresh one")
        except AuthError as e:
            self._refuse(flow, str(e), header)
            return None
        return identity

    def connection_identity(self, flow: http.HTTPFlow) -> Identity | None:
        """The agent its CONNECT proved on this flow's connection, if any."""
        proven = self._by_client.get(flow.client_conn)
        return proven[0] if proven is not None else None

    def _refuse(self, flow: http.HTTPFlow, message: str, header: str | None = None) -> None:
        flow.response = proxy_auth_required(message)
        claimed = claimed_agent(header)
        # For the archive: what was asked and who claimed to ask (a name, never a secret).
        flow.metadata["holdgate"] = {
            "request": {
                "method": flow.request.method,
                "host": flow.request.pretty_host,
                "port": flow.request.port,
                "path": "" if flow.request.method == "CONNECT" else flow.request.path,
                "identity": None,
                "claimed_agent": claimed,
            },
            "decision": {
                "action": "deny",
                "rule": None,
                "reason": f"proxy authentication failed: {message}",
            },
        }
        flow.comment = printable(
            f"deny · proxy-auth · {claimed or 'no credentials'}: "
            f"{flow.request.method} {flow.request.pretty_host}"
            f" ({message})"
        )
        log.info(
            "407 %s %s: %s",
            printable(flow.request.method, 20),
            printable(flow.request.pretty_host, 300),
            printable(message),
        )
