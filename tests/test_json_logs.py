"""`holdgate run --log-format json`: one JSON object per line, decision fields included."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import SIM_TOKEN, kube_target, start_gateway, trust

RULES = """
rules:
  - id: no-prod-secrets
    action: deny
    message: not in prod
    resources: [secrets]
    namespaces: [prod]
"""


def test_every_line_is_json_and_decisions_carry_their_fields(
    tmp_path: Path, simulator: KubeSimulator
) -> None:
    gateway = start_gateway(
        tmp_path,
        {"targets": [kube_target(simulator)]},
        {"r.yaml": RULES},
        mitmproxy_args=["--set", "holdgate_log_format=json"],
    )
    try:
        with httpx.Client(proxy=gateway.proxy_url, verify=trust(gateway), timeout=10) as agent:
            for path in ("prod/secrets/db", "prod/secrets/db%1b%5b31m"):
                r = agent.get(
                    f"https://kubernetes.default.svc/api/v1/namespaces/{path}",
                    headers={"Authorization": f"Bearer {SIM_TOKEN}"},
                )
                assert r.status_code == 403
        gateway.wait_for_output(r"control character")
    finally:
        gateway.stop()
    lines = [line for line in gateway.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line parses
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    [denial] = [r for r in records if r.get("rule") == "no-prod-secrets"]
    assert denial["level"] == "info" and denial["time"].endswith("Z")
    fields = ("target", "verb", "resource", "namespace", "name", "decision", "rule")
    assert {k: denial[k] for k in fields} == {
        "name": "db",
        "decision": "deny",
        "target": "cluster",
        "verb": "get",
        "resource": "secrets",
        "namespace": "prod",
        "rule": "no-prod-secrets",
    }
    assert "\x1b" not in "".join(lines)  # an agent's control characters stay escaped
