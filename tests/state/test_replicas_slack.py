"""Slack with replicas: one Socket Mode connection per replica, a click delivered to the replica
that does not hold the request, one announcement per hold, and a dead replica's hold shown
closed in Slack by the replica that closed it."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from holdgate.sandbox.kube_sim import KubeSimulator
from tests.approvals.slack.test_e2e import (
    APPROVALS,
    SLACK_ENV,
    SlackThread,
    agent_kubeconfig,
    assert_no_tokens,
    gateway_config,
    header,
)
from tests.conftest import GatewayProcess
from tests.state.postgres import PostgresServer, unavailable
from tests.state.test_replicas import LEASE, in_background, start_replica

pytestmark = [
    pytest.mark.skipif(bool(unavailable()), reason=unavailable() or ""),
    pytest.mark.timeout(120),
]

RULES = """
rules:
  - {id: discovery, action: allow, verbs: [get], nonResourceURLs: ["/*"]}
  - {id: reads, action: allow, verbs: [get, list, watch], resources: ["*"]}
  - id: slack-secrets
    action: approve
    resources: [secrets]
    verbs: [create]
    reviewers: ["slack:UALICE"]
    timeout: 90s
"""


@pytest.fixture(scope="module")
def slack() -> Iterator[SlackThread]:
    rig = SlackThread()
    yield rig
    rig.close()


@pytest.fixture
def replicas(
    tmp_path: Path, simulator: KubeSimulator, postgres: PostgresServer, slack: SlackThread
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Replica A then B, each with its own Socket Mode connection (0 is A's, 1 is B's)."""
    certs = tmp_path / "certs"
    certs.mkdir()
    config = gateway_config(simulator, slack.sim.base_url)
    opened = slack.read(lambda: len(slack.sim.sockets))
    started = []
    try:
        for name in ("replica-a", "replica-b"):
            gateway = start_replica(
                tmp_path / name, name, postgres, certs, config, RULES, env=SLACK_ENV
            )
            started.append(gateway)
            gateway.wait_for_output(r"slack: Socket Mode connected")
            wanted = opened + len(started)
            slack.wait(
                lambda wanted=wanted: len(slack.sim.sockets) >= wanted or None,
                f"{name}'s Socket Mode connection",
            )
        simulator.clear_requests()
        yield started[0], started[1]
    finally:
        for gateway in started:
            gateway.stop()
            assert_no_tokens(gateway)
            assert postgres.password not in gateway.output()


def create_secret(kubeconfig: Path, name: str) -> tuple[threading.Thread, list]:
    return in_background(
        kubeconfig, "create", "secret", "generic", name, "--from-literal=k=v", "-n", "sandbox"
    )


def test_a_click_on_the_other_replica_s_connection_decides(
    tmp_path: Path,
    replicas: tuple[GatewayProcess, GatewayProcess],
    slack: SlackThread,
    simulator: KubeSimulator,
) -> None:
    a, b = replicas
    b_connection = slack.read(lambda: len(slack.sim.sockets)) - 1
    thread, result = create_secret(agent_kubeconfig(tmp_path / "agent", a), "clicked-on-b")
    hold_id, message = slack.held("clicked-on-b")
    slack.run(slack.sim.click(hold_id, "UALICE", connection=b_connection))
    final = slack.settled(message, "Approved")
    assert "Alice Liddell" in final
    thread.join(timeout=60)
    assert result and result[0].returncode == 0, result
    assert len(simulator.requests_to("/api/v1/namespaces/sandbox/secrets", "POST")) == 1
    # Announced once (by A, which holds the request); updated by B, which took the click.
    posts = slack.read(
        lambda: [m for m in slack.sim.messages(APPROVALS) if "`clicked-on-b`" in m.rendered]
    )
    assert len(posts) == 1
    b.wait_for_output(rf"hold {hold_id}: approve decided by slack:UALICE")
    assert f"hold {hold_id}: approve" not in a.output()


def test_a_dead_replica_s_hold_is_closed_in_slack(
    tmp_path: Path,
    replicas: tuple[GatewayProcess, GatewayProcess],
    slack: SlackThread,
) -> None:
    a, b = replicas
    thread, result = create_secret(agent_kubeconfig(tmp_path / "agent", a), "orphaned-in-slack")
    hold_id, message = slack.held("orphaned-in-slack")
    # Where the message is reaches the database just after the post (a replica dying in
    # between leaves its message as it was: a click then says the hold is no longer pending).
    a.wait_for_output(rf"slack: hold {hold_id} posted to {APPROVALS}")
    os.kill(a.process.pid, signal.SIGKILL)
    a.process.wait(timeout=10)
    b.wait_for_output(rf"hold {hold_id} closed: cancelled", timeout=LEASE * 5 + 10)
    final = slack.settled(message, "Cancelled")
    assert "replica replica-a" in final and "stopped" in final
    assert "Cancelled" in header(message)
    thread.join(timeout=60)
    assert result and result[0].returncode != 0


def test_a_restarted_replica_takes_clicks_on_holds_it_never_saw(
    tmp_path: Path,
    replicas: tuple[GatewayProcess, GatewayProcess],
    slack: SlackThread,
    simulator: KubeSimulator,
    postgres: PostgresServer,
) -> None:
    a, b = replicas
    thread, result = create_secret(agent_kubeconfig(tmp_path / "agent", a), "before-restart")
    hold_id, message = slack.held("before-restart")
    b.stop()  # B goes away and comes back: it learns the pending holds from the database
    config = gateway_config(simulator, slack.sim.base_url)
    opened = slack.read(lambda: len(slack.sim.sockets))
    again = start_replica(
        tmp_path / "replica-b", "replica-b", postgres, tmp_path / "certs", config, RULES,
        env=SLACK_ENV,
    )  # fmt: skip
    try:
        again.wait_for_output(r"slack: Socket Mode connected")
        slack.wait(lambda: len(slack.sim.sockets) > opened or None, "B's new connection")
        slack.run(slack.sim.click(hold_id, "UALICE", connection=opened))
        slack.settled(message, "Approved")
        thread.join(timeout=60)
        assert result and result[0].returncode == 0, result
        again.wait_for_output(rf"hold {hold_id}: approve decided by slack:UALICE")
    finally:
        again.stop()
        assert_no_tokens(again)
