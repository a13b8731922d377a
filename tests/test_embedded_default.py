"""The embedded default as `scripts/run` starts it, and plain mitmdump with the addon script."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import httpx
import yaml

from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import (
    BIN,
    KUBECTL,
    LISTENING,
    ROOT,
    GatewayProcess,
    Page,
    kube_target,
    kubectl,
    page_address,
    trust,
    write_agent_kubeconfig,
)


def _start(argv: list[str], home: Path, env: dict[str, str] | None = None) -> GatewayProcess:
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=home,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    gw = GatewayProcess(process=process, port=0, home=home)
    from tests.conftest import _pump

    threading.Thread(target=_pump, args=(process.stdout, gw._queue), daemon=True).start()
    try:
        gw.port = int(gw.wait_for_output(LISTENING.pattern, timeout=30).group(2))
    except AssertionError:
        gw.stop()
        raise
    return gw


def _files_and_times(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_embedded_default_sandbox(tmp_path: Path) -> None:
    """No config: example rules, the simulator behind `sandbox`, a ready agent kubeconfig.

    Under $HOLDGATE_HOME, so that the suite never touches the checkout's var/ and certs/ (a
    `scripts/run` may be up beside it)."""
    home = tmp_path / "home"
    checkout_state = _files_and_times(ROOT / "var")
    gw = _start(
        [
            str(BIN / "holdgate"),
            "run",
            "--listen-port",
            "0",
            "--",
            "--set",
            "holdgate_approvals_port=0",
        ],
        tmp_path,
        env={"HOLDGATE_HOME": str(home)},
    )
    try:
        m = gw.wait_for_output(r"export KUBECONFIG=(\S+);")
        kubeconfig = Path(m.group(1))
        assert kubeconfig == home / "var" / "agent.kubeconfig"
        cluster = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]
        assert cluster["server"] == "https://kubernetes.default.svc"
        # The agent holds proxy credentials and a placeholder; the gateway injects the API token.
        agent_token = (home / "var" / "sandbox" / "agent-token").read_text().strip()
        assert cluster["proxy-url"] == f"http://sandbox-agent:{agent_token}@127.0.0.1:{gw.port}"
        user = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]
        assert user == {"token": "injected-by-holdgate"}
        assert oct(kubeconfig.stat().st_mode & 0o777) == "0o600"
        result = kubectl(kubeconfig, "get", "ns")
        assert result.returncode == 0, result.stderr
        assert "sandbox" in result.stdout
        # The newcomer's path: a secret waits for approval on the page, is approved, completes.
        page_at = page_address(gw)
        name = f"demo-{os.getpid()}"
        creating = subprocess.Popen(
            [
                KUBECTL,
                "--kubeconfig",
                str(kubeconfig),
                "create",
                "secret",
                "generic",
                name,
                "-n",
                "sandbox",
                "--from-literal=k=v",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        with Page(*page_at) as desk:
            hold = desk.wait_pending("approve-secret-writes")[0]
            assert desk.decide(hold["id"], True).status_code == 200
        out, err = creating.communicate(timeout=60)
        assert creating.returncode == 0, err
        assert f"secret/{name} created" in out
        result = kubectl(kubeconfig, "get", "secrets", "-n", "prod")
        assert "deny-prod-secret-reads" in result.stderr
        # kubectl's generators send protobuf: read in full, checked against the Pod Security rule.
        deployment = f"web-{os.getpid()}"
        result = kubectl(
            kubeconfig, "create", "deployment", deployment, "--image=nginx", "-n", "sandbox"
        )
        assert result.returncode == 0, result.stderr
        result = kubectl(
            kubeconfig, "debug", "-n", "sandbox", "web-0", f"--copy-to={deployment}-debug",
            "--image=busybox", "--profile=sysadmin", "--", "true",
        )  # fmt: skip
        assert "deny-unsafe-pods" in result.stderr and "privileged" in result.stderr
        curl = gw.wait_for_output(r"curl: +curl --proxy (.+?) --cacert \S+mitmproxy-ca-cert\.pem")
        assert agent_token not in curl.group(0) and "$(cat " in curl.group(1)
        assert agent_token not in gw.output()
    finally:
        gw.stop()
    after = _files_and_times(ROOT / "var")
    assert after == checkout_state  # the checkout's var/ was not touched
    ca_key = home / "certs" / "mitmproxy-ca.pem"
    assert oct(ca_key.stat().st_mode & 0o777) == "0o600"


def test_plain_mitmdump_with_the_addon_script(tmp_path: Path, simulator: KubeSimulator) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(
        "rules:\n  - id: reads\n    action: allow\n    verbs: [get, list]\n    resources: ['*']\n"
    )
    config = tmp_path / "holdgate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "gateway": {"certs": str(tmp_path / "certs"), "state": str(tmp_path / "var")},
                "rules": ["rules"],
                "targets": [kube_target(simulator)],
            }
        )
    )
    gw = _start(
        [
            str(BIN / "mitmdump"),
            "-s",
            str(ROOT / "addons" / "gateway.py"),
            "--set",
            f"holdgate_config={config}",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            "0",
        ],
        tmp_path,
    )
    try:
        kubeconfig = write_agent_kubeconfig(tmp_path / "kc", gw)
        assert kubectl(kubeconfig, "get", "ns").returncode == 0
        result = kubectl(kubeconfig, "delete", "ns", "sandbox")
        assert result.returncode != 0 and "no rule matched" in result.stderr
        with httpx.Client(proxy=gw.proxy_url, verify=trust(gw), timeout=20) as client:
            r = client.get("https://kubernetes.default.svc/api/v1/namespaces/prod/secrets")
            assert r.status_code != 403  # allowed by policy; the simulator wants a token: 401
    finally:
        gw.stop()
