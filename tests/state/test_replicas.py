"""Replicas sharing holds in a real PostgreSQL: a hold on one replica decided on another, N-of-M
reviews counted once across replicas, approval windows on every replica, a dead replica's holds
closed, the database away (nothing approved, allowed traffic goes on) and back."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mitmproxy.io import FlowReader

from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import (
    BIN,
    GatewayProcess,
    Page,
    kube_target,
    kubectl,
    page_address,
    start_gateway,
    write_agent_kubeconfig,
)
from tests.state.postgres import PostgresServer, unavailable

pytestmark = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "")

ALICE, BOB = "alice-token-0f3c9e", "bob-token-77d1a4"
LEASE = 2
RULES = """
rules:
  - {id: discovery, action: allow, verbs: [get], nonResourceURLs: ["/*"]}
  - {id: reads, action: allow, verbs: [get, list, watch], resources: ["*"]}
  - id: held-configmaps
    action: approve
    resources: [configmaps]
    verbs: [create]
    reviewers: [local:alice, local:bob]
    timeout: 60s
  - id: two-for-secrets
    action: approve
    resources: [secrets]
    verbs: [create]
    reviewers: [local:alice, local:bob]
    required: 2
    timeout: 60s
  - {id: pod-writes, action: allow, verbs: [create, delete], resources: [pods], namespaces: [sandbox]}
  - id: windowed-deletes
    action: approve
    resources: [configmaps]
    verbs: [delete]
    reviewers: [local:alice]
    window: 5m
    timeout: 60s
"""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def state_store(pg: PostgresServer) -> tuple[dict[str, object], dict[str, str]]:
    """The `state_store` section replicas share, and the environment with its password."""
    return {"url": pg.url, "lease_seconds": LEASE}, {"HOLDGATE_STATE_STORE_PASSWORD": pg.password}


def start_replica(
    home: Path,
    name: str,
    pg: PostgresServer,
    certs: Path,
    config: dict[str, object],
    rules: str,
    env: dict[str, str] | None = None,
) -> GatewayProcess:
    """A gateway replica named `name`: `config` plus the state store and the CA (`certs`)
    every replica shares."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "certs").exists():
        (home / "certs").symlink_to(certs, target_is_directory=True)
    full: dict[str, object] = {
        "gateway": {"name": name, "certs": str(home / "certs"), "state": str(home / "var")},
        **config,
    }
    full["state_store"], store_env = state_store(pg)
    gateway = start_gateway(home, full, {"r.yaml": rules}, env={**store_env, **(env or {})})
    gateway.wait_for_output(r"state store .* connected \(replica " + name)
    return gateway


def page_config(simulator: KubeSimulator) -> dict[str, object]:
    """The cluster and an approvals page with two local reviewers."""
    return {
        "targets": [kube_target(simulator)],
        "approvals": {
            "page": {"listen_host": "127.0.0.1", "listen_port": 0},
            "local_reviewers": {
                "alice": {"token_sha256": _digest(ALICE)},
                "bob": {"token_sha256": _digest(BOB)},
            },
        },
    }


