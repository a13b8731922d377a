"""One authority: the target, its rules, its credential and the connection come from one name.

A hostile agent holds valid proxy credentials. Each test sends what such an agent would and
asserts on what the upstreams received: a credential reaches only its target's declared
host and port, and a request whose names disagree reaches nobody.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import GatewayProcess, start_gateway, trust
from tests.security.peers import (
    RecordingServer,
    basic,
    free_port_on_both_loopbacks,
    raw_proxy_request,
    raw_tunnel_request,
    recording_server,
    static_agents,
)

AGENT, AGENT_TOKEN = "ci-bot", "agent-token-5c1e"
BILLING_CANARY = "billing-credential-canary-9d2f"
DOCS_CANARY = "docs-credential-canary-41aa"
RULES = """
rules:
  - id: billing-reads
    action: allow
    targets: [billing]
    methods: [GET]
    paths: ["/v1/invoices/*"]
  - id: docs-anything
    action: allow
    targets: [docs]
    methods: ["*"]
    paths: ["*"]
"""


@dataclass
class Setup:
    gateway: GatewayProcess
    billing: RecordingServer  # declared, carries a credential, no `upstream`: 127.0.0.1:PORT
    evil: RecordingServer  # undeclared, same port on 127.0.0.2: echoes what it gets
    docs: RecordingServer  # declared without a port, carries a credential (plain HTTP)
    other_port: RecordingServer  # another port of docs' host: must never get its credential
    home: Path

    def clear(self) -> None:
        for server in (self.billing, self.evil, self.docs, self.other_port):
            server.received.clear()

    def everything_received(self) -> list[str]:
        return [
            f"{name}: {r.method} {r.target} {r.headers}"
            for name, server in (
                ("billing", self.billing),
                ("evil", self.evil),
                ("docs", self.docs),
                ("other_port", self.other_port),
            )
            for r in server.received
        ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("routing")
    port = free_port_on_both_loopbacks()
    certs = home / "upstream-tls"
    with (
        recording_server("127.0.0.1", port, cert_dir=certs / "billing") as billing,
        recording_server("127.0.0.2", port, cert_dir=certs / "evil") as evil,
        recording_server("127.0.0.1") as docs,
        recording_server("127.0.0.1") as other_port,
    ):
        (home / "billing-token").write_text(BILLING_CANARY)
        (home / "docs-token").write_text(DOCS_CANARY)
        # One bundle that trusts both TLS servers (the old hole needed no forged certificate).
        bundle = home / "upstream-ca.pem"
        assert billing.tls is not None and evil.tls is not None
        bundle.write_bytes(billing.tls.ca_cert.read_bytes() + evil.tls.ca_cert.read_bytes())
        config = {
            # Undeclared hosts are allowed here, as some operators do: rules still hold.
            "default": "allow",
            "identity": static_agents(**{AGENT: AGENT_TOKEN}),
            "targets": [
                {
                    "name": "billing",
                    "kind": "http",
                    "hosts": [f"127.0.0.1:{port}"],
                    "ca": str(bundle),
                    "default": "deny",
                    "credential": {"bearer_token_file": str(home / "billing-token")},
                },
                {
                    "name": "docs",
                    "kind": "http",
                    "hosts": ["127.0.0.1"],
                    "default": "deny",
                    "credential": {"bearer_token_file": str(home / "docs-token")},
                },
            ],
        }
        gateway = start_gateway(home / "gw", config, {"rules.yaml": RULES})
        try:
            yield Setup(gateway, billing, evil, docs, other_port, home)
        finally:
            gateway.stop()


@pytest.fixture
def s(setup: Setup) -> Setup:
    setup.clear()
    return setup


def test_host_header_naming_another_target_reaches_nobody(s: Setup) -> None:
    # CONNECT to an undeclared host (default allow), Host naming the billing target: the rules
    # and credential of billing must not travel to the host the tunnel goes to.
    port = s.billing.port
    status, body = raw_tunnel_request(
        s.gateway.port,
        f"127.0.0.2:{port}",
        basic(AGENT, AGENT_TOKEN),
        f"GET /v1/invoices/1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode(),
        ca=s.gateway.ca_path,
    )
    assert status == 403, body
    assert b"ambiguous" in body
    assert not s.evil.received and not s.billing.received, s.everything_received()
    assert BILLING_CANARY not in s.gateway.output()


def test_absolute_form_and_host_disagree_plain_http(s: Setup) -> None:
    # A plain proxied request: the URI names another port of the host, Host names docs.
    request = (
        f"GET http://127.0.0.1:{s.other_port.port}/steal HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        f"Proxy-Authorization: {basic(AGENT, AGENT_TOKEN)}\r\n\r\n"
    ).encode()
    status, body = raw_proxy_request(s.gateway.port, request)
    assert status == 403, body
    assert not s.other_port.received and not s.docs.received, s.everything_received()


def test_host_without_port_means_the_default_ports_only(s: Setup) -> None:
    # `hosts: [127.0.0.1]` covers ports 443 and 80, not every service on the machine.
    request = (
        f"GET http://127.0.0.1:{s.other_port.port}/ HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{s.other_port.port}\r\n"
        f"Proxy-Authorization: {basic(AGENT, AGENT_TOKEN)}\r\n\r\n"
    ).encode()
    raw_proxy_request(s.gateway.port, request)
    # Undeclared (default allow here): it may pass, but never with docs' credential.
    assert not any(DOCS_CANARY in v for v in s.other_port.headers_seen("authorization"))
    assert not s.docs.received


def test_sni_naming_another_host_is_refused(s: Setup) -> None:
    port = s.billing.port
    status, body = raw_tunnel_request(
        s.gateway.port,
        f"127.0.0.2:{port}",
        basic(AGENT, AGENT_TOKEN),
        f"GET /v1/invoices/1 HTTP/1.1\r\nHost: 127.0.0.2:{port}\r\n\r\n".encode(),
        ca=s.gateway.ca_path,
        server_name="billing.internal",
    )
    assert status == 403 and b"TLS server name" in body, body
    assert not s.evil.received and not s.billing.received


def test_http2_authority_must_match_the_tunnel(s: Setup) -> None:
    # curl puts a custom Host into HTTP/2's :authority.
    port = s.billing.port
    result = subprocess.run(
        ["curl", "-s", "--http2", "--cacert", str(s.gateway.ca_path)]
        + ["--proxy", f"http://{AGENT}:{AGENT_TOKEN}@127.0.0.1:{s.gateway.port}"]
        + ["-H", f"Host: 127.0.0.1:{port}", "-w", "\n%{http_code}"]
        + [f"https://127.0.0.2:{port}/v1/invoices/1"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.stdout.rstrip().endswith("403"), result.stdout + result.stderr
    assert not s.evil.received and not s.billing.received, s.everything_received()


def test_names_that_agree_reach_the_declared_host_with_its_credential(s: Setup) -> None:
    # The control: names that agree reach the declared host, with its credential.
    port = s.billing.port
    status, body = raw_tunnel_request(
        s.gateway.port,
        f"127.0.0.1:{port}",
        basic(AGENT, AGENT_TOKEN),
        f"GET /v1/invoices/7 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode(),
        ca=s.gateway.ca_path,
    )
    assert status == 200, body
    assert s.billing.headers_seen("authorization") == [f"Bearer {BILLING_CANARY}"]
    assert not s.evil.received
    with httpx.Client(
        proxy=f"http://{AGENT}:{AGENT_TOKEN}@127.0.0.1:{s.gateway.port}",
        verify=trust(s.gateway),
        timeout=20,
    ) as client:
        assert client.get(f"https://127.0.0.1:{port}/v1/invoices/8").status_code == 200
    assert len(s.billing.received) == 2


def test_dot_segments_never_climb_out_of_an_allowed_prefix(s: Setup) -> None:
    port = s.billing.port
    for target in (
        "/v1/invoices/../admin/users",
        "/v1/invoices/%2e%2e/admin/users",
        "/v1/invoices/..%2fadmin",
        "/v1/invoices//admin",
    ):
        status, body = raw_tunnel_request(
            s.gateway.port,
            f"127.0.0.1:{port}",
            basic(AGENT, AGENT_TOKEN),
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode(),
            ca=s.gateway.ca_path,
        )
        assert status == 403, (target, body)
    assert not s.billing.received, s.everything_received()
