"""What goes upstream is what was approved: the agent's bytes, unchanged; ownership follows as a
PATCH of its own, shown to reviewers, archived as a flow with its audit event."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx

from holdgate.archive.backends import DirectoryBackend
from holdgate.archive.cli import ReplayQuery, collect
from holdgate.sandbox.kube_sim import KubeSimulator
from tests.archive.canaries import read_flows
from tests.conftest import (
    LOCAL_PAGE,
    SIM_TOKEN,
    Page,
    kube_target,
    page_address,
    start_gateway,
    trust,
)

RULES = """
rules:
  - id: hold-configmaps
    description: ConfigMaps need a human
    action: approve
    resources: [configmaps]
    verbs: [create]
    reviewers: [local:admin]
    ttl: 2h
"""

# Key order, spacing and escapes as an agent might send them; a re-serialisation changes them.
BODY = (
    b'{ "metadata": {"namespace": "sandbox", "name": "exact-1"},\n'
    b'  "kind": "ConfigMap", "apiVersion": "v1",\n'
    b'  "data": {"greeting": "caf\\u00e9 \\u003cb\\u003e", "n": "1.50"} }'
)
PATH = "/api/v1/namespaces/sandbox/configmaps"


def test_an_approved_create_goes_exactly_as_sent_then_is_labelled(
    tmp_path: Path, simulator: KubeSimulator
) -> None:
    simulator.clear_requests()
    gateway = start_gateway(
        tmp_path,
        {
            "targets": [kube_target(simulator)],
            "approvals": LOCAL_PAGE,
        },
        {"r.yaml": RULES},
    )
    try:
        page_at = page_address(gateway)
        answers: list[httpx.Response] = []

        def create() -> None:
            with httpx.Client(proxy=gateway.proxy_url, verify=trust(gateway), timeout=60) as client:
                answers.append(
                    client.post(
                        f"https://kubernetes.default.svc{PATH}",
                        content=BODY,
                        headers={
                            "Authorization": f"Bearer {SIM_TOKEN}",
                            "Content-Type": "application/json",
                        },
                    )
                )

        agent = threading.Thread(target=create)
        agent.start()
        with Page(*page_at) as page:
            [hold] = page.wait_pending("hold-configmaps")
            # Reviewers are told what follows an approval.
            followup = hold["request"]["followup"]
            assert "merge PATCH" in followup and "holdgate.dev/managed=true" in followup
            assert "holdgate.dev/expires=" in followup
            assert page.decide(hold["id"], True).status_code == 200
        agent.join(60)
        assert answers and answers[0].status_code == 201, answers
        [sent] = simulator.requests_to(PATH, "POST")
        assert sent.body == BODY  # byte for byte what the agent sent and reviewers approved
        [patch] = simulator.requests_to(f"{PATH}/exact-1", "PATCH")
        labels = json.loads(patch.body)["metadata"]
        assert labels["labels"] == {"holdgate.dev/managed": "true"}
        assert labels["annotations"]["holdgate.dev/agent"] == ""
    finally:
        gateway.stop()
    # The archive holds the create and, as a flow of its own, the PATCH that labelled it.
    result = collect(DirectoryBackend(tmp_path / "var" / "archive"), ReplayQuery(), quiet=True)
    flows = [f for raw in result.records for f in read_flows(raw)]
    [created] = [f for f in flows if f.request.method == "POST" and f.request.path == PATH]
    [labelled] = [f for f in flows if f.request.method == "PATCH"]
    meta = labelled.metadata["holdgate"]
    assert meta["followup_of"] == created.id
    assert meta["request"]["kubernetes"]["verb"] == "patch"
    assert meta["request"]["kubernetes"]["name"] == "exact-1"
    assert labelled.response is not None and labelled.response.status_code == 200
    assert "Authorization" not in labelled.request.headers  # the gateway's credential
    # The archive keeps the body as the gateway's masks render it (the same object).
    assert json.loads(created.request.raw_content or b"") == json.loads(BODY)
    audit = b"".join(p.read_bytes() for p in (tmp_path / "var" / "archive").rglob("*.audit.jsonl"))
    events = [json.loads(line) for line in audit.splitlines() if line.strip()]
    patches = [e for e in events if e.get("verb") == "patch"]
    assert patches and patches[0]["objectRef"]["name"] == "exact-1"