@pytest.fixture
def replicas(
    tmp_path: Path, simulator: KubeSimulator, postgres: PostgresServer
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    certs = tmp_path / "certs"
    certs.mkdir()
    config = page_config(simulator)
    a = start_replica(tmp_path / "a", "replica-a", postgres, certs, config, RULES)
    b = start_replica(tmp_path / "b", "replica-b", postgres, certs, config, RULES)
    simulator.clear_requests()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()
        for gateway in (a, b):
            assert postgres.password not in gateway.output()


def _operations(gateway: GatewayProcess) -> str:
    """The gateway's operations listener (/healthz, /readyz, /metrics), without a final /."""
    return gateway.wait_for_output(r"operations listening at (\S+)").group(1).rstrip("/")


def _metrics(gateway: GatewayProcess) -> str:
    return httpx.get(f"{_operations(gateway)}/metrics", timeout=10, trust_env=False).text


def in_background(kubeconfig: Path, *args: str) -> tuple[threading.Thread, list]:
    """kubectl in a thread (a held request blocks until it is decided)."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(kubectl(kubeconfig, *args, timeout=90)))
    thread.start()
    return thread, result


def test_a_hold_on_one_replica_is_decided_on_another(
    tmp_path: Path,
    replicas: tuple[GatewayProcess, GatewayProcess],
    simulator: KubeSimulator,
    postgres: PostgresServer,
) -> None:
    a, b = replicas
    agent = write_agent_kubeconfig(tmp_path / "agent.kubeconfig", a)
    thread, result = in_background(agent, "create", "configmap", "replicated", "-n", "sandbox")
    with Page(*page_address(b)) as page_b, Page(*page_address(a)) as page_a:
        (hold,) = page_b.wait_pending("held-configmaps")  # B lists A's hold
        assert [h["id"] for h in page_a.pending()] == [hold["id"]]
        # Each replica counts the requests it holds: a sum over replicas adds up.
        assert "holdgate_holds_pending 1.0" in _metrics(a)
        assert "holdgate_holds_pending 0.0" in _metrics(b)
        answer = page_b.decide(hold["id"], True, ALICE)
        assert answer.status_code == 200, answer.text
    thread.join(timeout=60)
    assert result and result[0].returncode == 0, result
    assert len(simulator.requests_to("/api/v1/namespaces/sandbox/configmaps", "POST")) == 1
    rows = postgres.query(
        "SELECT h.replica, h.state, r.reviewer, r.replica FROM holdgate_holds h "
        "JOIN holdgate_reviews r ON r.hold_id = h.id WHERE h.id = %s",
        hold["id"],
    )
    assert rows == [("replica-a", "approved", "local:alice", "replica-b")]


def test_two_reviews_at_the_same_moment_on_two_replicas_count_once_each(
    tmp_path: Path,
    replicas: tuple[GatewayProcess, GatewayProcess],
    simulator: KubeSimulator,
    postgres: PostgresServer,
) -> None:
    a, b = replicas
    agent = write_agent_kubeconfig(tmp_path / "agent.kubeconfig", b)
    thread, result = in_background(
        agent, "create", "secret", "generic", "twice", "--from-literal=k=v", "-n", "sandbox"
    )
    with Page(*page_address(a)) as page_a, Page(*page_address(b)) as page_b:
        (hold,) = page_a.wait_pending("two-for-secrets")
        page_b.wait_pending("two-for-secrets")
        start = threading.Barrier(2)
        answers: dict[str, httpx.Response] = {}

        def review(page: Page, token: str) -> None:
            start.wait(timeout=10)
            answers[token] = page.decide(hold["id"], True, token)

        threads = [
            threading.Thread(target=review, args=(page_a, ALICE)),
            threading.Thread(target=review, args=(page_b, BOB)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    outcomes = sorted(r.json()["outcome"] for r in answers.values())
    assert outcomes == ["decided", "recorded"]
    thread.join(timeout=60)
    assert result and result[0].returncode == 0, result
    assert len(simulator.requests_to("/api/v1/namespaces/sandbox/secrets", "POST")) == 1
    reviews = postgres.query(
        "SELECT reviewer FROM holdgate_reviews WHERE hold_id = %s ORDER BY reviewer", hold["id"]
    )
    assert reviews == [("local:alice",), ("local:bob",)]


def test_an_approval_window_granted_on_one_replica_covers_the_others(
    tmp_path: Path,
    replicas: tuple[GatewayProcess, GatewayProcess],
    simulator: KubeSimulator,
) -> None:
    a, b = replicas
    simulator.store.create(
        *_configmap("windowed"),
    )
    via_a = write_agent_kubeconfig(tmp_path / "a.kubeconfig", a)
    via_b = write_agent_kubeconfig(tmp_path / "b.kubeconfig", b)
    thread, result = in_background(via_a, "delete", "configmap", "windowed", "-n", "sandbox")
    with Page(*page_address(a)) as page:
        (hold,) = page.wait_pending("windowed-deletes")
        assert page.decide(hold["id"], True, ALICE).status_code == 200
    thread.join(timeout=60)
    assert result and result[0].returncode == 0, result
    simulator.store.create(*_configmap("windowed"))
    again = kubectl(via_b, "delete", "configmap", "windowed", "-n", "sandbox", timeout=30)
    assert again.returncode == 0, again.stderr
    b.wait_for_output(rf"covered by the approval window of hold {hold['id']}")


def _configmap(name: str) -> tuple:
    from holdgate.sandbox.kube_resources import CONFIGMAPS

    return CONFIGMAPS, "sandbox", {"metadata": {"name": name}, "data": {"k": "v"}}


def test_a_dead_replica_s_holds_are_closed_by_the_others(
    tmp_path: Path,
    replicas: tuple[GatewayProcess, GatewayProcess],
    postgres: PostgresServer,
) -> None:
    a, b = replicas
    agent = write_agent_kubeconfig(tmp_path / "agent.kubeconfig", a)
    thread, result = in_background(agent, "create", "configmap", "orphaned", "-n", "sandbox")
    with Page(*page_address(b)) as page_b:
        (hold,) = page_b.wait_pending("held-configmaps")
        os.kill(a.process.pid, signal.SIGKILL)  # no goodbye: only the lease tells
        a.process.wait(timeout=10)
        b.wait_for_output(
            rf"hold {hold['id']} closed: cancelled: the gateway holding the request "
            r"\(replica replica-a\) stopped",
            timeout=LEASE * 5 + 10,
        )
        assert page_b.pending() == []
    thread.join(timeout=60)
    assert result and result[0].returncode != 0  # its gateway died under it
    assert postgres.query("SELECT state FROM holdgate_holds WHERE id = %s", hold["id"]) == [
        ("cancelled",)
    ]


def test_the_database_away_approves_nothing_and_allowed_traffic_goes_on(
    tmp_path: Path,
    replicas: tuple[GatewayProcess, GatewayProcess],
    postgres: PostgresServer,
    simulator: KubeSimulator,
) -> None:
    a, _ = replicas
    agent = write_agent_kubeconfig(tmp_path / "agent.kubeconfig", a)
    ready = _operations(a)
    printed = a.printed()
    postgres.stop()
    try:
        a.wait_for_output(r"state store .* unreachable", timeout=20, after=printed)
        assert kubectl(agent, "get", "ns", timeout=30).returncode == 0
        held = kubectl(agent, "create", "configmap", "no-db", "-n", "sandbox", timeout=30)
        assert held.returncode != 0
        assert "approvals database is unreachable" in held.stderr
        assert not simulator.requests_to("/api/v1/namespaces/sandbox/configmaps", "POST")
        readiness = httpx.get(f"{ready}/readyz", timeout=10, trust_env=False)
        assert readiness.status_code == 503
        assert readiness.json()["checks"]["state_store"].startswith("state store: ")
        # The deployments' probe leaves shared dependencies out: every replica stays in its
        # Service, so allowed traffic goes on.
        probe = httpx.get(f"{ready}/readyz?exclude=state_store", timeout=10, trust_env=False)
        assert probe.status_code == 200, probe.text
        assert "holdgate_state_store_up 0.0" in _metrics(a)
    finally:
        printed = a.printed()
        postgres.start()
    a.wait_for_output(r"state store .* connected", timeout=30, after=printed)
    thread, result = in_background(agent, "create", "configmap", "db-back", "-n", "sandbox")
    with Page(*page_address(a)) as page:
        (hold,) = page.wait_pending("held-configmaps")
        assert page.decide(hold["id"], True, BOB).status_code == 200
    thread.join(timeout=60)
    assert result and result[0].returncode == 0, result


def test_each_replica_archives_its_own_chain_and_verify_covers_all(
    tmp_path: Path, simulator: KubeSimulator, postgres: PostgresServer
) -> None:
    """One archive prefix, one chain per replica (by gateway name), one signing key shared."""
    certs = tmp_path / "certs"
    certs.mkdir()
    shared = {
        "directory": str(tmp_path / "archive"),
        "signing_key": str(tmp_path / "signing-key.pem"),
        "rotate_seconds": 1,
    }
    config = {**page_config(simulator), "archive": shared}
    replicas = [
        start_replica(tmp_path / name, name, postgres, certs, config, RULES)
        for name in ("replica-a", "replica-b")
    ]
    try:
        for gateway in replicas:
            agent = write_agent_kubeconfig(tmp_path / f"{gateway.port}.kubeconfig", gateway)
            assert kubectl(agent, "get", "pods", "-n", "sandbox").returncode == 0
    finally:
        for gateway in replicas:
            gateway.stop()  # a clean stop seals and uploads its last segment
    names = {p.name.rsplit("-", 1)[0] for p in (tmp_path / "archive").rglob("*.manifest.json")}
    assert names == {"replica-a", "replica-b"}
    config_a = str(tmp_path / "replica-a" / "holdgate.yaml")
    verify = subprocess.run(
        [str(BIN / "holdgate"), "archive", "verify", "--config", config_a],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOLDGATE_STATE_STORE_PASSWORD": postgres.password},
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert re.search(r"\d+ segments of 2 gateways \(replica-a, replica-b\)", verify.stdout)
    assert "signatures checked, 0 problems" in verify.stdout
    out = tmp_path / "all.mitm"
    replay = subprocess.run(
        [str(BIN / "holdgate"), "replay", "--config", config_a, "--out", str(out), "--no-web"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr
    with out.open("rb") as f:
        gateways = {
            flow.metadata["holdgate"]["request"]["target"] for flow in FlowReader(f).stream()
        }
    assert gateways == {"cluster"}
    assert "flows from" in replay.stdout


def test_one_ledger_for_every_replica(
    tmp_path: Path,
    replicas: tuple[GatewayProcess, GatewayProcess],
    postgres: PostgresServer,
) -> None:
    """What an agent created through A is listed by B's `holdgate resources`, and a delete
    through B closes it."""
    a, b = replicas
    via_a = write_agent_kubeconfig(tmp_path / "a.kubeconfig", a)
    via_b = write_agent_kubeconfig(tmp_path / "b.kubeconfig", b)
    made = kubectl(via_a, "run", "ledgered", "--image=nginx", "-n", "sandbox")
    assert made.returncode == 0, made.stderr
    env = {**os.environ, "HOLDGATE_STATE_STORE_PASSWORD": postgres.password}
    listing = subprocess.run(
        [str(BIN / "holdgate"), "resources", "--config", str(b.home / "holdgate.yaml"),
         "--no-check", "--json"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    rows = [r for r in json.loads(listing.stdout) if r["name"] == "ledgered"]
    assert len(rows) == 1 and rows[0]["namespace"] == "sandbox"
    gone = kubectl(via_b, "delete", "pod", "ledgered", "-n", "sandbox", "--wait=false")
    assert gone.returncode == 0, gone.stderr
    b.wait_for_output(r"ledger: .* deleted pods/ledgered -n sandbox")
    deleted = postgres.query("SELECT deleted_by FROM holdgate_ledger WHERE name = 'ledgered'")
    assert len(deleted) == 1 and deleted[0][0]
    assert postgres.password not in listing.stdout + listing.stderr
