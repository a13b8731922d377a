"""Protocol tricks: smuggling a second request, h2c upgrades, names spelled differently."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import GatewayProcess, start_gateway
from tests.security.peers import (
    RecordingServer,
    basic,
    raw_proxy_request,
    raw_tunnel_request,
    recording_server,
    static_agents,
)

AGENT, TOKEN = "ci-bot", "agent-token-aa41"
RULES = """
rules:
  - id: public-reads
    action: allow
    targets: [api]
    methods: [GET, POST]
    paths: ["/public/*"]
"""


@dataclass
class Setup:
    gateway: GatewayProcess
    api: RecordingServer


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("protocol")
    with recording_server("127.0.0.1", cert_dir=home / "tls") as api:
        assert api.tls is not None
        config = {
            "identity": static_agents(**{AGENT: TOKEN}),
            "targets": [
                {
                    "name": "api",
                    "kind": "http",
                    "hosts": ["api.test"],
                    "upstream": api.url,
                    "ca": str(api.tls.ca_cert),
                }
            ],
        }
        gateway = start_gateway(home / "gw", config, {"r.yaml": RULES})
        try:
            yield Setup(gateway, api)
        finally:
            gateway.stop()


@pytest.fixture
def s(setup: Setup) -> Setup:
    setup.api.received.clear()
    return setup


def _tunnel(s: Setup, request: bytes, host: str = "api.test") -> tuple[int, bytes]:
    return raw_tunnel_request(
        s.gateway.port,
        f"{host}:443",
        basic(AGENT, TOKEN),
        request,
        ca=s.gateway.ca_path,
        server_name=host,
    )


def test_a_smuggled_second_request_never_reaches_the_upstream(s: Setup) -> None:
    smuggled = b"GET /admin/users HTTP/1.1\r\nHost: api.test\r\n\r\n"
    request = (
        b"POST /public/x HTTP/1.1\r\nHost: api.test\r\n"
        b"Content-Length: " + str(5 + len(smuggled)).encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled
    )
    status, _ = _tunnel(s, request)
    assert status in (0, 400, 403)
    assert not any(r.target.startswith("/admin") for r in s.api.received)


def test_h2c_upgrade_is_not_honoured(s: Setup) -> None:
    request = (
        b"GET http://api.test/public/a HTTP/1.1\r\nHost: api.test\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
        b"Proxy-Authorization: " + basic(AGENT, TOKEN).encode() + b"\r\n\r\n"
    )
    status, _ = raw_proxy_request(s.gateway.port, request)
    assert status != 101
    assert all("upgrade" not in r.headers for r in s.api.received)


def test_case_and_a_trailing_dot_are_the_same_name(s: Setup) -> None:
    status, body = _tunnel(s, b"GET /public/b HTTP/1.1\r\nHost: API.Test.\r\n\r\n")
    assert status == 200, body
    assert [r.target for r in s.api.received] == ["/public/b"]
    status, _ = _tunnel(s, b"GET /private HTTP/1.1\r\nHost: api.test\r\n\r\n")
    assert status == 403
    assert [r.target for r in s.api.received] == ["/public/b"]
