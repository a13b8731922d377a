"""`holdgate kubeconfig --agent NAME --token-file F`: a kubeconfig that works with identity on,
and never shows the token."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import yaml

from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import BIN, SIM_TOKEN, kube_target, kubectl, start_gateway

AGENT_TOKEN = "kubeconfig-agent-token-6a1f"
RULES = """
rules:
  - {id: reads, action: allow, verbs: [get, list], resources: ["*"]}
  - {id: discovery, action: allow, verbs: [get], nonResourceURLs: ["/*"]}
"""


def test_the_written_kubeconfig_authenticates_the_agent(
    tmp_path: Path, simulator: KubeSimulator
) -> None:
    identity = {
        "agents": [
            {"name": "ci-bot", "token_sha256": hashlib.sha256(AGENT_TOKEN.encode()).hexdigest()}
        ]
    }
    gateway = start_gateway(
        tmp_path, {"targets": [kube_target(simulator)], "identity": identity}, {"r.yaml": RULES}
    )
    try:
        source = tmp_path / "source.kubeconfig"
        source.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "c", "cluster": {"server": "https://kubernetes.default.svc"}}
                    ],
                    "users": [{"name": "u", "user": {"token": SIM_TOKEN}}],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                }
            )
        )
        token_file = tmp_path / "agent-token"
        token_file.write_text(AGENT_TOKEN + "\n")
        out = tmp_path / "agent.kubeconfig"
        base = [
            str(BIN / "holdgate"), "kubeconfig", "--config", str(tmp_path / "holdgate.yaml"),
            "--kubeconfig", str(source), "--out", str(out), "--proxy-url", gateway.proxy_url,
        ]  # fmt: skip
        # Without the agent's credentials: a warning that says what to pass.
        bare = subprocess.run(base, capture_output=True, text=True, timeout=60)
        assert bare.returncode == 0 and "--agent NAME --token-file FILE" in bare.stderr
        assert kubectl(out, "get", "ns").returncode != 0  # 407: no agent credentials
        written = subprocess.run(
            [*base, "--agent", "ci-bot", "--run-id", "run-7", "--token-file", str(token_file)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert written.returncode == 0, written.stderr
        assert AGENT_TOKEN not in written.stdout + written.stderr  # never printed
        assert oct(out.stat().st_mode & 0o777) == "0o600"
        result = kubectl(out, "get", "ns")
        assert result.returncode == 0, result.stderr
        assert "sandbox" in result.stdout
        gateway.wait_for_output(r"client connect")
        assert AGENT_TOKEN not in gateway.output()
    finally:
        gateway.stop()
