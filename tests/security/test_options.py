"""No mitmproxy option switches enforcement off: refused at start by name, or held safe."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, GatewayProcess, start_gateway
from tests.security.peers import read_response

REFUSED = [
    ("ignore_hosts=.*", "ignore_hosts"),
    ("allow_hosts=example.test", "allow_hosts"),
    ("tcp_hosts=.*", "tcp_hosts"),
    ("ssl_insecure=true", "ssl_insecure"),
    ("stream_large_bodies=1k", "stream_large_bodies"),
    ("websocket=false", "websocket"),
    ("validate_inbound_headers=false", "validate_inbound_headers"),
    ("mode=reverse:https://example.test", "mode"),
    ("udp_hosts=.*", "udp_hosts"),
]


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("options")
    (home / "rules").mkdir()
    (home / "rules" / "r.yaml").write_text("rules: []\n")
    config = {
        "gateway": {"certs": str(home / "certs"), "state": str(home / "var")},
        "rules": [str(home / "rules")],
        "targets": [{"name": "api", "kind": "http", "hosts": ["api.test"]}],
    }
    path = home / "holdgate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


@pytest.mark.parametrize(("setting", "name"), REFUSED, ids=[n for _, n in REFUSED])
def test_holdgate_run_refuses_options_that_switch_enforcement_off(
    config_path: Path, setting: str, name: str
) -> None:
    result = _run(
        [str(BIN / "holdgate"), "run", "--config", str(config_path), "--listen-port", "0"]
        + ["--", "--set", setting]
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"refuses mitmproxy option {name}=" in output, output
    assert "proxy listening" not in output


@pytest.mark.parametrize(
    "setting",
    [
        "save_stream_file=flows.out",
        "flow_detail=3",
        "stickyauth=.*",
        "proxyauth=any",
        "ignore_hosts=.*",
    ],
)
def test_mitmdump_with_the_addon_refuses_them_too(
    config_path: Path, setting: str, tmp_path: Path
) -> None:
    result = _run(
        [str(BIN / "mitmdump"), "-s", str(Path(__file__).parents[2] / "addons" / "gateway.py")]
        + ["--set", f"holdgate_config={config_path}", "--listen-port", "0", "--set", setting]
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"refuses mitmproxy option {setting.split('=')[0]}=" in output, output
    assert not (tmp_path / "flows.out").exists()


class RawServer:
    """A TCP server on loopback that records every byte it receives."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(5)
                try:
                    while data := conn.recv(65536):
                        self.received += data
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def raw_server() -> Iterator[RawServer]:
    server = RawServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, raw_server: RawServer
) -> Iterator[GatewayProcess]:
    target = {"name": "db", "kind": "http", "hosts": [f"127.0.0.1:{raw_server.port}"]}
    gw = start_gateway(
        tmp_path_factory.mktemp("rawtcp"), {"targets": [target]}, {"r.yaml": "rules: []\n"}
    )
    yield gw
    gw.stop()


def test_a_tunnel_that_speaks_no_http_is_not_relayed(
    gateway: GatewayProcess, raw_server: RawServer
) -> None:
    # mitmproxy's default relays bytes that are neither TLS nor HTTP as raw TCP: no decision.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        authority = f"127.0.0.1:{raw_server.port}"
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        status, _ = read_response(sock)
        assert status == 200
        sock.sendall(b"SSH-2.0-OpenSSH_9.6\r\nDROP TABLE invoices;\r\n")
        sock.settimeout(5)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
    assert raw_server.connections == 0 and not raw_server.received
