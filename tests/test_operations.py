"""/healthz, /readyz and /metrics on the operations listener, whatever the configuration."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import BIN, GatewayProcess, kube_target, start_gateway, trust, write_home_config

RULES = "rules:\n  - id: reads\n    action: allow\n    verbs: [get]\n    resources: ['*']\n"


def operations_url(gateway: GatewayProcess) -> str:
    gateway.wait_for_output(r"holdgate operations listening at (\S+)")
    return (gateway.home / "var" / "operations-url").read_text().strip()


def test_health_readiness_and_metrics_without_approvals(
    tmp_path: Path, simulator: KubeSimulator
) -> None:
    gateway = start_gateway(tmp_path, {"targets": [kube_target(simulator)]}, {"r.yaml": RULES})
    try:
        url = operations_url(gateway)
        assert "approvals page listening" not in gateway.output()
        with httpx.Client(base_url=url, timeout=10) as ops:
            assert ops.get("/healthz").text == "ok\n"
            ready = ops.get("/readyz")
            assert ready.status_code == 200
            assert ready.json() == {
                "ready": True,
                "checks": {"policy": "ok", "archive": "ok", "approvals": "ok", "state_store": "ok"},
            }
            metrics = ops.get("/metrics")
            assert "holdgate_requests_total" in metrics.text
            assert "holdgate_archive_backlog_segments" in metrics.text
            # The spool's volume fails: not ready, and why.
            spool = tmp_path / "var" / "spool"
            spool.rename(tmp_path / "spool-moved")
            spool.write_text("a failed volume")
            try:
                with httpx.Client(
                    proxy=gateway.proxy_url, verify=trust(gateway), timeout=10
                ) as agent:
                    agent.get("https://kubernetes.default.svc/api/v1/namespaces")
                for _ in range(100):  # the writer reports within a second
                    if ops.get("/readyz").status_code != 200:
                        break
                    time.sleep(0.1)
                failing = ops.get("/readyz")
                assert failing.status_code == 503
                assert "cannot write the spool" in failing.json()["checks"]["archive"]
            finally:
                spool.unlink()
                (tmp_path / "spool-moved").rename(spool)
    finally:
        gateway.stop()


@pytest.mark.parametrize(
    ("section", "what"),
    [("operations", "/healthz, /readyz and /metrics"), ("approvals", "the approvals page")],
)
def test_a_port_in_use_stops_the_start_with_one_line(
    tmp_path: Path, section: str, what: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listener = {"listen_host": "127.0.0.1", "listen_port": port}
        config = write_home_config(
            tmp_path,
            RULES,
            targets=[{"name": "api", "kind": "http", "hosts": ["api.internal"]}],
            **{section: listener if section == "operations" else {"page": listener}},
        )
        result = subprocess.run(
            [str(BIN / "holdgate"), "run", "--config", str(config), "--listen-port", "0"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"cannot listen on 127.0.0.1:{port} for {what}" in output
    assert "Traceback" not in output, output
    assert output.strip().splitlines() == [
        f"holdgate: refusing to start: cannot listen on 127.0.0.1:{port} for {what}: "
        "Address already in use"
    ]
    assert not (tmp_path / "var").exists() and not (tmp_path / "certs").exists()  # nothing written
