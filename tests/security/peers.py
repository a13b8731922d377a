"""Upstreams that record what reached them, and a raw proxy client that sends what httpx won't.

Security tests assert on what an upstream received, so every peer here keeps each request
whole (method, target as sent, headers). Everything listens on loopback only; 127.0.0.2 is
a second loopback address, so two services can share a port and differ only in name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from holdgate.sandbox.kube_tls import TlsFiles, ensure_tls


@dataclass
class Received:
    """One request as the upstream saw it (header names lower case)."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingServer:
    """An HTTP(S) server that answers 200 with what it received, and remembers it."""

    host: str
    port: int
    tls: TlsFiles | None
    received: list[Received] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def headers_seen(self, name: str) -> list[str]:
        """Every value of one header across all requests received."""
        return [r.headers[name] for r in self.received if name in r.headers]


@contextmanager
def recording_server(
    host: str = "127.0.0.1", port: int = 0, cert_dir: Path | None = None
) -> Iterator[RecordingServer]:
    """Run a recording server on host:port (TLS when cert_dir is given) until the block ends."""
    tls = ensure_tls(cert_dir, host) if cert_dir is not None else None
    record = RecordingServer(host, port, tls)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            record.received.append(Received(self.command, self.path, headers, body))
            answer = json.dumps({"method": self.command, "headers": headers}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert, tls.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    record.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def free_port_on_both_loopbacks() -> int:
    """A port free on 127.0.0.1 and on 127.0.0.2 (for two services that differ only by name)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.2", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no port free on both loopback addresses")


def static_agents(**tokens: str) -> dict[str, object]:
    """The config's `identity` section for agents NAME=TOKEN (their tokens stored as SHA-256)."""
    return {
        "agents": [
            {"name": name, "token_sha256": hashlib.sha256(token.encode()).hexdigest()}
            for name, token in tokens.items()
        ]
    }


def basic(agent: str, token: str) -> str:
    """A Proxy-Authorization value."""
    return "Basic " + base64.b64encode(f"{agent}:{token}".encode()).decode()


def read_response(sock: socket.socket | ssl.SSLSocket, limit: int = 1 << 20) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response (Content-Length bodies), bounded; (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise AssertionError("response head too large")
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        return 0, b""
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body


def raw_proxy_request(proxy_port: int, request: bytes, timeout: float = 20) -> tuple[int, bytes]:
    """Send a plain-HTTP proxy request exactly as written; (status, body)."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout) as sock:
        sock.sendall(request)
        return read_response(sock)


def raw_tunnel_request(
    proxy_port: int,
    connect: str,
    proxy_authorization: str | None,
    request: bytes,
    *,
    ca: Path,
    server_name: str | None = None,
    timeout: float = 20,
) -> tuple[int, bytes]:
    """CONNECT `connect`, TLS (SNI `server_name`), then send `request` exactly as written.

    Returns the CONNECT's status and body when the tunnel is refused, else the response's.
    """
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout) as sock:
        auth = f"Proxy-Authorization: {proxy_authorization}\r\n" if proxy_authorization else ""
        sock.sendall(f"CONNECT {connect} HTTP/1.1\r\nHost: {connect}\r\n{auth}\r\n".encode())
        status, body = read_response(sock)
        if status != 200:
            return status, body
        context = ssl.create_default_context(cafile=str(ca))
        context.check_hostname = False
        with context.wrap_socket(sock, server_hostname=server_name) as tls:
            tls.sendall(request)
            return read_response(tls)
