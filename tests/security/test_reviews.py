"""Self-reviews (`kubectl auth can-i`) never open more than the requests they ask about: the
impersonation headers of a review are decided as any request's, before anything goes upstream
with the gateway's credential."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import (
    GatewayProcess,
    kube_target,
    kubectl,
    start_gateway,
    write_agent_kubeconfig,
)

RULES = """
rules:
  - {id: discovery, action: allow, verbs: [get], nonResourceURLs: ["/*"]}
  - {id: reads, action: allow, verbs: [get, list, watch], resources: ["*"]}
"""
REVIEWS = "/apis/authorization.k8s.io/v1/selfsubject"


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, simulator: KubeSimulator
) -> Iterator[GatewayProcess]:
    gw = start_gateway(
        tmp_path_factory.mktemp("reviews"), {"targets": [kube_target(simulator)]}, {"r.yaml": RULES}
    )
    yield gw
    gw.stop()


@pytest.mark.parametrize("review", [["get", "pods"], ["--list"]], ids=["access", "rules"])
def test_a_review_as_someone_else_needs_an_impersonation_rule(
    tmp_path: Path, gateway: GatewayProcess, simulator: KubeSimulator, review: list[str]
) -> None:
    simulator.clear_requests()
    agent = write_agent_kubeconfig(tmp_path / "agent.kubeconfig", gateway)
    result = kubectl(agent, "auth", "can-i", *review, "-n", "sandbox", "--as=cluster-admin-user")
    assert result.returncode != 0
    assert 'impersonation of users "cluster-admin-user" refused' in result.stdout + result.stderr
    # Nothing went upstream as someone else with the gateway's credential.
    impersonated = [r for r in simulator.requests if "impersonate-user" in r.headers]
    assert impersonated == []
    assert [r for r in simulator.requests if r.path.startswith(REVIEWS)] == []
