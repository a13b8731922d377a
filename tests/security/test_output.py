"""Secrets stay out of what the gateway prints, and a refused configuration has no side effects."""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from holdgate.config.gateway_config import EMBEDDED_DEFAULT
from holdgate.identity.agents import AgentDirectory, AuthError, JwksSource, OidcIssuer
from tests.conftest import BIN, LOCAL_PAGE, ROOT, GatewayProcess, page_address, start_gateway


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = {
        "approvals": LOCAL_PAGE,
        "targets": [{"name": "api", "kind": "http", "hosts": ["api.test"]}],
    }
    gw = start_gateway(tmp_path_factory.mktemp("output"), config, {"r.yaml": "rules: []\n"})
    yield gw
    gw.stop()


def test_the_admin_token_is_never_logged(gateway: GatewayProcess) -> None:
    _url, token = page_address(gateway)
    assert len(token) > 16
    assert token not in gateway.output()


def test_holdgate_kubeconfig_does_not_echo_the_proxy_token(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    source = tmp_path / "admin.kubeconfig"
    source.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://api.test"}}],
                "users": [{"name": "u", "user": {"token": "upstream"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    canary = "proxy-token-canary-d41c"
    result = subprocess.run(
        [str(BIN / "holdgate"), "kubeconfig", "--config", str(gateway.home / "holdgate.yaml")]
        + ["--kubeconfig", str(source), "--out", str(tmp_path / "agent.kubeconfig")]
        + ["--proxy-url", f"http://ci-bot:{canary}@127.0.0.1:{gateway.port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert canary not in result.stdout + result.stderr
    assert "ci-bot:***@" in result.stdout
    assert canary in (tmp_path / "agent.kubeconfig").read_text()  # the file itself has it


def test_a_refused_configuration_loads_nothing_else(tmp_path: Path) -> None:
    # Valid for the schema, refused when the gateway applies it (Slack secrets are missing):
    # mitmproxy rolls the option back, and the embedded default must not be loaded instead.
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text("rules: []\n")
    config = {
        "gateway": {"certs": str(tmp_path / "certs"), "state": str(tmp_path / "var")},
        "rules": [str(tmp_path / "rules")],
        "approvals": {"slack": {"channel": "C123", "bot_token_env": "HOLDGATE_TEST_UNSET_BOT"}},
        "targets": [{"name": "api", "kind": "http", "hosts": ["api.test"]}],
    }
    path = tmp_path / "holdgate.yaml"
    path.write_text(yaml.safe_dump(config))
    spool = ROOT / "var" / "spool"
    before = sorted(p.name for p in spool.iterdir()) if spool.exists() else None
    result = subprocess.run(
        [str(BIN / "holdgate"), "run", "--config", str(path), "--listen-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "HOLDGATE_TEST_UNSET_BOT" in output
    assert str(EMBEDDED_DEFAULT) not in output and "holdgate-sandbox" not in output, output
    after = sorted(p.name for p in spool.iterdir()) if spool.exists() else None
    assert before == after


def test_made_up_key_ids_do_not_make_the_gateway_fetch(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    fetches: list[float] = []

    class Jwks(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append(time.monotonic())
            body = json.dumps({"keys": [{**jwk, "kid": "real"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        issuer = OidcIssuer(
            issuer="https://ci.test",
            audience="holdgate",
            jwks=JwksSource(url=f"http://127.0.0.1:{server.server_address[1]}/jwks"),
        )
        directory = AgentDirectory((), (issuer,))
        for i in range(50):
            token = jwt.encode(
                {"iss": "https://ci.test", "aud": "holdgate", "sub": "x", "exp": time.time() + 60},
                key,
                algorithm="RS256",
                headers={"kid": f"made-up-{i}"},
            )
            with pytest.raises(AuthError, match="unknown key"):
                directory._verify_jwt(token, "")
        assert len(fetches) <= 2, f"{len(fetches)} JWKS fetches for 50 unknown key ids"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_sha256sum_digest_file_is_read_as_the_digest(tmp_path: Path) -> None:
    from holdgate.identity.agents import StaticAgent

    token = "t0ken"
    path = tmp_path / "agent.sha256"
    path.write_text(hashlib.sha256(token.encode()).hexdigest() + "  -\n")
    agent = StaticAgent("ci", "", (), None, path)
    assert agent.expected_digest({}) == hashlib.sha256(token.encode()).hexdigest()
    path.write_text("not a digest\n")
    assert agent.expected_digest({}) is None
