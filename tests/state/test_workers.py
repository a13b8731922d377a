"""`holdgate run --workers N`: several gateway processes behind one port on one host, sharing
holds through the state store, each with its own archive chain."""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import (
    BIN,
    SIM_TOKEN,
    Page,
    kube_target,
    page_address,
    start_gateway,
    trust,
    write_agent_kubeconfig,
)
from tests.state.postgres import PostgresServer, unavailable
from tests.state.test_replicas import ALICE, RULES, in_background, state_store

pytestmark = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "")


def test_workers_share_one_port_and_their_holds(
    tmp_path: Path, simulator: KubeSimulator, postgres: PostgresServer
) -> None:
    store, env = state_store(postgres)
    config = {
        "gateway": {
            "name": "host-1",
            "certs": str(tmp_path / "certs"),
            "state": str(tmp_path / "var"),
        },
        "targets": [kube_target(simulator)],
        "approvals": {
            "page": {"listen_host": "127.0.0.1", "listen_port": 0},
            "local_reviewers": {
                "alice": {"token_sha256": hashlib.sha256(ALICE.encode()).hexdigest()}
            },
        },
        "archive": {"directory": str(tmp_path / "archive"), "rotate_seconds": 1},
        "state_store": store,
    }
    gateway = start_gateway(tmp_path, config, {"r.yaml": RULES}, env=env, workers=2)
    try:
        gateway.wait_for_output(r"holdgate: 2 workers started")
        for index in (0, 1):
            gateway.wait_for_output(rf"state store .* connected \(replica host-1-w{index}\)")
        simulator.clear_requests()
        # Many connections: the kernel spreads them over both workers.
        context = trust(gateway)
        for _ in range(24):
            with httpx.Client(proxy=gateway.proxy_url, verify=context, trust_env=False) as client:
                answer = client.get(
                    "https://kubernetes.default.svc/api/v1/namespaces/sandbox/pods",
                    headers={"Authorization": f"Bearer {SIM_TOKEN}"},
                )
                assert answer.status_code == 200
        # A hold on whichever worker takes it, approved on worker 0's page.
        agent = write_agent_kubeconfig(tmp_path / "agent.kubeconfig", gateway)
        thread, result = in_background(
            agent, "create", "configmap", "from-a-worker", "-n", "sandbox"
        )
        with Page(*page_address(gateway)) as page:
            (hold,) = page.wait_pending("held-configmaps")
            assert page.decide(hold["id"], True, ALICE).status_code == 200
        thread.join(timeout=60)
        assert result and result[0].returncode == 0, result
    finally:
        gateway.process.send_signal(signal.SIGTERM)
        gateway.process.wait(timeout=60)
    assert gateway.process.returncode == 0, gateway.output()
    chains = {p.name.rsplit("-", 1)[0] for p in (tmp_path / "archive").rglob("*.manifest.json")}
    assert chains == {"host-1-w0", "host-1-w1"}
    verify = subprocess.run(
        [str(BIN / "holdgate"), "archive", "verify", "--config", str(tmp_path / "holdgate.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert re.search(r"segments of 2 gateways \(host-1-w0, host-1-w1\)", verify.stdout)
    assert postgres.password not in gateway.output()


def test_workers_need_a_state_store(tmp_path: Path, simulator: KubeSimulator) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(RULES)
    config = tmp_path / "holdgate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "gateway": {"state": str(tmp_path / "var"), "certs": str(tmp_path / "certs")},
                "rules": [str(tmp_path / "rules")],
                "targets": [kube_target(simulator)],
            }
        )
    )
    result = subprocess.run(
        [str(BIN / "holdgate"), "run", "--config", str(config), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--workers needs a state_store" in result.stderr
